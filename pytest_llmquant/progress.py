"""Say what long work is doing, through pytest's terminal writer.

A GGUF conversion, a similarity pass or a speed gate can take many seconds with nothing on
the screen; a line every couple of seconds says what it is doing and how far it got. It
stays quiet under ``-q`` (and without a terminal reporter, e.g. in xdist workers, whose
output the controller does not show).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

#: the first line waits this long: work that ends sooner says nothing
FIRST_AFTER_S = 2.0
#: then at most one line per this many seconds
EVERY_S = 2.0

Report = Callable[[str], None]


class Progress:
    """A throttled line writer; ``progress(text)`` is cheap to call in a loop."""

    def __init__(
        self, write: Callable[[str], object] | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._write = write
        self._clock = clock
        self._start: float | None = None
        self._last = 0.0

    def start(self) -> Progress:
        self._start = self._clock()
        self._last = self._start - EVERY_S + FIRST_AFTER_S
        return self

    def note(self, text: str) -> None:
        """One line now: for work that is known to be long before it starts."""
        if self._write is not None:
            self._write(f"pytest-llmquant: {text}")

    def __call__(self, text: str) -> None:
        if self._write is None:
            return
        now = self._clock()
        if self._start is None:
            self.start()
            return
        if now - self._last >= EVERY_S:
            self._last = now
            self._write(f"pytest-llmquant: {text} ({now - self._start:.0f} s)")


def terminal_progress(config: pytest.Config) -> Progress:
    """A Progress on the run's terminal, or a silent one under -q or without a terminal."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 0:
        return Progress(None)

    def write(line: str) -> None:
        reporter.ensure_newline()
        reporter.write_line(line)

    return Progress(write)
