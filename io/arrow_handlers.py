"""Python callbacks handed to Arrow: released before the interpreter finalizes.

A CSV streaming reader given a Python ``invalid_row_handler`` (recis passes one only when
bad lines are skipped) keeps it in C++, and whoever drops the reader's state last releases
it, taking the GIL. That can be an Arrow pool thread finishing a read-ahead after Python
dropped the reader (an error, the schema peek, an early stop). If Python is finalizing by
then, CPython ends that thread inside a C++ destructor and the process aborts (SIGABRT,
"terminate called without an active exception"; seen with gdb on a core).

:func:`track` records each such reader and handler; at exit, before finalization, the
handlers of readers Python has dropped are waited for (bounded) until Arrow released them.
"""

from __future__ import annotations

import atexit
import gc
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")

# (the Python reader, or None when opening it failed; the handler it was given)
_TRACKED: list[tuple[weakref.ref | None, weakref.ref]] = []


def track(reader: R | None, handler: Callable[..., Any]) -> R | None:
    """Record ``reader`` (a pyarrow CSV reader, None if opening it raised) and the Python
    ``handler`` Arrow was given; returns ``reader``."""
    _TRACKED[:] = [(r, h) for r, h in _TRACKED if h() is not None]
    _TRACKED.append((weakref.ref(reader) if reader is not None else None, weakref.ref(handler)))
    return reader


def _held_by_arrow_only() -> bool:
    """Whether a handler is still alive although Python dropped its reader."""
    return any((r is None or r() is None) and h() is not None for r, h in _TRACKED)


@atexit.register
def release_at_exit(timeout: float = 10.0) -> None:
    """Let Arrow's threads release the handlers of dropped readers while Python still runs."""
    from .prefetch import stop_all

    stop_all()  # read-ahead threads hold readers
    gc.collect()  # readers kept only by reference cycles (an error's traceback)
    deadline = time.monotonic() + timeout
    while _held_by_arrow_only() and time.monotonic() < deadline:
        time.sleep(0.002)  # the GIL is free meanwhile: Arrow's thread can take it
