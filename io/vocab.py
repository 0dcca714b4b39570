"""Subword vocabularies trained on the train files (``recis vocab build CONFIG``).

Every :class:`~recis.features.TextFeature` with ``tokenizer: {kind: vocab, path: P}`` is
grouped by ``P``: one BPE or WordPiece vocabulary is trained with HF ``tokenizers`` on all
their columns of the **train** files only (eval text never shapes the vocabulary), and
saved as ``P`` (a ``tokenizer.json``; put it in the run dir). Ids: ``[PAD]`` 0, ``[UNK]``
1, then the learned pieces. The file carries its normalizer (NFKC, lowercase as the spec
says) and pre-tokenizer, so reloading it gives the same ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.orc as orc
import pyarrow.parquet as pq

from recis.config import DataConfig
from recis.errors import ConfigError, DataError
from recis.features import TextFeature, VocabTokenizer

from . import jsonl, nested
from .sources import SUFFIXES, CsvOptions, resolve_paths
from .validate import is_list

SPECIAL_TOKENS = ["[PAD]", "[UNK]"]


def vocab_features(features: Sequence[TextFeature]) -> dict[str, list[TextFeature]]:
    """``{path: [features]}`` of the vocab-kind text features; one path, one set of settings."""
    groups: dict[str, list[TextFeature]] = {}
    for f in features:
        if isinstance(f.tokenizer, VocabTokenizer):
            groups.setdefault(f.tokenizer.path, []).append(f)
    for path, feats in groups.items():
        first = feats[0].tokenizer
        for f in feats[1:]:
            if f.tokenizer != first:
                raise ConfigError(
                    f"data.schema.text.{f.name}.tokenizer: shares path {path!r} with "
                    f"{feats[0].name!r} but not its settings"
                )
    return groups


def _csv_texts(path: str, columns: list[str], fmt: str, csv: CsvOptions) -> pa.Table:
    o = csv.resolved(fmt)
    return pacsv.read_csv(
        o.open(path),
        read_options=o.read_options(),
        parse_options=o.parse_options(),
        convert_options=o.convert_options(
            include_columns=columns,
            column_types={c: pa.string() for c in columns},
            null_values=o.null_values or [""],
        ),
    )


def read_texts(
    paths: str | os.PathLike | list,
    columns: list[str],
    fmt: str = "parquet",
    csv: CsvOptions | None = None,
) -> Iterator[str]:
    """The strings of ``columns`` in the files of ``paths`` (nulls and empty ones skipped)."""
    for path in resolve_paths(paths, SUFFIXES[fmt]):
        try:
            if fmt == "parquet":
                pf = pq.ParquetFile(path)
                read = nested.read_columns(pf.schema_arrow, columns)  # a struct's field alone
                tables: Iterator = (
                    pa.Table.from_batches([b]) for b in pf.iter_batches(columns=read)
                )
            elif fmt == "orc":
                of = orc.ORCFile(path)
                tables = iter([of.read(columns=nested.read_columns(of.schema, columns))])
            elif fmt == "jsonl":
                tables = iter([jsonl.read_table(path, columns)])
            else:
                tables = iter([_csv_texts(path, columns, fmt, csv or CsvOptions())])
            for table in tables:
                for c in columns:
                    col = nested.select(table, [c]).column(0)
                    if is_list(col.type):  # the list layouts: a row's strings, space-joined
                        col = pc.binary_join(col.cast(pa.list_(pa.string())), " ")
                    col = pc.drop_null(col.cast(pa.string()))
                    yield from (t for t in col.to_pylist() if t)
        except (pa.ArrowException, KeyError) as err:  # a missing column is a KeyError
            raise DataError(f"cannot read text column: {err}", path=path) from None


def new_tokenizer(spec: VocabTokenizer):  # noqa: ANN201 - a tokenizers.Tokenizer
    """An untrained BPE / WordPiece tokenizer with the spec's normalizer and pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    forms = {
        "NFKC": normalizers.NFKC,
        "NFC": normalizers.NFC,
        "NFKD": normalizers.NFKD,
        "NFD": normalizers.NFD,
    }
    steps: list[normalizers.Normalizer] = []
    if spec.normalize != "none":
        steps.append(forms[spec.normalize]())
    if spec.lowercase:
        steps.append(normalizers.Lowercase())
    if spec.model == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        tok.decoder = decoders.WordPiece()
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    # words and punctuation apart, and a change of script (Han / Latin / digits) splits too:
    # subwords are learned inside each piece, so Chinese runs get multi-char pieces
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.UnicodeScripts()]
    )
    return tok


def train_vocabulary(spec: VocabTokenizer, texts: Iterator[str]) -> Path:
    """Train on ``texts`` and save ``spec.path`` (written whole, then renamed into place)."""
    from tokenizers import trainers

    tok = new_tokenizer(spec)
    size, freq = spec.vocab_size, spec.min_frequency
    trainer: trainers.Trainer
    if spec.model == "wordpiece":
        trainer = trainers.WordPieceTrainer(
            vocab_size=size,
            min_frequency=freq,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
            continuing_subword_prefix="##",
        )
    else:
        trainer = trainers.BpeTrainer(
            vocab_size=size, min_frequency=freq, special_tokens=SPECIAL_TOKENS, show_progress=False
        )
    tok.train_from_iterator(texts, trainer=trainer)
    path = Path(spec.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tok.save(str(tmp))
        os.replace(tmp, path)
    except OSError as err:
        raise ConfigError(f"tokenizer.path: cannot write {path}: {err.strerror}") from None
    return path


def build_vocabularies(
    data: DataConfig, train_paths: str | list[str], only_missing: bool = False
) -> dict[str, int]:
    """Train and save every vocabulary the schema names; ``{path: vocabulary size}``.

    ``only_missing``: keep the files that exist (the step run at train start).
    """
    from tokenizers import Tokenizer

    csv = CsvOptions.from_config(data.csv)
    out: dict[str, int] = {}
    for path, feats in vocab_features(data.schema_.text).items():
        if not (only_missing and Path(path).is_file()):
            columns = list(dict.fromkeys(f.source for f in feats))
            spec = feats[0].tokenizer
            assert isinstance(spec, VocabTokenizer)  # vocab_features keeps only these
            train_vocabulary(spec, read_texts(train_paths, columns, data.format, csv))
        out[path] = Tokenizer.from_file(path).get_vocab_size()
    return out
