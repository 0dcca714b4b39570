"""The relevance task: labelled (query, item) examples, prompts and completions.

An :class:`Example` is one judged pair: the query, the item's title and attributes, an
optional context chunk and a graded level ``0 .. L-1``. :class:`RelevanceTask` turns examples
into prompts (from the config's template) and completions (the level and, when the config asks
for one, the rule-written rationale of :mod:`recis.llm.rationale`), and parses a completion
back into a level.

Completion layout (``name=value`` steps joined by ``"; "``)::

    answer: first   ->  "2; terms=most; brand=yes; missing=some"   (level, then rationale)
    answer: last    ->  "terms=most; brand=yes; missing=some; level=2"

``first`` is our reading of TaoSR1's post-CoT layout: the level is the first token after the
prompt, so one forward pass reads the level distribution at serving time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from recis.errors import DataError
from recis.io.split import read_input
from recis.llm.config import LevelsConfig, PromptConfig, RelevanceDataConfig
from recis.llm.example import Example
from recis.llm.rationale import Rationale, write_rationale

SEP = "; "
_LEVEL_LAST = re.compile(r"level=(\S+?)(?:;|\s|$)")


def read_table(path: str, columns: Sequence[str]) -> pa.Table:
    """Read ``columns`` of a parquet / ORC / CSV / TSV / JSON Lines file (by suffix; parquet
    when unknown) with :func:`recis.io.split.read_input`: nested fields by their dotted paths.

    Raises DataError naming the file (missing, unreadable, or a column not in it: read_input
    names those, and returns the columns in the order asked)."""
    if not Path(path).is_file():
        raise DataError("no such file", path=path)
    return read_input(path, columns=list(columns))


def load_examples(
    path: str, data: RelevanceDataConfig, levels: LevelsConfig, limit: int | None = None
) -> list[Example]:
    """The first ``limit`` rows of ``path`` as examples; a label outside ``0 .. L-1`` or a null
    query/title is a DataError naming the file, row and column."""
    cols = [data.query, data.title, data.label, *data.attributes]
    if data.context is not None:
        cols.append(data.context)
    table = read_table(path, cols)
    if limit is not None:
        table = table.slice(0, limit)
    rows = table.to_pydict()
    out = []
    for i in range(table.num_rows):
        for c in (data.query, data.title, data.label):
            if rows[c][i] is None:
                raise DataError("null value", path=path, column=c, row=i)
        label = rows[data.label][i]
        if isinstance(label, str) and label in levels.names:  # ESCI's E / S / C / I
            label = levels.names.index(label)
        if not isinstance(label, int) or not 0 <= label < len(levels.names):
            raise DataError(
                f"label {label!r} is not a level 0..{len(levels.names) - 1}"
                f" (nor a level name: {', '.join(levels.names)})",
                path=path,
                column=data.label,
                row=i,
            )
        attrs = {a: "" if rows[a][i] is None else str(rows[a][i]) for a in data.attributes}
        ctx = "" if data.context is None else rows[data.context][i] or ""
        out.append(Example(str(rows[data.query][i]), str(rows[data.title][i]), label, attrs, ctx))
    return out


class RelevanceTask:
    """Prompts, completions and parsing for one config (template, levels, layout).

    Args:
        prompt: the template and the answer layout.
        levels: the level names.
    """

    def __init__(self, prompt: PromptConfig, levels: LevelsConfig) -> None:
        self.prompt = prompt
        self.levels = levels

    @property
    def num_levels(self) -> int:
        return len(self.levels.names)

    def prompt_text(self, ex: Example, with_context: bool = True) -> str:
        """The prompt; with ``answer: first`` it ends with ``level=`` so that the next token is
        the level. ``with_context=False`` leaves the context chunk out (DyKnow-RAG's first group)."""
        attrs = "".join(f"\n{k}: {v}" for k, v in ex.attributes.items())
        ctx = f"\ncontext: {ex.context}" if with_context and ex.context else ""
        text = self.prompt.template.format(
            query=ex.query, title=ex.title, attributes=attrs, context=ctx
        )
        return text + "level=" if self.prompt.answer == "first" else text

    def rationale(self, ex: Example, with_context: bool = True) -> Rationale:
        """The rule-written rationale of ``ex`` (our reading: see recis.llm.rationale)."""
        return write_rationale(ex, context=ex.context if with_context else "")

    def completion(self, ex: Example, level: int | None = None, with_context: bool = True) -> str:
        """The target completion: ``level`` (default the label) and the rule rationale."""
        name = self.levels.names[ex.label if level is None else level]
        if not self.prompt.rationale:
            return name
        steps = self.rationale(ex, with_context).text()
        return (
            f"{name}{SEP}{steps}" if self.prompt.answer == "first" else f"{steps}{SEP}level={name}"
        )

    def serving_prefix(self, ex: Example, with_context: bool = True) -> str:
        """The text after which the next token is the level: the prompt (``first``), or the
        prompt, the rule rationale and ``level=`` (``last``: the rationale is teacher-forced)."""
        p = self.prompt_text(ex, with_context)
        if self.prompt.answer == "first":
            return p
        steps = self.rationale(ex, with_context).text() + SEP if self.prompt.rationale else ""
        return f"{p}{steps}level="

    def parse_level(self, completion: str) -> int | None:
        """The level a completion states (None: no level, or not one of the names)."""
        text = completion.strip()
        if self.prompt.answer == "first" or not self.prompt.rationale:
            head = text.split(SEP.strip(), 1)[0].strip()
        else:
            m = _LEVEL_LAST.search(text)
            head = m.group(1) if m else ""
        return self.levels.names.index(head) if head in self.levels.names else None

    def steps_text(self, completion: str) -> str:
        """The rationale part of a completion (the level removed)."""
        text = completion.strip()
        if self.prompt.answer == "first":
            return text.split(SEP.strip(), 1)[1] if SEP.strip() in text else ""
        return _LEVEL_LAST.sub("", text)

    def relevant(self, label: int) -> bool:
        return label >= self.levels.relevant_from
