"""Labelled (query, item text) pairs as a query table, an item pool and training positives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from recis.errors import DataError
from recis.ops.hashing import hash_strings
from recis.retrieval_rl.config import PairsConfig


@dataclass
class RetrievalData:
    """Shapes: ``Qn`` distinct queries, ``N`` pool items, ``P`` training positives.

    ``train_queries, train_items [P]``: positive pairs (query row, pool row), the
    ``extra_train`` rows last;
    ``labelled``: every training pair's (query text, item text, label), for fitting a
    relevance model; ``positives[q]``: query ``q``'s training positives (click reward, seen
    items); ``query_count [Qn]``: training rows per query (head / tail);
    ``eval_queries [E]`` with ``eval_relevant[e]`` their relevant pool rows;
    ``quality [N]`` or None.
    """

    queries: list[str]
    items: list[str]
    train_queries: np.ndarray
    train_items: np.ndarray
    labelled: tuple[list[str], list[str], np.ndarray]
    positives: list[np.ndarray]
    query_count: np.ndarray
    eval_queries: np.ndarray
    eval_relevant: list[np.ndarray]
    quality: torch.Tensor | None


def _texts(table, name: str, path: str) -> list[str]:  # noqa: ANN001  (a pyarrow Table)
    if name not in table.column_names:
        raise DataError(f"{path}: no column {name!r} (columns: {', '.join(table.column_names)})")
    col = table.column(name)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: row {row}, column {name!r}: null text")
    return [str(x) for x in col.to_pylist()]


def _groups(keys: np.ndarray, values: np.ndarray, n: int) -> list[np.ndarray]:
    out: list[list[int]] = [[] for _ in range(n)]
    for k, v in zip(keys.tolist(), values.tolist()):
        out[k].append(v)
    return [np.unique(np.asarray(x, dtype=np.int64)) for x in out]


def _extra_pairs(cfg: PairsConfig) -> tuple[list[str], list[str]]:
    """The query and item texts of every ``extra_train`` file, in order."""
    qs: list[str] = []
    its: list[str] = []
    for extra in cfg.extra_train:
        try:
            table = pq.read_table(extra.path)
        except (OSError, ValueError) as err:
            msg = f"{extra.path}: cannot read parquet (data.extra_train): {err}"
            raise DataError(msg) from None
        qs += _texts(table, extra.query, extra.path)
        its += _texts(table, extra.item, extra.path)
    return qs, its


def load_pairs(cfg: PairsConfig) -> RetrievalData:
    """Read ``cfg.path`` (DataError names the file, row and column at fault)."""
    try:
        table = pq.read_table(cfg.path)
    except (OSError, ValueError) as err:
        raise DataError(f"{cfg.path}: cannot read parquet: {err}") from None
    q_text, i_text = _texts(table, cfg.query, cfg.path), _texts(table, cfg.item, cfg.path)
    if cfg.label not in table.column_names:
        raise DataError(f"{cfg.path}: no column {cfg.label!r}")
    labels = table.column(cfg.label).to_numpy(zero_copy_only=False).astype(np.int64)
    x_q, x_i = _extra_pairs(cfg)  # synthesized pairs: texts joined to the tables
    queries, q_row = np.unique(np.asarray(q_text + x_q, dtype=object), return_inverse=True)
    items, i_row = np.unique(np.asarray(i_text + x_i, dtype=object), return_inverse=True)
    q_row, x_q_row = q_row[: len(q_text)], q_row[len(q_text) :]
    i_row, x_i_row = i_row[: len(i_text)], i_row[len(i_text) :]
    if cfg.split is not None:
        split = np.asarray(_texts(table, cfg.split, cfg.path), dtype=object)
        is_train, is_eval = split == cfg.train, split == cfg.eval
    else:  # held-out queries by a hash of the text (stable across runs and machines)
        h = hash_strings(pc.cast(table.column(cfg.query).combine_chunks(), "string"), "split")
        is_eval = (np.abs(h) % 10_000) < cfg.eval_fraction * 10_000
        is_train = ~is_eval
    pos = labels >= cfg.positive
    tr = is_train & pos
    n_q = len(queries)
    ev = is_eval & pos
    eval_queries = np.unique(q_row[ev])
    relevant = _groups(q_row[ev], i_row[ev], n_q)
    quality = None
    if cfg.quality is not None:
        if cfg.quality not in table.column_names:
            raise DataError(f"{cfg.path}: no column {cfg.quality!r} (data.quality)")
        val = table.column(cfg.quality).to_numpy(zero_copy_only=False).astype(np.float64)
        total = np.bincount(i_row, weights=val, minlength=len(items))
        quality = torch.from_numpy(total / np.bincount(i_row, minlength=len(items))).float()
    return RetrievalData(
        queries=[str(x) for x in queries],
        items=[str(x) for x in items],
        train_queries=np.concatenate([q_row[tr], x_q_row]).astype(np.int64),
        train_items=np.concatenate([i_row[tr], x_i_row]).astype(np.int64),
        labelled=(
            [q_text[i] for i in np.flatnonzero(is_train)],
            [i_text[i] for i in np.flatnonzero(is_train)],
            labels[is_train],
        ),
        positives=_groups(q_row[tr], i_row[tr], n_q),
        query_count=np.bincount(q_row[is_train], minlength=n_q),
        eval_queries=eval_queries.astype(np.int64),
        eval_relevant=[relevant[q] for q in eval_queries],
        quality=quality,
    )
