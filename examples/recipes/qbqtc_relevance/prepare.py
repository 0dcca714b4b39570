"""qbqtc (query-title relevance, graded 0/1/2) -> train/valid/test parquet with lexical features.

Usage::

    python examples/recipes/qbqtc_relevance/prepare.py [SRC] [OUT]

``SRC`` defaults to ``../shared/data/qbqtc`` (from the project root), ``OUT`` to
``data/qbqtc_relevance``. pyarrow and numpy only.

The dataset README's protocol: both source files pooled, split by query string
(``md5(query)[:8] % 100 < 80`` -> train, else test; :func:`recis.io.split.split_by_group`,
the same rule as ``recis split --by group``). The train part is split again by query, with
another seed, into ``train`` (85%) and ``valid`` (15%): early stopping and every choice look
at ``valid``, never at ``test``. A query's rows stay on one side of both splits.

The text statistics of the lexical features (document frequencies, BM25 average title
length; :class:`recis.io.lexical.LexicalMatcher`) are fitted on ``train`` only and written to
``OUT/lexical.safetensors``; valid and test rows are scored with them, as new pairs would be.
The recipes compute the same features in the reader (a ``lexical`` dense feature, its
statistics fitted on ``train.parquet`` by ``recis train``); the ``lexical`` column is for the
scikit-learn reference and for anyone training elsewhere.

==================  ==================  ====================================================
column              type                what
==================  ==================  ====================================================
id                  int64               the source id (unique within a source file only)
query, title        string              the raw texts, unchanged
label               int64               the graded label 0/1/2
very_relevant       double              the primary target: 1.0 when label == 2
relevant            double              the secondary target: 1.0 when label >= 1
lexical             list<float> (9)     recis.io.lexical.FEATURES of (query, title)
==================  ==================  ====================================================
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recis.io.lexical import FEATURES, LexicalMatcher
from recis.io.split import split_by_group, write_parts

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT.parent / "shared" / "data" / "qbqtc"
VALID_FRACTION = 0.15  # of the train part, by query
VALID_SEED = 1  # the test split uses seed 0 (the README's md5 rule)


def split(table: pa.Table) -> dict[str, pa.Table]:
    """``train``, ``valid``, ``test`` by query hash."""
    outer = split_by_group(table, "query", (0.8, 0.2), seed=0)
    train_all = table.take(pa.array(outer["train"], pa.int64()))
    inner = split_by_group(train_all, "query", (1 - VALID_FRACTION, VALID_FRACTION), VALID_SEED)
    return {
        "train": train_all.take(pa.array(inner["train"], pa.int64())),
        "valid": train_all.take(pa.array(inner["test"], pa.int64())),
        "test": table.take(pa.array(outer["test"], pa.int64())),
    }


def with_features(table: pa.Table, matcher: LexicalMatcher) -> pa.Table:
    """The columns above, from the source rows."""
    label = table.column("label")
    lexical = matcher.features(table.column("query"), table.column("title"))
    flat = pa.array(lexical.reshape(-1), pa.float32())
    return pa.table(
        {
            "id": table.column("id"),
            "query": table.column("query"),
            "title": table.column("title"),
            "label": label,
            "very_relevant": pc.cast(pc.equal(label, 2), pa.float64()),
            "relevant": pc.cast(pc.greater_equal(label, 1), pa.float64()),
            "lexical": pa.FixedSizeListArray.from_arrays(flat, len(FEATURES)).cast(
                pa.list_(pa.float32())
            ),
        }
    )


def prepare(src: Path = SOURCE, out: Path = Path("data/qbqtc_relevance")) -> dict:
    """Write ``out/{train,valid,test}.parquet``, ``lexical.safetensors`` and ``stats.json``."""
    src, out = Path(src), Path(out)
    table = pq.read_table(src / "pairs.parquet", columns=["id", "query", "title", "label"])
    parts = split(table)
    train = parts["train"]
    matcher = LexicalMatcher.fit(train.column("query"), train.column("title"))
    out.mkdir(parents=True, exist_ok=True)
    matcher.save(out / "lexical.safetensors")
    write_parts({k: with_features(v, matcher) for k, v in parts.items()}, out)
    stats = {
        name: {
            "rows": t.num_rows,
            "queries": len(pc.unique(t.column("query"))),
            "label==2": float(np.mean(t.column("label").to_numpy() == 2)),
            "label>=1": float(np.mean(t.column("label").to_numpy() >= 1)),
        }
        for name, t in parts.items()
    }
    stats["lexical_features"] = list(FEATURES)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


if __name__ == "__main__":
    args = sys.argv[1:]
    src = Path(args[0]) if args else SOURCE
    dst = Path(args[1]) if len(args) > 1 else Path("data/qbqtc_relevance")
    print(json.dumps(prepare(src, dst), indent=2))
