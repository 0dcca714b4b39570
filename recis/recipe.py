"""``recis init``: a run config written from the training files, for a log nobody has
described yet.

The data schema comes from :func:`recis.io.infer.infer_schema` on a sample of the rows; the
model and training sections are the settings of the shipped MovieLens CTR recipes (DLRM or
DeepFM with batch-normalised dense inputs and a wide dense term, dropout 0.2, AdamW 3e-3
with a cosine schedule, a small embedding learning rate, evaluation every epoch with early
stopping on AUC and the best epoch restored), which beat logistic regression on real data
(docs/models/dlrm.md), or for ``deepbow`` (a query-title relevance log) those of the shipped
qbqtc DeepBoW recipe (docs/models/deepbow.md): the two texts and their lexical match.
Every schema entry carries the reason for its choice as a comment; the config is validated
as ``recis train`` would before it is written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from recis.config import build_run_config
from recis.errors import ConfigError, OutputError
from recis.io.csv_options import CRITEO_COLUMNS, CsvOptions, csv_options, sniffed_options
from recis.io.infer import Choice, infer_schema
from recis.io.libsvm import FEATURES, index_of
from recis.io.paths import resolve_paths
from recis.io.sources import SUFFIXES
from recis.io.split import guess_format, read_input

BATCH = 512
HOLDOUT = 0.1  # data.holdout without --eval: CTR models overfit after an epoch or two
EPOCHS = 10
MODELS = ("dlrm", "deepfm", "deepbow")
# the qbqtc DeepBoW recipe's (examples/recipes/qbqtc_relevance/deepbow.yaml)
RELEVANCE_BATCH = 256
RELEVANCE_EPOCHS = 6
DEEPBOW = {
    "product_id": None,
    "vocab": 32768,
    "dim": 32,
    "layers": 0,
    "heads": 2,
    "expansion_k": 0,
    "bag_size": 64,
    "sparsity_weight": 0.001,
    "dense_inputs": True,
    "dense_hidden": 64,
    "dropout": 0.1,
    "product_prior": True,
    "prior_scale": 10.0,
    "prior_weights": "uniform",
}


def sample(
    files: list[str], fmt: str, csv: CsvOptions | None, rows: int
) -> tuple[pa.Table, list[str], int]:
    """The first ``rows`` rows of ``files`` (in order), the files read and how many rows
    those files hold."""
    tables, n = [], 0
    for f in files:
        t = read_input(f, fmt, csv=csv)
        tables.append(t)
        n += t.num_rows
        if n >= rows:
            break
    table = pa.concat_tables(tables, promote_options="default").slice(0, rows)
    return table, files[: len(tables)], n


def shown(column: str) -> str:
    """A column's name as messages show it (``""`` for the unnamed column a trailing
    delimiter makes)."""
    return column or '""'


def _flow(entry: dict[str, Any] | list[Any]) -> str:
    """One schema or table entry (or a list) as YAML flow style on one line."""
    return yaml.safe_dump(
        entry, default_flow_style=True, width=10**9, sort_keys=False, allow_unicode=True
    ).strip()


def _model(name: str, tables: list[dict[str, Any]], choices: list[Choice]) -> dict[str, Any]:
    if name == "deepbow":
        texts = {c.column: c.spec for c in choices if c.section == "text"}
        (pair,) = (c.spec["lexical"] for c in choices if "lexical" in c.spec)
        query, product = texts[pair["query"]], texts[pair["title"]]
        return {
            "name": name,
            "query_text": query["name"],
            "product_text": product["name"],
            "max_len": max(query["max_length"], product["max_length"]),
            **DEEPBOW,
        }
    if name == "dlrm":
        head = {"bottom_mlp": [64, 16], "top_mlp": [256, 128], "dropout": 0.2}
        head |= {"dense_norm": True, "wide_dense": True}
    else:
        head = {"dnn": [256, 128], "dropout": 0.2, "dense_norm": True}
    return {"name": name, **head, "tables": tables}


def _train(label: str, steps_per_epoch: int, relevance: bool) -> dict[str, Any]:
    epochs = RELEVANCE_EPOCHS if relevance else EPOCHS
    train: dict[str, Any] = {
        "epochs": epochs,
        "dense_optimizer": {
            "name": "adamw",
            "lr": 0.005 if relevance else 0.003,
            "weight_decay": 0.01,
        },
        "sparse_optimizer": {"name": "adagrad", "lr": 0.0003},
        "schedule": {
            "name": "cosine",
            "warmup_steps": 20,
            "total_steps": epochs * steps_per_epoch,
            "min_lr_ratio": 0.1,
        },
    }
    if relevance:  # DeepBoW has no embedding tables
        del train["sparse_optimizer"]
    train["eval_each_epoch"] = True  # on --eval's files, or the held-out tail
    train["early_stopping"] = {
        "metric": f"{label}/auc",
        "mode": "max",
        "patience": 2,
        "restore_best": True,
    }
    return train | {"log_every": 50, "progress": False}


def for_deepbow(choices: list[Choice]) -> list[Choice]:
    """DeepBoW's schema: the labels, the text pair that :func:`~recis.io.infer.infer_schema`
    found (the one with fewer distinct terms the query) as text features, and their lexical
    match; every other column is left out. ConfigError without such a pair."""
    match = next((c for c in choices if c.section == "dense" and "lexical" in c.spec), None)
    if match is None:
        texts = [c.column for c in choices if "tokenizer" in c.spec]
        found = (
            f"the text columns {', '.join(texts)} share too few terms"
            if texts
            else "no text column"
        )
        raise ConfigError(f"--model deepbow: needs a query and a title text column ({found})")
    pair = {match.spec["lexical"]["query"]: "query", match.spec["lexical"]["title"]: "product"}
    out = []
    for c in choices:
        if c.section in ("labels", "skip") or c is match:
            out.append(c)
        elif c.section == "sparse" and c.column in pair:
            spec = {k: v for k, v in c.spec.items() if k in ("name", "column", "tokenizer")}
            # at most bag_size terms: DeepBoW then scores the bags pairwise, [B, Tq, Tp]; longer
            # texts go through [B, vocab] vectors (an epoch on qbqtc: 73 s against 16 s)
            spec["max_length"] = min(c.spec["max_len"], DEEPBOW["bag_size"])
            what = c.why.split(" (first")[0]
            why = f"{what} (first {spec['max_length']}); DeepBoW's {pair[c.column]} text"
            out.append(Choice(c.column, "text", why, spec))
        else:
            out.append(Choice(c.column, "skip", "not read by DeepBoW (the texts and their match)"))
    return out


def render(
    choices: list[Choice],
    train: str,
    eval_path: str | None,
    fmt: str,
    csv: dict[str, Any] | None,
    model: str,
    total_rows: int,
    run_dir: str,
    source: str,
) -> str:
    """The run config as YAML text, each schema entry with its reason as a comment."""
    if model not in MODELS:
        raise ConfigError(f"--model {model}: one of {', '.join(MODELS)}")
    data: dict[str, Any] = {"train": train}
    if eval_path is not None:
        data["eval"] = eval_path
    data |= {"format": fmt}
    if eval_path is None:  # early stopping on the training rows' tail, never trained on
        data["holdout"] = HOLDOUT
    if csv:
        data["csv"] = csv
    relevance = model == "deepbow"
    data |= {"batch_size": RELEVANCE_BATCH if relevance else BATCH}
    data |= {"eval_batch_size": 8192, "shuffle": True}
    if relevance:
        data["drop_last"] = True  # the calibration's batch norm needs more than one row
    labels = [c for c in choices if c.section == "labels"]
    missing = max((c.missing for c in labels), default=0.0)
    if missing:  # rows without a label are left out and counted, not a stop at the first
        data["on_bad_row"] = "skip"
        data["max_bad_fraction"] = min(1.0, max(0.01, math.ceil(200 * missing) / 100))
    fit = total_rows * (1 - data.get("holdout", 0.0))  # the rows each epoch trains on
    steps = max(1, math.ceil(fit / data["batch_size"]))
    first = labels[0].spec["name"]
    tables = [c.table for c in choices if c.section == "sparse" and c.table is not None]
    lines = [
        f"# Written by `recis init` from {source} ({total_rows} rows in all);",
        "# review it, then train it with `recis train` on this file.",
        "# Each schema entry says why it was chosen; the model and train sections are the",
        "# shipped qbqtc DeepBoW recipe's settings (docs/models/deepbow.md; the rules: docs/data.md, recis init)."
        if relevance
        else "# shipped MovieLens CTR recipes' settings (docs/models/dlrm.md; the rules: docs/data.md, recis init).",
    ]
    if eval_path is None:
        lines += [
            f"# No --eval: the last {HOLDOUT:.0%} of the training rows (in file order) evaluate each",
            "# epoch for early stopping (data.holdout) and are not trained on; recis split makes",
            "# a validation file by time, user or query instead.",
        ]
    top = {"run_dir": run_dir, "device": "cpu", "seed": 0}
    lines += [*yaml.safe_dump(top, sort_keys=False, allow_unicode=True).splitlines(), ""]
    lines += yaml.safe_dump(
        {"data": data}, sort_keys=False, width=10**9, allow_unicode=True
    ).splitlines()
    groups = [c.column for c in choices if c.section == "group"]
    lines.append("  schema:")
    for section in ("labels", "dense", "sparse", "text"):
        picked = [c for c in choices if c.section == section]
        if picked:
            lines.append(f"    {section}:")
            lines += [f"      - {_flow(c.spec)}  # {c.why}" for c in picked]
    if groups:  # passed through to the metrics, never a feature
        why = next(c.why for c in choices if c.section == "group")
        lines.append(f"    extras: {_flow(groups)}  # {why}")
    skipped = [c for c in choices if c.section == "skip"]
    if skipped:
        lines.append("    # not read:")
        lines += [f"    #   {shown(c.column)}: {c.why}" for c in skipped]
    lines.append("")
    body = {"model": _model(model, tables, choices), "train": _train(first, steps, relevance)}
    if groups:
        names = [c.spec["name"] for c in labels]
        body["train"]["tasks"] = [{"name": n, "group_column": groups[0]} for n in names]
    for key, value in body.items():
        flow = None if key == "train" or tables else False  # (a model of scalars: one per line)
        text = yaml.safe_dump(
            {key: value}, sort_keys=False, width=10**9, default_flow_style=flow, allow_unicode=True
        )
        if key == "model" and tables:  # one table per line
            head, _, _ = text.partition("  tables:\n")
            text = head + "  tables:\n" + "".join(f"  - {_flow(t)}\n" for t in tables)
        lines += text.splitlines() + [""]
    return "\n".join(lines)


def init_config(
    train: str,
    labels: list[str],
    out: str | Path,
    eval_path: str | None = None,
    fmt: str | None = None,
    csv: dict[str, Any] | None = None,
    model: str = "dlrm",
    rows: int = 200_000,
    ignore: list[str] | None = None,
    positive_at: float | None = None,
    run_dir: str | None = None,
    positive: list[str] | None = None,
) -> dict[str, Any]:
    """Write a run config for the files at ``train`` to ``out`` (refused if it exists);
    returns ``{"path", "rows", "labels", "dense", "sparse", "skipped"}``."""
    out = Path(out)
    if rows < 1:
        raise ConfigError(f"--rows {rows}: must be at least 1")
    if out.exists():
        raise ConfigError(f"{out}: exists; remove it or pass another --out")
    fmt = fmt or guess_format(train)
    files = resolve_paths(train, SUFFIXES[fmt])
    csv = _sniffed(files[0], fmt, csv, labels)
    options = csv_options(csv)
    table, read, in_read = sample(files, fmt, options, rows)
    keyed = fmt == "jsonl"  # a JSON object's keys may be data
    if fmt == "libsvm" and any(index_of(c) is not None for c in table.column_names):
        ignore = [*(ignore or []), FEATURES]  # its indices are read as dense columns f<k>
    run_dir = run_dir or f"runs/{out.stem}"
    choices = infer_schema(
        table, labels, ignore or [], positive_at, keyed, stats_dir=run_dir, positive=positive
    )
    if model == "deepbow":
        choices = for_deepbow(choices)
    if model == "deepfm" and not any(c.section == "sparse" for c in choices):
        raise ConfigError("--model deepfm: no column became an id feature (use --model dlrm)")
    total = _count_rows(files, fmt, read, in_read)
    text = render(
        choices,
        train,
        eval_path,
        fmt,
        csv,
        model,
        total,
        run_dir,
        source=f"a sample of {table.num_rows} rows of {train}",
    )
    import recis.models  # noqa: F401  (the model section's config classes)

    build_run_config(yaml.safe_load(text))  # as recis train will load it
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, out)  # never a half-written config
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{out}: cannot write the config: {err.strerror}") from None
    sections = ("dense", "sparse", "text", "skip")
    by = {s: [c.column for c in choices if c.section == s] for s in sections}
    return {
        "path": str(out),
        "rows": total,
        "labels": labels,
        "dense": by["dense"],
        "sparse": by["sparse"],
        "text": by["text"],
        "skipped": by["skip"],
    }


def _sniffed(
    path: str, fmt: str, csv: dict[str, Any] | None, labels: list[str]
) -> dict[str, Any] | None:
    """``csv`` with what the first lines of a CSV/TSV file tell where it is silent
    (:func:`recis.io.csv_options.sniffed_options`). A file without a header line whose labels
    are not named ``f0``, ``f1``, ... stops with the ``--csv`` to write."""
    options, found = sniffed_options(path, fmt, csv)
    no_header = bool(found) and not found["header"] and "header" not in (csv or {})
    if no_header and not options.get("column_names"):
        n = len(found["fields"])
        names = [f"f{k}" for k in range(n)]
        if any(label not in names for label in labels):
            hint = json.dumps({**options, "column_names": names})
            criteo = n == len(CRITEO_COLUMNS) and found["delimiter"] == "\t"
            raise ConfigError(
                f"{path}: no header line (the first line is data: {found['first'][:60]!r}); "
                + (
                    "a Criteo log? --csv '{layout: criteo}' names its columns; else "
                    if criteo
                    else ""
                )
                + f"name its {n} columns: --csv '{hint}' with your names"
            )
    return options or None


def _count_rows(files: list[str], fmt: str, read: list[str], in_read: int) -> int:
    """Rows of the training files: parquet and ORC from their footers; text formats have
    none, so the files read for the sample are counted and the others estimated by their
    size (the same rows per byte)."""
    import pyarrow.orc as paorc
    import pyarrow.parquet as pq

    if fmt == "parquet":
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if fmt == "orc":
        return sum(paorc.ORCFile(f).nrows for f in files)
    if len(read) == len(files):
        return in_read
    try:
        size = {f: os.path.getsize(f) for f in files}
    except OSError:  # not a local file (a URI): the rows read, which the schedule then assumes
        return in_read
    done = sum(size[f] for f in read)
    return in_read + round(in_read / max(done, 1) * sum(size[f] for f in files[len(read) :]))
