"""Background threads: run an iterator a few items ahead of its consumer.

No such thread outlives the interpreter: at exit (``atexit``, before Python starts
finalizing) every one still running is stopped and joined. A daemon thread still busy in
native code when finalization starts is killed by CPython as it takes the GIL back, from
inside a C++ destructor (torch's or pyarrow's GIL guards), and that aborts the process:
"terminate called without an active exception", SIGABRT. Iterators left unfinished at
exit are the usual case: a rank whose data outlasts the shortest rank's, a run stopped
early, or an error whose traceback (a reference cycle) keeps a reader's generator alive.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Generator, Iterator
from typing import Any


def background(items: Iterator[Any], depth: int, name: str) -> Iterator[Any]:
    """Run ``items`` in a daemon thread, ``depth`` items ahead of the consumer.

    Exceptions are raised in the consumer; closing the returned generator (a
    ``break`` in the consumer) stops the thread at its next item.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()
    worker: tuple[threading.Event, threading.Thread] | None = None

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
            if isinstance(items, Generator):  # stops the generator's own cleanup too
                items.close()
            _LIVE.discard(worker)

    thread = threading.Thread(target=work, name=name, daemon=True)
    worker = (stop, thread)
    _LIVE.add(worker)
    thread.start()
    try:
        while True:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if thread.is_alive():
                    continue
                return  # stopped at exit (see stop_all) before its end marker
            if item is end:
                return
            if isinstance(item, _Raised):
                err, item = item.err, None
                try:
                    raise err
                finally:
                    del err  # no frame -> error -> traceback -> frame cycle keeps us alive
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# (stop event, thread) of every background thread still running
_LIVE: set[tuple[threading.Event, threading.Thread]] = set()


@atexit.register
def stop_all(timeout: float = 60.0) -> None:
    """Stop and join every background thread before the interpreter finalizes (see the
    module docstring). Each stops at its next item; a thread whose producer reads from
    another background thread ends when that one does."""
    workers = list(_LIVE)
    for stop, _ in workers:
        stop.set()
    for _, thread in workers:
        thread.join(timeout)


class _Raised:
    def __init__(self, err: BaseException) -> None:
        self.err = err
