"""The optimizer spec (recis.optim.spec): one config, resolved in one place.

The resolution table (every sparse optimizer name x backend x device x weight decay ->
the exact fbgemm kind / optimizer class and arguments, or the ConfigError), the objects
the engine builds from it, the one-place rule in run configs, the config-time refusal
for sharded tables, and a replicated table trained in a real 2-process gloo run with the
named optimizer (hand-checked numbers).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType as K
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torchrec.optim import RowWiseAdagrad

import recis.models  # noqa: F401  (registers the model configs run configs name)
from recis.config import OptimizerConfig, SparseOptimizerConfig, TableConfig, load_config, to_dict
from recis.embedding import FbgemmTableGroup, HashedEmbeddingCollection, TorchTableGroup
from recis.errors import ConfigError
from recis.features import SparseFeature
from recis.optim import dense_optimizer, fused_params, resolve_sparse, sparse_optimizer
from recis.optim.sparse_adam import AdamHyper
from recis.optim.spec import check_sharded_tables, coupling

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dlrm_synthetic.yaml"
LR, EPS, WD, B1, B2 = 0.03, 1e-7, 0.2, 0.8, 0.99
NAMES = ["sgd", "adagrad", "rowwise_adagrad", "adam", "adamw"]


def _cfg(name: str, wd: float) -> SparseOptimizerConfig:
    return SparseOptimizerConfig(name=name, lr=LR, eps=EPS, weight_decay=wd, beta1=B1, beta2=B2)


FB = {"learning_rate": LR, "eps": EPS}  # fbgemm's arguments common to every kind
ADAM_FB = {**FB, "beta1": B1, "beta2": B2}
TORCH = {"lr": LR, "weight_decay": WD}
HYPER = {"lr": LR, "beta1": B1, "beta2": B2, "eps": EPS, "weight_decay": WD}
SHARDED_NAME = "train.sparse_optimizer.name: '{}' cannot run on torchrec-sharded tables on CPU"
SHARDED_WD = (
    "train.sparse_optimizer.weight_decay: 0.2 with '{}' cannot be applied on torchrec-sharded "
    "tables (fbgemm's {}"
)
CPU_NO_WD = "CPU kernels apply no weight decay)"

# (name, backend, device, weight decay) -> (kind, kwargs, lazy L2) or the error's start
TABLE: dict[tuple[str, str, str, float], tuple[object, dict, float] | str] = {
    # the hashed engine's groups: fbgemm kernels, decay added by recis (lazy L2) ...
    ("sgd", "table_group", "cpu", WD): (K.EXACT_SGD, FB, WD),
    ("adagrad", "table_group", "cpu", WD): (K.EXACT_ADAGRAD, FB, WD),
    ("rowwise_adagrad", "table_group", "cpu", WD): (K.EXACT_ROWWISE_ADAGRAD, FB, WD),
    ("rowwise_adagrad", "table_group", "cpu", 0.0): (K.EXACT_ROWWISE_ADAGRAD, FB, 0.0),
    # ... and recis' lazy Adam(W), L2 or decoupled
    ("adam", "table_group", "cpu", WD): (AdamHyper, {**HYPER, "decoupled": False}, 0.0),
    ("adamw", "table_group", "cpu", WD): (AdamHyper, {**HYPER, "decoupled": True}, 0.0),
    ("adamw", "table_group", "cuda", WD): (AdamHyper, {**HYPER, "decoupled": True}, 0.0),
    # whole tables in torch (modulo engine, replicated tables): the named torch optimizer
    ("sgd", "torch", "cpu", WD): (torch.optim.SGD, TORCH, 0.0),
    ("adagrad", "torch", "cpu", WD): (torch.optim.Adagrad, {**TORCH, "eps": EPS}, 0.0),
    ("rowwise_adagrad", "torch", "cpu", WD): (RowWiseAdagrad, {**TORCH, "eps": EPS}, 0.0),
    ("adam", "torch", "cpu", WD): (torch.optim.Adam, {**TORCH, "betas": (B1, B2), "eps": EPS}, 0),
    ("adamw", "torch", "cpu", WD): (torch.optim.AdamW, {**TORCH, "betas": (B1, B2), "eps": EPS}, 0),
    # torchrec-sharded tables on CPU: fbgemm's three CPU kernels, none with decay
    ("sgd", "sharded", "cpu", 0.0): (K.EXACT_SGD, FB, 0.0),
    ("adagrad", "sharded", "cpu", 0.0): (K.EXACT_ADAGRAD, FB, 0.0),
    ("rowwise_adagrad", "sharded", "cpu", 0.0): (K.EXACT_ROWWISE_ADAGRAD, FB, 0.0),
    ("adam", "sharded", "cpu", 0.0): SHARDED_NAME.format("adam"),
    ("adamw", "sharded", "cpu", 0.0): SHARDED_NAME.format("adamw"),
    ("sgd", "sharded", "cpu", WD): SHARDED_WD.format("sgd", CPU_NO_WD),
    ("adagrad", "sharded", "cpu", WD): SHARDED_WD.format("adagrad", CPU_NO_WD),
    ("rowwise_adagrad", "sharded", "cpu", WD): SHARDED_WD.format("rowwise_adagrad", CPU_NO_WD),
    ("adamw", "sharded", "cpu", WD): SHARDED_NAME.format("adamw"),
    # on CUDA: Adam exists; decay only where the kernel has it, with its own coupling
    ("adam", "sharded", "cuda", 0.0): (K.ADAM, ADAM_FB, 0.0),
    ("adamw", "sharded", "cuda", 0.0): (K.ADAM, ADAM_FB, 0.0),
    ("sgd", "sharded", "cuda", WD): SHARDED_WD.format("sgd", "sgd kernel has no weight decay)"),
    ("adagrad", "sharded", "cuda", WD): SHARDED_WD.format("adagrad", "adagrad kernel has no"),
    (
        "rowwise_adagrad",
        "sharded",
        "cuda",
        WD,
    ): (
        K.EXACT_ROWWISE_ADAGRAD,
        {**FB, "weight_decay": WD, "weight_decay_mode": WeightDecayMode.L2},
        0.0,
    ),
    ("adam", "sharded", "cuda", WD): SHARDED_WD.format("adam", "Adam decays decoupled only"),
    ("adamw", "sharded", "cuda", WD): (
        K.ADAM,
        {**ADAM_FB, "weight_decay": WD, "weight_decay_mode": WeightDecayMode.DECOUPLE},
        0.0,
    ),
}


@pytest.mark.parametrize("key", list(TABLE), ids=["-".join(map(str, k)) for k in TABLE])
def test_resolution_table(key: tuple[str, str, str, float]) -> None:
    name, backend, device, wd = key
    want = TABLE[key]
    if isinstance(want, str):
        with pytest.raises(ConfigError) as err:
            resolve_sparse(_cfg(name, wd), backend, device)  # type: ignore[arg-type]  # str key
        assert str(err.value).startswith(want), str(err.value)
        return
    r = resolve_sparse(_cfg(name, wd), backend, device)  # type: ignore[arg-type]  # str key
    assert (r.kind, r.kwargs, r.lazy_l2) == want


def test_table_covers_every_name_and_backend() -> None:
    """Every name on every backend (and both devices of the sharded one) is in the table;
    each name's weight decay has one coupling, as in torch."""
    assert [coupling(n) for n in NAMES] == ["l2", "l2", "l2", "l2", "decoupled"]
    combos = {(n, b, d) for n, b, d, _ in TABLE}
    for name in NAMES:
        for where in (("table_group", "cpu"), ("torch", "cpu"), ("sharded", "cpu")):
            assert (name, *where) in combos
        assert (name, "sharded", "cuda") in combos


