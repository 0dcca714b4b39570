"""Recovery fine-tuning after pruning: the run's own trainer on a pruned recis run, LoRA
(peft) on a pruned transformers model; the loss goes down and the result reloads with the
pruned shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recis.cli import main
from recis.config import load_config
from recis.prune.finetune import FinetuneOptions, finetune_hf
from recis.prune.run import calibration_batches, load_run_model, prune_run
from recis.prune.slimgpt import PruneOptions, prune_model


def _loss(model: torch.nn.Module, batches: list) -> float:
    model.eval()
    with torch.no_grad():
        losses = [
            torch.nn.functional.binary_cross_entropy_with_logits(
                model(b)["click"], b.labels["click"]
            )
            for b in batches
        ]
    return float(torch.stack(losses).mean())


def test_finetune_after_pruning_lowers_the_loss_and_reloads_pruned(tmp_path: Path, make_run):
    run = make_run(tmp_path, learnable=True)
    out = tmp_path / "pruned"
    prune_run(run, out, PruneOptions(0.5), samples=64, finetune=FinetuneOptions(12, 2.0))
    cfg = load_config(out / "config.yaml")
    data = calibration_batches(cfg, samples=96)
    pruned, _ = load_run_model(cfg, out / "checkpoints" / "pruned")
    tuned, meta = load_run_model(cfg, out / "checkpoints" / "final")
    assert meta["step"] == 12
    # the fine-tuned weights have the pruned shapes (model.structure), and differ
    assert tuned.hetero[0].heads == 2 and tuned.hetero[0].q.linears[0].weight.shape == (8, 16)
    assert [p.shape for p in tuned.parameters()] == [p.shape for p in pruned.parameters()]
    before, after = _loss(pruned, data), _loss(tuned, data)
    assert after < before - 0.05, (before, after)
    record = json.loads((out / "prune.json").read_text())
    assert record["finetune"]["steps"] == 12 and "click/auc" in record["finetune"]["eval"]


def test_recis_prune_cli_finetune_then_eval(tmp_path: Path, capsys, make_run) -> None:
    run = make_run(tmp_path, learnable=True)
    out = tmp_path / "pruned"
    args = ["prune", str(run), "--ratio", "0.3", "--out", str(out), "--samples", "32"]
    assert main([*args, "--finetune-steps", "3"]) == 0
    assert (out / "checkpoints" / "pruned").is_dir()
    ckpt = str(out / "checkpoints" / "final")
    capsys.readouterr()
    assert main(["eval", str(out / "config.yaml"), "--checkpoint", ckpt]) == 0
    assert "click/auc" in capsys.readouterr().out
    assert main([*args[:-4], "--out", str(tmp_path / "p2"), "--finetune-steps", "-1"]) == 2
    assert "finetune_steps" in capsys.readouterr().err


def test_lora_finetune_of_a_pruned_llama_reloads_with_pruned_shapes(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from recis.prune.hf import load_pruned, save_pruned

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    # a learnable language: each sequence counts up from a random start (mod 64)
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(0, 64, (8, 1), generator=g)
    ids = (starts + torch.arange(12)) % 64
    batches = [{"input_ids": ids[:4]}, {"input_ids": ids[4:]}]
    prune_model(model, PruneOptions(0.5), batches, lambda b: model(**b))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    tuned, losses = finetune_hf(model, batches, steps=40, lr=1e-2, lora_rank=4)
    assert losses[-1] < losses[0] - 0.5, losses
    assert type(tuned) is transformers.LlamaForCausalLM
    assert {k: v.shape for k, v in tuned.state_dict().items()} == shapes  # LoRA merged away
    loaded = load_pruned(save_pruned(tuned, tmp_path / "tuned"))
    assert loaded.model.layers[0].self_attn.q_proj.out_features == 16  # 2 of 4 heads
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**batches[0]).logits, tuned(**batches[0]).logits, atol=1e-5, rtol=1e-5
        )
