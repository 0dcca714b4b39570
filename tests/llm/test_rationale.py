"""Rule rationales, the step checker and the completion layouts."""

from __future__ import annotations

from recis.llm.config import LevelsConfig, PromptConfig
from recis.llm.example import Example
from recis.llm.rationale import check_steps, term_bucket, write_rationale
from recis.llm.task import RelevanceTask

EX = Example("red nike shoe", "nike running shoe", 2, {"brand": "Nike", "category": ""})


def test_rules_write_each_step_from_query_and_item():
    r = write_rationale(EX)
    # query terms red/nike/shoe: nike and shoe in the item text -> 2 of 3 -> most
    assert r.steps == (("terms", "most"), ("brand", "yes"), ("category", "na"))
    assert r.text() == "terms=most; brand=yes; category=na"
    assert term_bucket("a b c", "x y") == "none"
    assert term_bucket("a b c", "a x") == "some"
    assert term_bucket("a b", "b a") == "all"
    # unsegmented text: character bigrams (小孩 孩咳 咳嗽: 2 of 3 in the title)
    assert term_bucket("小孩咳嗽", "小孩感冒咳嗽") == "most"


def test_context_step_records_whether_the_chunk_adds_query_terms():
    assert write_rationale(EX, context="red is a colour").steps[-1] == ("context", "used")
    assert write_rationale(EX, context="shoes for running").steps[-1] == ("context", "ignored")


def test_checker_catches_a_wrong_and_a_missing_step():
    expected = write_rationale(EX)
    ok = check_steps("terms=most; brand=yes; category=na", expected)
    assert [c.ok for c in ok] == [True, True, True]
    bad = check_steps("terms=all; brand=yes", expected)
    assert [(c.name, c.claimed, c.ok) for c in bad] == [
        ("terms", "all", False),
        ("brand", "yes", True),
        ("category", None, False),
    ]


def test_completion_layouts_round_trip():
    levels = LevelsConfig(names=["bad", "fair", "good", "exact"])
    first = RelevanceTask(PromptConfig(), levels)
    last = RelevanceTask(PromptConfig(answer="last"), levels)
    assert first.prompt_text(EX).endswith("level=")
    assert first.completion(EX) == "good; terms=most; brand=yes; category=na"
    assert last.completion(EX) == "terms=most; brand=yes; category=na; level=good"
    for task in (first, last):
        assert task.parse_level(task.completion(EX)) == 2
        assert task.parse_level(task.completion(EX, level=0)) == 0
        assert task.parse_level("nonsense") is None
        assert check_steps(task.steps_text(task.completion(EX)), write_rationale(EX))[0].ok
    # answer: last -> serving teacher-forces the rule rationale, then reads the level token
    assert last.serving_prefix(EX).endswith("category=na; level=")
