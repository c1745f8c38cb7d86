"""One stop flag for every task: SIGINT (Ctrl-C) and SIGTERM ask the loop to stop at the next step.

The first signal sets :attr:`StopFlag.signum` and prints, on a line of its own above the progress
bar, that a checkpoint will be saved after the step in hand; the loop then saves and returns.
A second signal more than a second later aborts at once with ``KeyboardInterrupt`` (every file a
run writes is written atomically, so the last checkpoint stays valid). A repeat within a second is
taken for the same Ctrl-C arriving twice (torchrun forwards it to its children as well).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

from tqdm import tqdm


class StopFlag:
    """Use as ``with StopFlag() as stop: ... if stop.signum is not None: save and return``."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._when = 0.0
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str | None:
        """The signal's name (``"SIGINT"``), or ``None`` if none arrived."""
        return None if self.signum is None else signal.Signals(self.signum).name

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._when = signum, time.monotonic()
            # tqdm.write clears the bar, prints the line, and redraws the bar below it.
            tqdm.write(
                f"{signal.Signals(signum).name} received: saving a checkpoint after this step "
                f"(signal again to abort without saving).",
                file=sys.stderr,
            )
        elif time.monotonic() - self._when > 1.0:
            raise KeyboardInterrupt
