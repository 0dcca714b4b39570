"""Strict configs (issue 16, Configs and the YAML part of Security): real YAML files.

Coercion that surprises is refused with the dotted field path; duplicate keys and tags are
refused with their lines; no tag executes anything; ``device`` is checked at load; output
paths are checked before training.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from recis.config import check_device, check_outputs, load_config, to_dict
from recis.errors import ConfigError, OutputError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dlrm_synthetic.yaml"


def _config(tmp_path: Path, text: str = "", name: str = "c.yaml") -> Path:
    """The example config with ``text`` (YAML) appended at the end of the file."""
    path = tmp_path / name
    path.write_text(EXAMPLE.read_text() + text)
    return path


def test_a_check_that_names_its_field_is_not_prefixed_twice():
    bad = "data.schema.sparse.0.tokenizer={kind: ngram}"
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, [bad, "data.schema.sparse.0.separator=' '"])
    feature = load_config(EXAMPLE).data.schema_.sparse[0].name
    assert str(err.value) == (
        f"data.schema.sparse.{feature}.tokenizer: the tokenizer makes the ids and splits the"
        " text; drop separator"
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=true", "data.batch_size: expected int, got True"),
        ("train.epochs=2.5", "train.epochs: expected int, got 2.5"),
        ("train.epochs=2.0", "train.epochs: expected int, got 2.0"),
        ("train.max_steps='7'", "train.max_steps: expected int, got '7'"),
        ("seed=false", "seed: expected int, got False"),
        ("data.shuffle=1", "data.shuffle: expected bool, got 1"),
        ("data.shuffle=yes_please", "data.shuffle: expected bool, got 'yes_please'"),
        ("train.dense_optimizer.lr='0.1'", "train.dense_optimizer.lr: expected number, got '0.1'"),
        ("train.clip=true", "train.clip: expected number, got True"),
        ("run_dir=3", "run_dir: expected str, got 3"),
        ("train=3", "train: expected mapping, got 3"),
        # the model's own config class (recis.models.DLRMConfig)
        ("model.bottom_mlp=[64, 16.5]", "model.bottom_mlp.1: expected int, got 16.5"),
        ("model.tables.0.dim=true", "model.tables.0.dim: expected int, got True"),
        # the schema specs (recis.features)
        ("data.schema.dense.0.dim=true", "data.schema.dense.0.dim: expected int, got True"),
    ],
)
def test_coercion_that_surprises_is_refused(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_the_same_values_in_a_file_are_refused_too(tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["data"]["batch_size"] = True
    raw["train"]["epochs"] = 2.5
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "data.batch_size: expected int, got True" in str(err.value)
    assert "train.epochs: expected int, got 2.5" in str(err.value)


def test_int_to_float_and_exponent_floats_are_fine():
    cfg = load_config(
        EXAMPLE, ["train.dense_optimizer.lr=1", "train.sparse_optimizer.lr=5e-2", "train.clip=1e3"]
    )
    assert cfg.train.dense_optimizer.lr == 1.0 and isinstance(cfg.train.dense_optimizer.lr, float)
    assert cfg.train.sparse_optimizer.lr == 0.05
    assert cfg.train.clip == 1000.0
    # a strictly loaded config dumps and loads back to the same values
    assert to_dict(load_config(EXAMPLE)) == to_dict(load_config(EXAMPLE))


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("seed: 1\nrun_dir: a\nseed: 2\n", "seed", (1, 3)),  # top level
        ("train:\n  epochs: 1\n  log_every: 5\n  epochs: 3\n", "epochs", (2, 4)),  # nested
        ("data:\n  x:\n    - {a: 1, b: 2, a: 3}\n", "a", (3, 3)),  # flow mapping in a list
    ],
)
def test_duplicate_keys_name_the_key_and_both_lines(tmp_path, text, key, lines):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    first, second = lines
    assert str(err.value) == f"{path}:{second}: duplicate key {key!r} (lines {first} and {second})"


def test_merge_keys_may_be_overridden(tmp_path):
    path = tmp_path / "m.yaml"
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw.pop("train")
    path.write_text(
        yaml.safe_dump(raw)
        + "base: &base {epochs: 1, log_every: 7}\ntrain:\n  <<: *base\n  epochs: 2\n"
    )
    with pytest.raises(ConfigError, match="^base: unknown field$"):
        load_config(path)  # the anchor's own key is no field, but the merge itself loads
    path.write_text(yaml.safe_dump(raw) + "train:\n  <<: {epochs: 1, log_every: 7}\n  epochs: 2\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.log_every) == (2, 7)


@pytest.mark.parametrize(
    "value, tag",
    [
        ('!!python/object/apply:os.system ["touch {marker}"]', "!!python/object/apply:os.system"),
        ("!!python/name:os.system", "!!python/name:os.system"),
        ('!!python/object/new:pathlib.Path ["{marker}"]', "!!python/object/new:pathlib.Path"),
        ("!foo bar", "!foo"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!timestamp 2024-01-01", "!!timestamp"),
        ("!!set {{a, b}}", "!!set"),
    ],
)
def test_tags_are_refused_with_their_line_and_nothing_runs(tmp_path, value, tag):
    marker = tmp_path / "executed"
    path = _config(tmp_path, f"x: {value.format(marker=marker)}\n")
    line = len(EXAMPLE.read_text().splitlines()) + 1
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:{line}: YAML tag {tag!r} is not allowed")
    # the same tag in a --set value: refused, not kept as text (a run dir named after it)
    with pytest.raises(ConfigError, match=re.escape(f"YAML tag {tag!r} is not allowed")):
        load_config(EXAMPLE, [f"run_dir={value.format(marker=marker)}"])
    assert not marker.exists()


def test_plain_tags_and_dates_stay_plain(tmp_path):
    cfg = load_config(EXAMPLE, ["run_dir=2024-01-01", "seed=!!int 3", "device=!!str cpu"])
    assert cfg.run_dir == "2024-01-01"  # a date is text, not a datetime.date
    assert cfg.seed == 3


def test_override_that_is_not_yaml_is_text():
    cfg = load_config(EXAMPLE, ["run_dir=runs/a: b: c"])
    assert cfg.run_dir == "runs/a: b: c"


def test_no_config_string_reaches_a_shell():
    """The library never starts a shell: no os.system / os.popen / shell=True anywhere."""
    found = []
    for folder in ("recis", "io", "ops", "models"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for pattern in ("os.system(", "os.popen(", "shell=True", "pty.spawn("):
                if pattern in text:
                    found.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert found == []


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "CPU", "cuda0", "tpu:1", ""])
def test_nonsense_devices_are_named(device):
    with pytest.raises(ConfigError, match=f"^device: {re.escape(repr(device))} is not a device"):
        load_config(EXAMPLE, [f"device={device!r}"])


def test_cuda_device_checked_at_load():
    if torch.cuda.is_available():
        check_device("cuda")
        with pytest.raises(ConfigError, match=r"device: 'cuda:99' asked but only cuda:0\.\."):
            check_device("cuda:99")
    else:
        for device in ("cuda", "cuda:3"):
            with pytest.raises(ConfigError, match=f"^device: '{device}' asked but no CUDA"):
                load_config(EXAMPLE, [f"device={device}"])
    check_device("cpu")


def test_unwritable_outputs_are_named_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = load_config(EXAMPLE, [f"run_dir={tmp_path / 'ok'}", "data.train=x.parquet"])
    check_outputs(cfg)
    assert not (tmp_path / "ok").exists()  # checked, nothing made

    cfg = load_config(EXAMPLE, [f"run_dir={blocker / 'run'}"])
    with pytest.raises(OutputError, match=f"^{re.escape(str(blocker / 'run'))}: run directory"):
        check_outputs(cfg)

    q = blocker / "q" / "bad.jsonl"
    cfg = load_config(EXAMPLE, [f"run_dir={tmp_path / 'ok'}", f"data.quarantine={q}"])
    with pytest.raises(OutputError, match=f"^{re.escape(str(q.parent))}: folder of the quar"):
        check_outputs(cfg)

    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "metrics.jsonl").mkdir()  # an output file that is a folder
    cfg = load_config(EXAMPLE, [f"run_dir={tmp_path / 'ok'}"])
    with pytest.raises(OutputError, match="metrics.jsonl: run output file is a directory"):
        check_outputs(cfg)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a read-only /proc")
def test_read_only_filesystem_is_refused_even_for_root(tmp_path):
    cfg = load_config(EXAMPLE, ["run_dir=/proc/recis-run"])
    with pytest.raises(OutputError, match="^/proc/recis-run: run directory is not writable"):
        check_outputs(cfg)
