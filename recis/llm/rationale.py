"""Structured rationales: the steps a relevance model writes before (or after) its level,
written by rules from the data and checked by code.

A rationale is a list of ``name=value`` steps. The rules (our reading of the "relevance rules"
of TaoSR1 / TaoSR-AGRL, whose exact rule set is not public) look only at the query and the
item, never at the label, so the same rules write SFT targets, check a model's steps
(TaoSR-AGRL's per-rule rewards, TaoSR-SHE's offline verifier) and can be recomputed at serving:

- ``terms``: share of the query's terms found in the item text (title + attribute values):
  ``all`` (every term), ``most`` (>= half), ``some`` (> 0), ``none``. Terms are the query's
  words when it has spaces, else its character bigrams (Chinese text is not segmented).
- one step per item attribute (``brand``, ``category``, ...): ``yes`` when the attribute's
  value occurs in the query, ``no`` when it does not, ``na`` when the item has none.
- ``context`` (only with a context chunk, DyKnow-RAG's context-usage decision): ``used`` when
  the chunk holds a query term the item text lacks, else ``ignored``.
"""

from __future__ import annotations

from dataclasses import dataclass

from recis.llm.example import Example

TERM_BUCKETS = ("none", "some", "most", "all")


@dataclass(frozen=True)
class Rationale:
    """Ordered ``(name, value)`` steps."""

    steps: tuple[tuple[str, str], ...]

    def text(self) -> str:
        return "; ".join(f"{n}={v}" for n, v in self.steps)


@dataclass(frozen=True)
class StepCheck:
    """One expected step against what a completion claims (``claimed`` None: step missing)."""

    name: str
    expected: str
    claimed: str | None

    @property
    def ok(self) -> bool:
        return self.claimed == self.expected


def terms(text: str) -> set[str]:
    """The terms of ``text``: lower-cased words when it has spaces, else character bigrams
    (single characters for a one-character text)."""
    text = text.lower().strip()
    if " " in text:
        return {w for w in text.split() if w}
    if len(text) < 2:
        return {text} if text else set()
    return {text[i : i + 2] for i in range(len(text) - 1)}


def _contains(text: str, term: str) -> bool:
    return term in text


def term_bucket(query: str, item_text: str) -> str:
    """``terms`` step value: how many of the query's terms occur in ``item_text``."""
    q = terms(query)
    if not q:
        return "none"
    item = item_text.lower()
    found = sum(_contains(item, t) for t in q)
    if found == len(q):
        return "all"
    if 2 * found >= len(q):
        return "most"
    return "some" if found else "none"


def write_rationale(ex: Example, context: str = "") -> Rationale:
    """The rule-written rationale of ``ex`` (``context``: the chunk shown, ``""``: none)."""
    item_text = " ".join([ex.title, *ex.attributes.values()])
    steps = [("terms", term_bucket(ex.query, item_text))]
    query = ex.query.lower()
    for name, value in ex.attributes.items():
        v = value.lower().strip()
        steps.append((name, "na" if not v else "yes" if v in query else "no"))
    if context:
        item = item_text.lower()
        extra = [t for t in terms(ex.query) if t not in item and t in context.lower()]
        steps.append(("context", "used" if extra else "ignored"))
    return Rationale(tuple(steps))


def parse_steps(text: str) -> dict[str, str]:
    """``name=value`` steps of a completion's rationale (the first claim of a name counts;
    pieces without ``=`` are ignored)."""
    out: dict[str, str] = {}
    for piece in text.split(";"):
        name, eq, value = piece.strip().partition("=")
        if eq and name.strip() and name.strip() not in out:
            out[name.strip()] = value.strip()
    return out


def check_steps(text: str, expected: Rationale) -> list[StepCheck]:
    """Each expected step against the claim in ``text`` (a completion's rationale part)."""
    claimed = parse_steps(text)
    return [StepCheck(n, v, claimed.get(n)) for n, v in expected.steps]
