"""A text tower (``LLMTower(path=...)``) loads a pruned transformers directory with its
pruned shapes: the base model of a pruned causal LM, or a pruned encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recis.models.text_towers import LLMTower, LLMTowerConfig
from recis.prune.slimgpt import PruneOptions, prune_model

transformers = pytest.importorskip("transformers")


def _ids(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (4, 10), generator=g)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[2, 6:] = False
    return ids, mask


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_llm_tower_loads_a_pruned_directory(family: str, tmp_path: Path) -> None:
    from recis.prune.hf import load_pruned, save_pruned

    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=48)
    if family == "llama":
        cfg = transformers.LlamaConfig(
            **common, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32
        )
        model = transformers.LlamaForCausalLM(cfg).eval()
        base = model.model
    else:
        cfg = transformers.BertConfig(**common, num_attention_heads=4, max_position_embeddings=32)
        model = transformers.BertModel(cfg).eval()
        base = model
    batches = [{"input_ids": _ids(s)[0]} for s in range(3)]
    prune_model(model, PruneOptions(0.5), batches, lambda b: model(**b))
    save_pruned(model, tmp_path / "pruned")
    # from_pretrained alone refuses the narrower layers; the tower reads the structure
    tower = LLMTower(LLMTowerConfig(path=str(tmp_path / "pruned"), pooling="mean")).eval()
    assert type(tower.model) is type(base)
    layer = tower.model.layers[1] if family == "llama" else tower.model.encoder.layer[1]
    if family == "llama":
        assert layer.self_attn.q_proj.out_features == 16 and layer.mlp.down_proj.in_features == 24
    else:
        assert layer.attention.self.num_attention_heads == 2
        assert layer.intermediate.dense.out_features == 24
    ids, mask = _ids(9)
    with torch.no_grad():
        want = base(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        torch.testing.assert_close(tower.hidden(ids, mask), want)
    # the whole saved model (causal LM with its head) still loads as itself
    whole = load_pruned(tmp_path / "pruned")
    assert type(whole) is type(model)
