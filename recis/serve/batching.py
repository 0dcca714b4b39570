"""Request batching: concurrent requests answered together in one forward (``/score``) or one
search (``/topk``).

Each request's rows are validated and converted on their own (a bad request fails alone,
naming its field); the converted batches of one version and one endpoint that arrive within
``window_s`` of the first one (up to ``max_rows`` rows) are concatenated, run in one call of
the version they were converted for, and split back. ``/topk`` requests with different
``k`` search with the largest and keep their own first ``k`` (the same ids and scores: the
search ranks best first). Shapes: ``B_i`` rows of request ``i``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from recis.export.model import ScoringVersion, TopKVersion
from recis.export.scoring import concat_batches

# one request: its version, endpoint, converted rows (``.batch_size`` rows), its own
# arguments (topk: ``k`` and ``exclude``), and its future
_Item = tuple[Any, str, Any, Any, "asyncio.Future[Any]"]


class MicroBatcher:
    """Answers requests in batches (see the module docstring); one per server."""

    def __init__(self, window_s: float = 0.002, max_rows: int = 4096) -> None:
        self.window_s = window_s
        self.max_rows = max_rows
        self.requests = 0  # requests answered through the batcher
        self.forwards = 0  # calls they took (fewer: batching happened)
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def score(
        self, model: ScoringVersion, rows: list[dict[str, Any]]
    ) -> dict[str, np.ndarray]:
        """``rows``' scores from ``model`` (DataError, naming the field, before queueing)."""
        batch = await run_in_threadpool(model.rows_batch, rows)
        return await self._submit((model, "score", batch, None))

    async def topk(
        self,
        model: TopKVersion,
        rows: list[dict[str, Any]],
        k: int,
        exclude: list[list[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [B, k], scores [B, k])`` of ``model`` for query ``rows`` (DataError before
        queueing)."""
        batch = await run_in_threadpool(model.query_batch, rows)
        return await self._submit((model, "topk", batch, (k, exclude)))

    async def _submit(self, item: tuple[Any, str, Any, Any]) -> Any:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((*item, fut))
        return await fut

    async def _collect(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        """The first waiting item and those arriving within the window (up to max_rows)."""
        items = [await queue.get()]
        loop = asyncio.get_running_loop()
        end = loop.time() + self.window_s
        rows = items[0][2].batch_size
        while rows < self.max_rows:
            left = end - loop.time()
            try:
                item = (
                    queue.get_nowait() if left <= 0 else await asyncio.wait_for(queue.get(), left)
                )
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            items.append(item)
            rows += item[2].batch_size
        return items

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            items = await self._collect(self._queue)
            groups: dict[tuple[int, str], list[_Item]] = {}
            for it in items:  # a swap inside the window: each version answers its own requests
                groups.setdefault((id(it[0]), it[1]), []).append(it)
            for group in groups.values():
                await self._run_group(group)

    async def _run_group(self, group: list[_Item]) -> None:
        model, endpoint = group[0][0], group[0][1]
        self.requests += len(group)
        self.forwards += 1
        run: Callable[[Any, list[_Item]], list[Any]] = _score if endpoint == "score" else _topk
        try:
            results = await run_in_threadpool(run, model, group)
        except Exception as err:  # every waiting request gets the error, none hangs
            for *_, fut in group:
                if not fut.done():
                    fut.set_exception(err)
            return
        for (*_, fut), result in zip(group, results):
            if not fut.done():
                fut.set_result(result)


def _spans(group: list[_Item]) -> list[slice]:
    """Each request's rows in the concatenated batch."""
    out, at = [], 0
    for it in group:
        out.append(slice(at, at + it[2].batch_size))
        at += it[2].batch_size
    return out


def _score(model: ScoringVersion, group: list[_Item]) -> list[dict[str, np.ndarray]]:
    scores = model.score_batch(model.merge([it[2] for it in group]))
    return [{k: v[s] for k, v in scores.items()} for s in _spans(group)]


def _topk(model: TopKVersion, group: list[_Item]) -> list[tuple[np.ndarray, np.ndarray]]:
    k = max(it[3][0] for it in group)
    excluded = [list(e) for it in group for e in (it[3][1] or [[]] * it[2].batch_size)]
    ids, scores = model.topk_batch(concat_batches([it[2] for it in group]), k, excluded)
    return [(ids[s, : it[3][0]], scores[s, : it[3][0]]) for it, s in zip(group, _spans(group))]
