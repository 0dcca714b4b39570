"""Config loading: typed fields, unknown fields and bad values named by their dotted path."""

from __future__ import annotations

import pytest

from recis.config import apply_overrides, build_run_config, load_config, to_dict
from recis.errors import ConfigError
from recis.models import DLRMConfig

EXAMPLE = "examples/dlrm_synthetic.yaml"


def test_example_config_loads_typed():
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg.model, DLRMConfig)
    assert cfg.model.bottom_mlp[-1] == cfg.model.tables[0].dim
    assert len(cfg.data.schema_.sparse) == 26 and len(cfg.data.schema_.dense) == 13
    assert cfg.data.schema_.labels[0].source == "label"


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=abc", "data.batch_size: expected int, got 'abc'"),
        ("model.bottom_mlp.0=abc", "model.bottom_mlp.0: expected int, got 'abc'"),
        ("model.tables.2.dim=abc", "model.tables.2.dim: expected int, got 'abc'"),
        ("data.batchsize=3", "data.batchsize: unknown field (did you mean 'batch_size'?)"),
        ("model.botom_mlp=[8]", "model.botom_mlp: unknown field (did you mean 'bottom_mlp'?)"),
        ("model.name=nope", "model.name: unknown model 'nope'"),
        ("train.epochs=0", "train.epochs: Input should be greater than 0"),
        ("model.tables.99.dim=3", "model.tables.99: no list index '99'"),
    ],
)
def test_bad_field_is_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_parse_yaml_values():
    cfg = load_config(EXAMPLE, ["train.max_steps=7", "model.top_mlp=[4, 2]", "device=cpu"])
    assert cfg.train.max_steps == 7
    assert cfg.model.top_mlp == [4, 2]


def test_override_creates_missing_mapping():
    raw = apply_overrides({"a": {}}, ["a.b.c=1"])
    assert raw == {"a": {"b": {"c": 1}}}


def test_round_trip_through_dict():
    cfg = load_config(EXAMPLE)
    again = build_run_config(to_dict(cfg))
    assert to_dict(again) == to_dict(cfg)
    assert "schema" in to_dict(cfg)["data"]


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="data: field required"):
        load_config(empty)


def test_a_key_given_twice_in_overrides_is_refused():
    with pytest.raises(ConfigError) as err:
        apply_overrides({}, ["data.batch_size=8", "train.epochs=2", " data.batch_size=16"])
    msg = str(err.value)
    assert "data.batch_size is given twice" in msg and "\n" not in msg
    # different keys, and a list index next to its list, are still fine
    raw = apply_overrides({"a": [1, 2]}, ["a.0=5", "data.batch_size=8", "data.x=1"])
    assert raw == {"a": [5, 2], "data": {"batch_size": 8, "x": 1}}


def test_mapping_keys_are_read_as_written(tmp_path):
    """``values: {true: 1, false: 0}`` maps the label strings "true" / "false": YAML alone
    would make the keys the bools True / False (printed "True"), and ``1:`` equal to ``true:``."""
    from recis.config_base import validate
    from recis.config_yaml import load_text
    from recis.features import LabelSpec

    raw = load_text("{name: y, values: {true: 1, false: 0, 1: 1, E: 3}}", "t.yaml")
    spec = validate(LabelSpec, raw, "data.schema.labels.0")
    assert spec.values == {"true": 1.0, "false": 0.0, "1": 1.0, "E": 3.0}
    with pytest.raises(ConfigError, match=r"t\.yaml:1: duplicate key 'true'"):
        load_text("{values: {true: 1, true: 0}}", "t.yaml")
