"""recis serve: a real server process on 127.0.0.1 and a real HTTP client (urllib)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from recis.export import ExportOptions, export_run
from recis.export.publish import READY, set_latest
from recis.export.source import load_run


@pytest.fixture(scope="module")
def server(
    dlrm_run: Path, tmp_path_factory: pytest.TempPathFactory, start_server: Any
) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("published")
    export_run(dlrm_run, out, ExportOptions(fmt="export"))
    yield from start_server(out, dlrm_run)


def _rows(run: Path, n: int) -> list[dict[str, Any]]:
    table = pq.read_table(run.parent / "data" / "eval").slice(0, n)
    return [{k: v for k, v in r.items() if k != "label"} for r in table.to_pylist()]


def test_answers_with_eval_scores(server: Any) -> None:
    status, body = server.score(_rows(server.run, 16))
    assert status == 200 and body["version"] == "v000001"
    _, trainer, _, _ = load_run(server.run)
    assert trainer.eval_data is not None
    preds, _ = trainer.predict(trainer.eval_data)
    np.testing.assert_allclose(body["scores"]["click"], preds["click"][:16], atol=1e-5, rtol=0)


def test_malformed_requests_name_the_field(server: Any) -> None:
    row = _rows(server.run, 1)[0]
    status, body = server.score([dict(row, I3="abc")])
    assert status == 422 and body["field"] == "I3" and "I3" in body["error"]
    missing = {k: v for k, v in row.items() if k != "C5"}
    status, body = server.score([missing])
    assert status == 422 and body["field"] == "C5" and "missing column" in body["error"]
    status, body = server.call("/score", {"rows": 3})
    assert status == 422 and body["field"] == "rows"
    status, body = server.call("/topk", {"rows": [row]})
    assert status == 404 and "no item or product index" in body["error"]
    status, body = server.score([dict(row, C2=1.5)])
    assert status == 422 and body["field"] == "C2"


def test_ready_missing_keeps_previous_then_swaps_under_load(server: Any) -> None:
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


def test_concurrent_requests_batched_score_as_alone(server: Any) -> None:
    rows = _rows(server.run, 12)
    alone = [server.score([r])[1]["scores"]["click"][0] for r in rows[:6]]
    # 12 requests at once: batched together by the server
    bodies = [{"rows": [rows[i % 6]] if i < 10 else rows[:2]} for i in range(12)]
    got, forwards = server.concurrently("/score", bodies)
    assert forwards < 12  # some were scored together
    for i in range(10):
        assert got[i]["scores"]["click"][0] == pytest.approx(alone[i % 6], abs=1e-6)
    assert got[10]["scores"]["click"] == pytest.approx(alone[:2], abs=1e-6)
