"""Request batching: concurrent requests scored together in one forward.

Each request's rows are validated and converted on their own (a bad request fails alone,
naming its field); the converted batches that arrive within ``window_s`` of the first one
(up to ``max_rows`` rows) are concatenated, scored in one call of the version they were
converted for, and split back. Shapes: ``B_i`` rows of request ``i``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from recis.export.model import ScoringVersion

# a version, one request's converted rows (its ``rows_batch``), the request's future
_Item = tuple[ScoringVersion, Any, "asyncio.Future[dict[str, np.ndarray]]"]


class MicroBatcher:
    """Scores requests in batches (see the module docstring); one per server."""

    def __init__(self, window_s: float = 0.002, max_rows: int = 4096) -> None:
        self.window_s = window_s
        self.max_rows = max_rows
        self.requests = 0  # requests scored through the batcher
        self.forwards = 0  # forwards they took (fewer: batching happened)
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def score(
        self, model: ScoringVersion, rows: list[dict[str, Any]]
    ) -> dict[str, np.ndarray]:
        """``rows``' scores from ``model`` (DataError, naming the field, before queueing)."""
        batch = await run_in_threadpool(model.rows_batch, rows)
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        fut: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        await self._queue.put((model, batch, fut))
        return await fut

    async def _collect(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        """The first waiting item and those arriving within the window (up to max_rows)."""
        items = [await queue.get()]
        loop = asyncio.get_running_loop()
        end = loop.time() + self.window_s
        rows = items[0][1].batch_size
        while rows < self.max_rows:
            left = end - loop.time()
            try:
                item = (
                    queue.get_nowait() if left <= 0 else await asyncio.wait_for(queue.get(), left)
                )
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            items.append(item)
            rows += item[1].batch_size
        return items

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            items = await self._collect(self._queue)
            by_model: dict[int, list[_Item]] = {}
            for it in items:  # a swap inside the window: each version scores its own requests
                by_model.setdefault(id(it[0]), []).append(it)
            for group in by_model.values():
                await self._score_group(group)

    async def _score_group(self, group: list[_Item]) -> None:
        model = group[0][0]
        self.requests += len(group)
        self.forwards += 1
        try:
            merged = model.merge([b for _, b, _ in group])
            scores = await run_in_threadpool(model.score_batch, merged)
        except Exception as err:  # every waiting request gets the error, none hangs
            for _, _, fut in group:
                if not fut.done():
                    fut.set_exception(err)
            return
        at = 0
        for _, b, fut in group:
            n = b.batch_size
            if not fut.done():
                fut.set_result({k: v[at : at + n] for k, v in scores.items()})
            at += n
