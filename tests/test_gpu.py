"""The CUDA path end to end (`make test-gpu`, or `pytest -m gpu`); skipped without a device.

Needs the CUDA variant (`make install CUDA=cu128`): torch 2.13.0+cuXXX and the CUDA
fbgemm-gpu. Each model-zoo example trains a few steps on ``device: cuda``; fbgemm's
fused TBE runs forward + backward + update on the GPU and matches a hand computation;
two ranks train over NCCL when two devices exist; a lookup benchmark prints the
hashed engine against torchrec's fused EBC on the same GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device (GPU tests run on a GPU machine: make install CUDA=cu128 && "
        "make test-gpu)",
    ),
]

EXAMPLES = [
    ("dlrm_synthetic.yaml", "click/auc"),
    ("hhft_synthetic.yaml", "click/auc"),
    ("deepfm_synthetic.yaml", "click/auc"),
    ("two_tower_synthetic.yaml", "click/auc"),
    ("deepbow_synthetic.yaml", "relevant/auc"),
    ("multitask_synthetic.yaml", None),
]


def _train_args(tmp_path: Path, example: str, steps: int = 3) -> list[str]:
    sets = {
        "data.path": tmp_path / "data",
        "run_dir": tmp_path / "run",
        "data.synthetic.num_train": 1000,
        "data.synthetic.num_eval": 400,
        "data.synthetic.files": 1,
        "data.batch_size": 128,
        "train.max_steps": steps,
        "train.progress": "false",
        "device": "cuda",
    }
    args = ["train", str(ROOT / "examples" / example)]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.mark.parametrize("example, metric", EXAMPLES)
def test_example_trains_on_cuda(tmp_path, example, metric) -> None:
    from recis.cli import main

    assert main(_train_args(tmp_path, example)) == 0
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    if metric is not None:
        assert 0.0 <= result[metric] <= 1.0
    assert (tmp_path / "run" / "checkpoints" / "final").exists()


def test_fbgemm_fused_tbe_on_cuda() -> None:
    """Forward is the pooled sum of rows; one fused SGD step moves exactly those rows."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    rows, dim, lr = 100, 8, 0.5
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(rows, dim, EmbeddingLocation.DEVICE, ComputeDevice.CUDA)],
        optimizer=EmbOptimType.EXACT_SGD,
        learning_rate=lr,
    )
    before = tbe.split_embedding_weights()[0].detach().clone()
    indices = torch.tensor([1, 2, 2, 7], device="cuda")
    offsets = torch.tensor([0, 3, 4], device="cuda")  # bag 0: rows 1, 2, 2; bag 1: row 7
    out = tbe(indices, offsets)
    expected = torch.stack([before[1] + 2 * before[2], before[7]])
    torch.testing.assert_close(out, expected)
    out.sum().backward()  # gradient 1 per pooled element: row r moves by -lr * count(r)
    after = tbe.split_embedding_weights()[0].detach()
    moved = before.clone()
    moved[1] -= lr
    moved[2] -= 2 * lr
    moved[7] -= lr
    torch.testing.assert_close(after, moved)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_ranks_over_nccl(tmp_path) -> None:
    torchrun = str(Path(sys.executable).parent / "torchrun")
    args = _train_args(tmp_path, "dlrm_synthetic.yaml", steps=4)
    args += ["--set", "distributed.backend=nccl", "--launcher", "torchrun"]
    proc = subprocess.run(
        [torchrun, "--nproc-per-node", "2", "-m", "recis.cli", *args],
        cwd=tmp_path,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0.0 <= result["click/auc"] <= 1.0


def test_lookup_benchmark_against_torchrec_on_the_same_gpu() -> None:
    """Prints M lookups/s of the hashed engine (mapping included) and of torchrec's fused
    EBC (rows mapped beforehand), forward + backward + Adagrad, and their ratio."""
    from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

    from recis.config import SparseOptimizerConfig, TableConfig
    from recis.embedding import build_embedding_collection
    from recis.features import SparseFeature
    from recis.ops.id_mapper import IdMapper

    n_feat, per, dim, batch, capacity, steps = 26, 8, 64, 2048, 100_000, 10
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    batches = [
        [torch.randint(0, 10 * capacity, (batch * per,), generator=gen) for _ in range(n_feat)]
        for _ in range(steps)
    ]

    def kjt(ids: list[torch.Tensor]) -> KeyedJaggedTensor:
        return KeyedJaggedTensor.from_lengths_sync(
            keys=[f"f{f}" for f in range(n_feat)],
            values=torch.cat(ids).to(dev),
            lengths=torch.full((n_feat * batch,), per, dtype=torch.int32, device=dev),
        )

    tables = [TableConfig(name=f"t{f}", dim=dim, capacity=capacity) for f in range(n_feat)]
    feats = [SparseFeature(name=f"f{f}", table=f"t{f}") for f in range(n_feat)]
    opt = SparseOptimizerConfig(name="adagrad", lr=0.05)
    hashed = build_embedding_collection(tables, feats, "cuda", optimizer=opt)
    mappers = [IdMapper(capacity) for _ in range(n_feat)]
    raw = [kjt(ids) for ids in batches]
    mapped = [
        kjt([mappers[f].map(ids[f].numpy(), s + 1).rows + 1 for f in range(n_feat)])
        for s, ids in enumerate(batches)
    ]
    fused = FusedEmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t{f}",
                embedding_dim=dim,
                num_embeddings=capacity + 1,
                feature_names=[f"f{f}"],
            )
            for f in range(n_feat)
        ],
        optimizer_type=torch.optim.Adagrad,
        optimizer_kwargs={"lr": 0.05},
        device=dev,
    )
    grad = torch.randn(batch, n_feat * dim, device=dev)

    def timed(fn, inputs) -> float:
        best = float("inf")
        for i, x in enumerate(inputs):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(x).values().mul(grad).sum().backward()
            torch.cuda.synchronize()
            if i >= 2:  # warm-up steps
                best = min(best, time.perf_counter() - t0)
        return best

    t_hashed, t_fused = timed(hashed, raw), timed(fused, mapped)
    lookups = n_feat * batch * per
    print(
        f"\nGPU {torch.cuda.get_device_name()}: hashed {lookups / t_hashed / 1e6:.1f} M lookups/s, "
        f"torchrec fused EBC {lookups / t_fused / 1e6:.1f} M lookups/s, "
        f"ratio {t_fused / t_hashed:.2f}"
    )
    assert t_hashed > 0 and t_fused > 0
