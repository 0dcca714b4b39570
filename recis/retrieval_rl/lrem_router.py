"""The LREM router: which queries are hard (reason, then embed) and which take the plain tower.

Reasoning costs an LM generation per query, so LREM serves only the queries a rule marks
hard (``router.rule``, :class:`~recis.retrieval_rl.lrem_config.RouterConfig`):

* ``all`` - every query;
* ``overlap`` - the share of the query's characters (NFKC, lower-cased, no spaces) that occur
  in its top BM25 item is below ``overlap_below`` (no BM25 hit: share 0). *(Our reading)* of
  "hard": the lexical channel cannot answer it;
* ``length`` - at least ``min_length`` characters, normalised and stripped (long,
  compositional queries);
* ``tail`` - seen at most ``tail_max_count`` times in the training pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recis.io.lexical import LexicalConfig, normalize_texts
from recis.retrieval_rl.lrem_config import RouterConfig
from recis.retrieval_rl.rewards import BM25Channel


def _normalized(texts: Sequence[str]) -> list[str]:
    return [str(t) for t in normalize_texts(list(texts), LexicalConfig()).to_pylist()]


def _chars(text: str) -> set[str]:
    return {c for c in text if not c.isspace()}


def lexical_overlap(queries: Sequence[str], items: Sequence[str]) -> np.ndarray:
    """``[Q]`` share of each query's distinct characters found in its top BM25 item."""
    q_norm, i_norm = _normalized(queries), _normalized(items)
    top = BM25Channel(items).results(list(queries), 1)
    out = np.zeros(len(queries))
    for j, (q, hit) in enumerate(zip(q_norm, top)):
        chars = _chars(q)
        if len(hit) and chars:
            out[j] = len(chars & _chars(i_norm[int(hit[0])])) / len(chars)
    return out


def hard_queries(
    cfg: RouterConfig,
    queries: Sequence[str],
    items: Sequence[str],
    query_count: np.ndarray,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """``[Qn]`` bool: the router's mark of every query of the table (``query_count [Qn]``:
    training rows per query). ``rows``: only these are judged (the others stay False), so
    the BM25 search of ``overlap`` runs over the queries that will be served."""
    n = len(queries)
    judged = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.zeros(n, dtype=bool)
    if cfg.rule == "all":
        out[judged] = True
    elif cfg.rule == "tail":
        out[judged] = np.asarray(query_count)[judged] <= cfg.tail_max_count
    elif cfg.rule == "length":
        texts = _normalized([queries[q] for q in judged.tolist()])
        out[judged] = [len(t.strip()) >= cfg.min_length for t in texts]
    else:
        share = lexical_overlap([queries[q] for q in judged.tolist()], items)
        out[judged] = share < cfg.overlap_below
    return out
