"""IdMapper: injective mapping, admission, eviction, growth, state, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recis.errors import EmbeddingError, TableFullError
from recis.ops.id_mapper import IdMapper

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(I64, min_size=1, max_size=200, unique=True), st.integers(0, 3))
def test_distinct_ids_map_injectively_and_stay(ids: list[int], extra: int) -> None:
    m = IdMapper(len(ids) + extra, name="t")
    t = torch.tensor(ids, dtype=torch.int64)
    rows = m.map(t, step=1).rows
    assert len(set(rows.tolist())) == len(ids)
    assert rows.min() >= 0 and rows.max() < m.capacity
    perm = torch.randperm(len(ids))
    again = m.map(torch.cat([t[perm], t[perm]]), step=2).rows
    assert torch.equal(again, torch.cat([rows[perm], rows[perm]]))
    assert torch.equal(m.lookup(t), rows)
    assert m.size == len(ids)


def test_in_batch_duplicates_share_one_row() -> None:
    m = IdMapper(8)
    rows = m.map(torch.tensor([5, -1, 5, 2**63 - 1, -1]), step=1).rows
    assert rows[0] == rows[2] and rows[1] == rows[4]
    assert len({rows[0].item(), rows[1].item(), rows[3].item()}) == 3


def test_admission_min_count() -> None:
    m = IdMapper(16, min_count=3)
    assert m.map(torch.tensor([7, 8]), step=1).rows.tolist() == [-1, -1]
    assert m.map(torch.tensor([7]), step=2).rows.tolist() == [-1]
    r = m.map(torch.tensor([7, 8]), step=3).rows.tolist()
    assert r[0] >= 0 and r[1] == -1  # 7 seen 3 times, 8 twice
    assert m.map(torch.tensor([8, 8]), step=4).rows.tolist()[0] >= 0  # both counted


def test_admission_probability() -> None:
    m = IdMapper(10_000, admit_prob=0.3, seed=1)
    rows = m.map(torch.arange(4000), step=1).rows
    frac = (rows >= 0).float().mean().item()
    assert 0.26 < frac < 0.34
    # one admitted id keeps its row; rejected ids get another chance later
    again = m.map(torch.arange(4000), step=2).rows
    assert torch.equal(again[rows >= 0], rows[rows >= 0])
    assert (again >= 0).float().mean().item() > frac + 0.1


def test_lru_evicts_least_recently_seen() -> None:
    m = IdMapper(4, eviction="lru", evict_fraction=0.0)
    for step, i in enumerate([10, 20, 30, 40], start=1):
        m.map(torch.tensor([i]), step=step)
    m.map(torch.tensor([10]), step=5)
    res = m.map(torch.tensor([50]), step=6)
    assert m.lookup(torch.tensor([20])).item() == -1  # oldest after 10 was touched
    assert (m.lookup(torch.tensor([10, 30, 40, 50])) >= 0).all()
    assert res.reset_rows.tolist() == [1] and res.rows.item() == 1  # 20's row reused


def test_lfu_evicts_least_frequent() -> None:
    m = IdMapper(4, eviction="lfu", evict_fraction=0.0)
    m.map(torch.tensor([1, 1, 1, 2, 3, 3, 4, 4]), step=1)
    m.map(torch.tensor([5]), step=2)
    assert m.lookup(torch.tensor([2])).item() == -1
    assert (m.lookup(torch.tensor([1, 3, 4, 5])) >= 0).all()


def test_lfu_keeps_rows_of_current_batch() -> None:
    m = IdMapper(2, eviction="lfu", evict_fraction=0.0)
    m.map(torch.tensor([1, 1, 2]), step=1)
    rows = m.map(torch.tensor([2, 3]), step=2).rows  # 2 is in the batch: 1 goes
    assert rows.tolist()[1] >= 0 and m.lookup(torch.tensor([1])).item() == -1


def test_ttl_evicts_expired_and_resets_stale_hits() -> None:
    m = IdMapper(3, eviction="ttl", ttl_steps=2)
    m.map(torch.tensor([1, 2]), step=1)
    m.map(torch.tensor([3]), step=3)
    res = m.map(torch.tensor([4]), step=4)  # full: 1 and 2 (last seen 1 < 4 - 2) expire
    assert res.rows.item() >= 0
    assert (m.lookup(torch.tensor([1, 2])) == -1).all()
    assert m.lookup(torch.tensor([3])).item() >= 0
    row3 = m.lookup(torch.tensor([3])).item()
    res = m.map(torch.tensor([3]), step=10)  # stale hit: same row, fresh content
    assert res.rows.item() == row3 and res.reset_rows.tolist() == [row3]


def test_growth_keeps_every_row() -> None:
    m = IdMapper(4, growable=True, grow_at=0.5)
    first = m.map(torch.tensor([11, 12, 13]), step=1).rows
    assert m.capacity == 8  # 3 > 0.5 * 4
    res = m.map(torch.arange(100, 120), step=2)
    assert res.capacity == m.capacity >= 23 and (res.rows >= 0).all()
    assert torch.equal(m.lookup(torch.tensor([11, 12, 13])), first)


def test_growth_stops_at_max_capacity() -> None:
    m = IdMapper(4, name="t", growable=True, max_capacity=8)
    with pytest.raises(TableFullError, match="'t'"):
        m.map(torch.arange(20), step=1)


def test_full_table_without_eviction_names_table() -> None:
    m = IdMapper(3, name="user_id")
    m.map(torch.tensor([1, 2, 3]), step=1)
    with pytest.raises(TableFullError, match="user_id"):
        m.map(torch.tensor([4]), step=2)


def test_bad_and_edge_input() -> None:
    m = IdMapper(4, name="t")
    with pytest.raises(EmbeddingError, match="integers"):
        m.map(torch.tensor([1.5]), step=1)
    with pytest.raises(EmbeddingError, match="integers"):
        m.map(np.array([1.0]), step=1)
    assert m.map(torch.zeros(0, dtype=torch.int64), step=1).rows.numel() == 0
    rows = m.map(torch.full((1_000_000,), 42, dtype=torch.int64), step=2).rows
    assert (rows == rows[0]).all() and m.size == 1


def test_eval_lookup_does_not_insert() -> None:
    m = IdMapper(4)
    assert m.map(torch.tensor([9]), step=1, insert=False).rows.item() == -1
    assert m.size == 0


def test_state_dict_round_trip_with_tombstones() -> None:
    m = IdMapper(64, eviction="lru", evict_fraction=0.1, min_count=2)
    gen = np.random.default_rng(0)
    for step in range(1, 30):
        m.map(torch.from_numpy(gen.integers(-(2**62), 2**62, 40) % 200), step=step)
    m2 = IdMapper(64, eviction="lru", evict_fraction=0.1, min_count=2)
    m2.load_state_dict(m.state_dict())
    probe = torch.arange(-5, 205)
    assert torch.equal(m.lookup(probe), m2.lookup(probe))
    nxt = torch.from_numpy(gen.integers(0, 300, 50))
    r1, r2 = m.map(nxt, step=30), m2.map(nxt, step=30)
    assert torch.equal(r1.rows, r2.rows) and np.array_equal(r1.reset_rows, r2.reset_rows)


@pytest.mark.parametrize("eviction", ["lru", "lfu", "ttl", "none"])
def test_native_and_numpy_paths_agree(eviction: str) -> None:
    from recis.ops.id_mapper import native_kernels

    if native_kernels() is None:
        pytest.skip("native kernels not built here")
    kw = dict(eviction=eviction, ttl_steps=3, growable=eviction == "none", evict_fraction=0.05)
    a, b = IdMapper(64, native=True, **kw), IdMapper(64, native=False, **kw)
    gen = np.random.default_rng(3)
    for step in range(1, 40):
        ids = torch.from_numpy(gen.integers(-(2**63), 2**63 - 1, 30) % 150)
        ra, rb = a.map(ids, step), b.map(ids, step)
        assert torch.equal(ra.rows, rb.rows)
        assert np.array_equal(ra.reset_rows, rb.reset_rows) and ra.capacity == rb.capacity
    probe = torch.arange(-10, 160)
    assert torch.equal(a.lookup(probe), b.lookup(probe))


def _one_by_one(m: IdMapper, ids: np.ndarray, step: int) -> np.ndarray:
    return np.array([int(m.map(ids[i : i + 1], step).rows[0]) for i in range(len(ids))])


@pytest.mark.parametrize("native", [True, False], ids=["native", "numpy"])
def test_batch_insertion_equals_one_by_one(native: bool) -> None:
    from recis.ops.id_mapper import native_kernels

    if native and native_kernels() is None:
        pytest.skip("native kernels not built here")
    gen = np.random.default_rng(5)
    # ids above 2**63 (as uint64), in-batch duplicates, and ids already known
    big = np.array([2**64 - 1, 2**63, 2**63 + 7, 2**64 - 1, 2**63], dtype=np.uint64)
    rnd = gen.integers(0, 2**64 - 1, 300, dtype=np.uint64, endpoint=True)
    ids = np.concatenate([big, rnd, rnd[:50], big]).view(np.int64)
    n = len(np.unique(ids))  # 303: growth across the resize boundary from capacity 64
    kw = dict(growable=True, grow_at=0.9, native=native)
    a, b = IdMapper(64, **kw), IdMapper(64, **kw)
    batch = a.map(ids, step=1).rows.numpy()
    single = _one_by_one(b, ids, step=1)
    assert np.array_equal(batch, single)
    assert a.capacity == b.capacity >= n and a.size == b.size == n
    # first-seen order: the i-th distinct id got row i
    _, first = np.unique(ids, return_index=True)
    assert np.array_equal(batch[np.sort(first)], np.arange(n))
    assert torch.equal(a.lookup(ids), torch.from_numpy(batch))
    # a second batch, half known, into the grown table
    more = np.concatenate([ids[::3], gen.integers(-(2**63), 2**63 - 1, 200)])
    assert np.array_equal(a.map(more, step=2).rows.numpy(), _one_by_one(b, more, step=2))


def test_map_many_equals_one_table_at_a_time() -> None:
    from recis.ops.id_mapper import map_many

    gen = np.random.default_rng(6)
    kinds = [dict(eviction="lru"), dict(eviction="none"), dict(eviction="lfu"),
             dict(eviction="ttl", ttl_steps=2), dict(eviction="lru", min_count=2),
             dict(eviction="none", growable=True)]  # fmt: skip
    cap = [64, 256, 64, 64, 64, 64]  # the table without eviction has room for all its ids
    many = [IdMapper(cap[i], seed=i, **kw) for i, kw in enumerate(kinds)]
    single = [IdMapper(cap[i], seed=i, **kw) for i, kw in enumerate(kinds)]
    for step in range(1, 12):  # LRU/LFU tables fill up and evict; the growable one grows
        ids = [gen.integers(-(2**63), 2**63 - 1, 60) % (40 * (i + 3)) for i in range(len(kinds))]
        counts = [None, None, np.arange(60) % 3 + 1, None, None, None]
        got = map_many(many, ids, step, counts)
        for m, x, c, r in zip(single, ids, counts, got):
            want = m.map(x, step, counts=c)
            assert torch.equal(r.rows, want.rows)
            assert np.array_equal(r.fresh_rows, want.fresh_rows)
            assert np.array_equal(r.fresh_ids, want.fresh_ids)
            assert np.array_equal(r.reset_rows, want.reset_rows) and r.capacity == want.capacity
    for a, b in zip(many, single):
        assert np.array_equal(a.items()[0], b.items()[0])


def test_slot_memory_grows_with_capacity_without_power_of_two_steps() -> None:
    # 4 bytes per slot at load <= 0.9 when full, for any capacity (was: the next power of two)
    for cap in (1000, 943_718, 943_719, 1_000_000):
        m = IdMapper(cap)
        assert cap / len(m.slots) <= 0.9 < (cap + 2) / len(m.slots)
    m = IdMapper(1000, growable=True)
    m.map(np.arange(5000), step=1)  # grows twice: slots follow the capacity
    assert m.capacity == 8000 and len(m.slots) == int(np.ceil(8000 / 0.9))
    assert torch.equal(m.lookup(np.arange(5000)), torch.arange(5000))


@pytest.mark.parametrize("rbits", [1, 7, 20, 31])
def test_slot_tags_any_row_width_both_paths(rbits: int) -> None:
    # a slot is tag << rbits | row; with 31 row bits there is no tag. Both probe paths
    # store the same (row, tag) pairs and find every key, and nothing else
    from recis.ops import id_mapper_probe as probe

    nat = probe.native_kernels()
    if nat is None:
        pytest.skip("native kernels not built here")
    gen = np.random.default_rng(rbits)
    n = min(300, 2**rbits)
    keys = np.unique(gen.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True))
    rows = np.arange(len(keys), dtype=np.int64)
    absent = gen.integers(0, 2**64 - 1, 50, dtype=np.uint64, endpoint=True)
    mask = (1 << rbits) - 1
    for path in (nat, None):
        slots, row_key = np.full(len(keys) * 2 + 3, probe.EMPTY, np.int32), np.zeros(n, np.uint64)
        assert probe.insert(slots, row_key, keys, rows, path, rbits) == 0
        full = slots[slots >= 0].astype(np.int64)
        assert np.array_equal(np.sort(full & mask), rows)
        want_tags = probe.tags(row_key[full & mask], rbits)
        assert np.array_equal(full & ~mask, want_tags.astype(np.int64))
        if rbits < 31:
            assert (full > mask).any()  # the tags are really there
        both = np.concatenate([keys, absent])
        want = np.concatenate([rows, np.full(len(absent), -1)])
        for p in (nat, None):  # tables written by one path are read alike by both
            assert np.array_equal(probe.find(slots, row_key, both, p, rbits, rows=True), want)


def test_map_at_full_load_with_tombstones() -> None:
    # a full LRU table at the maximum load factor, evicting and reusing deleted slots
    # for many steps, maps like the numpy path and keeps every live id findable
    kw = dict(eviction="lru", evict_fraction=0.02)
    a, b = IdMapper(900, native=None, **kw), IdMapper(900, native=False, **kw)
    gen = np.random.default_rng(11)
    for step in range(1, 40):
        ids = gen.zipf(1.3, 400).astype(np.int64) * 0x9E3779B1
        ra, rb = a.map(ids, step), b.map(ids, step)
        assert torch.equal(ra.rows, rb.rows)
        keys, rows = a.items()
        assert torch.equal(a.lookup(keys), torch.from_numpy(rows))
    assert a.size == a.capacity and a.size / len(a.slots) > 0.85
