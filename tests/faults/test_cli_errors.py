"""On the command line every error is one line ``recis: error: ...`` with a non-zero exit
status, the traceback only under ``--debug`` (issue 16, Errors). Real files, and real
processes where the whole stderr matters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recis.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dlrm_synthetic.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recis.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("recis: error: "), stderr
    return lines[0]


def test_config_error_is_one_line_and_debug_adds_the_traceback(capsys):
    proc = _cli("train", str(EXAMPLE), "--set", "data.batch_size=true")
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert line == "recis: error: data.batch_size: expected int, got True"
    # --debug after the subcommand (a real process) or before it: the traceback, then the line
    proc = _cli("train", str(EXAMPLE), "--debug", "--set", "data.batch_size=true")
    assert proc.returncode == 2
    assert proc.stderr.startswith("Traceback (most recent call last):")
    assert "recis.errors.ConfigError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == line
    assert main(["--debug", "train", str(EXAMPLE), "--set", "data.batch_size=true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.rstrip().splitlines()[-1] == line


@pytest.mark.parametrize(
    "args", [[], ["train"], ["bogus"], ["train", str(EXAMPLE), "--no-such-flag"]]
)
def test_usage_errors_are_one_line(capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    _one_error_line(capsys.readouterr().err)


def test_other_exceptions_name_their_type_exit_1(tmp_path, capsys):
    # plots/ is a file: matplotlib's folder cannot be made (FileExistsError, an OSError)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1}) + "\n")
    (run / "plots").write_text("")
    assert main(["plot", str(run)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("recis: error: FileExistsError: ")
    assert str(run / "plots") in line


def test_keyboard_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    import recis.train.plot

    def interrupted(run_dir):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(recis.train.plot, "plot_run", interrupted)
    assert main(["plot", str(tmp_path)]) == 130
    assert _one_error_line(capsys.readouterr().err) == "recis: error: interrupted (Ctrl-C)"


def test_multi_line_messages_are_joined(tmp_path, capsys, monkeypatch):
    import recis.train.plot

    def fails(run_dir):  # noqa: ANN001, ANN202
        raise RuntimeError("first line\n  second line\n")

    monkeypatch.setattr(recis.train.plot, "plot_run", fails)
    assert main(["plot", str(tmp_path)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line == "recis: error: RuntimeError: first line second line"


def _metrics(run: Path, text: str) -> Path:
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_text(text)
    return run


RECORDS = "".join(
    json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n" for s in range(1, 6)
)


def test_plot_skips_a_torn_last_line_with_one_warning(tmp_path):
    run = _metrics(tmp_path / "run", RECORDS + '{"step": 6, "split": "tra')
    proc = _cli("plot", str(run))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recis: warning: "), proc.stderr
    assert f"{run / 'metrics.jsonl'}: line 6 is not a metrics record" in lines[0]
    assert (run / "plots" / "loss.png").stat().st_size > 0
    assert proc.stdout.strip() == str(run / "plots" / "loss.png")


def test_read_records_keeps_the_whole_records(tmp_path):
    from recis.train.runlog import TornRecordWarning, read_records

    run = _metrics(tmp_path / "run", RECORDS + '{"step": 6, "split": "tra')
    with pytest.warns(TornRecordWarning, match="line 6"):
        records = read_records(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    # a complete last line without its newline is a record, not a torn one
    _metrics(run, RECORDS.rstrip("\n"))
    assert len(read_records(run)) == 5


@pytest.mark.parametrize("bad", ["garbage", '{"step": 3, "split"', "[1, 2]", '{"step": "x"}'])
def test_plot_refuses_a_bad_line_in_the_middle(tmp_path, capsys, bad):
    lines = RECORDS.splitlines()
    lines.insert(2, bad)
    run = _metrics(tmp_path / "run", "\n".join(lines) + "\n")
    assert main(["plot", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"recis: error: file {run / 'metrics.jsonl'}: line 3 is not a metrics")
    assert not (run / "plots" / "loss.png").exists()


def test_python_api_raises_recis_errors(tmp_path):
    from recis.config import load_config
    from recis.errors import ConfigError, DataError
    from recis.train.plot import plot_run

    with pytest.raises(ConfigError):
        load_config(EXAMPLE, ["data.batch_size=true"])
    run = _metrics(tmp_path / "run", "garbage\n" + RECORDS)
    with pytest.raises(DataError, match="line 1"):
        plot_run(run)
