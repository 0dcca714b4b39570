"""Feature specs: how table columns become model inputs.

A :class:`Schema` maps columns of the input files to dense features, sparse
(id) features, text features and labels. Readers in :mod:`recis.io` turn Arrow
record batches into a :class:`recis.io.Batch` by following it; see
``docs/data.md`` for the full mapping reference.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid")


# columns of a lexical match feature: recis.io.lexical.FEATURES (TF-IDF cosine, BM25, ...)
LEXICAL_DIM = 9


@dataclass(config=_STRICT)
class LexicalInputs:
    """The two text columns of a lexical match :class:`DenseFeature`, and the file of its
    text statistics (document frequencies fitted on the train files: ``recis vocab build``,
    or ``recis train`` when the file is missing)."""

    query: str
    title: str
    stats: str


@dataclass(config=_STRICT)
class DenseFeature:
    """A float column (or a ``list<double>`` column of ``dim`` values per row).

    Nulls/NaNs are handled by the reader's ``nan_policy``: ``fill`` puts
    ``fill`` in their place, ``raise`` stops with a DataError (``on_nan``
    overrides the reader's policy for this feature); inf counts as NaN. A list
    column (the RecIS / TorchEasyRec layout) must hold ``dim`` values per row: a
    null list is a missing value (NaN policy), an empty one a DataError unless
    ``on_empty: fill``, any other length a DataError. ``transform`` is applied
    after filling: ``log`` is ``log1p(max(x, 0))``, ``standardize`` is
    ``(x - mean) / std`` with ``mean``/``std`` given in the spec, ``quantile`` is
    the bucket of ``x`` among the sorted ``boundaries`` (the number of boundaries
    ``<= x``) divided by their count, in ``[0, 1]``: quantile boundaries computed on
    the training data (:func:`recis.io.quantiles.quantile_boundaries`) make any
    heavy-tailed column about uniform.

    With ``lexical`` the feature is computed, not read: the ``LEXICAL_DIM`` (9) lexical
    match signals of a query column and a title column (TF-IDF cosine, BM25, character
    and bigram overlap shares, containment, log lengths; :mod:`recis.io.lexical`) with the
    statistics in ``lexical.stats``; ``dim`` is 9, no ``column`` or ``transform``, a null
    text is "".
    """

    name: str
    column: str | None = None
    fill: float = 0.0
    transform: Literal["none", "log", "standardize", "quantile"] = "none"
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)
    dim: int = Field(default=1, gt=0)
    on_nan: Literal["fill", "raise"] | None = None
    # an empty list where dim values are needed: a DataError, or ``fill`` when "fill"
    on_empty: Literal["raise", "fill"] = "raise"
    boundaries: list[float] | None = None
    lexical: LexicalInputs | None = None

    def __post_init__(self) -> None:
        # ValueError: the config loader reports it under this feature's field path
        if self.lexical is not None:
            if self.dim == 1:
                self.dim = LEXICAL_DIM
            if self.dim != LEXICAL_DIM or self.column is not None or self.transform != "none":
                raise ValueError(
                    f"{self.name}: a lexical feature is {LEXICAL_DIM} computed columns"
                    " (no column, transform or other dim)"
                )
        b = self.boundaries
        if self.transform == "quantile" and not b:
            raise ValueError(f"{self.name}: transform quantile needs boundaries")
        if b and any(x >= y for x, y in zip(b, b[1:])):
            raise ValueError(f"{self.name}: boundaries are not strictly increasing: {b}")

    @property
    def source(self) -> str:
        return self.column or self.name

    @property
    def sources(self) -> list[str]:
        """The columns it is read (or computed) from."""
        return [self.lexical.query, self.lexical.title] if self.lexical else [self.source]


# Unicode normalization of text before tokenizing (``none``: the text as written)
Normalization = Literal["NFKC", "NFC", "NFKD", "NFD", "none"]


@dataclass(config=_STRICT)
class NgramTokenizer:
    """Built-in hashing tokenizer: word and char n-grams, no vocabulary.

    Words split on Unicode word boundaries (runs of letters/digits); each CJK ideograph,
    hiragana or katakana character is a word of its own, since those scripts write no
    spaces. ``words: n`` emits word 1..n-grams (0: none); ``chars: [1, 2]`` emits the
    char n-grams of those orders inside each run of word characters (so Chinese gets char
    bigrams). A term's id is :func:`recis.ops.hashing.hash_strings` of the term salted by
    ``salt`` (one salt for every text feature, so equal terms of query and title share an
    id), taken mod ``buckets`` when set.
    """

    kind: Literal["ngram"] = "ngram"
    words: int = Field(default=2, ge=0, le=4)
    chars: list[int] = Field(default_factory=list)
    buckets: int | None = Field(default=None, gt=0)
    salt: str = "text"
    normalize: Normalization = "NFKC"
    lowercase: bool = True

    def __post_init__(self) -> None:
        from recis.errors import ConfigError

        if any(n < 1 or n > 8 for n in self.chars):
            raise ConfigError(f"tokenizer.chars: orders must be 1..8, got {self.chars}")
        if not self.words and not self.chars:
            raise ConfigError("tokenizer: words is 0 and chars is empty: no terms at all")


@dataclass(config=_STRICT)
class SparseFeature:
    """An id feature looked up in embedding table ``table`` (default: its own name).

    The column is a scalar (one id per row, null = no id) or a list (multi-hot,
    a sequence). ``dtype`` ``auto`` (default) follows the column: integer ids
    pass through, string ids are hashed. ``int`` passes integer ids of any
    width through as int64 (negative and huge values included: the embedding
    engine maps them; ``uint64`` keeps its 64 bits, see ``docs/data.md`` "Real
    layouts") and parses string columns as base-10 int64 ids (a value that is not
    one is a DataError naming the row); ``string`` hashes strings (integers
    are cast to their decimal text first) with
    :func:`recis.ops.hashing.hash_strings` salted by the table name, so
    features sharing a table share ids.

    ``max_len`` truncates list rows to at most that many ids, keeping the
    ``first`` or the ``last`` ones (``truncate``; ``last`` keeps the most
    recent items of a behaviour sequence stored oldest-first).
    ``weight_column`` names a ``list<float>`` column aligned with the ids
    (or a float column for scalar ids): the values become the KJT weights.
    ``separator`` splits a string column holding several ids in one text
    (``"Action|Comedy"``: MovieLens genres, TorchEasyRec tag strings) into a
    multi-hot list; empty pieces are no id. ``kv_separator`` (with ``separator``) reads
    weighted ids written as ``id:weight`` pieces (``"sports:0.8|music:0.2"``, EasyRec's
    tag features): the weight follows the last ``kv_separator`` of a piece (a piece
    without one weighs 1) and becomes the KJT weight; a weight that is not a finite
    number is a bad row.

    ``tokenizer`` (an :class:`NgramTokenizer`) reads a text column (``string``, or
    ``list<string>`` joined by spaces) as the bag of its hashed word / char n-grams, in
    order, so a query or a title feeds any model's id path (DLRM, DeepFM, HHFT, the
    towers) as multi-hot ids; ``max_len`` keeps the first (or last) terms. The ids are the
    tokenizer's, not salted by the table, so equal terms of two text features get one id
    and, on one table, one embedding. A :class:`TextFeature` gives the same text as a
    padded token sequence to the models that read one (DeepBoW, the LLM towers).

    ``time`` (``hour``, ``weekday`` 0 = Monday, ``month``, ``day`` of the month) reads a
    time column (a timestamp, in its own time zone; a date; or a number of ``time_unit``
    since 1970, UTC) as that part of the time, one categorical id a row (a null time: no
    id): the hour of the day and the day of the week a log's clicks depend on.
    """

    name: str
    column: str | None = None
    table: str | None = None
    dtype: Literal["auto", "int", "string"] = "auto"
    max_len: int | None = Field(default=None, gt=0)
    truncate: Literal["first", "last"] = "first"
    weight_column: str | None = None
    separator: str | None = Field(default=None, min_length=1)
    kv_separator: str | None = Field(default=None, min_length=1)
    tokenizer: NgramTokenizer | None = None
    time: Literal["hour", "weekday", "month", "day"] | None = None
    time_unit: Literal["s", "ms", "us"] = "s"

    def __post_init__(self) -> None:
        from recis.errors import ConfigError

        where = f"data.schema.sparse.{self.name}"
        rules = (
            ("time", "one id a row from a time column", ("separator", "weight_column", "tokenizer", "max_len")),
            ("tokenizer", "the tokenizer makes the ids and splits the text", ("separator", "kv_separator", "weight_column")),
        )  # fmt: skip
        for field, what, others in rules:
            if getattr(self, field) is None:
                continue
            clash = [k for k in others if getattr(self, k) is not None]
            clash += ["dtype"] if self.dtype != "auto" else []
            if clash:
                raise ConfigError(f"{where}.{field}: {what}; drop {', '.join(clash)}")
        if self.separator is not None and self.weight_column is not None:
            raise ConfigError(
                f"{where}.separator: weights need a list column (weight_column with"
                " separator); for 'id:weight' pieces set kv_separator"
            )
        if self.kv_separator is not None and self.separator is None:
            raise ConfigError(f"{where}.kv_separator needs separator (between the pieces)")
        if self.kv_separator is not None and self.kv_separator == self.separator:
            raise ConfigError(f"{where}.kv_separator must differ from separator")

    @property
    def weighted(self) -> bool:
        """Whether the ids come with weights (``weight_column`` or ``id:weight`` pieces)."""
        return self.weight_column is not None or self.kv_separator is not None

    @property
    def source(self) -> str:
        return self.column or self.name

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclass(config=_STRICT)
class VocabTokenizer:
    """A subword vocabulary (BPE or WordPiece) trained on the train files' text columns.

    ``path`` is the ``tokenizer.json`` that ``recis vocab build CONFIG`` writes (put it in
    the run dir); every text feature naming the same path shares one vocabulary trained on
    all their columns. ``vocab_size`` and ``min_frequency`` are the trainer's settings.
    """

    path: str
    kind: Literal["vocab"] = "vocab"
    model: Literal["bpe", "wordpiece"] = "bpe"
    vocab_size: int = Field(default=8000, ge=16)
    min_frequency: int = Field(default=2, ge=1)
    normalize: Normalization = "NFKC"
    lowercase: bool = True


@dataclass(config=_STRICT)
class HFTokenizer:
    """A transformers tokenizer from a local directory (``save_pretrained`` layout).

    The tokenizer normalizes itself; ``normalize``/``lowercase`` run before it when set.
    """

    path: str
    kind: Literal["hf"] = "hf"
    normalize: Normalization = "none"
    lowercase: bool = False


TokenizerSpec = Annotated[
    NgramTokenizer | VocabTokenizer | HFTokenizer, Field(discriminator="kind")
]


@dataclass(config=_STRICT)
class TextFeature:
    """A raw string column tokenized into ids (see ``docs/text.md``).

    ``tokenizer`` is an :class:`NgramTokenizer` (the default: word 1-2-grams), a
    :class:`VocabTokenizer` or an :class:`HFTokenizer`; a plain string is a local HF
    tokenizer directory. Produces ``text[name]`` token ids ``[B, max_length]`` (int64,
    0-padded) and ``text[name + "_mask"]`` ``[B, max_length]`` (int64, 1 = token).
    Texts longer than ``max_length`` tokens keep the ``first`` (or ``last``) ones
    (``truncate``); the default 128 holds the word 1-2-grams of a 60-word product title or
    the char 1-2-grams of a 60-character Chinese one (qbqtc titles: 99% fit, docs/text.md).
    Nulls tokenize as "".
    """

    name: str
    tokenizer: TokenizerSpec = Field(default_factory=NgramTokenizer)
    column: str | None = None
    max_length: int = Field(default=128, gt=0)
    truncate: Literal["first", "last"] = "first"

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _directory_is_hf(cls, value: object) -> object:
        """``tokenizer: DIR`` (the old form) means ``{kind: hf, path: DIR}``."""
        return {"kind": "hf", "path": value} if isinstance(value, str) else value

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass(config=_STRICT)
class LabelSpec:
    """A label column; ``name`` is the task it trains.

    ``kind`` says which raw values are valid: ``binary`` 0 or 1 (booleans too),
    ``soft`` any value in [0, 1], ``graded`` an integer grade in [0, ``max``]
    (``max`` required), ``real`` any finite number. A value outside, null, NaN or
    inf is a DataError naming file, row and column (a bad row under
    ``on_bad_row: skip``). ``positive_at`` binarizes the raw value after that check:
    the label is 1.0 where ``value >= positive_at``, else 0.0 (MovieLens ratings:
    ``{kind: real, positive_at: 4}``; graded relevance ``label >= 1``:
    ``{kind: graded, max: 2, positive_at: 1}``). A single-element list column (the
    RecIS / TorchEasyRec ``list<double>`` label) is read as its element; 0 or more
    than 1 elements is a DataError.

    ``values`` maps a string label column to numbers before any of that: Amazon ESCI's
    ``{E: 3, S: 2, C: 1, I: 0}``, ``{click: 1, skip: 0}``, ``{"true": 1, "false": 0}``. A
    string not in the map is a bad row naming the value (case and surrounding spaces
    count).
    """

    name: str
    column: str | None = None
    kind: Literal["binary", "soft", "graded", "real"] = "binary"
    max: float | None = None
    positive_at: float | None = None
    values: dict[str, float] | None = None

    def __post_init__(self) -> None:
        from recis.errors import ConfigError

        where = f"data.schema.labels.{self.name}"
        if self.kind == "graded" and (self.max is None or self.max <= 0):
            raise ConfigError(f"{where}.max: kind graded needs the top grade (> 0)")
        if self.kind != "graded" and self.max is not None:
            raise ConfigError(f"{where}.max: only kind graded has a top grade")
        if self.values is not None and not self.values:
            raise ConfigError(f"{where}.values: an empty map (string label -> number)")

    @property
    def target(self) -> str:
        """What the trainer sees: ``binary`` after ``positive_at``, else ``kind``."""
        return "binary" if self.positive_at is not None else self.kind

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass(config=_STRICT)
class Schema:
    """Columns -> features. ``columns`` lists every column the readers must read."""

    dense: list[DenseFeature] = Field(default_factory=list)
    sparse: list[SparseFeature] = Field(default_factory=list)
    labels: list[LabelSpec] = Field(default_factory=list)
    text: list[TextFeature] = Field(default_factory=list)
    # columns passed through as ``Batch.extras[column]`` (numbers, e.g. a GAUC group id)
    extras: list[str] = Field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        cols = [c for f in self.dense for c in f.sources] + [f.source for f in self.sparse]
        cols += [f.weight_column for f in self.sparse if f.weight_column]
        cols += [label.source for label in self.labels]
        cols += [t.source for t in self.text]
        cols += list(self.extras)
        return list(dict.fromkeys(cols))

    @property
    def dense_dim(self) -> int:
        """Width ``Dd`` of ``Batch.dense``."""
        return sum(f.dim for f in self.dense)


def check_task_labels(labels: list[LabelSpec], tasks: list[tuple[str, str]]) -> None:
    """Refuse a BCE task whose label is not in [0, 1] by its kind (graded or real without
    ``positive_at``), naming both config fields. ``tasks`` are ``(name, loss)`` pairs; none
    means every label trains a BCE task (the trainer's default)."""
    from recis.errors import ConfigError

    losses = dict(tasks) if tasks else {lab.name: "bce" for lab in labels}
    for lab in labels:
        if losses.get(lab.name) == "bce" and lab.target not in ("binary", "soft"):
            raise ConfigError(
                f"data.schema.labels.{lab.name}.kind: {lab.kind} labels are not in [0, 1], "
                f"but task {lab.name!r} trains with loss bce (train.tasks); binarize them "
                "with positive_at, or use loss: mse"
            )


def features_by_table(features: list[SparseFeature], tables: list[str]) -> dict[str, list[str]]:
    """``{table: [feature names]}`` in feature order; a feature naming no table in
    ``tables`` raises :class:`~recis.errors.ConfigError` naming the schema field."""
    from recis.errors import ConfigError

    known = set(tables)
    out: dict[str, list[str]] = {}
    for f in features:
        if f.table_name not in known:
            raise ConfigError(f"data.schema.sparse.{f.name}.table: no table named {f.table_name!r}")
        out.setdefault(f.table_name, []).append(f.name)
    return out
