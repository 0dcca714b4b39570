"""Feature specs: how table columns become model inputs.

A :class:`Schema` maps columns of the input files to dense features, sparse
(id) features and labels. Readers in :mod:`recis.io` turn Arrow record batches
into a :class:`recis.io.Batch` by following it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid")


@dataclass(config=_STRICT)
class DenseFeature:
    """A float column. Nulls/NaNs get ``fill``; ``transform`` is applied after filling.

    ``log`` is ``log1p(max(x, 0))``, ``standardize`` is ``(x - mean) / std``
    with ``mean``/``std`` given in the spec.
    """

    name: str
    column: str | None = None
    fill: float = 0.0
    transform: Literal["none", "log", "standardize"] = "none"
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass(config=_STRICT)
class SparseFeature:
    """An id feature looked up in embedding table ``table`` (default: its own name).

    ``dtype`` ``int`` reads int64 ids (scalar or list column); ``string`` hashes
    strings to 64-bit ids salted by the feature (or table) name.
    """

    name: str
    column: str | None = None
    table: str | None = None
    dtype: Literal["int", "string"] = "int"
    max_len: int | None = Field(default=None, gt=0)
    weight_column: str | None = None

    @property
    def source(self) -> str:
        return self.column or self.name

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclass(config=_STRICT)
class LabelSpec:
    """A label column; ``name`` is the task it trains."""

    name: str
    column: str | None = None

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass(config=_STRICT)
class Schema:
    dense: list[DenseFeature] = Field(default_factory=list)
    sparse: list[SparseFeature] = Field(default_factory=list)
    labels: list[LabelSpec] = Field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        cols = [f.source for f in self.dense] + [f.source for f in self.sparse]
        cols += [f.weight_column for f in self.sparse if f.weight_column]
        cols += [label.source for label in self.labels]
        return list(dict.fromkeys(cols))
