"""A rank of tests/test_optim_spec.py's 2-process gloo run (started by torchrun).

One replicated (``data_parallel``) torchrec table of 6 x 4 rows, trained with the named
sparse optimizer through :func:`recis.distributed.optim.build_optimizer` (what the
distributed trainer uses). Each rank looks up one bag and weighs the pooled vector by its
own coefficients, so DDP averages two different gradients. Rank ``r`` saves the table's
weights before and after each step, and the class of the optimizer that ran, to
``OUT/<name>.rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.config import SparseOptimizerConfig, TrainConfig
from recis.distributed import init_distributed, shard_model, shutdown
from recis.distributed.collectives import full_state_dict
from recis.distributed.optim import build_optimizer

ROWS, DIM, STEPS = 6, 4, 3
IDS = {0: [0, 1], 1: [1, 2]}  # each rank's one bag; rows 3..5 get no gradient
COEF = {0: [0.1, 0.2, 0.3, 0.4], 1: [-0.1, 0.05, 0.1, 0.2]}
CONFIGS = {
    "adamw": SparseOptimizerConfig(name="adamw", lr=0.1, weight_decay=0.5),
    "rowwise_adagrad": SparseOptimizerConfig(name="rowwise_adagrad", lr=0.1),
}
TABLE = "sparse.embedding_bags.t.weight"


class OneTable(nn.Module):
    """``loss = sum(pooled * coef)`` over one EBC table; a dense scale keeps DDP busy."""

    def __init__(self) -> None:
        super().__init__()
        cfg = EmbeddingBagConfig(name="t", embedding_dim=DIM, num_embeddings=ROWS)
        cfg.feature_names = ["f"]
        self.sparse = EmbeddingBagCollection(tables=[cfg], device=torch.device("cpu"))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, kjt: KeyedJaggedTensor, coef: torch.Tensor) -> torch.Tensor:
        return (self.sparse(kjt).values() * coef).sum() * self.scale


def run(name: str, out: Path, ctx) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = OneTable()
    cfg = CONFIGS[name]
    dmp = shard_model(model, ctx, cfg, default="data_parallel")
    train = TrainConfig(sparse_optimizer=cfg, dense_optimizer={"name": "sgd", "lr": 1e-9})
    opt = build_optimizer(dmp, train, ctx)
    tables = dict(opt.optimizers)["tables"]
    kjt = KeyedJaggedTensor(
        keys=["f"], values=torch.tensor(IDS[ctx.rank]), lengths=torch.tensor([2])
    )
    coef = torch.tensor(COEF[ctx.rank])
    weights = [full_state_dict(dmp)[TABLE].clone()]
    for _ in range(STEPS):
        opt.zero_grad()
        dmp(kjt, coef).backward()
        opt.step()
        weights.append(full_state_dict(dmp)[TABLE].clone())
    record = {"weights": weights, "optimizer": type(tables._optimizer).__name__}
    torch.save(record, out / f"{name}.rank{ctx.rank}.pt")


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    ctx = init_distributed("torchrun", "cpu", "gloo")
    for name in CONFIGS:
        run(name, out, ctx)
    shutdown(ctx)


if __name__ == "__main__":
    main()
