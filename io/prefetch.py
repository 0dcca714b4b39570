"""Background threads: run an iterator a few items ahead of its consumer."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any


def background(items: Iterator[Any], depth: int, name: str) -> Iterator[Any]:
    """Run ``items`` in a daemon thread, ``depth`` items ahead of the consumer.

    Exceptions are raised in the consumer; closing the returned generator (a
    ``break`` in the consumer) stops the thread at its next item.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as err:  # handed to the consumer, raised there
            put(_Raised(err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, _Raised):
                raise item.err
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class _Raised:
    def __init__(self, err: BaseException) -> None:
        self.err = err
