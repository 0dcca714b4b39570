"""Prepare an interaction log for the two-tower retrieval recipe (leave-last-out).

    .venv/bin/python examples/recipes/movielens_retrieval/prepare.py \\
        [--ratings ../shared/data/ml_latest_small/ratings.parquet] [--out data/movielens_retrieval]

Steps (any log with a user, an item and a timestamp column works; the item side file with
a multi-valued tag column is optional):

1. ``recis split --by leave-last-out --valid`` (the Python API :func:`recis.io.split.split_files`):
   each user's latest interaction by (time, item) is the test item, the one before it the
   validation item, the rest trains. Written to ``OUT/split/``.
2. Rows with causal features, computed from training interactions only:
   ``user_id``, ``hist`` (the user's previous training items, oldest first, at most
   ``--history`` of them), ``item_id``, ``tags`` (the item's tags, e.g. genres), ``label`` 1.

   - ``train.parquet``: one row per training interaction; ``hist`` = the items before it.
   - ``valid.parquet``: one row per user with a validation item; ``hist`` = all training
     items (last ``--history``). Used for every choice (epochs, early stopping).
   - ``test.parquet``: one row per user with a test item; ``hist`` = training + validation
     items. Never used for a choice.

The run evaluates on ``valid.parquet`` with ``train.parquet`` as the seen interactions (the
corpus is every item in them); the test evaluation uses ``test.parquet`` with
``[train.parquet, valid.parquet]`` as seen: see README.md next to this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recis.io.split import read_input, split_files

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT.parent / "shared" / "data" / "ml_latest_small"


def _sequences(table: pa.Table, user: str, item: str, time: str) -> dict[int, np.ndarray]:
    """Each user's items ordered by (time, item): ``{user: items [n]}``."""
    u = table.column(user).to_numpy()
    i = table.column(item).to_numpy()
    t = table.column(time).to_numpy()
    order = np.lexsort([i, t, u])
    u, i = u[order], i[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    ends = np.r_[starts[1:], len(u)]
    return {int(u[s]): i[s:e] for s, e in zip(starts, ends)}


def _tags(items: Path | None, key: str, column: str, sep: str) -> dict[int, list[str]]:
    """``{item: [tag, ...]}`` from the item side file (empty without one)."""
    if items is None or not items.exists():
        return {}
    table = read_input(items, columns=[key, column])
    keys = table.column(key).to_pylist()
    values = table.column(column).to_pylist()
    return {k: [t for t in (v or "").split(sep) if t] for k, v in zip(keys, values)}


def _rows(
    users: list[int],
    histories: list[np.ndarray],
    items: list[int],
    tags: dict[int, list[str]],
    history: int,
) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "hist": pa.array([h[-history:].tolist() for h in histories], pa.list_(pa.int64())),
            "item_id": pa.array(items, pa.int64()),
            "tags": pa.array([tags.get(i, []) for i in items], pa.list_(pa.string())),
            "label": pa.array(np.ones(len(items)), pa.float32()),
        }
    )


def prepare(
    ratings: Path,
    out: Path,
    *,
    user: str = "userId",
    item: str = "movieId",
    time: str = "timestamp",
    items: Path | None = None,
    item_key: str = "movieId",
    tag_column: str = "genres",
    tag_sep: str = "|",
    history: int = 50,
) -> dict[str, int]:
    """Write ``out/{train,valid,test}.parquet`` (and ``out/split/``); returns row counts."""
    rows = split_files(
        ratings, out / "split", "leave-last-out", user=user, time=time, item=item, valid=True
    )
    parts = {p: pq.read_table(out / "split" / f"{p}.parquet") for p in rows}
    train = _sequences(parts["train"], user, item, time)
    tags = _tags(items, item_key, tag_column, tag_sep)
    u_rows, h_rows, i_rows = [], [], []
    for u, seq in train.items():
        for pos in range(len(seq)):  # causal: only the items before this one
            u_rows.append(u)
            h_rows.append(seq[max(0, pos - history) : pos])
            i_rows.append(int(seq[pos]))
    written = {"train": _rows(u_rows, h_rows, i_rows, tags, history)}
    before = {u: seq for u, seq in train.items()}
    for name in ("valid", "test"):
        held = _sequences(parts[name], user, item, time)
        us = sorted(held)
        hs = [before.get(u, np.empty(0, np.int64)) for u in us]
        written[name] = _rows(us, hs, [int(held[u][0]) for u in us], tags, history)
        # the next part's history also holds this part's item (test follows valid)
        before = {
            u: np.append(before.get(u, np.empty(0, np.int64)), held.get(u, []))
            for u in {*before, *held}
        }
    out.mkdir(parents=True, exist_ok=True)
    for name, table in written.items():
        pq.write_table(table, out / f"{name}.parquet", compression="zstd", write_page_checksum=True)
    return {name: t.num_rows for name, t in written.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", type=Path, default=DATA / "ratings.parquet")
    p.add_argument("--items", type=Path, default=DATA / "movies.parquet")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "movielens_retrieval")
    p.add_argument("--user", default="userId")
    p.add_argument("--item", default="movieId")
    p.add_argument("--time", default="timestamp")
    p.add_argument("--item-key", default="movieId")
    p.add_argument("--tag-column", default="genres")
    p.add_argument("--tag-sep", default="|")
    p.add_argument("--history", type=int, default=50, help="previous items kept per row")
    a = p.parse_args()
    counts = prepare(
        a.ratings,
        a.out,
        user=a.user,
        item=a.item,
        time=a.time,
        items=a.items,
        item_key=a.item_key,
        tag_column=a.tag_column,
        tag_sep=a.tag_sep,
        history=a.history,
    )
    for name, n in counts.items():
        print(f"{name}: {n} rows -> {a.out / name}.parquet")


if __name__ == "__main__":
    main()
