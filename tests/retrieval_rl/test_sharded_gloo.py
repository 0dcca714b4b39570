"""Sharded search over two real processes (gloo): each rank searches its shard, the merged
top-K equals the unsharded search."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recis.retrieval_rl.index import ExactIndex, shard_bounds, sharded_search


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(257, 8, generator=g), torch.randn(13, 8, generator=g)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        x, q = _data()
        lo, hi = shard_bounds(len(x), world)[rank : rank + 2]
        index = ExactIndex()
        index.build(x[lo:hi])
        s, r = sharded_search(index, q, 9, offset=lo)
        torch.save({"scores": s, "rows": r}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_process_sharded_search_equals_unsharded(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(tmp_path / "topk")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    x, q = _data()
    whole = ExactIndex()
    whole.build(x)
    s_all, r_all = whole.search(q, 9)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert torch.equal(got["rows"], r_all)
        assert torch.allclose(got["scores"], s_all)