def test_engine_builds_what_the_spec_says() -> None:
    """The hashed engine's groups, the trainer's torch optimizer and the sharders'
    fused_params are made from the resolution, arguments included."""
    feats = [SparseFeature(name=n) for n in NAMES]
    tables = [
        TableConfig(name=n, dim=4, capacity=10, optimizer=_cfg(n, WD), mapper="none") for n in NAMES
    ]
    ec = HashedEmbeddingCollection(tables, feats, "cpu")
    for name in NAMES:
        group = ec.groups[ec.where[name][0]]
        if name.startswith("adam"):
            assert isinstance(group, TorchTableGroup)
            assert group.hyper == AdamHyper(**resolve_sparse(_cfg(name, WD), "table_group").kwargs)
        else:
            assert isinstance(group, FbgemmTableGroup)
            assert group.tbe.optimizer == resolve_sparse(_cfg(name, WD), "table_group").kind
            assert group.tbe.get_learning_rate() == pytest.approx(LR)
            assert group.tbe.optimizer_args.eps == pytest.approx(EPS)
            assert group.tbe.optimizer_args.weight_decay == 0.0  # recis decays (lazy L2)
    p = torch.nn.Parameter(torch.zeros(3, 4))
    adamw = sparse_optimizer([p], _cfg("adamw", WD))
    assert type(adamw) is torch.optim.AdamW
    assert adamw.defaults["betas"] == (B1, B2) and adamw.defaults["eps"] == EPS
    assert adamw.defaults["weight_decay"] == WD
    assert fused_params(_cfg("adagrad", 0.0), "cpu") == {"optimizer": K.EXACT_ADAGRAD, **FB}


