"""A tiny trained DLRM run (the default example, scaled down), shared by the serving tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dlrm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``run_dir`` of examples/dlrm_synthetic.yaml trained 8 steps on 2000 synthetic rows
    (eval: 600 rows), with its data under the same temporary folder."""
    return _tiny_run(tmp_path_factory.mktemp("serving"), "dlrm_synthetic.yaml", 2000, 600)


def _tiny_run(base: Path, example: str | Path, rows: int, eval_rows: int) -> Path:
    """``base/run``: ``examples/<example>`` (or a config file) trained 8 steps on ``rows``
    synthetic rows (its data under ``base/data``)."""
    import torch

    from recis.cli import main

    run = base / "run"
    small = [
        f"run_dir={run}",
        f"data.path={base / 'data'}",
        f"data.synthetic.num_train={rows}",
        f"data.synthetic.num_eval={eval_rows}",
        "data.synthetic.files=1",
        "data.batch_size=250",
        "data.eval_batch_size=256",
        "threads=1",
        "train.progress=false",
        "train.epochs=1",
        "train.max_steps=8",
        "train.checkpoint_every=4",
    ]
    args = [a for s in small for a in ("--set", s)]
    threads = torch.get_num_threads()
    assert main(["train", str(ROOT / "examples" / example), *args]) == 0
    torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="session")
def two_tower_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/two_tower_synthetic.yaml on 2000 rows (eval: 400; ``data/items.parquet``
    holds the synthetic item catalogue), its query tower reading the query's tokens as a
    behaviour sequence (per-position rows, recency attention pooling) instead of text: the
    export's three kinds of tower input (pooled ids, sequences, text) in one run."""
    import yaml

    base = tmp_path_factory.mktemp("two_tower")
    cfg = yaml.safe_load((ROOT / "examples" / "two_tower_synthetic.yaml").read_text())
    cfg["model"]["query"] = {"sparse": ["query_id", "query_cat"], "sequence": ["query_tokens"]}
    cfg["model"]["tables"].append({"name": "query_tokens", "dim": 8, "capacity": 3000})
    (base / "two_tower.yaml").write_text(yaml.safe_dump(cfg))
    return _tiny_run(base, base / "two_tower.yaml", 2000, 400)


@pytest.fixture(scope="session")
def deepbow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/deepbow_synthetic.yaml (raw query and title texts) on 1000 rows (eval: 200)."""
    return _tiny_run(tmp_path_factory.mktemp("deepbow"), "deepbow_synthetic.yaml", 1000, 200)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call_url(url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Server:
    def __init__(self, out: Path, run: Path) -> None:
        self.out, self.run = out, run
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "recis.cli", "serve", str(out), "--port", port]
        self.proc = subprocess.Popen([*cmd, "--poll", "0.2", "--batch-ms", "30"])

    def wait_up(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, "server exited"
            try:
                if call_url(self.url + "/health")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)

    def version(self) -> str:
        return str(call_url(self.url + "/health")[1]["version"])

    def wait_version(self, name: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while self.version() != name:
            assert time.monotonic() < deadline, f"server did not swap to {name}"
            time.sleep(0.1)

    def call(self, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        return call_url(self.url + path, body)

    def score(self, rows: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        return call_url(self.url + "/score", {"rows": rows})

    def concurrently(
        self, path: str, bodies: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], int]:
        """One request per body to ``path``, all at once (each must answer 200, and the
        server must count each as batched): the answers in body order, and the forwards
        (or searches) they took, fewer than the requests when the server batched them."""
        before = self.call("/health")[1]["batched"]
        got: dict[int, tuple[int, dict[str, Any]]] = {}
        threads = [
            threading.Thread(target=lambda i=i, b=b: got.update({i: self.call(path, b)}))
            for i, b in enumerate(bodies)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        after = self.call("/health")[1]["batched"]
        assert after["requests"] - before["requests"] == len(bodies)
        assert all(got[i][0] == 200 for i in range(len(bodies))), got
        return [got[i][1] for i in range(len(bodies))], after["forwards"] - before["forwards"]

    def score_concurrently(
        self, rows: list[dict[str, Any]], requests: int, task: str
    ) -> tuple[list[list[float]], int]:
        """``requests`` concurrent ``/score`` requests of ``rows[i : i + 2]`` each: their
        ``task`` scores in request order, and the forwards they took (:meth:`concurrently`)."""
        bodies = [{"rows": rows[i : i + 2]} for i in range(requests)]
        answers, forwards = self.concurrently("/score", bodies)
        return [a["scores"][task] for a in answers], forwards


def _server_process(out: Path, run: Path) -> Iterator[Server]:
    """A ``recis serve`` process on ``out`` (up and answering), stopped afterwards."""
    srv = Server(out, run)
    try:
        srv.wait_up()
        yield srv
    finally:
        srv.proc.terminate()
        try:
            srv.proc.wait(20)
        except subprocess.TimeoutExpired:
            srv.proc.kill()


@pytest.fixture(scope="session")
def start_server() -> Any:
    """``yield from start_server(out, run)`` in a fixture: a real server process."""
    return _server_process


def _export_and_serve(run: Path, out: Path, *export_args: str) -> Iterator[Server]:
    """``recis export RUN --out OUT [export_args]``, then a server on ``out``."""
    from recis.cli import main

    assert main(["export", str(run), "--out", str(out), *export_args]) == 0
    yield from _server_process(out, run)


@pytest.fixture(scope="session")
def serve_export() -> Any:
    """``yield from serve_export(run, out, *export_args)`` in a fixture: the run exported
    through the command line, then a real server process on it."""
    return _export_and_serve
