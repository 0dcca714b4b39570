"""Query-rewrite data synthesis (issue 19, deliverable 5; arXiv 2602.23620, our reading).

A rewriter (:mod:`.synth_model`) writes ``M`` candidate rewrites for each long-tail query of a
query set; each rewrite runs through the offline retriever (:mod:`.synth_rewards`: BM25 built
in); every retrieved item is scored by the relevance model against the ORIGINAL query, and the
curated (original query, item) pairs are written to parquet with provenance. A retrieval
config mixes them into its training pairs (``data.extra_train``), distilling the rewriter
into the online retriever (the retriever never sees a rewrite at serving time).

Curation: pairs scored below ``synth.min_relevance`` are dropped; a pair already among the
labelled positives is dropped (it adds nothing); an item found by several rewrites is kept
once (its first finder); then the query's ``max_pairs_per_query`` best by score.

Run directory: ``rewriter/{scratch,sft,grpo}/model`` (HF directories), ``log.json`` (trl's log
histories and the synthesis counts); the pairs go to ``synth.out``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recis.errors import DataError, OutputError
from recis.retrieval_rl.rewards import RelevanceScorer
from recis.retrieval_rl.synth_config import QueryRewriteConfig
from recis.retrieval_rl.synth_rewards import (
    Retriever,
    clean_rewrite,
)

COLUMNS = (
    "query",  # the source (original) query: what the retriever trains on
    "item",
    "relevance",  # the relevance model's score of (query, item)
    "source",  # "rewrite" or "original" (include_original)
    "rewrite",  # the rewrite that retrieved the item ("" for source "original")
    "rewrite_rank",  # its position among the query's candidates (0-based)
    "retrieval_rank",  # the item's rank in the rewrite's results (0-based)
    "retriever",
    "rewriter",  # model directory
    "rewriter_version",  # sha256 prefix of its config and weights
    "relevance_model",
    "created",  # UTC time of the run
)


def _read(path: str, columns: Sequence[str], what: str) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read parquet ({what}): {err}") from None
    for c in columns:
        if c not in table.column_names:
            names = ", ".join(table.column_names)
            raise DataError(f"{path}: no column {c!r} ({what}; columns: {names})")
        if table.column(c).null_count:
            row = int(np.flatnonzero(table.column(c).is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: row {row}, column {c!r}: null ({what})")
    return table


@dataclass
class Labelled:
    """The labelled training rows: texts, labels, and the positive (query, item) pairs."""

    queries: list[str]
    items: list[str]
    labels: np.ndarray
    positive: int
    positives: set[tuple[str, str]] = field(default_factory=set)

    def positive_pairs(self) -> list[tuple[str, str]]:
        return [
            (q, i) for q, i, y in zip(self.queries, self.items, self.labels) if y >= self.positive
        ]


def read_labelled(cfg: QueryRewriteConfig) -> Labelled:
    p = cfg.pairs
    cols = [p.query, p.item, p.label] + ([p.split] if p.split else [])
    t = _read(p.path, cols, "pairs")
    if p.split is not None:
        t = t.filter(pa.compute.equal(t.column(p.split), p.train))
    lab = Labelled(
        [str(x) for x in t.column(p.query).to_pylist()],
        [str(x) for x in t.column(p.item).to_pylist()],
        t.column(p.label).to_numpy(zero_copy_only=False).astype(np.int64),
        p.positive,
    )
    lab.positives = set(lab.positive_pairs())
    return lab


def read_pool(cfg: QueryRewriteConfig, labelled: Labelled) -> list[str]:
    """The pool: distinct texts of ``items.column`` (or of every row of the pairs file)."""
    if cfg.items.path is None:
        t = _read(cfg.pairs.path, [cfg.pairs.item], "pairs")
        col = t.column(cfg.pairs.item)
    else:
        col = _read(cfg.items.path, [cfg.items.column], "items").column(cfg.items.column)
    return sorted({str(x) for x in col.to_pylist()})


def select_queries(cfg: QueryRewriteConfig) -> list[str]:
    """Distinct queries of the query set with frequency <= ``tail_max_count``, file order."""
    qs = cfg.queries
    t = _read(qs.path, [qs.column] + ([qs.count] if qs.count else []), "queries")
    texts = [str(x) for x in t.column(qs.column).to_pylist()]
    freq: dict[str, int] = {}
    if qs.count is None:
        for q in texts:
            freq[q] = freq.get(q, 0) + 1
    else:
        for q, c in zip(texts, t.column(qs.count).to_pylist()):
            freq[q] = int(c)
    out = [q for q in dict.fromkeys(texts) if qs.tail_max_count < 0 or freq[q] <= qs.tail_max_count]
    return out[: qs.max_queries] if qs.max_queries else out


def sft_pairs(cfg: QueryRewriteConfig, labelled: Labelled) -> list[tuple[str, str]]:
    """(query, rewrite) pairs: ``sft.rewrite_pairs`` or the positives' cut item texts."""
    s = cfg.sft
    if s.rewrite_pairs is not None:
        t = _read(s.rewrite_pairs, ["query", "rewrite"], "sft.rewrite_pairs")
        rows = zip(t.column("query").to_pylist(), t.column("rewrite").to_pylist())
        return [(str(q), str(r)[: s.max_rewrite_chars]) for q, r in rows]
    return [(q, i[: s.max_rewrite_chars]) for q, i in sorted(labelled.positives)]


