"""Two-tower models split for serving: each tower's tables, its graph, and the item corpus.

A tower is exported in two parts, as DLRM is: its hashed tables (``query.tables.safetensors``,
``item.tables.safetensors``, the layout of :mod:`recis.export.tables`) looked up outside the
graph, and :class:`TowerGraph`, everything after the lookup (the text tower and the MLP),
``(pooled [B, W], text_ids [B, T], text_mask [B, T]) -> [B, D]`` unit-norm embeddings. The
serving side (:class:`TowerFrontend`) turns a converted batch into those inputs exactly as
:meth:`recis.models.two_tower.TwoTower.encode_queries` / ``encode_items`` read it.

Shapes: ``B`` rows, ``W`` the side's pooled id width (its features' dims, in order), ``T``
text tokens (the tower's ``max_len``), ``D`` output dim, ``N`` corpus items.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recis.config import RunConfig
from recis.embedding import HashedEmbeddingCollection
from recis.errors import ConfigError
from recis.features import Schema
from recis.io import Batch, make_reader
from recis.models.layers import SequenceEmbedding, text_or_list_ids
from recis.models.two_tower import TwoTower, build_index

from .delta import DeltaBase, TablePart, write_part
from .dense import FILES, save_graph
from .index import IndexOptions, save_index
from .tables import SequenceLookup, TableInfo, TableLookup, pack_tables

SIDES = ("query", "item")
KINDS = ("tables", "sequence")  # a tower's pooled-id tables, its sequences' per-position ones
# per kind: the tower spec's key of its table entries, and of the features that need them
ENTRIES = {"tables": "tables", "sequence": "sequence_tables"}
FEATURES = {"tables": "sparse", "sequence": "sequence"}
INPUTS = ["pooled", "seq", "seq_mask", "text_ids", "text_mask"]
OUTPUT = "tower_out"


class TowerGraph(nn.Module):
    """One tower after its id lookup (the same layers as :class:`TwoTower`'s ``_encode``).

    Shapes: ``pooled [B, W]``; ``seq [B, S, Ds]`` and ``seq_mask [B, S]`` the behaviour
    sequences' per-position rows side by side (``S`` the sum of their ``max_len``);
    ``text_ids [B, T]`` int64, ``text_mask [B, T]`` bool -> ``[B, D]`` unit norm. A tower
    without sequences or text does not read those inputs."""

    def __init__(self, model: TwoTower, side: str) -> None:
        super().__init__()
        tower = model.config.towers()[side]
        self.mlp = model.query_mlp if side == "query" else model.item_mlp
        self.text = model.text if tower.text is not None else None
        self.pools = nn.ModuleList([model.pools[n] for n in tower.sequence])
        lengths = {f.name: f.max_len for f in model.schema.sparse}
        self.seq_lens = [int(lengths[n] or 0) for n in tower.sequence]

    def forward(
        self,
        pooled: torch.Tensor,
        seq: torch.Tensor,
        seq_mask: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        parts = [pooled]
        start = 0
        for pool, length in zip(self.pools, self.seq_lens):
            end = start + length
            parts.append(pool(seq[:, start:end], seq_mask[:, start:end]))
            start = end
        if self.text is not None:
            parts.append(self.text(text_ids, text_mask))
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)


def check_exportable(model: TwoTower) -> None:
    """Refuse, by config field, what the tower split does not export (the modulo engine)."""
    for side, tower in model.config.towers().items():
        pooled_ok = not tower.sparse or isinstance(model.embedding[side], HashedEmbeddingCollection)
        seq_ok = not tower.sequence or _sequence_tables(model, side) is not None
        if not (pooled_ok and seq_ok):
            raise ConfigError(
                "model.embedding: export reads the hashed engine's tables, not modulo"
            )


def _sequence_tables(model: TwoTower, side: str) -> HashedEmbeddingCollection | None:
    """The hashed per-position tables of one side's sequences (None: the modulo engine)."""
    seq = model.sequences[side]
    assert isinstance(seq, SequenceEmbedding)  # what TwoTower builds for sequences
    return seq.hashed


def side_schema(schema: Schema, features: list[str]) -> Schema:
    """The part of ``schema`` that one tower reads (no labels, dense or extras): a request
    for query embeddings carries only the query's columns."""
    names = set(features)
    return dataclasses.replace(
        schema,
        dense=[],
        labels=[],
        extras=[],
        sparse=[f for f in schema.sparse if f.name in names],
        text=[t for t in schema.text if t.name in names],
    )


class TowerFrontend:
    """A converted batch -> one tower graph's inputs: the side's pooled ids from its exported
    tables, its sequences' per-position rows (:class:`~recis.export.tables.SequenceLookup`),
    and its text as padded ids and mask (as ``TwoTower._encode`` reads them).

    ``spec``: the manifest's ``towers[side]`` entry; ``tables``: ``(tensors, infos)`` of the
    pooled tables and of the sequence tables."""

    def __init__(
        self,
        spec: dict[str, Any],
        tables: tuple[dict[str, torch.Tensor], list[TableInfo]],
        sequences: tuple[dict[str, torch.Tensor], list[TableInfo]],
    ) -> None:
        self.sparse: list[str] = spec["sparse"]
        self.text: str | None = spec["text"]
        self.max_len: int = spec["max_len"]
        tensors, infos = tables
        # one lookup per embedding dim: each pools all its features in one call
        by_dim: dict[int, list[TableInfo]] = {}
        for t in infos:
            by_dim.setdefault(t.dim, []).append(t)
        self.lookups = []
        for group in by_dim.values():
            feats = [f for f in self.sparse if any(f in t.features for t in group)]
            self.lookups.append(TableLookup(tensors, group, feats))
        lengths = dict(zip(spec["sequence"], spec["sequence_lens"]))
        self.sequences = SequenceLookup(*sequences, lengths) if lengths else None

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """``(pooled [B, W], seq [B, S, Ds], seq_mask [B, S], text_ids [B, T], text_mask
        [B, T])`` of ``batch`` (a placeholder of width 1 for what the tower lacks)."""
        b = batch.batch_size
        pooled: dict[str, torch.Tensor] = {}
        for lookup in self.lookups:
            out = lookup.pooled(batch.sparse)  # [B, F_g, D_g]
            pooled.update({f: out[:, i] for i, f in enumerate(lookup.features)})
        flat = torch.cat([pooled[f] for f in self.sparse], -1) if self.sparse else None
        if flat is None:
            flat = torch.zeros(b, 0)
        if self.sequences is not None:
            seq, seq_mask = self.sequences.padded(batch.sparse)
        else:
            seq, seq_mask = torch.zeros(b, 1, 1), torch.ones(b, 1, dtype=torch.bool)
        if self.text is None:
            ids, mask = torch.zeros(b, 1, dtype=torch.int64), torch.ones(b, 1, dtype=torch.bool)
        else:
            ids, mask = text_or_list_ids(batch, self.text, self.max_len)
        return flat, seq, seq_mask, ids, mask


def tower_specs(model: TwoTower) -> dict[str, dict[str, Any]]:
    """The manifest's ``towers`` entry: per side its features, text and graph inputs."""
    out = {}
    lengths = {f.name: f.max_len for f in model.schema.sparse}
    for side, tower in model.config.towers().items():
        out[side] = {
            "sparse": list(tower.sparse),
            "text": tower.text,
            "max_len": tower.max_len,
            "features": tower.features(),
            "sequence": list(tower.sequence),
            "sequence_lens": [int(lengths[n] or 0) for n in tower.sequence],
        }
    return out


def last_per_id(ids: torch.Tensor, emb: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """``(ids [N] sorted unique, embeddings [N, D])``: each item's vector from its last row
    (the rule of :meth:`TwoTower.retrieval_corpus`)."""
    item = ids.cpu().numpy()
    uniq, first_rev = np.unique(item[::-1], return_index=True)
    return uniq, emb[torch.from_numpy(len(item) - 1 - first_rev)]


def encode_corpus(model: TwoTower, batches: Iterable[Batch]) -> tuple[np.ndarray, torch.Tensor]:
    """Every item of ``batches`` (rows with the item features) encoded by the eval model
    (:func:`recis.models.two_tower.build_index`), one vector per item id."""
    index = build_index(model, batches)
    if not len(index.ids):
        raise ConfigError("--items: the item corpus has no rows")
    return last_per_id(index.ids, index.embeddings.float().cpu())


def corpus_reader(
    cfg: RunConfig, model: TwoTower, items: str | None, batch_size: int = 4096
) -> Iterable[Batch]:
    """The item corpus's rows with the item tower's features: ``items`` (``--items``, in
    ``data.format``), else ``model.retrieval_eval.seen`` (the corpus eval ranks), else the
    run's training data (the items the model knows)."""
    schema = side_schema(cfg.data.schema_, model.item_features)
    ev = model.config.retrieval_eval
    paths: str | list[str]
    fmt: str
    if items is not None:
        paths, fmt = items, cfg.data.format
    elif ev is not None:
        paths, fmt = ev.seen, ev.format
    else:
        paths = cfg.data.train or str(Path(cfg.data.path) / "train")
        fmt = cfg.data.format
    return make_reader(paths, schema, batch_size=batch_size, format=fmt, prefetch=0)


def graph_example(spec: dict[str, Any], schema: Schema) -> dict[str, torch.Tensor]:
    """Zero inputs of 2 rows in a tower graph's shapes (the batch dimension is dynamic): the
    pooled width from the tables' dims, the sequences' from their ``max_len`` and dim, the
    text width from the tower's ``max_len`` (and a raw-text feature's ``max_length``)."""
    dim = {f: t["dim"] for t in spec["tables"] for f in t["features"]}
    width = sum(dim[f] for f in spec["sparse"])
    seq_len = sum(spec["sequence_lens"]) or 1
    seq_dim = spec["sequence_tables"][0]["dim"] if spec["sequence_tables"] else 1
    length = 1
    if spec["text"] is not None:
        texts = {t.name: t.max_length for t in schema.text}
        length = min(spec["max_len"], texts.get(spec["text"], spec["max_len"]))
    return {
        "pooled": torch.zeros(2, width),
        "seq": torch.zeros(2, seq_len, seq_dim),
        "seq_mask": torch.ones(2, seq_len, dtype=torch.bool),
        "text_ids": torch.zeros(2, length, dtype=torch.int64),
        "text_mask": torch.ones(2, length, dtype=torch.bool),
    }


def tower_part(side: str, kind: str) -> TablePart:
    """The table file ``<side>.<kind>`` of a two-tower version (``kind`` in :data:`KINDS`):
    the manifest's ``towers[side]`` names it (``tables_file`` / ``sequence_file``) and its
    tables (``tables`` / ``sequence_tables``)."""

    def locate(manifest: dict[str, Any]) -> tuple[str | None, list[TableInfo]]:
        spec = manifest.get("towers", {}).get(side)
        if spec is None:
            return None, []
        entries = spec[ENTRIES[kind]]
        return spec[f"{kind}_file"], [TableInfo(**t) for t in entries]

    return TablePart(f"{side}.{kind}", locate)


def _save_side_tables(
    folder: Path,
    model: TwoTower,
    side: str,
    spec: dict[str, Any],
    options: tuple[bool, DeltaBase | None],
) -> dict[str, dict[str, int]]:
    """``<side>.tables.safetensors`` (pooled ids) and ``<side>.sequence.safetensors``
    (per-position rows) of one tower, when it has such features, or with a delta ``base``
    (``options``: INT8, base) their deltas against the base's same files; their manifest
    entries into ``spec``. Returns the rows each delta carries per table, by part."""
    int8, base = options
    spec["tables_file"] = spec["sequence_file"] = None
    spec["tables"], spec["sequence_tables"] = [], []
    rows: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        if not spec[FEATURES[kind]]:
            continue
        if kind == "tables":
            collection = model.embedding[side]
            assert isinstance(collection, HashedEmbeddingCollection)  # check_exportable
            tensors, infos = pack_tables(collection, int8)
        else:
            hashed = _sequence_tables(model, side)
            assert hashed is not None  # check_exportable
            tensors, infos = pack_tables(hashed, int8, sequences=True)
        part = tower_part(side, kind)
        spec[f"{kind}_file"], changed = write_part(folder, part, (tensors, infos), base)
        spec[ENTRIES[kind]] = [dataclasses.asdict(t) for t in infos]
        if changed is not None:
            rows[part.key] = changed
    return rows


def write_towers(
    folder: Path,
    model: TwoTower,
    corpus: Iterable[Batch],
    options: tuple[str, bool, IndexOptions],
    base: DeltaBase | None = None,
) -> dict[str, Any]:
    """Write both towers (tables and graph, ``options``: format, INT8 tables, index) and the
    item index into ``folder``; the manifest's ``towers``, ``index``, ``temperature`` and
    ``delta``. With a ``base`` each tower's tables are deltas against the base's; the graphs,
    the corpus vectors and the index are always written in full (they depend on every row
    and on the dense weights)."""
    fmt, int8, index = options
    check_exportable(model)
    specs = tower_specs(model)
    rows: dict[str, dict[str, int]] = {}
    for side, spec in specs.items():
        rows.update(_save_side_tables(folder, model, side, spec, (int8, base)))
        example = graph_example(spec, model.schema)
        spec["graph"] = {"format": fmt, "file": f"{side}_tower.{FILES[fmt].split('.')[1]}"}
        save_graph(
            TowerGraph(model, side).eval(), fmt, folder / spec["graph"]["file"], example, OUTPUT
        )
    ids, emb = encode_corpus(model, corpus)
    entry = save_index(folder, ids, emb, index)
    delta = None if base is None else {"base": base.name, "rows": rows}
    return {
        "towers": specs,
        "index": entry,
        "temperature": model.config.temperature,
        "delta": delta,
    }
