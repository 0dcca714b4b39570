"""Id routing of the tables split by id: unique ids to their owner ranks, and the owners'
rows back into the order of the ids. Pure tensor code: the transfers themselves are the
caller's (an :class:`~recis.distributed.embedding.exchange.Exchange`), so a route can be
checked without processes.

One step, on each rank: :meth:`SplitRoute.of` sorts the unique ids of every split table
by (owner, table) and gives the counts ``send [W, T]``; the ids (with their occurrence
counts) go to the owners; :meth:`SplitRoute.received` regroups what an owner got
table-major (:class:`Received`), and tells in which order to send the rows of each group
of tables back (:meth:`Received.reply`); :meth:`SplitRoute.slots` puts the rows that came
back into the order of the unique ids.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from .exchange import inverse_permutation
from .plan import owner_of

__all__ = ["BatchLayout", "Received", "SplitRoute"]


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """Where each feature is in a KJT: ``b`` rows, key index ``at[f]``, and the
    ``(start, end)`` of its ids in ``values()`` (``seg[f]``)."""

    b: int
    at: dict[str, int]
    seg: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, kjt: KeyedJaggedTensor) -> BatchLayout:
        keys = kjt.keys()
        vo = [0, *np.cumsum(kjt.length_per_key()).tolist()]
        return cls(
            kjt.stride(),
            {k: i for i, k in enumerate(keys)},
            {k: (vo[i], vo[i + 1]) for i, k in enumerate(keys)},
        )

    def count(self, feature: str) -> int:
        """Ids of ``feature`` in the batch."""
        return self.seg[feature][1] - self.seg[feature][0]

    def ids(self, values: torch.Tensor, feature: str) -> torch.Tensor:
        """``feature``'s slice of ``values`` (ids or per-id weights)."""
        return values[self.seg[feature][0] : self.seg[feature][1]]

    def lengths(self, lengths: torch.Tensor, feature: str) -> torch.Tensor:
        """``feature``'s ``[B]`` bag lengths."""
        return lengths[self.at[feature] * self.b : (self.at[feature] + 1) * self.b]


@dataclasses.dataclass
class SplitRoute:
    """The unique ids of the split tables of one batch, sorted for their owners.

    Attributes:
        world: ranks.
        sizes: ``[T]`` unique ids per table (tables in the route's order).
        order: position (in the tables' ids concatenated) of each id sent, in send order.
        table_idx: table index of each id, in concatenated order.
        send: ``[W, T]`` ids sent to each rank per table.
        payload: ``[N, 2]`` (id, occurrences) in send order.
    """

    world: int
    sizes: torch.Tensor
    order: torch.Tensor
    table_idx: torch.Tensor
    send: torch.Tensor
    payload: torch.Tensor

    @classmethod
    def of(cls, uniq: list[torch.Tensor], counts: list[torch.Tensor], world: int) -> SplitRoute:
        """Route per-table unique ids ``uniq`` (int64, with their ``counts``) to their owners."""
        nt = len(uniq)
        sizes = torch.tensor([u.numel() for u in uniq])
        all_ids, all_counts = torch.cat(uniq), torch.cat(counts)
        table_idx = torch.repeat_interleave(
            torch.arange(nt, device=all_ids.device), sizes.to(all_ids.device)
        )
        key = owner_of(all_ids, world) * nt + table_idx
        order = torch.argsort(key, stable=True)
        send = torch.bincount(key, minlength=world * nt).view(world, nt).cpu()
        payload = torch.stack([all_ids[order], all_counts[order]], 1)
        return cls(world, sizes, order, table_idx, send, payload)

    def received(self, recv: torch.Tensor, got: torch.Tensor) -> Received:
        """What an owner got: ``recv`` ``[W, T]`` counts per source and table, ``got`` their
        ``[N, 2]`` (id, occurrences) in source order."""
        nt = recv.shape[1]
        rtable = torch.repeat_interleave(torch.arange(nt).repeat(self.world), recv.flatten())
        rorder = torch.argsort(rtable.to(got.device), stable=True)
        per_table = recv.sum(0).tolist()
        return Received(
            recv=recv,
            rtable=rtable,
            ids=list(got[rorder, 0].split(per_table)),
            counts=list(got[rorder, 1].split(per_table)),
            per_table=per_table,
            back_pos=inverse_permutation(rorder),
        )

    def send_sizes(self, t0: int = 0, t1: int | None = None) -> list[int]:
        """Ids sent to each rank, of tables ``[t0, t1)``."""
        return self.send[:, t0:t1].sum(1).tolist()

    def slots(self, t0: int, t1: int) -> torch.Tensor:
        """For the rows of tables ``[t0, t1)`` that come back in send order: each one's
        position among those tables' unique ids (a permutation)."""
        sent = (self.table_idx[self.order] >= t0) & (self.table_idx[self.order] < t1)
        return self.order[sent] - int(self.sizes[:t0].sum())


@dataclasses.dataclass
class Received:
    """An owner's side of a :class:`SplitRoute`: per table, the ids every rank asked for
    (source after source) and their occurrences.

    Attributes:
        recv: ``[W, T]`` ids from each source per table.
        rtable: table index of each received id, in arrival order.
        ids, counts: per table, the ids (and occurrences) in source order.
        per_table: ids per table.
        back_pos: table-major position of each received id, in arrival order.
    """

    recv: torch.Tensor
    rtable: torch.Tensor
    ids: list[torch.Tensor]
    counts: list[torch.Tensor]
    per_table: list[int]
    back_pos: torch.Tensor

    def reply(self, t0: int, t1: int) -> tuple[torch.Tensor, list[int]]:
        """How to send back the rows of tables ``[t0, t1)`` (looked up table-major, the
        tables' ids concatenated): the row order (a permutation), and the rows for each
        source rank."""
        mine = (self.rtable >= t0) & (self.rtable < t1)
        start = sum(self.per_table[:t0])
        rows = self.back_pos[mine.to(self.back_pos.device)] - start
        return rows, self.recv[:, t0:t1].sum(1).tolist()
