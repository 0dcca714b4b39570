"""State of a :class:`~recis.distributed.hashed.ShardedHashedEmbeddingCollection` that does
not depend on the world size: every live row by id, row-sharded over the ranks.

``state_dict`` gives, per table, ``rows.<table>.ids`` int64 ``[N]``, ``.weights``
``[N, D]``, ``.state<k>`` (optimizer state), ``.last`` / ``.count`` (LRU/TTL step, LFU
count) as ``ShardedTensor``\\ s whose rank ``r`` part is what rank ``r`` owns, plus
``step`` and ``sketch.<table>`` (count-min sketches summed over ranks). A load at any
world size reads an even slice of the saved rows on each rank (sizes told beforehand by
:meth:`ByIdState.prepare_load`, since they depend on content) and sends every row to its
owner.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor

from recis.config import TableConfig
from recis.embedding import HashedEmbeddingCollection
from recis.errors import CheckpointError


class ByIdState:
    """Checkpoint and export methods of the sharded hashed collection (a mixin listed
    before ``nn.Module``, whose ``state_dict`` / ``_load_from_state_dict`` it replaces; it
    reads ``holder``, ``_store``, ``placement``, ``order``, ``configs``, ``step``,
    ``rank``, ``world``, ``group``, ``device``)."""

    _store: list[HashedEmbeddingCollection | None]
    placement: dict[str, int]
    order: list[str]
    step: int
    configs: dict[str, TableConfig]
    rank: int
    world: int
    group: dist.ProcessGroup | None
    device: torch.device
    _pending_load: dict[str, Any] | None

    def _live_rows(self, t: str) -> dict[str, torch.Tensor]:
        """This rank's live rows of table ``t``: ids ``[n]``, weights ``[n, D]``, optimizer
        state (``state0``, ...), last-seen step and LFU count where the mapper keeps them."""
        # a whole table another rank holds: no rows here, shaped by the template
        local = self.holder(t) or self._store[2]
        assert local is not None
        mapper = local.mappers[t]
        ids, rows = mapper.items()
        g, j = local.where[t]
        grp = local.groups[g]
        r = torch.from_numpy(rows + 1).to(self.device)
        out = {"ids": torch.from_numpy(ids.copy()), "weights": grp.weight(j)[r].detach().cpu()}
        for k, s in enumerate(grp.states(j)):
            out[f"state{k}"] = s[r].detach().cpu()
        if mapper.row_last is not None:
            out["last"] = torch.from_numpy(mapper.row_last[rows].copy())
        if mapper.row_count is not None:
            out["count"] = torch.from_numpy(mapper.row_count[rows].copy())
        return out

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
        return ShardedTensor._init_from_local_shards(shards, [total, *local.shape[1:]])

    def holder(self, table: str) -> HashedEmbeddingCollection | None:
        raise NotImplementedError

    def _sketch_sum(self, t: str) -> torch.Tensor | None:
        local = self.holder(t) or self._store[2]  # template: zeros where the table is not
        assert local is not None
        sketch = local.mappers[t].sketch
        if sketch is None:
            return None
        out = torch.from_numpy(sketch.copy())
        if self.world > 1:  # count-min sketches add up: the sum is the global stream's
            dist.all_reduce(out, group=self.group)
        return out

    def state_dict(self, *args: Any, destination=None, prefix: str = "", keep_vars: bool = False):  # type: ignore[no-untyped-def,override]
        """World-size-independent state (collective): ``rows.<table>.<field>`` row-sharded
        over ranks, ``step``, ``sketch.<table>``. Before a load (:meth:`prepare_load`) the
        tensors are empty templates shaped like the checkpoint's."""
        out = destination if destination is not None else OrderedDict()
        if self._pending_load is not None:
            out.update(self._templates(prefix))
            return out
        rows = {t: self._live_rows(t) for t in self.order}
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
        out[f"{prefix}step"] = torch.tensor(self.step, dtype=torch.int64)
        return out

    def prepare_load(self, sizes: dict[str, torch.Size] | None, root: str = "") -> None:
        """Make the next :meth:`state_dict` a template for loading a checkpoint whose
        tensors (full names ``root + <module prefix> + key``) have these global sizes
        (None: back to the live state)."""
        self._pending_load = None if sizes is None else {"sizes": sizes, "root": root}

    def _templates(self, prefix: str) -> dict[str, torch.Tensor]:
        assert self._pending_load is not None
        sizes, root = self._pending_load["sizes"], self._pending_load["root"]
        full = root + _unwrapped(prefix)
        out: dict[str, torch.Tensor] = {}
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
        return torch.float16 if field == "weights" and self._fp16(name) else torch.float32

    def _fp16(self, name: str) -> bool:
        return self.configs[name.split(".")[1]].dtype == "fp16"

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        self._pending_load = None
        if f"{prefix}step" not in state_dict:
            if strict:
                missing_keys.append(f"{prefix}step")
            return
        self.step = int(state_dict[f"{prefix}step"])
        for t in self.order:
            head = f"{prefix}rows.{t}."
            fields = {
                k[len(head) :]: _local_rows(v) for k, v in state_dict.items() if k.startswith(head)
            }
            if "ids" not in fields:
                if strict:
                    missing_keys.append(f"{head}ids")
                continue
            fields = self._route(t, fields)
            local = self.holder(t)
            if local is None:  # a whole table another rank holds: nothing came here
                continue
            self._load_table(local, t, fields)
            sketch = state_dict.get(f"{prefix}sketch.{t}")
            mapper = local.mappers[t]
            if sketch is not None and mapper.sketch is not None:
                mapper.sketch[...] = sketch.numpy()

    def owners(self, t: str, ids: torch.Tensor) -> torch.Tensor:
        """Rank holding each id of table ``t`` (its rank if whole, else :func:`owner_of`)."""
        if t in self.placement:
            return torch.full_like(ids, self.placement[t])
        return owner_of(ids, self.world)

    def _route(self, t: str, fields: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Send every loaded row of table ``t`` to the rank that holds its id now
        (collective)."""
        if self.world == 1:
            return fields
        dest = self.owners(t, fields["ids"])
        order = torch.argsort(dest, stable=True)
        send = torch.bincount(dest, minlength=self.world)
        recv = self._counts(send)
        return {n: self._a2a(v[order], send.tolist(), recv.tolist()) for n, v in fields.items()}

    def _counts(self, send: torch.Tensor) -> torch.Tensor:
        """Row ``r`` of ``send`` ``[W, ...]`` to rank ``r``; row ``s`` of the result came
        from rank ``s``."""
        return self._a2a(send, [1] * self.world, [1] * self.world)

    def _a2a(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        """``all_to_all_single`` along dim 0 without autograd (ids, counts, weights, rows),
        through this collection's device (nccl takes only CUDA tensors); the result is on
        ``x``'s device."""
        return self._a2a_start(x, send, recv)()

    def _a2a_start(
        self, x: torch.Tensor, send: list[int], recv: list[int]
    ) -> Callable[[], torch.Tensor]:
        """:meth:`_a2a` started in the background; the returned function waits for it and
        gives the result."""
        if self.world == 1:
            return lambda: x
        src = x.to(self.device).contiguous()
        out = src.new_empty((sum(recv), *x.shape[1:]))
        work = dist.all_to_all_single(out, src, recv, send, group=self.group, async_op=True)

        def result() -> torch.Tensor:  # the work holds ``src`` until it is done
            work.wait()
            return out.to(x.device)

        return result

    @torch.no_grad()
    def _load_table(
        self, local: HashedEmbeddingCollection, t: str, fields: dict[str, torch.Tensor]
    ) -> None:
        """Replace table ``t``'s rows in ``local`` with ``fields`` (ids this rank owns)."""
        mapper = local.mappers[t]
        mapper.clear()
        last, count = fields.get("last"), fields.get("count")
        rows = mapper.insert_items(
            fields["ids"],
            None if last is None else last.numpy(),
            None if count is None else count.numpy(),
        )
        g, j = local.where[t]
        grp = local.groups[g]
        if mapper.capacity + 1 != grp.tables[j].rows:
            grp.resize(j, mapper.capacity + 1)
        keep = torch.from_numpy(rows >= 0)
        r = torch.from_numpy(rows[rows >= 0] + 1).to(self.device)
        w = grp.weight(j)
        w[r] = fields["weights"][keep].to(w.device, w.dtype)
        for k, s in enumerate(grp.states(j)):
            s[r] = fields[f"state{k}"][keep].to(s.device, s.dtype)

    # ------------------------------------------------------------------ export
    def gather_rows(self, t: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's live ``(ids [N], weights [N, D])`` of table ``t``, sorted by id, on
        every rank (collective; for tests, exports and small tables)."""
        rows = self._live_rows(t)
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


_WRAPPERS = ("module", "_dmp_wrapped_module")


def _local_rows(v: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a loaded row-sharded tensor (the whole tensor if plain)."""
    if isinstance(v, ShardedTensor):
        shards = v.local_shards()
        if not shards:
            return torch.zeros((0, *v.size()[1:]), dtype=v.dtype)
        return torch.cat([s.tensor for s in shards])
    return v


def owner_of(ids: torch.Tensor, world: int) -> torch.Tensor:
    """Rank owning each id (int64 ``[N]`` -> ``[N]`` in ``[0, world)``).

    The top half of ``id * 0x9E3779B97F4A7C15`` (mod 2^64) modulo ``world``: spreads
    sequential raw ids as evenly as hashed ones.
    """
    if world == 1:
        return torch.zeros_like(ids)
    return torch.remainder((ids * _MIX) >> 32, world)


_MIX = 0x9E3779B97F4A7C15 - (1 << 64)  # the golden-ratio multiplier, as an int64