def test_sharders_check_fbgemm_only_for_fused_tables() -> None:
    """A run whose torchrec tables are all data-parallel (or that has none: hashed engine)
    runs Adam as a torch optimizer; fused tables on CPU refuse it."""
    from recis.distributed.sharding import sharders

    adam = _cfg("adam", 0.0)
    assert all(s.fused_params is None for s in sharders(adam, torch.device("cpu"), fused=False))
    with pytest.raises(ConfigError, match=re.escape(SHARDED_NAME.format("adam"))):
        sharders(adam, torch.device("cpu"), fused=True)


def test_dense_optimizer_arguments() -> None:
    """``eps`` null keeps torch's own default for the named optimizer; betas are passed."""
    p = [torch.nn.Parameter(torch.zeros(2))]
    adagrad = dense_optimizer(p, OptimizerConfig(name="adagrad", lr=0.1))
    assert adagrad.defaults["eps"] == 1e-10 and adagrad.defaults["lr"] == 0.1
    adam = dense_optimizer(p, OptimizerConfig(name="adamw", beta1=0.5, eps=1e-6, weight_decay=1))
    assert type(adam) is torch.optim.AdamW
    assert adam.defaults["betas"] == (0.5, 0.999) and adam.defaults["eps"] == 1e-6
    assert adam.defaults["weight_decay"] == 1


def test_optimizer_set_in_two_places_is_refused() -> None:
    """``train.sparse_optimizer`` is the one place; a different ``model.sparse_optimizer``
    is refused naming both fields, an equal one (an older saved config) is accepted."""
    with pytest.raises(ConfigError) as err:
        load_config(
            EXAMPLE,
            ["model.sparse_optimizer={name: adam, lr: 0.01}", "train.sparse_optimizer.lr=0.05"],
        )
    msg = str(err.value)
    assert msg.startswith("model.sparse_optimizer: {'name': 'adam', 'lr': 0.01"), msg
    assert "differs from train.sparse_optimizer: {'name': 'adagrad', 'lr': 0.05" in msg
    assert "set once, in train.sparse_optimizer" in msg
    same = load_config(EXAMPLE, ["model.sparse_optimizer={name: adagrad, lr: 0.05}"])
    cfg = load_config(EXAMPLE, ["train.sparse_optimizer={name: adamw, lr: 0.2}"])
    assert cfg.model.sparse_optimizer == cfg.train.sparse_optimizer  # the model's copy
    assert same.model.sparse_optimizer == same.train.sparse_optimizer
    saved = to_dict(cfg)
    assert "sparse_optimizer" not in saved["model"]  # written once, where it is set
    assert saved["train"]["sparse_optimizer"]["name"] == "adamw"


MODULO = "model.embedding=modulo"


