"""Text tokenizers on real text: token counts (for ``max_length``) and throughput.

    .venv/bin/python benchmarks/text_tokenizers.py [--data ../shared/data/qbqtc/pairs.parquet]

For the query and title columns of qbqtc (Chinese web search, see its README) and each
n-gram setting below, prints the terms per text (p50 / p95 / p99 / max), the share of texts
longer than 64 and 128 tokens, the distinct terms, and the encode rate (texts/s) of a cold tokenizer (first
pass: split, hash) and a warm one (second pass: the text memo), and the time to split the
titles into char 1-2-grams with and without the CJK shortcut. Then trains a BPE
vocabulary (8000 pieces) on the ``dev`` split's texts and reports its build time and
pieces per text. One process, one thread; the rates depend on the machine's load. Last
line: one JSON object. Skips (JSON with ``skipped``) when the data file is absent.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recis.features import TextFeature, VocabTokenizer
from recis.io.tokenizers import NgramHasher, SubwordVocab, ngram_terms, normalize
from recis.io.vocab import train_vocabulary

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qbqtc" / "pairs.parquet"
SETTINGS = {
    "words12": {"kind": "ngram", "words": 2},
    "chars12": {"kind": "ngram", "words": 0, "chars": [1, 2]},
    "words1_chars23": {"kind": "ngram", "words": 1, "chars": [2, 3]},
}


def _counts(lengths: np.ndarray) -> dict[str, float]:
    p50, p95, p99 = np.percentile(lengths, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": int(lengths.max()),
        "over64": float((lengths > 64).mean()),
        "over128": float((lengths > 128).mean()),
    }


def run(data: Path) -> dict:
    table = pq.read_table(data)
    out: dict = {}
    for col in ("query", "title"):
        texts = table.column(col).to_pylist()
        for name, spec in SETTINGS.items():
            tok = NgramHasher(TextFeature(name=col, tokenizer=spec).tokenizer)
            terms = [tok.terms(t) for t in texts]
            lengths = np.array([len(t) for t in terms])
            distinct = len({t for ts in terms for t in ts})
            rates = []
            for _ in range(2):  # cold, then warm
                t0 = time.perf_counter()
                tok.encode(texts, 128)
                rates.append(len(texts) / (time.perf_counter() - t0))
            row = {**_counts(lengths), "distinct": distinct}
            row.update(cold_per_s=rates[0], warm_per_s=rates[1])
            out[f"{col}_{name}"] = row
            print(
                f"{col:5s} {name:15s} terms p50 {row['p50']:.0f} p95 {row['p95']:.0f} "
                f"p99 {row['p99']:.0f} max {row['max']}  >64 {row['over64']:.1%} "
                f">128 {row['over128']:.1%}  {distinct:,} distinct  "
                f"cold {rates[0]:,.0f}/s warm {rates[1]:,.0f}/s",
                flush=True,
            )
    # the CJK shortcut against the word-by-word reference, same texts, same process
    titles = [normalize(t, "NFKC", True) for t in table.column("title").to_pylist()]
    for fast in (True, False):
        t0 = time.perf_counter()
        for t in titles:
            ngram_terms(t, 0, [1, 2], fast=fast)
        out[f"title_chars12_terms_s_{'fast' if fast else 'word_by_word'}"] = (
            time.perf_counter() - t0
        )
    print(
        f"title chars12 terms: {out['title_chars12_terms_s_fast']:.2f} s with the CJK shortcut, "
        f"{out['title_chars12_terms_s_word_by_word']:.2f} s word by word",
        flush=True,
    )
    dev = table.filter(table.column("split").to_numpy(zero_copy_only=False) == "dev")
    texts = dev.column("query").to_pylist() + dev.column("title").to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        spec = VocabTokenizer(path=str(Path(tmp) / "tokenizer.json"), vocab_size=8000)
        t0 = time.perf_counter()
        train_vocabulary(spec, iter(texts))
        build_s = time.perf_counter() - t0
        pieces = np.array([len(p) for p in map(SubwordVocab(spec).pieces, texts)])
    out["bpe8000"] = {"build_s": build_s, "texts": len(texts), **_counts(pieces)}
    print(
        f"bpe 8000 on {len(texts)} dev texts: built in {build_s:.1f} s, pieces per text "
        f"p50 {np.percentile(pieces, 50):.0f} p99 {np.percentile(pieces, 99):.0f}",
        flush=True,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    args = p.parse_args()
    if not args.data.is_file():
        print(json.dumps({"skipped": f"{args.data} is absent"}))
        return
    import torch

    torch.set_num_threads(1)
    print(json.dumps(run(args.data)))


if __name__ == "__main__":
    main()
