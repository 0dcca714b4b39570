"""``recis serve DIR``: the latest READY version of an export folder behind HTTP.

``GET /health`` -> ``{"status": "ok", "version": "v000002"}``;
``POST /score`` with ``{"rows": [{column: value, ...}, ...]}`` (rows in the training data's
schema: raw ids and strings, dense values before their transforms) ->
``{"version": ..., "scores": {task: [score per row]}}``; on a two-tower version ``POST /topk``
with ``{"rows": [query rows], "k": 10, "exclude": [[item ids], ...]}`` (``exclude``
optional, one list per row) -> ``{"version", "ids": [[...]], "scores": [[...]]}`` best first.
A bad request is a 4xx whose JSON ``{"error": ..., "field": ...}`` names the field at fault.

A watcher thread polls ``DIR/latest``; a new version is loaded (its files checked against
its manifest) beside the serving one and swapped in by one reference assignment: requests
in flight finish on the version they started with, none fails during the swap. A version
without ``READY``, or one that fails to load, is not taken: the previous one keeps serving.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from recis.errors import CheckpointError, ConfigError, DataError
from recis.export.loading import load_version
from recis.export.model import ScoringVersion, TopKVersion
from recis.export.publish import is_ready, read_latest, versions

from .batching import MicroBatcher

log = logging.getLogger("recis.serve")


class ModelHolder:
    """The serving version of ``out``, replaced when ``latest`` names a new READY one."""

    def __init__(self, out: str | Path, poll_s: float = 1.0) -> None:
        self.out = Path(out)
        self.poll_s = poll_s
        self.skipped: set[str] = set()  # versions refused (not READY / broken): logged once
        self.model = self._first()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="recis-serve-watch", daemon=True)

    def _first(self) -> ScoringVersion:
        """``latest`` if READY and loadable, else the newest READY version that loads."""
        latest = read_latest(self.out)
        names = [n for n in reversed(versions(self.out)) if is_ready(self.out / n)]
        if latest in names:
            names.remove(latest)
            names.insert(0, latest)
        for name in names:
            try:
                return load_version(self.out / name)
            except Exception as err:  # a broken version: try the next older READY one
                log.warning("skipping %s: %s", name, err)
        raise CheckpointError(f"{self.out}: no READY export version to serve")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """Swap to the version ``latest`` names if it is new, READY and loads; True if swapped."""
        name = read_latest(self.out)
        if name is None or name == self.model.version or name in self.skipped:
            return False
        if not is_ready(self.out / name):
            return False  # not yet (or never): the previous version keeps serving
        try:
            model = load_version(self.out / name)
        except Exception as err:  # any broken version (bad manifest, unreadable graph) is skipped
            self.skipped.add(name)
            log.warning("not serving %s: %s", name, err)
            return False
        self.model = model  # one assignment: requests hold the version they started with
        log.warning("serving %s", name)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as err:  # the watcher must outlive a bad publish
                log.warning("watch: %s: %s", type(err).__name__, err)


def _bad(status: int, error: str, field: str | None) -> JSONResponse:
    return JSONResponse({"error": error, "field": field}, status_code=status)


def create_app(holder: ModelHolder, batcher: MicroBatcher | None = None) -> FastAPI:
    """The HTTP API over ``holder``'s serving version (requests batched by ``batcher``)."""
    app = FastAPI(title="recis serve")

    @app.get("/health")
    def health() -> dict[str, Any]:
        m = holder.model
        out: dict[str, Any] = {"status": "ok", "version": m.version}
        out["tasks"] = [t["name"] for t in m.tasks]
        if batcher is not None:
            out["batched"] = {"requests": batcher.requests, "forwards": batcher.forwards}
        return out

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _bad(400, "the body is not JSON", None)
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return _bad(422, "'rows' must be a list of objects (one per row)", "rows")
        model = holder.model  # this request's version, whatever is swapped in meanwhile
        try:
            if batcher is not None and rows:
                scores = await batcher.score(model, rows)
            else:
                scores = await _in_thread(model.score_rows, rows)
        except DataError as err:
            return _bad(422, str(err), err.column)
        out = {k: v.tolist() for k, v in scores.items()}
        return JSONResponse({"version": model.version, "scores": out})

    @app.post("/topk")
    async def topk(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _bad(400, "the body is not JSON", None)
        model = holder.model
        if not (isinstance(model, TopKVersion) and model.searchable()):
            return _bad(404, f"version {model.version} has no item or product index", None)
        parsed = _topk_request(body)
        if isinstance(parsed, JSONResponse):
            return parsed
        rows, k, exclude = parsed
        try:
            if batcher is not None and rows:
                ids, scores = await batcher.topk(model, rows, k, exclude)
            else:
                ids, scores = await _in_thread(model.topk_rows, rows, k, exclude)
        except DataError as err:
            return _bad(422, str(err), err.column)
        return JSONResponse(
            {"version": model.version, "ids": ids.tolist(), "scores": _finite(scores)}
        )

    return app


def _topk_request(body: Any) -> JSONResponse | tuple[list[dict[str, Any]], int, Any]:
    """``(rows, k, exclude)`` of a ``/topk`` body, or the 422 naming the bad field."""
    rows = body.get("rows") if isinstance(body, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return _bad(422, "'rows' must be a list of objects (one per row)", "rows")
    k = body.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 10_000:
        return _bad(422, "'k' must be an integer in [1, 10000]", "k")
    exclude = body.get("exclude")
    if exclude is not None and not (
        isinstance(exclude, list)
        and len(exclude) == len(rows)
        and all(
            isinstance(e, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in e)
            for e in exclude
        )
    ):
        return _bad(422, "'exclude' must be one list of integer item ids per row", "exclude")
    return rows, k, exclude


def _finite(scores: Any) -> list[list[float | None]]:
    """Scores as JSON (a missing result's -inf is null)."""
    return [[float(s) if s > float("-inf") else None for s in row] for row in scores]


async def _in_thread(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def serve(
    out: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    poll_s: float = 1.0,
    batch_ms: float = 0.0,
    threads: int = 1,
) -> None:
    """Serve ``out`` until interrupted (uvicorn, one process); ``batch_ms`` > 0: requests
    arriving within that many milliseconds are scored together; ``threads``: torch's (and
    onnxruntime's, faiss's) intra-op threads per request."""
    import torch
    import uvicorn

    # one thread by default: a request is small, and each parallel region of a forward waits
    # for its threads to be scheduled; on a busy 2-core machine a DeepBoW forward of one row
    # took 245 ms with 2 threads and 2 ms with 1 (docs/serving.md)
    if threads < 1:
        raise ConfigError(f"--threads: {threads}: must be at least 1")
    torch.set_num_threads(threads)  # onnxruntime and faiss take the same count at load
    holder = ModelHolder(out, poll_s)
    holder.start()
    batcher = MicroBatcher(batch_ms / 1e3) if batch_ms > 0 else None
    print(f"recis serve: {holder.model.version} of {out} on http://{host}:{port}", flush=True)
    try:
        uvicorn.run(create_app(holder, batcher), host=host, port=port, log_level="warning")
    finally:
        holder.stop()
