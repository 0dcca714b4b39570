"""HashedEmbeddingCollection: raw 64-bit ids in, embeddings out, rows updated in backward."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torchrec import DataType, EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recis.config import SparseOptimizerConfig, TableConfig
from recis.errors import ConfigError, EmbeddingError
from recis.features import SparseFeature, features_by_table
from recis.ops.fresh_rows import FreshRows, native_applies, write_fresh_rows
from recis.ops.id_mapper import IdMapper, MapResult, map_many
from recis.ops.map_ahead import MapAhead
from recis.optim.spec import resolve_sparse

from .groups import FbgemmTableGroup, GroupDict, TableSlot, TorchTableGroup, default_scale
from .lookup import LookupModule


def _group_key(t: TableConfig, opt: SparseOptimizerConfig) -> str:
    # pooling 'none' returns [N, D]: one dim per group
    dim = f"_d{t.dim}" if t.pooling == "none" else ""
    return (
        f"{t.pooling}{dim}_{t.dtype}_{opt.name}_lr{opt.lr:g}_eps{opt.eps:g}_wd{opt.weight_decay:g}"
        f"_b{opt.beta1:g}_{opt.beta2:g}"
    ).replace(".", "p")


class HashedEmbeddingCollection(LookupModule):
    """Embedding tables over raw 64-bit ids: collision-free mapping, then fused lookup.

    Each table has an :class:`recis.ops.IdMapper` (unless ``mapper: none``)
    that turns ids into rows; row 0 of a mapped table is the fallback row that
    ids without a row (not admitted, no room) read, and it never changes. Tables
    with the same pooling, dtype and optimizer share one fbgemm TBE (one kernel
    call forward and one fused update in backward); Adam/AdamW tables use
    :class:`TorchTableGroup`.

    The collection counts training steps: ``step`` goes up by one on each
    forward in training mode (``module.training``); LRU and TTL use it. Eval
    forwards neither insert ids nor count.

    ``map_ahead`` (set by the trainer, ``train.map_ahead``): the training pipeline's
    :meth:`prefetch` names the next batch, and right after this step's own mapping its ids
    are looked up read-only in a background thread (:mod:`recis.ops.map_ahead`) while this
    step's dense work runs; the next step then only marks the rows found as seen and maps
    the rest. The results are exactly those without it.

    Shapes: input KJT with ``F`` keys, batch ``B``; :meth:`forward` returns a
    KeyedTensor ``[B, sum of D]`` with one key per pooled feature;
    :meth:`forward_sequences` returns ``{feature: JaggedTensor [N_f, D]}`` for
    pooling ``none`` tables.

    Args:
        tables: table configs (tables no feature uses are skipped).
        features: sparse features; ``table`` names the table (shared tables allowed).
        device: where weights live and outputs go.
        optimizer: sparse optimizer, unless a table sets its own.
        seed: seed of the ids' initial vectors and the mappers' admission draws.
        template: hold one row per table (shapes, dtypes, optimizer-state layout only;
            the configs are kept as given), as a template of a table held elsewhere.

    Example::

        ec = HashedEmbeddingCollection([TableConfig("u", 16, 1000)], [SparseFeature("u")], cpu)
        kt = ec(kjt)           # KeyedTensor, kt["u"] is [B, 16]
    """

    def __init__(
        self,
        tables: list[TableConfig],
        features: list[SparseFeature],
        device: torch.device | str = "cpu",
        optimizer: SparseOptimizerConfig | None = None,
        seed: int = 0,
        template: bool = False,
    ) -> None:
        super().__init__()
        # template: one row per table (shapes, dtypes, optimizer-state layout; configs kept)
        one_row = template
        device = torch.device(device)
        optimizer = optimizer or SparseOptimizerConfig()
        by_name = {t.name: t for t in tables}
        feats_of = features_by_table(features, list(by_name))
        self.device = device
        self.seed = seed
        self.step = 0
        self.tables = {t.name: t for t in tables if t.name in feats_of}
        self.table_of = {f.name: f.table_name for f in features}
        self.weighted = {f.name: f.weighted for f in features}
        self.mappers: dict[str, IdMapper] = {}
        self.map_ahead = False
        self._ahead = MapAhead()
        self._upcoming: KeyedJaggedTensor | None = None  # the next batch, from prefetch
        slots: dict[str, list[TableSlot]] = {}
        spec: dict[str, tuple[str, str, SparseOptimizerConfig]] = {}
        for i, t in enumerate(self.tables.values()):
            opt = t.optimizer or optimizer
            if t.mapper == "hash":
                self.mappers[t.name] = _new_mapper(t, 1 if one_row else t.capacity, seed + i)
            if resolve_sparse(opt, "table_group", device).fused and t.dim % 4:
                raise ConfigError(
                    f"model.tables.{t.name}.dim: {t.dim} is not a multiple of 4, "
                    f"which fbgemm's {opt.name} kernels need"
                )
            key = _group_key(t, opt)
            spec[key] = (t.pooling, t.dtype, opt)
            slots.setdefault(key, []).append(_table_slot(t, feats_of[t.name], one_row))
        self.groups = GroupDict()
        self.where: dict[str, tuple[str, int]] = {}  # table -> (group, index in group)
        for key, ts in slots.items():
            pooling, dtype, opt = spec[key]
            if resolve_sparse(opt, "table_group", device).fused:  # else recis' Adam(W)
                # rows come from the mappers, or ids _map checked against the capacity
                self.groups[key] = FbgemmTableGroup(
                    ts, pooling, dtype, opt, device, rows_checked=True
                )
            else:
                self.groups[key] = TorchTableGroup(ts, pooling, dtype, opt, device)
            for j, s in enumerate(ts):
                self.where[s.name] = (key, j)
        for name in self.mappers:
            self.register_buffer(f"fallback_{name}", self._fallback_vector(name))
        # in the order features were given (the output KeyedTensor's key order)
        pooling_of = {f.name: by_name[f.table_name].pooling for f in features}
        self.pooled_features = [f.name for f in features if pooling_of[f.name] != "none"]
        self.sequence_features = [f.name for f in features if pooling_of[f.name] == "none"]

    def _fallback_vector(self, table: str) -> torch.Tensor:
        """``[D]``: what ids without a row read ('shared': one fixed vector, a function of
        (seed, table) like every id's first; 'zero': zeros)."""
        g, j = self.where[table]
        slot = self.groups[g].tables[j]
        out = slot.initial_for_ids(
            np.zeros(1, np.int64), f"{self.id_salt(table)}/fallback", self.device
        )[0]
        return out.zero_() if self.tables[table].default == "zero" else out

    # ------------------------------------------------------------------ mapping
    def _map(
        self, table: str, ids: torch.Tensor, counts: torch.Tensor | None = None
    ) -> MapResult | torch.Tensor:
        """Phase 1: ids int64 ``[N]`` to mapper rows (tables themselves are not touched)."""
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise EmbeddingError(f"table {table!r}: ids must be integers, got {ids.dtype}")
        mapper = self.mappers.get(table)
        if mapper is None:
            cap = self.tables[table].capacity
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= cap):
                raise EmbeddingError(
                    f"table {table!r} (mapper: none): ids must be in [0, {cap}), "
                    f"got [{int(ids.min())}, {int(ids.max())}]"
                )
            return ids.to(torch.int64)
        n = None if counts is None else counts.cpu().numpy()
        return mapper.map(ids, self.step, insert=self.training, counts=n)

    def _apply_map(
        self, table: str, res: MapResult | torch.Tensor, fresh: list[FreshRows] | None = None
    ) -> torch.Tensor:
        """Phase 2: grow / reset the table's rows as the mapper says; TBE rows ``[N]``.

        With ``fresh``, a table whose fresh rows the native writer can handle is appended
        there (the caller writes them all in one call) instead of being reset here."""
        if isinstance(res, torch.Tensor):
            return res
        g, j = self.where[table]
        grp = self.groups[g]
        self._fit_rows(table, res.capacity + 1)
        if len(res.fresh_rows):
            # every row given (back) to an id, evicted ones included, starts from the id's
            # own vector with a zero optimizer state (the same on any row, rank or world
            # size); rows evicted and not reused are never read
            slot, rows = grp.tables[j], torch.from_numpy(res.fresh_rows + 1)
            w, states = grp.weight(j), grp.states(j)
            if fresh is not None and slot.init != "normal" and native_applies(w, states):
                scale = 0.0 if slot.init == "zeros" else slot.init_scale
                fresh.append(FreshRows(w, states, rows, res.fresh_ids, self.id_salt(table), scale))
            else:
                init = slot.initial_for_ids(res.fresh_ids, self.id_salt(table), self.device)
                grp.reset_rows(j, rows.to(self.device), init)
        return (res.rows + 1).to(self.device)

    def _fit_rows(self, table: str, rows: int) -> None:
        """Resize ``table`` to ``rows`` (its mapper's capacity + the fallback row, or a
        checkpoint's row count) when it has another size; rows that fit are kept."""
        g, j = self.where[table]
        if self.groups[g].tables[j].rows != rows:
            self.groups[g].resize(j, rows)

    def id_salt(self, table: str) -> str:
        """Salt of ``table``'s per-id initial vectors (the collection's seed and the name)."""
        return f"{self.seed}/{table}"

    def _map_all(
        self, ids: dict[str, torch.Tensor], counts: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Map every table's ids (all mappers first, then the table updates they ask for).

        ``counts``: per table, occurrences each id stands for (deduplicated ids). In
        training the hashed tables are mapped in one call (:func:`recis.ops.id_mapper.map_many`:
        a few large parallel tasks, not one small parallel region per table).
        """
        counts = counts or {}
        hashed = [t for t in ids if t in self.mappers] if self.training else []
        for t in hashed:
            if ids[t].dtype.is_floating_point or ids[t].dtype == torch.bool:
                raise EmbeddingError(f"table {t!r}: ids must be integers, got {ids[t].dtype}")
        # the probe started during the last step, if it was of these ids (waits for it)
        ahead = self._ahead.take({t: ids[t] for t in hashed}) if hashed else None
        mappers = [self.mappers[t] for t in hashed]
        results: dict[str, MapResult | torch.Tensor] = dict(
            zip(
                hashed,
                map_many(
                    mappers,
                    [ids[t] for t in hashed],
                    self.step,
                    [counts.get(t) for t in hashed],
                    None if ahead is None else ahead.hints(mappers),
                ),
            )
        )
        results.update(
            (t, self._map(t, v, counts.get(t))) for t, v in ids.items() if t not in results
        )
        for t, r in results.items():  # resize first: a resize rebuilds its group's buffers
            if isinstance(r, MapResult):
                self._fit_rows(t, r.capacity + 1)
        fresh: list[FreshRows] = []
        out = {t: self._apply_map(t, results[t], fresh) for t in ids}
        write_fresh_rows(fresh)  # all tables' fresh rows in one native call
        return out

    def _restore_fallbacks(self) -> None:
        for name in self.mappers:
            g, j = self.where[name]
            self.groups[g].set_row(j, 0, getattr(self, f"fallback_{name}"))

    # ------------------------------------------------------------------ forward
    def _begin_step(self) -> None:
        if self.training:
            self.step += 1
        # the last fused update may have moved the fallback rows: put them back
        self._restore_fallbacks()

    def embed_ids(
        self, ids: dict[str, torch.Tensor], counts: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-id embeddings ``{table: [N_t, D_t]}`` of ``{table: ids int64 [N_t]}``.

        For collections whose tables all have pooling ``none`` (the owner side of a
        sharded collection, :mod:`recis.distributed.hashed`); counts one step like a
        forward. ``counts``: per table, occurrences each id stands for when the caller
        deduplicated them (admission and LFU count occurrences).
        """
        self._begin_step()
        rows = self._map_all(ids, counts)
        out: dict[str, torch.Tensor] = {}
        for grp in self.groups.groups():
            if grp.pooling != "none":
                raise EmbeddingError("embed_ids needs tables with pooling 'none'")
            if any(len(t.features) != 1 for t in grp.tables):
                raise EmbeddingError("embed_ids needs one feature per table")
            # every table of the group takes part in the kernel call, empty or not
            names = [t.name for t in grp.tables]
            none = torch.zeros(0, dtype=torch.int64, device=self.device)
            idx = [rows.get(t, none) for t in names]
            lens = torch.tensor([r.numel() for r in idx], dtype=torch.int64)
            offsets = torch.zeros(len(names) + 1, dtype=torch.int64)
            torch.cumsum(lens, 0, out=offsets[1:])
            emb = grp(torch.cat(idx), offsets.to(self.device))
            out.update((t, e) for t, e in zip(names, emb.split(lens.tolist())) if t in rows)
        return out

    def lookup(self, kjt: KeyedJaggedTensor) -> tuple[KeyedTensor | None, dict[str, JaggedTensor]]:
        """Pooled KeyedTensor (or None) and sequence JaggedTensors, in one pass."""
        self._begin_step()
        keys = kjt.keys()
        missing = [f for f in self.pooled_features + self.sequence_features if f not in keys]
        if missing:
            raise EmbeddingError(f"input has no feature(s) {missing} (keys: {keys})")
        b = kjt.stride()
        lengths = kjt.lengths()
        weights = kjt.weights_or_none()
        at = {k: i for i, k in enumerate(keys)}
        seg = _segments(kjt)
        rows = self._feature_rows(kjt, seg)
        self._probe_upcoming()  # the mappers stay as they are until the next lookup
        pooled: dict[str, torch.Tensor] = {}
        last_pooled: tuple[list[str], torch.Tensor] | None = None
        seqs: dict[str, JaggedTensor] = {}
        for grp in self.groups.groups():
            fs = grp.feature_names
            idx = torch.cat([rows[f] for f in fs])
            lens = torch.cat([lengths[at[f] * b : (at[f] + 1) * b] for f in fs]).to(self.device)
            offsets = torch.zeros(lens.numel() + 1, dtype=torch.int64, device=self.device)
            torch.cumsum(lens, 0, out=offsets[1:])
            out = grp(idx, offsets, self._sample_weights(fs, weights, seg))
            # split, not slices: a slice's backward zero-fills all of out, a split's is one cat
            if grp.pooling == "none":
                parts = out.split([seg[f][1] - seg[f][0] for f in fs])
                for f, part in zip(fs, parts):
                    seqs[f] = JaggedTensor(
                        values=part, lengths=lengths[at[f] * b : (at[f] + 1) * b]
                    )
            else:
                last_pooled = (fs, out)
                pooled.update(zip(fs, out.split(grp.feature_dims, dim=1)))
        return self._keyed(pooled, last_pooled), seqs

    def _sample_weights(
        self, fs: list[str], weights: torch.Tensor | None, seg: dict[str, tuple[int, int]]
    ) -> torch.Tensor | None:
        """Per-id weights float32 ``[sum of n_f]`` of features ``fs`` (ones for an unweighted
        feature among weighted ones), or None when none of them is weighted."""
        if weights is None or not any(self.weighted[f] for f in fs):
            return None
        return torch.cat(
            [
                weights[seg[f][0] : seg[f][1]]
                if self.weighted[f]
                else torch.ones(seg[f][1] - seg[f][0], device=weights.device)
                for f in fs
            ]
        ).to(self.device, torch.float32)

    def _table_ids(
        self,
        kjt: KeyedJaggedTensor,
        seg: dict[str, tuple[int, int]],
        known: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each table's ids ``[n_t]``: its features' ids (``values[seg[f]]``) in order, or
        ``known[table]`` where given."""
        values, known = kjt.values(), known or {}
        out = {}
        for t in self.tables:
            parts = [values[seg[f][0] : seg[f][1]] for f in self.where_features(t)]
            # one feature: its slice of values, a view (no copy)
            out[t] = known.get(t, parts[0] if len(parts) == 1 else torch.cat(parts))
        return out

    def _feature_rows(
        self, kjt: KeyedJaggedTensor, seg: dict[str, tuple[int, int]]
    ) -> dict[str, torch.Tensor]:
        """Each feature's table rows ``[n_f]``: its ids mapped with the other features of its
        table in one go (a table's ids as probed ahead when ``kjt`` is the batch probed)."""
        table_ids = self._table_ids(kjt, seg, self._ahead.ids_for(kjt) if self.training else None)
        rows: dict[str, torch.Tensor] = {}
        for table, r in self._map_all(table_ids).items():
            o = 0
            for f in self.where_features(table):
                n = seg[f][1] - seg[f][0]
                rows[f] = r[o : o + n]
                o += n
        return rows

    # ------------------------------------------------------------------ mapping ahead
    @property
    def sends_ahead(self) -> bool:
        """Whether :meth:`prefetch` maps ahead: ``map_ahead`` set, hashed tables, native kernels."""
        return (
            self.map_ahead and bool(self.mappers) and all(m.native for m in self.mappers.values())
        )

    @property
    def prefetched_lookups(self) -> int:
        """Training lookups that used the probe made ahead for their batch."""
        return self._ahead.taken

    def prefetch(self, kjt: KeyedJaggedTensor) -> bool:
        """Name the next training batch: its ids are probed once this step's are mapped."""
        if not self.sends_ahead:
            return False
        self._upcoming = kjt
        return True

    def settle_ahead(self) -> None:
        """Wait until the probe in flight, if any, has finished (a benchmark times the next
        step as in a steady pipeline, where the probe ran during the step before)."""
        self._ahead.settle()

    def _probe_upcoming(self) -> None:
        """Start the background probe of the batch :meth:`prefetch` named, if any."""
        kjt, self._upcoming = self._upcoming, None
        if kjt is None or not self.training:
            return
        if any(f not in kjt.keys() for f in self.pooled_features + self.sequence_features):
            return  # not a batch of this collection's features: its lookup will say so
        ids = self._table_ids(kjt, _segments(kjt))
        self._ahead.start(kjt, {t: ids[t].cpu() for t in self.mappers}, self.mappers)

    def _keyed(
        self,
        pooled: dict[str, torch.Tensor],
        last_pooled: tuple[list[str], torch.Tensor] | None,
    ) -> KeyedTensor | None:
        """The pooled outputs ``{feature: [B, D]}`` as one KeyedTensor, keys in the features'
        order (as given to the constructor) whatever the grouping; None without any."""
        if not pooled:
            return None
        if last_pooled is not None and last_pooled[0] == self.pooled_features:
            values = last_pooled[1]  # one pooled group, already in order: no copy
        else:
            values = torch.cat([pooled[f] for f in self.pooled_features], dim=1)
        return KeyedTensor(
            keys=self.pooled_features,
            length_per_key=[pooled[f].shape[1] for f in self.pooled_features],
            values=values,
        )

    def where_features(self, table: str) -> list[str]:
        g, j = self.where[table]
        return self.groups[g].tables[j].features

    # ------------------------------------------------------------------ rows by id
    def live_rows(self, table: str) -> dict[str, torch.Tensor]:
        """Hashed ``table``'s live rows, on CPU: ``ids`` int64 ``[n]``, ``weights`` ``[n, D]``,
        optimizer state ``state0``, ... (``[n, D]`` or ``[n]``), and the mapper's last-seen
        step ``last`` / LFU count ``count`` int32 ``[n]`` where it keeps them."""
        mapper = self.mappers[table]
        ids, rows = mapper.items()
        g, j = self.where[table]
        grp = self.groups[g]
        r = torch.from_numpy(rows + 1).to(self.device)
        out = {"ids": torch.from_numpy(ids.copy()), "weights": grp.weight(j)[r].detach().cpu()}
        for k, s in enumerate(grp.states(j)):
            out[f"state{k}"] = s[r].detach().cpu()
        if mapper.row_last is not None:
            out["last"] = torch.from_numpy(mapper.row_last[rows].copy())
        if mapper.row_count is not None:
            out["count"] = torch.from_numpy(mapper.row_count[rows].copy())
        return out

    @torch.no_grad()
    def load_rows(self, table: str, rows: dict[str, torch.Tensor]) -> None:
        """Replace hashed ``table``'s rows by ``rows`` (the fields of :meth:`live_rows`;
        ids beyond the capacity are dropped as the mapper's ``insert_items`` does)."""
        mapper = self.mappers[table]
        self._ahead.drop()  # it reads the mappers
        mapper.clear()
        last, count = rows.get("last"), rows.get("count")
        at = mapper.insert_items(
            rows["ids"],
            None if last is None else last.numpy(),
            None if count is None else count.numpy(),
        )
        self._fit_rows(table, mapper.capacity + 1)
        g, j = self.where[table]
        grp = self.groups[g]
        keep = torch.from_numpy(at >= 0)
        r = torch.from_numpy(at[at >= 0] + 1).to(self.device)
        w = grp.weight(j)
        w[r] = rows["weights"][keep].to(w.device, w.dtype)
        for k, s in enumerate(grp.states(j)):
            s[r] = rows[f"state{k}"][keep].to(s.device, s.dtype)

    def resolved_table(self, table: str) -> TableConfig:
        """``table``'s config as this collection runs it: its optimizer and init scale
        filled in (a table's own, else the collection's optimizer and the default scale)."""
        g, j = self.where[table]
        grp = self.groups[g]
        return dataclasses.replace(
            self.tables[table], optimizer=grp.opt, init_scale=grp.tables[j].init_scale
        )

    def admission_sketch(self, table: str) -> np.ndarray | None:
        """Hashed ``table``'s count-min sketch of admission counts (int32 ``[depth, width]``,
        the mapper's own array: writes go through), or None."""
        return self.mappers[table].admission.sketch

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "mappers": {n: m.state_dict() for n, m in self.mappers.items()},
            "rows": {n: self.groups[g].tables[j].rows for n, (g, j) in self.where.items()},
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # runs before the groups load theirs: resize grown tables first
        self._ahead.drop()  # it reads the mappers
        self.step = int(state["step"])
        for name, st in state["mappers"].items():
            self.mappers[name].load_state_dict(st)
        for name, rows in state["rows"].items():
            self._fit_rows(name, rows)

    def torchrec_tables(self) -> list[EmbeddingBagConfig | EmbeddingConfig]:
        """torchrec configs of the tables as laid out here (rows include the fallback row).

        For sharding: a torchrec ``EmbeddingBagCollection`` / ``EmbeddingCollection``
        built from these, with ``apply_optimizer_in_backward`` of the same optimizer,
        is what ``DistributedModelParallel`` shards; see docs/embedding.md.
        """
        out: list[EmbeddingBagConfig | EmbeddingConfig] = []
        for name, (g, j) in self.where.items():
            slot = self.groups[g].tables[j]
            dtype = DataType.FP16 if self.tables[name].dtype == "fp16" else DataType.FP32
            common = dict(
                name=name,
                embedding_dim=slot.dim,
                num_embeddings=slot.rows,
                feature_names=list(slot.features),
                data_type=dtype,
            )
            pooling = self.tables[name].pooling
            if pooling == "none":
                out.append(EmbeddingConfig(**common))
            else:
                pt = PoolingType.SUM if pooling == "sum" else PoolingType.MEAN
                out.append(EmbeddingBagConfig(**common, pooling=pt))
        return out

    def export_embeddings(self, path: str | Path) -> None:
        """Write live rows as safetensors: ``{table}.ids`` int64 ``[N]``, ``{table}.weights`` ``[N, D]``."""
        out: dict[str, torch.Tensor] = {}
        for name, (g, j) in self.where.items():
            w = self.groups[g].weight(j).detach()
            if name in self.mappers:
                ids, rows = self.mappers[name].items()
                vec = w[torch.from_numpy(rows + 1).to(w.device)]
                ids_t = torch.from_numpy(ids.copy())
            else:
                vec, ids_t = w, torch.arange(w.shape[0], dtype=torch.int64)
            out[f"{name}.ids"] = ids_t.contiguous()
            out[f"{name}.weights"] = vec.float().cpu().contiguous()
        save_file(out, str(path))


def _segments(kjt: KeyedJaggedTensor) -> dict[str, tuple[int, int]]:
    """Each key's ``[start, end)`` in ``kjt.values()``."""
    vo = [0, *np.cumsum(kjt.length_per_key()).tolist()]
    return {k: (vo[i], vo[i + 1]) for i, k in enumerate(kjt.keys())}


def _new_mapper(t: TableConfig, capacity: int, seed: int) -> IdMapper:
    """The IdMapper of hashed table ``t`` with ``capacity`` rows (1 for a template)."""
    return IdMapper(
        capacity,
        name=t.name,
        eviction=t.eviction,
        ttl_steps=t.ttl_steps,
        evict_fraction=t.evict_fraction,
        min_count=t.admission_min_count,
        admit_prob=t.admission_prob,
        growable=t.growable,
        grow_at=t.grow_at,
        max_capacity=t.max_capacity,
        seed=seed,
    )


def _table_slot(t: TableConfig, features: list[str], one_row: bool) -> TableSlot:
    """Table ``t``'s place in its group: a hashed table has one more row (row 0, the
    fallback); a template holds one row."""
    mapped = t.mapper == "hash"
    return TableSlot(
        name=t.name,
        dim=t.dim,
        rows=(1 if one_row else t.capacity) + int(mapped),
        init=t.init,
        init_scale=t.init_scale or default_scale(t.capacity),
        by_id=mapped,
        features=features,
    )
