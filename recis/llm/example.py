"""One judged (query, item) pair: the unit every recis.llm module passes around."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """One judged (query, item) pair; ``label`` is the level index (``-1``: unlabelled)."""

    query: str
    title: str
    label: int = -1
    attributes: dict[str, str] = field(default_factory=dict)
    context: str = ""
