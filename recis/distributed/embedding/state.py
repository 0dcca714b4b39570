"""State of a sharded hashed collection that does not depend on the world size: every live
row by id, row-sharded over the ranks.

:meth:`ByIdState.state_dict` gives, per table, ``rows.<table>.ids`` int64 ``[N]``,
``.weights`` ``[N, D]``, ``.state<k>`` (optimizer state), ``.last`` / ``.count`` (LRU/TTL
step, LFU count) as ``ShardedTensor``\\ s whose rank ``r`` part is what rank ``r`` owns,
plus ``step`` and ``sketch.<table>`` (count-min sketches summed over ranks). A load at any
world size reads an even slice of the saved rows on each rank (sizes told beforehand by
:meth:`ByIdState.prepare_load`, since they depend on content) and sends every row to its
owner (reshard). Rows are read and written through the local collections' public row API
(``live_rows``, ``load_rows``, ``admission_sketch``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, init_from_local_shards

from recis.config import TableConfig
from recis.errors import CheckpointError

from .exchange import Links
from .local import LocalTables
from .plan import PlacementPlan

__all__ = ["ByIdState"]

_WRAPPERS = ("module", "_dmp_wrapped_module")  # wrapper names in DDP's / DMP's state keys


class ByIdState:
    """Save, load (at any world size) and export of one rank's rows.

    Args:
        local: this rank's local collections.
        plan: where the tables go.
        order: the tables in state order.
        configs: every table's config.
        rank: this rank.
        group: the process group of the state's collectives (None: the default group).
        links: the transports (rows being loaded go through ``control``).
    """

    def __init__(
        self,
        local: LocalTables,
        plan: PlacementPlan,
        order: list[str],
        configs: dict[str, TableConfig],
        rank: int,
        group: dist.ProcessGroup | None,
        links: Links,
    ) -> None:
        self.local, self.plan, self.order, self.configs = local, plan, order, configs
        self.rank, self.world, self.group, self.links = rank, links.world, group, links
        self.pending: dict[str, Any] | None = None  # checkpoint sizes (prepare_load)

    # ------------------------------------------------------------------ save
    def _row_sharded(self, local: torch.Tensor, offset: int, total: int) -> torch.Tensor:
        """``local`` rows as rows ``[offset, offset + n)`` of a ``[total, ...]`` tensor."""
        if self.world == 1 or total == 0:
            return local
        shards = []
        if local.shape[0]:
            meta = ShardMetadata(
                shard_offsets=[offset] + [0] * (local.dim() - 1),
                shard_sizes=list(local.shape),
                placement=f"rank:{self.rank}/{local.device}",
            )
            shards.append(Shard(local, meta))
        return init_from_local_shards(shards, [total, *local.shape[1:]])

    def _sketch_sum(self, t: str) -> torch.Tensor | None:
        # a template where the table is not here: zeros
        sketch = self.local.shaped_like(t).admission_sketch(t)
        if sketch is None:
            return None
        out = torch.from_numpy(sketch.copy())
        if self.world > 1:  # count-min sketches add up: the sum is the global stream's
            dist.all_reduce(out, group=self.group)
        return out

    def state_dict(self, step: int, prefix: str = "") -> dict[str, torch.Tensor]:
        """World-size-independent state (collective): ``rows.<table>.<field>`` row-sharded
        over ranks, ``step``, ``sketch.<table>``. After :meth:`prepare_load`: empty
        templates shaped like the checkpoint's."""
        out: dict[str, torch.Tensor] = OrderedDict()
        if self.pending is not None:
            return self._templates(prefix)
        rows = {t: self.local.shaped_like(t).live_rows(t) for t in self.order}
        n = torch.tensor([rows[t]["ids"].numel() for t in self.order], dtype=torch.int64)
        every = [n] if self.world == 1 else [torch.empty_like(n) for _ in range(self.world)]
        if self.world > 1:
            dist.all_gather(every, n, group=self.group)
        counts = torch.stack(every)  # [W, T]
        for i, t in enumerate(self.order):
            offset, total = int(counts[: self.rank, i].sum()), int(counts[:, i].sum())
            for field, v in rows[t].items():
                out[f"{prefix}rows.{t}.{field}"] = self._row_sharded(v, offset, total)
            sketch = self._sketch_sum(t)
            if sketch is not None:
                out[f"{prefix}sketch.{t}"] = sketch
        out[f"{prefix}step"] = torch.tensor(step, dtype=torch.int64)
        return out

    # ------------------------------------------------------------------ load
    def prepare_load(self, sizes: dict[str, torch.Size] | None, root: str = "") -> None:
        """Make the next :meth:`state_dict` a template for loading a checkpoint whose
        tensors (full names ``root + <module prefix> + key``) have these global sizes
        (None: back to the live state)."""
        self.pending = None if sizes is None else {"sizes": sizes, "root": root}

    def _templates(self, prefix: str) -> dict[str, torch.Tensor]:
        assert self.pending is not None
        sizes, root = self.pending["sizes"], self.pending["root"]
        full = root + _unwrapped(prefix)
        out: dict[str, torch.Tensor] = OrderedDict()
        for key, size in sizes.items():
            if not key.startswith(full):
                continue
            name = key[len(full) :]
            if not name.startswith("rows."):
                out[prefix + name] = torch.zeros(size, dtype=self._dtype_of(name))
                continue
            total = size[0]
            per = math.ceil(total / self.world) if total else 0
            lo, hi = min(total, self.rank * per), min(total, (self.rank + 1) * per)
            local = torch.zeros((hi - lo, *size[1:]), dtype=self._dtype_of(name))
            out[prefix + name] = self._row_sharded(local, lo, total)
        missing = [t for t in self.order if f"{prefix}rows.{t}.ids" not in out]
        if missing:
            raise CheckpointError(f"checkpoint has no rows of hashed table(s) {missing}")
        return out

    def _dtype_of(self, name: str) -> torch.dtype:
        field = name.rsplit(".", 1)[-1]
        if name == "step" or field == "ids":
            return torch.int64
        if name.startswith("sketch.") or field in ("last", "count"):
            return torch.int32
        fp16 = field == "weights" and self.configs[name.split(".")[1]].dtype == "fp16"
        return torch.float16 if fp16 else torch.float32

    def load(
        self, state_dict: dict[str, Any], prefix: str, strict: bool, missing_keys: list[str]
    ) -> int | None:
        """Load this module's part of ``state_dict`` (collective): every row goes to the
        rank that owns its id now. Returns the saved step (None: not in ``state_dict``)."""
        self.pending = None
        if f"{prefix}step" not in state_dict:
            if strict:
                missing_keys.append(f"{prefix}step")
            return None
        for t in self.order:
            head = f"{prefix}rows.{t}."
            fields = {
                k[len(head) :]: _local_rows(v) for k, v in state_dict.items() if k.startswith(head)
            }
            if "ids" not in fields:
                if strict:
                    missing_keys.append(f"{head}ids")
                continue
            fields = self._reshard(t, fields)
            holder = self.local.holder(t)
            if holder is None:  # a whole table another rank holds: nothing came here
                continue
            holder.load_rows(t, fields)
            sketch = state_dict.get(f"{prefix}sketch.{t}")
            mine = holder.admission_sketch(t)
            if sketch is not None and mine is not None:
                mine[...] = sketch.numpy()
        return int(state_dict[f"{prefix}step"])

    def _reshard(self, t: str, fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Send every loaded row of table ``t`` to the rank that holds its id now
        (collective)."""
        if self.world == 1:
            return fields
        dest = self.plan.owners(t, fields["ids"])
        order = torch.argsort(dest, stable=True)
        send = torch.bincount(dest, minlength=self.world)
        recv = self.links.counts(send)
        ex = self.links.control
        return {n: ex.start(v[order], send.tolist(), recv.tolist())() for n, v in fields.items()}

    # ------------------------------------------------------------------ export
    def gather_rows(self, t: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's live ``(ids [N], weights [N, D])`` of table ``t``, sorted by id, on
        every rank (collective; for tests, exports and small tables)."""
        rows = self.local.shaped_like(t).live_rows(t)
        parts = [(rows["ids"], rows["weights"])]
        if self.world > 1:
            every: list[Any] = [None] * self.world
            dist.all_gather_object(every, parts[0], group=self.group)
            parts = every
        ids = torch.cat([p[0] for p in parts])
        weights = torch.cat([p[1] for p in parts])
        order = torch.argsort(ids)
        return ids[order], weights[order]

    def export_embeddings(self, path: str | Path) -> None:
        """All ranks' live rows as one safetensors file, written by rank 0 (collective):
        ``{table}.ids`` int64 ``[N]`` sorted, ``{table}.weights`` float32 ``[N, D]``, the
        layout of :meth:`HashedEmbeddingCollection.export_embeddings`."""
        out: dict[str, torch.Tensor] = {}
        for t in self.order:
            ids, weights = self.gather_rows(t)
            out[f"{t}.ids"], out[f"{t}.weights"] = ids.contiguous(), weights.float().contiguous()
        if self.rank == 0:
            save_file(out, str(path))


def _unwrapped(prefix: str) -> str:
    """``prefix`` without DDP's / DMP's wrapper names, as their state dicts write keys."""
    return "".join(f"{p}." for p in prefix.split(".")[:-1] if p not in _WRAPPERS)


def _local_rows(v: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a loaded row-sharded tensor (the whole tensor if plain)."""
    if isinstance(v, ShardedTensor):
        shards = v.local_shards()
        if not shards:
            return torch.zeros((0, *v.size()[1:]), dtype=v.dtype)
        return torch.cat([s.tensor for s in shards])
    return v
