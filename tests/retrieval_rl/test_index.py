"""Index in the loop: exact and IVF top-K against brute force, sharded merge, refresh."""

from __future__ import annotations

import pytest
import torch

from recis.errors import ConfigError
from recis.retrieval_rl.index import (
    ExactIndex,
    IVFIndex,
    RefreshingIndex,
    make_index,
    merge_topk,
    shard_bounds,
    sharded_search,
)


def _brute(q: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    return (q @ x.T).argsort(dim=1, descending=True)[:, :k]


def test_exact_topk_equals_brute_force_across_chunks() -> None:
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(503, 8, generator=g), torch.randn(17, 8, generator=g)
    index = ExactIndex(chunk=64)  # 8 chunks, the last one partial
    index.build(x)
    s, r = index.search(q, 10)
    assert torch.equal(r, _brute(q, x, 10))
    assert torch.allclose(s, (q @ x.T).gather(1, r))


def test_ivf_with_every_list_probed_is_exact() -> None:
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(800, 8, generator=g), torch.randn(9, 8, generator=g)
    index = IVFIndex(nlist=8, nprobe=8, threads=1)
    index.build(x)
    _, r = index.search(q, 5)
    assert torch.equal(r, _brute(q, x, 5))


def test_sharded_merge_equals_unsharded() -> None:
    g = torch.Generator().manual_seed(2)
    x, q = torch.randn(301, 6, generator=g), torch.randn(11, 6, generator=g)
    bounds = shard_bounds(len(x), 3)
    scores, rows = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        shard = ExactIndex()
        shard.build(x[lo:hi])
        s, r = sharded_search(shard, q, 7, offset=0)  # no process group: the local search
        scores.append(s)
        rows.append(r)
    s, r = merge_topk(scores, rows, bounds[:-1], 7)
    whole = ExactIndex()
    whole.build(x)
    s_all, r_all = whole.search(q, 7)
    assert torch.equal(r, r_all)
    assert torch.allclose(s, s_all)


def test_refresh_every_n_searches_and_stale_between() -> None:
    items = [torch.eye(4)]
    ref = RefreshingIndex(ExactIndex(), lambda: items[0], refresh_every=2)
    q = torch.tensor([[1.0, 0, 0, 0]])
    assert ref.search(q, 1)[1].item() == 0
    items[0] = torch.eye(4).flip(0)  # the model moved: row 3 is now (1, 0, 0, 0)
    assert ref.search(q, 1)[1].item() == 0  # stale until the next refresh
    assert ref.search(q, 1)[1].item() == 3
    assert ref.refreshes == 2


def test_bad_index_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="index.kind"):
        make_index("hnsw")
    with pytest.raises(ConfigError, match="refresh_every"):
        RefreshingIndex(ExactIndex(), lambda: torch.eye(2), 0)