@pytest.mark.parametrize(
    "overrides, refused",
    [
        ([MODULO, "train.sparse_optimizer.name=adam"], SHARDED_NAME.format("adam")),
        (
            [MODULO, "train.sparse_optimizer.weight_decay=0.2"],
            SHARDED_WD.format("adagrad", CPU_NO_WD),
        ),
        (
            [
                MODULO,
                "train.sparse_optimizer.name=adam",
                "distributed.default_sharding=data_parallel",
            ],
            "",
        ),
        (["model.embedding=hashed", "train.sparse_optimizer.name=adam"], ""),
    ],
)
def test_sharded_tables_checked_from_config(overrides: list[str], refused: str) -> None:
    """What the distributed run checks before reading data (modulo engine: torchrec
    tables); replicated tables and the hashed engine run every optimizer."""
    cfg = load_config(EXAMPLE, overrides)
    if not refused:
        check_sharded_tables(cfg, "cpu")
        return
    with pytest.raises(ConfigError, match=re.escape(refused)):
        check_sharded_tables(cfg, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fbgemm's Adam runs on CUDA only")
def test_sharded_adamw_keeps_decoupled_decay_on_cuda() -> None:
    """fbgemm's ADAM with the resolved fused_params, one step, equals torch's AdamW."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    cfg = _cfg("adamw", WD)
    fp = fused_params(cfg, "cuda")
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(6, 4, EmbeddingLocation.DEVICE, ComputeDevice.CUDA)], device="cuda", **fp
    )
    w0 = tbe.split_embedding_weights()[0].detach().clone().cpu()
    out = tbe(torch.tensor([1, 2], device="cuda"), torch.tensor([0, 1, 2], device="cuda"))
    g = torch.tensor([[0.1, -0.2, 0.3, 0.4], [0.5, 0.1, -0.1, 0.2]], device="cuda")
    out.backward(g)
    ref = torch.nn.Parameter(w0.clone())
    opt = torch.optim.AdamW([ref], lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)
    ref.grad = torch.zeros(6, 4)
    ref.grad[1], ref.grad[2] = g[0].cpu(), g[1].cpu()
    opt.step()
    got = tbe.split_embedding_weights()[0].detach().cpu()
    torch.testing.assert_close(got[1:3], ref.detach()[1:3], rtol=1e-5, atol=1e-6)


def test_replicated_table_two_ranks_runs_the_named_optimizer(tmp_path: Path) -> None:
    """2 ranks (torchrun, gloo), one data_parallel table: the trainer's optimizer is the
    named one (AdamW, torchrec's RowWiseAdagrad), not Adagrad, and its update equals the
    single-process torch optimizer on the rank-averaged gradient, first step by hand."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import distributed_worker as w
        import optim_worker as ow
    finally:
        sys.path.pop(0)
    port = str(w.free_port())
    cmd = [
        w.TORCHRUN,
        "--nproc-per-node",
        "2",
        "--master-port",
        port,
        ROOT / "tests/optim_worker.py",
    ]
    w.run_all([w.spawn([*cmd, tmp_path])], timeout=300)
    grad = torch.zeros(ow.ROWS, ow.DIM)  # DDP's mean over the two ranks' bags
    for rank in (0, 1):
        for row in ow.IDS[rank]:
            grad[row] += torch.tensor(ow.COEF[rank]) / 2
    for name, cls in (("adamw", torch.optim.AdamW), ("rowwise_adagrad", RowWiseAdagrad)):
        ranks = [torch.load(tmp_path / f"{name}.rank{r}.pt") for r in (0, 1)]
        assert [r["optimizer"] for r in ranks] == [cls.__name__] * 2
        for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
            assert torch.equal(a, b)  # replicated: the same rows on both ranks
        weights = ranks[0]["weights"]
        w0, w1 = weights[0], weights[1]
        if name == "adamw":  # first step: w * (1 - lr * wd) - lr * sign(g), by hand
            want1 = w0 * (1 - 0.1 * 0.5) - 0.1 * torch.sign(grad)
        else:  # one state per row: lr * g / sqrt(mean(g^2)), rows without gradient kept
            rms = grad.pow(2).mean(1, keepdim=True).sqrt()
            want1 = w0 - 0.1 * torch.where(rms > 0, grad / rms.clamp_min(1e-30), 0.0)
        torch.testing.assert_close(w1, want1, rtol=1e-5, atol=1e-6)
        assert (w1[3:] != w0[3:]).any() == (name == "adamw")  # decoupled decay: every row
        ref = torch.nn.Parameter(w0.clone())
        opt = sparse_optimizer([ref], ow.CONFIGS[name])
        for want in weights[1:]:
            ref.grad = grad.clone()
            opt.step()
            torch.testing.assert_close(want, ref.detach(), rtol=1e-5, atol=1e-6)
