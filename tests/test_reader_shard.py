"""Sharding covers every row once; shuffle is seeded; resume continues at the next row."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recis.features import DenseFeature, LabelSpec, Schema, SparseFeature
from recis.io import Loader, ParquetReader, Reader

SCHEMA = Schema(
    dense=[DenseFeature(name="x")],
    sparse=[SparseFeature(name="ids")],
    labels=[LabelSpec(name="y")],
    extras=["rid"],
)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> tuple[str, int]:
    """5 files of uneven sizes and row-group counts (one file of 1 row): 397 rows."""
    path = tmp_path_factory.mktemp("uneven")
    sizes, rg = [1, 150, 7, 200, 39], [1, 16, 3, 64, 39]
    rid = 0
    for i, (n, g) in enumerate(zip(sizes, rg)):
        r = np.arange(rid, rid + n)
        t = pa.table(
            {
                "rid": r,
                "x": r.astype(np.float32),
                "ids": pa.array([[int(v), int(v) + 1] for v in r], pa.list_(pa.int64())),
                "y": (r % 2).astype(np.float32),
            }
        )
        pq.write_table(t, path / f"part-{i}.parquet", row_group_size=g, write_page_checksum=True)
        rid += n
    return str(path), rid


def rids(batches) -> list[int]:
    return [int(v) for b in batches for v in b.extras["rid"]]


@pytest.mark.parametrize("shuffle", [False, True])
def test_union_over_3_ranks_x_2_workers_is_the_dataset(uneven, shuffle):
    path, n = uneven
    parts = []
    for rank in range(3):
        for worker in range(2):
            r = Reader(
                path,
                SCHEMA,
                10,
                shuffle=shuffle,
                seed=5,
                rank=rank,
                world_size=3,
                worker=worker,
                num_workers=2,
                shuffle_buffer=32,
            )
            got = rids(r)
            parts.append(got)
    flat = [x for p in parts for x in p]
    assert sorted(flat) == list(range(n))  # no loss, no duplicate
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1  # balanced to one row
    for a in range(6):
        for b in range(a + 1, 6):
            assert not set(parts[a]) & set(parts[b])


def test_dataloader_workers_cover_the_rank_shard(uneven):
    path, n = uneven
    seen = []
    for rank in range(3):
        loader = Loader(path, SCHEMA, 16, num_workers=2, rank=rank, world_size=3, shuffle=True)
        seen += rids(loader)
    assert sorted(seen) == list(range(n))


def test_batches_are_consistent_and_shuffle_is_seeded(uneven):
    path, n = uneven
    a = list(ParquetReader(path, SCHEMA, 10, shuffle=True, seed=1, shuffle_buffer=64))
    b = rids(ParquetReader(path, SCHEMA, 10, shuffle=True, seed=1, shuffle_buffer=64))
    c = rids(ParquetReader(path, SCHEMA, 10, shuffle=True, seed=2, shuffle_buffer=64))
    assert rids(a) == b and b != c and sorted(b) == list(range(n))
    assert [x.batch_size for x in a] == [10] * 39 + [7]
    for batch in a:  # every feature of a row stays with its row after shuffling
        r = batch.extras["rid"]
        assert torch.equal(batch.dense[:, 0], r.float())
        assert torch.equal(batch.sparse["ids"].values().view(-1, 2)[:, 0], r)
        assert torch.equal(batch.labels["y"], (r % 2).float())


def test_reader_is_reiterable_with_a_new_order_per_epoch(uneven):
    path, n = uneven
    r = Reader(path, SCHEMA, 50, shuffle=True, seed=3)
    e0, e1 = rids(r), rids(r)
    assert sorted(e0) == sorted(e1) == list(range(n)) and e0 != e1
    assert r.epoch == 2


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_gives_the_rows_of_one_uninterrupted_read(uneven, prefetch):
    path, n = uneven
    kw = dict(shuffle=True, seed=11, shuffle_buffer=48, prefetch=prefetch, rank=1, world_size=2)
    full = Reader(path, SCHEMA, 7, **kw)
    epochs = [rids(full), rids(full)]
    for stop in (1, 6, 13, 28):  # before, at and after chunk boundaries
        r = Reader(path, SCHEMA, 7, **kw)
        it = iter(r)
        first = rids(next(it) for _ in range(stop))
        state = pickle.loads(pickle.dumps(r.state_dict()))
        assert len(pickle.dumps(state)) < 2000  # positions, not data
        del it
        resumed = Reader(path, SCHEMA, 7, **kw)
        resumed.load_state_dict(state)
        assert first + rids(resumed) == epochs[0]
        assert rids(resumed) == epochs[1]  # and the next epoch is the same too


def test_resume_across_an_epoch_boundary(uneven):
    path, n = uneven
    full = Reader(path, SCHEMA, 64, shuffle=True, seed=2, prefetch=0)
    it = iter(full)
    for _ in range(-(-n // 64)):  # stop right after the last batch, without asking for more
        next(it)
    state = full.state_dict()
    # still in epoch 0: a trainer that counts an epoch when its loop completes stays in step
    assert state["epoch"] == 0 and state["rows_in_epoch"] == n
    assert next(it, None) is None and full.state_dict()["epoch"] == 1
    second = rids(full)
    other = Reader(path, SCHEMA, 64, shuffle=True, seed=2)
    other.load_state_dict(state)
    assert rids(other) == [] and other.epoch == 1  # the rest of epoch 0 is empty
    assert rids(other) == second


def test_loader_resume_keeps_the_batch_order(uneven):
    path, _ = uneven
    kw = dict(num_workers=2, shuffle=True, seed=4, shuffle_buffer=40)
    full = rids(Loader(path, SCHEMA, 9, **kw))
    loader = Loader(path, SCHEMA, 9, **kw)
    it = iter(loader)
    head = rids(next(it) for _ in range(5))
    state = loader.state_dict()
    del it
    again = Loader(path, SCHEMA, 9, **kw)
    again.load_state_dict(state)
    assert head + rids(again) == full


def test_state_from_another_layout_is_refused(uneven):
    from recis.errors import DataError

    path, _ = uneven
    state = Reader(path, SCHEMA, 8, world_size=2).state_dict()
    with pytest.raises(DataError, match="num_shards"):
        Reader(path, SCHEMA, 8, world_size=3).load_state_dict(state)


@settings(max_examples=12, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    row_group=st.integers(1, 16),
    world=st.integers(1, 4),
    workers=st.integers(1, 3),
    batch=st.integers(1, 9),
    buffer=st.integers(1, 50),
    shuffle=st.booleans(),
)
def test_sharding_property(
    tmp_path_factory, sizes, row_group, world, workers, batch, buffer, shuffle
):
    """Any files, row groups, shard counts (even more shards than rows): each row exactly once."""
    path = tmp_path_factory.mktemp("prop")
    rid = 0
    for i, n in enumerate(sizes):
        r = np.arange(rid, rid + n)
        t = pa.table({"rid": r, "x": r * 1.0, "ids": r, "y": np.zeros(n, np.float32)})
        pq.write_table(
            t, path / f"p{i}.parquet", row_group_size=row_group, write_page_checksum=True
        )
        rid += n
    schema = Schema(
        sparse=[SparseFeature(name="ids")], labels=[LabelSpec(name="y")], extras=["rid"]
    )
    seen = []
    for rank in range(world):
        for w in range(workers):
            r = Reader(
                path,
                schema,
                batch,
                shuffle=shuffle,
                rank=rank,
                world_size=world,
                worker=w,
                num_workers=workers,
                shuffle_buffer=buffer,
                prefetch=0,
            )
            got = list(r)
            assert all(b.batch_size == batch for b in got[:-1])
            assert len(got) == len(r)
            seen += rids(got)
    assert sorted(seen) == list(range(rid))


@pytest.mark.parametrize("fmt", ["orc", "csv"])
def test_resume_orc_and_csv(tmp_path, fmt):
    import pyarrow.csv as pacsv
    import pyarrow.orc as orc

    for i in range(2):
        r = np.arange(i * 60, i * 60 + 60)
        t = pa.table({"rid": r, "x": r * 1.0, "ids": r, "y": (r % 2).astype(np.float32)})
        if fmt == "orc":
            orc.write_table(t, tmp_path / f"p{i}.orc")
        else:
            pacsv.write_csv(t, tmp_path / f"p{i}.csv")
    kw = dict(format=fmt, shuffle=True, seed=9, shuffle_buffer=25)
    full = rids(Reader(tmp_path, SCHEMA, 8, **kw))
    assert sorted(full) == list(range(120))
    r = Reader(tmp_path, SCHEMA, 8, **kw)
    it = iter(r)
    head = rids(next(it) for _ in range(7))
    state = r.state_dict()
    del it
    again = Reader(tmp_path, SCHEMA, 8, **kw)
    again.load_state_dict(state)
    assert head + rids(again) == full


def test_break_stops_the_background_threads_and_errors_reach_the_consumer(uneven, tmp_path):
    import threading

    from recis.errors import DataError

    path, _ = uneven
    r = Reader(path, SCHEMA, 8, prefetch=2)
    for i, _batch in enumerate(r):
        if i == 2:
            break
    assert not [t for t in threading.enumerate() if t.name.startswith("recis-io")]
    assert r.state_dict()["rows_in_epoch"] == 24  # three batches delivered, not the prefetched
    bad = tmp_path / "bad.parquet"
    ids = pa.array([[1], [2]], pa.list_(pa.int64()))
    pq.write_table(pa.table({"rid": [0, 1], "x": [1.0, 2.0], "ids": ids, "y": [0.0, None]}), bad)
    with pytest.raises(DataError, match="row 1: null or NaN label"):
        list(Reader([path, str(bad)], SCHEMA, 8, prefetch=2))


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_row_window_holds_out_the_tail_in_file_order(uneven, shuffle):
    """``data.holdout``'s readers: the rows before the cut train (any shard, shuffled), the
    tail evaluates; a row group or file cut in two gives each side its own rows."""
    path, n = uneven
    cut = int(np.floor(0.85 * n))  # 337: inside part-3's row groups of 64
    fit = [
        rids(
            Reader(
                path,
                SCHEMA,
                10,
                shuffle=shuffle,
                seed=3,
                rank=r,
                world_size=2,
                shuffle_buffer=32,
                window=(0.0, 0.85),
            )
        )
        for r in range(2)
    ]
    held = rids(Reader(path, SCHEMA, 10, window=(0.85, 1.0)))
    assert sorted(fit[0] + fit[1]) == list(range(cut)) and not set(fit[0]) & set(fit[1])
    assert held == list(range(cut, n))  # the last rows, in file order


def test_resume_inside_a_row_window(tmp_path):
    import pyarrow.csv as pacsv

    t = pa.table(
        {"rid": np.arange(300), "x": np.arange(300.0), "ids": np.arange(300), "y": np.zeros(300)}
    )
    pacsv.write_csv(t, tmp_path / "a.csv")
    kw = dict(format="csv", shuffle=True, seed=2, shuffle_buffer=40, window=(0.5, 1.0))
    whole = rids(Reader(tmp_path / "a.csv", SCHEMA, 16, **kw))
    assert sorted(whole) == list(range(150, 300))
    r = Reader(tmp_path / "a.csv", SCHEMA, 16, **kw)
    it = iter(r)
    head = rids(next(it) for _ in range(4))
    again = Reader(tmp_path / "a.csv", SCHEMA, 16, **kw)
    again.load_state_dict(r.state_dict())
    assert head + rids(again) == whole