@dataclass
class Candidates:
    """Each query's cleaned, distinct rewrites (empty ones and copies of the query dropped)."""

    queries: list[str]
    rewrites: list[list[str]]

    @classmethod
    def build(
        cls, queries: Sequence[str], raw: Sequence[Sequence[str]], max_chars: int
    ) -> Candidates:
        out = []
        for q, group in zip(queries, raw):
            kept = [c for c in dict.fromkeys(clean_rewrite(r, max_chars) for r in group)]
            out.append([c for c in kept if c and c != q])
        return cls(list(queries), out)


def curate(
    cands: Candidates,
    retriever: Retriever,
    scorer: RelevanceScorer,
    pool: Sequence[str],
    cfg: QueryRewriteConfig,
    known: set[tuple[str, str]],
) -> dict[str, list[Any]]:
    """The curated pairs as columns (without the run-wide provenance ones)."""
    s, depth = cfg.synth, cfg.retriever.depth
    # (query index, source, rewrite, rewrite rank) per text searched; one batched search
    jobs: list[tuple[int, str, str, int]] = []
    for qi, (q, group) in enumerate(zip(cands.queries, cands.rewrites)):
        if s.include_original:
            jobs.append((qi, "original", q, -1))
        if s.use_rewrites:
            jobs.extend((qi, "rewrite", r, j) for j, r in enumerate(group))
    found = retriever.search([text for _, _, text, _ in jobs], depth)
    first: dict[tuple[int, int], tuple[str, str, int, int]] = {}
    for (qi, source, text, j), rows in zip(jobs, found):
        for rank, row in enumerate(rows.tolist()):
            key = (qi, int(row))
            if key not in first and (cands.queries[qi], pool[row]) not in known:
                first[key] = (source, "" if source == "original" else text, j, rank)
    keys = list(first)
    scores = scorer.score([cands.queries[qi] for qi, _ in keys], [pool[r] for _, r in keys])
    by_query: dict[int, list[tuple[float, tuple[int, int]]]] = {}
    for key, sc in zip(keys, scores.tolist()):
        if sc >= s.min_relevance:
            by_query.setdefault(key[0], []).append((sc, key))
    out: dict[str, list[Any]] = {c: [] for c in COLUMNS[:7]}
    for qi in sorted(by_query):
        best = sorted(by_query[qi], key=lambda x: (-x[0], x[1][1]))[: s.max_pairs_per_query]
        for sc, (_, row) in best:
            source, text, j, rank = first[(qi, row)]
            for c, v in zip(COLUMNS[:7], (cands.queries[qi], pool[row], sc, source, text, j, rank)):
                out[c].append(v)
    return out


def write_pairs(columns: dict[str, list[Any]], provenance: dict[str, str], out: Path) -> int:
    """Write the pairs with the run-wide provenance columns (atomically); returns the rows."""
    n = len(columns["query"])
    types = {"relevance": pa.float32(), "rewrite_rank": pa.int32(), "retrieval_rank": pa.int32()}
    arrays = {c: pa.array(v, type=types.get(c, pa.string())) for c, v in columns.items()}
    for c, v in provenance.items():
        arrays[c] = pa.array([v] * n, type=pa.string())
    table = pa.table({c: arrays[c] for c in COLUMNS})
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        tmp.replace(out)
    except OSError as err:
        raise OutputError(f"{out}: cannot write the pairs: {err.strerror}") from None
    return n
