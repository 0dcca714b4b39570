"""Placement plan of the hashed engine: which rank owns which table or id.

A table is either kept whole on one rank (table-wise) or split by id over all ranks
(row-wise): id ``x`` of a split table belongs to rank :func:`owner_of` ``(x, W)``.
:func:`place_tables` computes the whole tables' ranks from sharding kinds; a
:class:`PlacementPlan` holds the result and answers "who owns this" for any table and id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from recis.config import TableConfig
from recis.errors import ConfigError

__all__ = [
    "HASHED_SHARDING",
    "PlacementPlan",
    "check_hashed_kind",
    "owner_of",
    "place_tables",
]

HASHED_SHARDING = ("table_wise", "row_wise", "auto")

_MIX = 0x9E3779B97F4A7C15 - (1 << 64)  # the golden-ratio multiplier, as an int64


def owner_of(ids: torch.Tensor, world: int) -> torch.Tensor:
    """Rank owning each id of a table split by id (int64 ``[N]`` -> ``[N]`` in ``[0, world)``).

    The top half of ``id * 0x9E3779B97F4A7C15`` (mod 2^64) modulo ``world``: spreads
    sequential raw ids as evenly as hashed ones.
    """
    if world == 1:
        return torch.zeros_like(ids)
    return torch.remainder((ids * _MIX) >> 32, world)


def check_hashed_kind(table: str, kind: str) -> None:
    """ConfigError unless ``kind`` is a sharding a hashed table can take."""
    if kind not in HASHED_SHARDING:
        raise ConfigError(
            f"distributed.sharding.{table}: {kind!r}: a table of the hashed engine is "
            f"one of {HASHED_SHARDING} (row_wise: split by id over all ranks)"
        )


def place_tables(
    tables: Sequence[TableConfig], world_size: int, kinds: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Where the hashed tables go: ``{table: rank}`` for those kept whole; the rest are
    split by id over all ranks.

    Per table kind (``kinds``, default ``auto``): ``table_wise`` keeps it whole;
    ``row_wise`` splits it by id; ``auto`` keeps it whole unless it is larger than
    ``1 / world_size`` of all the tables together (no placement could balance it), and
    splits it then. Whole tables go to ranks in contiguous runs of ``tables``' order (the
    features' order), each rank taking about ``1 / world_size`` of their size (capacity x
    dim): a table goes to rank ``floor(W * midpoint / total)``. In that layout a batch's
    ids are already grouped by destination, so they are sent without a copy.
    """
    kinds = kinds or {}
    size = {t.name: t.capacity * t.dim for t in tables}
    total = sum(size.values())
    whole = []
    for t in tables:
        kind = kinds.get(t.name, "auto")
        check_hashed_kind(t.name, kind)
        if kind == "table_wise" or (kind == "auto" and size[t.name] * world_size <= total):
            whole.append(t.name)
    if world_size == 1:
        return {}
    held = sum(size[t] for t in whole)
    out, acc = {}, 0
    for name in whole:
        out[name] = min(world_size - 1, int(world_size * (acc + size[name] / 2) / held))
        acc += size[name]
    return out


@dataclasses.dataclass(frozen=True)
class PlacementPlan:
    """Who owns what: ``whole`` maps the tables kept whole to their rank; every other
    table of ``tables`` is split by id over the ``world`` ranks (:func:`owner_of`).

    Attributes:
        tables: every table, in the collection's order.
        world: number of ranks.
        whole: ``{table: rank}`` of the tables kept whole.
    """

    tables: tuple[str, ...]
    world: int
    whole: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, r in self.whole.items():
            if name not in self.tables or not 0 <= r < self.world:
                raise ConfigError(
                    f"placement of hashed table {name!r} on rank {r}: tables are "
                    f"{list(self.tables)}, ranks 0..{self.world - 1}"
                )
        # a private copy: the plan cannot change under its users
        object.__setattr__(self, "whole", dict(self.whole))

    @property
    def split(self) -> list[str]:
        """The tables split by id, in table order."""
        return [t for t in self.tables if t not in self.whole]

    def whole_on(self, rank: int) -> list[str]:
        """The tables kept whole on ``rank``, in the order of :attr:`whole`."""
        return [t for t, r in self.whole.items() if r == rank]

    def owners(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Rank holding each id of ``table`` (int64 ``[N]`` -> ``[N]``): its rank if whole,
        else :func:`owner_of`."""
        if table in self.whole:
            return torch.full_like(ids, self.whole[table])
        return owner_of(ids, self.world)
