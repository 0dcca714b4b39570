"""Relevance-LLM configs: strict, errors name the field, stages chain."""

from __future__ import annotations

import pytest

from recis.errors import ConfigError, DataError
from recis.llm.config import build_llm_config, load_llm_config
from recis.llm.task import load_examples


def raw(**kw):
    base = {
        "kind": "relevance_llm",
        "run_dir": "r",
        "model": {"scratch": {}},
        "data": {"train": "t.parquet"},
        "stages": [{"kind": "sft"}, {"kind": "grpo", "batch_size": 8}],
    }
    base.update(kw)
    return base


def test_stages_chain_and_get_names():
    cfg = build_llm_config(raw(stages=[{"kind": "sft"}, {"kind": "grpo"}, {"kind": "grpo"}]))
    assert [s.name for s in cfg.stages] == ["sft", "grpo", "grpo2"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages": [{"kind": "sft", "max_step": 3}]}, "stages.0.sft.max_step: unknown field"),
        ({"stages": [{"kind": "ppo"}]}, "stages.0"),
        ({"model": {"scratch": {}, "path": "m"}}, "model: .*exactly one"),
        ({"prompt": {"template": "{q} {title}"}}, "prompt: .*placeholder"),
        ({"stages": [{"kind": "grpo", "batch_size": 6}]}, "stages.0.batch_size"),
        ({"stages": [{"kind": "dyknow"}]}, "retriever"),
        ({"stages": [{"kind": "sft", "init": "dpo"}]}, "stages.0.init"),
        ({"levels": {"names": ["a", "b"], "relevant_from": 2}}, "relevant_from"),
        ({"device": "tpu"}, "device"),
        ({"stages": [{"kind": "agrl", "prefilter": 4}]}, "stages.0.prefilter"),
    ],
)
def test_bad_configs_name_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        build_llm_config(raw(**change))


def test_yaml_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "kind: relevance_llm\nrun_dir: r\nmodel: {path: m}\ndata: {train: t.parquet}\n"
        "stages: [{kind: sft}]\n"
    )
    cfg = load_llm_config(p, ["stages.0.max_steps=7"])
    assert cfg.stages[0].max_steps == 7
    p.write_text("run_dir: r\n")
    with pytest.raises(ConfigError, match="relevance_llm"):
        load_llm_config(p)


def test_bad_labels_are_data_errors_naming_file_row_column(tiny, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = build_llm_config(raw(data={"train": str(tiny.train_file), "attributes": ["brand"]}))
    assert len(load_examples(str(tiny.train_file), cfg.data, cfg.levels)) == 64
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"query": ["a", "b"], "title": ["x", "y"], "label": [1, 7]}), bad)
    plain = cfg.data.__class__(train=str(bad))
    with pytest.raises(DataError, match=r"bad.parquet.*'label'.*row 1.*level 0..3"):
        load_examples(str(bad), plain, cfg.levels)
    with pytest.raises(DataError, match=r"bad\.parquet, column 'brand': missing column"):
        load_examples(str(bad), cfg.data, cfg.levels)


def test_examples_from_json_lines_with_level_names_as_labels(tiny, tmp_path):
    """Amazon ESCI stores its labels as the letters E / S / C / I: with those as the level
    names they are read as the levels; a JSON Lines file with nested fields reads too."""
    import json

    cfg = build_llm_config(
        raw(data={"train": str(tiny.train_file)}, levels={"names": ["I", "C", "S", "E"]})
    )
    path = tmp_path / "esci.jsonl"
    rows = [
        {"q": {"text": "red shoe"}, "p": {"title": "red running shoe"}, "esci_label": "E"},
        {"q": {"text": "red shoe"}, "p": {"title": "blue hat"}, "esci_label": "I"},
        {"q": {"text": "hat"}, "p": {"title": "hat stand"}, "esci_label": "C"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = cfg.data.__class__(train=str(path), query="q.text", title="p.title", label="esci_label")
    got = load_examples(str(path), data, cfg.levels)
    assert [(e.query, e.title, e.label) for e in got] == [
        ("red shoe", "red running shoe", 3),
        ("red shoe", "blue hat", 0),
        ("hat", "hat stand", 1),
    ]
    rows[2]["esci_label"] = "X"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        DataError, match=r"esci\.jsonl, column 'esci_label', row 2: .*nor a level name: I, C, S, E"
    ):
        load_examples(str(path), data, cfg.levels)
