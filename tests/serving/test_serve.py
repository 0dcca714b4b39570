"""recis serve: a real server process on 127.0.0.1 and a real HTTP client (urllib)."""

from __future__ import annotations

import json
import shutil
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

import numpy as np
import pyarrow.parquet as pq
import pytest

from recis.export import ExportOptions, export_run
from recis.export.publish import READY, set_latest
from recis.export.source import load_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
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
        self.url = f"http://127.0.0.1:{_free_port()}"
        port = self.url.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "recis.cli", "serve", str(out), "--port", port]
        self.proc = subprocess.Popen([*cmd, "--poll", "0.2", "--batch-ms", "30"])

    def wait_up(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, "server exited"
            try:
                if _call(self.url + "/health")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)

    def version(self) -> str:
        return str(_call(self.url + "/health")[1]["version"])

    def wait_version(self, name: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while self.version() != name:
            assert time.monotonic() < deadline, f"server did not swap to {name}"
            time.sleep(0.1)

    def score(self, rows: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        return _call(self.url + "/score", {"rows": rows})


@pytest.fixture(scope="module")
def server(dlrm_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    out = tmp_path_factory.mktemp("published")
    export_run(dlrm_run, out, ExportOptions(fmt="export"))
    srv = Server(out, dlrm_run)
    try:
        srv.wait_up()
        yield srv
    finally:
        srv.proc.terminate()
        try:
            srv.proc.wait(20)
        except subprocess.TimeoutExpired:
            srv.proc.kill()


def _rows(run: Path, n: int) -> list[dict[str, Any]]:
    table = pq.read_table(run.parent / "data" / "eval").slice(0, n)
    return [{k: v for k, v in r.items() if k != "label"} for r in table.to_pylist()]


def test_answers_with_eval_scores(server: Server) -> None:
    status, body = server.score(_rows(server.run, 16))
    assert status == 200 and body["version"] == "v000001"
    _, trainer, _, _ = load_run(server.run)
    assert trainer.eval_data is not None
    preds, _ = trainer.predict(trainer.eval_data)
    np.testing.assert_allclose(body["scores"]["click"], preds["click"][:16], atol=1e-5, rtol=0)


def test_malformed_requests_name_the_field(server: Server) -> None:
    row = _rows(server.run, 1)[0]
    status, body = server.score([dict(row, I3="abc")])
    assert status == 422 and body["field"] == "I3" and "I3" in body["error"]
    missing = {k: v for k, v in row.items() if k != "C5"}
    status, body = server.score([missing])
    assert status == 422 and body["field"] == "C5" and "missing column" in body["error"]
    status, body = _call(server.url + "/score", {"rows": 3})
    assert status == 422 and body["field"] == "rows"
    status, body = server.score([dict(row, C2=1.5)])
    assert status == 422 and body["field"] == "C2"


def test_ready_missing_keeps_previous_then_swaps_under_load(server: Server) -> None:
    out, rows = server.out, _rows(server.run, 8)
    # a version whose READY is missing: latest names it, the server keeps v000001
    shutil.copytree(out / "v000001", out / "v000002")
    (out / "v000002" / READY).unlink()
    set_latest(out, "v000002")
    time.sleep(1.0)  # five polls
    assert server.version() == "v000001"
    (out / "v000002" / READY).write_text("v000002\n")
    server.wait_version("v000002")

    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(results) < 2000:
            status, body = server.score(rows)
            results.append((status, body.get("version", body.get("error", ""))))

    client = threading.Thread(target=load)
    client.start()
    try:
        # a new version (INT8 tables: other scores) published while requests run
        export_run(server.run, out, ExportOptions(fmt="export", int8=True))
        server.wait_version("v000003")
        time.sleep(0.3)
    finally:
        stop.set()
        client.join(60)
    assert results and all(s == 200 for s, _ in results), [r for r in results if r[0] != 200][:3]
    seen = [v for _, v in results]
    assert seen[0] == "v000002" and seen[-1] == "v000003"
    assert seen == sorted(seen)  # swapped once, never back


def test_concurrent_requests_batched_score_as_alone(server: Server) -> None:
    rows = _rows(server.run, 12)
    alone = [server.score([r])[1]["scores"]["click"][0] for r in rows[:6]]
    got: dict[int, tuple[int, dict[str, Any]]] = {}

    def one(i: int) -> None:  # 12 requests at once: batched together by the server
        got[i] = server.score([rows[i % 6]] if i < 10 else rows[:2])

    before = _call(server.url + "/health")[1]["batched"]
    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(got[i][0] == 200 for i in range(12))
    after = _call(server.url + "/health")[1]["batched"]
    assert after["requests"] - before["requests"] == 12
    assert after["forwards"] - before["forwards"] < 12  # some were scored together
    for i in range(10):
        assert got[i][1]["scores"]["click"][0] == pytest.approx(alone[i % 6], abs=1e-6)
    assert got[10][1]["scores"]["click"] == pytest.approx(alone[:2], abs=1e-6)
