"""``recis export RUN_DIR --out DIR``: a trained run -> a published, self-describing version.

A version folder holds ``tables.safetensors`` (:mod:`recis.export.tables`), the dense graph
(:mod:`recis.export.dense`) and ``manifest.json``: the input schema (columns, feature
transforms, nan policy), the tasks, the tables, the format, library versions, the source
run and checkpoint, and the size and sha256 of every other file.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from recis.config import to_dict
from recis.embedding import HashedEmbeddingCollection
from recis.errors import ConfigError
from recis.features import Schema
from recis.models.deepbow import DeepBoW
from recis.models.two_tower import TwoTower
from recis.train.checkpoint import write_file

from .delta import (
    DELTA,
    DeltaBase,
    TablePart,
    delta_base,
    load_part,
    version_chain,
    write_part,
)
from .dense import FILES, FORMATS, dense_module, save_dense
from .index import IndexOptions
from .manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    bundle_tokenizers,
    version_files,
)
from .publish import publish
from .relevance import write_relevance
from .relevance_llm import is_llm_run, write_relevance_llm
from .source import load_run
from .tables import TableInfo, pack_tables
from .term_index import product_reader, write_term_index
from .towers import corpus_reader, write_towers

TABLES = "tables.safetensors"


@dataclass
class ExportOptions:
    """What ``recis export`` writes: ``fmt`` one of :data:`~recis.export.dense.FORMATS`."""

    fmt: str = "export"
    int8: bool = False
    keep: int | None = None
    checkpoint: str | None = None
    delta: bool = False  # only the rows changed since the version ``latest`` names
    split_towers: bool = False  # refuse a model without towers (two_tower splits anyway)
    items: str | None = None  # two-tower corpus (default: retrieval_eval.seen, else train)
    index: IndexOptions = field(default_factory=IndexOptions)


def _versions() -> dict[str, str]:
    import recis

    out = {"python": platform.python_version(), "torch": torch.__version__}
    out["recis"] = recis.__version__
    return out


def write_version(folder: Path, run_dir: Path, options: ExportOptions) -> dict[str, Any]:
    """Write one version's files into ``folder`` (manifest last); returns the manifest."""
    if options.fmt not in FORMATS:
        raise ConfigError(f"--format: {options.fmt!r} is not one of {', '.join(FORMATS)}")
    if is_llm_run(run_dir):
        if options.int8 or options.delta or options.split_towers or options.items:
            raise ConfigError(
                "--int8-embeddings / --delta / --split-towers / --items: a relevance-LLM run "
                "has no embedding tables or towers"
            )
        body = write_relevance_llm(folder, run_dir, options.fmt, options.checkpoint)
        source = {"run_dir": str(run_dir), "stage": body["relevance_llm"]["stage"]}
        body.update(int8_embeddings=False, source=source)
    else:
        body = _write_recis_model(folder, run_dir, options)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **body,
        "versions": _versions(),
    }
    manifest["files"] = version_files(folder)
    write_file(folder / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def _write_recis_model(folder: Path, run_dir: Path, options: ExportOptions) -> dict[str, Any]:
    """The files of a sparse-dense run (DLRM family, two-tower, DeepBoW); the manifest's
    entries that describe them."""
    cfg, trainer, ckpt, step = load_run(run_dir, options.checkpoint)
    model = trainer.model
    schema = cfg.data.schema_
    if isinstance(model, TwoTower):  # split towers (automatic for two_tower)
        corpus = corpus_reader(cfg, model, options.items)
        base = _delta_base(folder, options)
        parts = write_towers(
            folder, model, corpus, (options.fmt, options.int8, options.index), base
        )
    elif options.split_towers:
        raise ConfigError(f"--split-towers: model {type(model).__name__} has no towers")
    elif isinstance(model, DeepBoW):
        if options.delta or options.int8:
            raise ConfigError("--delta / --int8-embeddings: DeepBoW has no embedding tables")
        parts = write_relevance(folder, model, schema, options.fmt)
        products = product_reader(cfg, model, options.items)
        if products is not None:  # the term-weight index of the product corpus
            width = parts["relevance"]["widths"][0]
            parts["term_index"] = write_term_index(folder, model, products, options.fmt, width)
    else:
        parts = _write_dlrm(folder, model, schema, options)
    tasks = [{"name": t.name, "loss": t.loss} for t in cfg.train.tasks] or [
        {"name": lab.name, "loss": "bce"} for lab in schema.labels
    ]
    return {
        "model": to_dict(cfg)["model"]["name"],
        "int8_embeddings": options.int8,
        "tasks": tasks,
        "schema": bundle_tokenizers(to_dict(cfg)["data"]["schema"], folder),
        "nan_policy": cfg.data.nan_policy,
        **parts,
        "source": {"run_dir": str(run_dir), "checkpoint": str(ckpt), "step": step},
    }


def _write_dlrm(
    folder: Path, model: torch.nn.Module, schema: Schema, options: ExportOptions
) -> dict[str, Any]:
    """DLRM's tables (or delta) and dense graph; the manifest's model-specific entries."""
    dense = dense_module(model)  # refuses what does not export before any file is written
    tables = model.sparse_arch
    if not isinstance(tables, HashedEmbeddingCollection):
        raise ConfigError("model.embedding: export reads the hashed engine's tables, not modulo")
    tensors, infos = pack_tables(tables, options.int8)
    base = _delta_base(folder, options)
    _, rows = write_part(folder, DLRM_TABLES, (tensors, infos), base)
    features = [f.name for f in schema.sparse]
    # an example batch of 2 rows: the graph's input shapes (the batch dimension is dynamic)
    example = (
        torch.zeros(2, schema.dense_dim),
        torch.zeros(2, len(features), infos[0].dim if infos else 0),
    )
    save_dense(dense, options.fmt, folder / FILES[options.fmt], example)
    return {
        "graph": {"format": options.fmt, "file": FILES[options.fmt]},
        "sparse_features": features,
        "tables": [dataclasses.asdict(t) for t in infos],
        "delta": None if base is None else {"base": base.name, "rows": rows},
    }


def _delta_base(folder: Path, options: ExportOptions) -> DeltaBase | None:
    """With ``--delta``, the version ``latest`` names in the export folder (``folder`` is
    being written inside it): the base the tables are written against."""
    return delta_base(folder.parent, options.int8) if options.delta else None


def _dlrm_tables(manifest: dict[str, Any]) -> tuple[str | None, list[TableInfo]]:
    """A DLRM version's table file (its delta's when it is a delta version) and tables."""
    if "tables" not in manifest:
        return None, []
    return (DELTA if manifest.get("delta") else TABLES), table_infos(manifest)


DLRM_TABLES = TablePart("tables", _dlrm_tables)


def load_tables(version_dir: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The full table tensors of a DLRM version: its ``tables.safetensors``, or its bases'
    (each READY and checked against its manifest) with each delta applied."""
    return load_part(version_chain(version_dir, manifest), DLRM_TABLES)


def export_run(run_dir: str | Path, out: str | Path, options: ExportOptions) -> Path:
    """Export ``run_dir`` and publish it as the next version of ``out``; its folder."""

    def write(folder: Path) -> None:
        write_version(folder, Path(run_dir), options)

    return publish(out, write, options.keep)


def table_infos(manifest: dict[str, Any]) -> list[TableInfo]:
    return [TableInfo(**t) for t in manifest["tables"]]
