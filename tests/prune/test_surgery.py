"""Structured pruning of real transformer layers (tiny random HF models, HHFT's layers):
selection without update equals masking, the OBS update helps, pruned shapes reload."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from recis.models.hhft import HeterogeneousLayer, HiformerLayer
from recis.models.structure import apply_structure, prunable_layers, structure_of
from recis.prune.slimgpt import PruneOptions, PruneReport, prune_model

transformers = pytest.importorskip("transformers")


def _hf(family: str, llama_heads: tuple[int, int] = (4, 2)) -> nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=48)
    if family == "llama":  # grouped-query attention: (query heads, key/value heads)
        heads, kv_heads = llama_heads
        cfg = transformers.LlamaConfig(
            **common,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=32,
        )
        return transformers.LlamaModel(cfg).eval()
    if family == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=32,
            n_inner=48,
            attn_pdrop=0.0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
        )
        return transformers.GPT2Model(cfg).eval()
    cfg = transformers.BertConfig(
        **common,
        num_attention_heads=4,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertModel(cfg).eval()


def _calibration(n: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 64, (4, 12), generator=g)
        mask = torch.ones(4, 12, dtype=torch.long)
        mask[1, 8:] = 0  # padded rows must not enter the Hessian
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _run(model: nn.Module):
    return lambda batch: model(**batch).last_hidden_state


def _masked(original: nn.Module, report: PruneReport) -> nn.Module:
    """The original model with the removed heads' and channels' output columns zeroed."""
    masked = copy.deepcopy(original)
    for name, s in prunable_layers(masked):
        layer = report.layers[name]
        if layer.get("removed_units") and s.units is not None:
            w = s.attention_out().clone()
            for u in layer["removed_units"]:
                w[:, :, u * s.unit_width : (u + 1) * s.unit_width] = 0
            s.keep_units(torch.arange(s.units), w)
        if layer.get("removed_channels"):
            w = s.ffn_out().clone()
            for g, cols in enumerate(layer["removed_channels"]):
                w[g][:, cols] = 0
            s.keep_channels(torch.arange(s.ffn).expand(s.groups, -1), w)
    return masked


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_selection_without_update_equals_the_masked_original(family: str) -> None:
    model = _hf(family)
    original = copy.deepcopy(model)
    batches = _calibration()
    options = PruneOptions(0.5, method="obs-select", early_stop=family == "gpt2")
    report = prune_model(model, options, batches, _run(model))
    shapes = {name: layer["after"] for name, layer in report.layers.items()}
    heads = 2 if family == "llama" else 2  # llama: 1 of 2 key/value groups = 2 query heads
    assert all(s == {"heads": heads, "ffn": 24} for s in shapes.values()), shapes
    assert report.params_after < report.params_before
    masked = _masked(original, report)
    test = _calibration(1, seed=9)[0]
    with torch.no_grad():
        torch.testing.assert_close(
            model(**test).last_hidden_state,
            masked(**test).last_hidden_state,
            rtol=1e-4,
            atol=1e-5,
        )


@pytest.mark.parametrize("family", ["llama"])
def test_obs_update_brings_outputs_closer_than_selection_or_magnitude(family: str) -> None:
    batches = _calibration(6)
    with torch.no_grad():
        reference = [_run(_hf(family))(b) for b in batches]

    def error(method: str) -> float:
        model = _hf(family)
        prune_model(model, PruneOptions(0.5, method=method), batches, _run(model))
        with torch.no_grad():
            return sum(
                float(((_run(model)(b) - r) ** 2).mean()) for b, r in zip(batches, reference)
            )

    slim, select, magnitude = error("slimgpt"), error("obs-select"), error("magnitude")
    assert slim < select and slim < magnitude, (slim, select, magnitude)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_pruned_hf_model_saves_and_reloads_with_its_shapes(family: str, tmp_path) -> None:
    from recis.prune.hf import load_pruned, save_pruned

    model = _hf(family)
    report = prune_model(
        model, PruneOptions(0.3, schedule="incremental"), _calibration(), _run(model)
    )
    save_pruned(model, tmp_path / "pruned", report)
    loaded = load_pruned(tmp_path / "pruned")
    assert structure_of(loaded) == structure_of(model) == report.structure()
    test = _calibration(1, seed=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**test).last_hidden_state, model(**test).last_hidden_state
        )


class _Tower(nn.Module):
    """Two HHFT layers on ready-made tokens (the model's embedding part is not pruned); the
    Hiformer layer with a low-rank key/value projection and ``only`` (HHFT's last layer)
    when asked."""

    def __init__(self, rank: int | None = None, only: list[int] | None = None) -> None:
        super().__init__()
        groups = [0, 0, 1, 2, 3]
        self.hetero = nn.ModuleList([HeterogeneousLayer(groups, 16, 4, ffn_mult=2)])
        self.hiformer = nn.ModuleList([HiformerLayer(len(groups), 16, 4, ffn_mult=2, rank=rank)])
        self.only = only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hiformer[0](self.hetero[0](x), self.only)


def test_hhft_layers_prune_to_fewer_heads_and_channels_and_rebuild() -> None:
    torch.manual_seed(0)
    tower = _Tower().eval()
    original = copy.deepcopy(tower)
    batches = [torch.randn(32, 5, 16) for _ in range(3)]
    report = prune_model(tower, PruneOptions(0.5, method="obs-select"), batches)
    assert report.structure() == {
        "hetero.0": {"heads": 2, "ffn": 16},
        "hiformer.0": {"heads": 2, "ffn": 16},
    }
    hetero, hiformer = tower.hetero[0], tower.hiformer[0]
    assert [lin.weight.shape for lin in hetero.q.linears] == [(8, 16)] * 4
    assert [lin.weight.shape for lin in hetero.o.linears] == [(16, 8)] * 4
    assert [lin.weight.shape for lin in hiformer.ffn_in.linears] == [(16, 16)] * 5
    # Hiformer: 2 of 4 heads; the composite key/value projection keeps their slices of the
    # 5 key and 5 value tokens
    assert hiformer.heads == 2 and hiformer.kv.weight.shape == (2 * 5 * 8, 5 * 16)
    assert [lin.weight.shape for lin in hiformer.q.linears] == [(8, 16)] * 5
    x = torch.randn(8, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(tower(x), _masked(original, report)(x))
    # the structure alone rebuilds the shapes; the weights then load by name
    rebuilt = _Tower()
    apply_structure(rebuilt, report.structure())
    rebuilt.load_state_dict(tower.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), tower(x))


def test_hiformer_heads_low_rank_and_last_layer_equal_the_masked_original() -> None:
    torch.manual_seed(0)
    tower = _Tower(rank=6, only=[1, 4]).eval()
    original = copy.deepcopy(tower)
    batches = [torch.randn(32, 5, 16) for _ in range(3)]
    report = prune_model(tower, PruneOptions(0.5, method="obs-select"), batches)
    assert report.structure()["hiformer.0"] == {"heads": 2, "ffn": 16}
    assert tower.hiformer[0].kv[1].weight.shape == (2 * 5 * 8, 6)
    x = torch.randn(8, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(tower(x), _masked(original, report)(x))
    # with the update, the outputs stay closer to the original's than selection alone
    slim = copy.deepcopy(original)
    prune_model(slim, PruneOptions(0.5), batches)
    with torch.no_grad():
        ref = [original(b) for b in batches]
        err_slim = sum(float(((slim(b) - r) ** 2).mean()) for b, r in zip(batches, ref))
        err_select = sum(float(((tower(b) - r) ** 2).mean()) for b, r in zip(batches, ref))
    assert err_slim < err_select, (err_slim, err_select)


def test_hhft_task_head_hidden_channels_prune_as_an_ffn_and_reload(tmp_path, make_run) -> None:
    from recis.config import load_config
    from recis.prune.run import calibration_batches, load_run_model

    run = make_run(tmp_path)
    cfg = load_config(run / "config.yaml")

    def load() -> nn.Module:
        return load_run_model(cfg, run / "checkpoints" / "final")[0].eval()

    model, original = load(), load()
    batches = calibration_batches(cfg, samples=64)
    # heads off: only FFN channels and the task head's hidden channels go
    report = prune_model(model, PruneOptions(0.5, method="obs-select", heads=False), batches)
    assert [name for name, _ in prunable_layers(model)][-1] == "heads.0.0"
    assert report.layers["heads.0.0"]["after"] == {"ffn": 4}
    head = model.heads[0]  # Linear(16, 8), ReLU, Linear(8, 1) -> 4 hidden channels
    assert head[0].weight.shape == (4, 16) and head[-1].weight.shape == (1, 4)
    test = calibration_batches(cfg, samples=96)[-1]
    with torch.no_grad():
        torch.testing.assert_close(model(test)["click"], _masked(original, report)(test)["click"])
    # the structure alone narrows a fresh model; the pruned weights then load
    rebuilt = load()
    apply_structure(rebuilt, report.structure())
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(test)["click"], model(test)["click"])
    # the OBS update of the head's output layer keeps the logits closer than selection alone
    slim = load()
    prune_model(slim, PruneOptions(0.5, heads=False), batches)
    with torch.no_grad():
        ref = [original(b)["click"] for b in batches]
        err = {
            name: sum(float(((m(b)["click"] - r) ** 2).mean()) for b, r in zip(batches, ref))
            for name, m in (("slimgpt", slim), ("obs-select", model))
        }
    assert err["slimgpt"] < err["obs-select"], err


def test_align_keeps_grouped_query_widths_in_whole_vectors() -> None:
    """Under grouped-query attention a unit is one key/value head (4 columns here) with its
    2 query heads: align 8 removes key/value heads in pairs, so the key/value projections,
    the query projection and the FFN all keep multiples of 8 outputs."""

    def widths(align: int) -> list[tuple[int, int, int]]:
        model = _hf("llama", llama_heads=(8, 4))  # the same seeded model each call
        prune_model(model, PruneOptions(0.3, method="magnitude", align=align))
        return [
            (
                layer.self_attn.k_proj.out_features,
                layer.self_attn.q_proj.out_features,
                layer.mlp.up_proj.out_features,
            )
            for layer in model.layers
        ]

    # 30% of 4 key/value heads per layer (2.4 of 8 in all): in pairs 0 and 2 (the deeper
    # layer first); FFN 48 in 8s: 14.4 asked per layer, 16 each (32 of 28.8: closer than 24)
    assert widths(8) == [(16, 32, 32), (8, 16, 32)]
    # exact counts: one key/value head per layer, 12 columns left, not whole vectors
    assert widths(1) == [(12, 24, 34), (12, 24, 33)]
