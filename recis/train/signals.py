"""Stop signals during training: SIGINT / SIGTERM finish the current step, checkpoint, stop."""

from __future__ import annotations

import signal
import threading
from typing import Any

_STOP = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Records SIGINT / SIGTERM while a trainer's ``fit`` runs; the trainer stops after the
    step under way and checkpoints. A second SIGINT interrupts at once (KeyboardInterrupt;
    an unfinished checkpoint is discarded)."""

    def __init__(self) -> None:
        self.received: int | None = None  # the signal number, on this process

    def handler(self, signum: int, frame: Any) -> None:
        """The handler installed for SIGINT and SIGTERM."""
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def install(self) -> dict[int, Any]:
        """Install :meth:`handler` (main thread only); the handlers it replaced."""
        self.received = None  # a stop asked of an earlier fit() is done
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self.handler) for s in _STOP}

    @staticmethod
    def restore(handlers: dict[int, Any]) -> None:
        """Put back the handlers :meth:`install` replaced."""
        for s, h in handlers.items():
            signal.signal(s, h)

    def name(self) -> str:
        """``sigint`` or ``sigterm``: what stopped the run (SIGTERM when agreed elsewhere)."""
        return signal.Signals(self.received or signal.SIGTERM).name.lower()
