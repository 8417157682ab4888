"""Logging to the process's current standard error.

A handler made with `logging.StreamHandler()` keeps the `sys.stderr` of the moment it was
made. A `main()` called in-process (tests, a notebook) may see `sys.stderr` swapped and
closed after it returns (pytest's capsys); a record logged later, often from a server's or
engine's thread, would then print '--- Logging error ---' instead of its line. This one
looks `sys.stderr` up at every record.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator


class StderrHandler(logging.StreamHandler):
    """A stream handler whose stream is whatever `sys.stderr` is when a record is logged."""

    def __init__(self, fmt: logging.Formatter | None = None) -> None:
        super().__init__()
        if fmt is not None:
            self.setFormatter(fmt)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        """StreamHandler assigns its stream on construction; the current one always wins."""


@contextlib.contextmanager
def logging_to_stderr(level: int | str, fmt: logging.Formatter, logger: str = "",
                      replace: bool = False) -> Iterator[None]:
    """Within the block, `logger` (the root by default) logs at `level` to standard error
    in `fmt`: a `StderrHandler` is added, or, with `replace`, stands in for the handlers it
    had. On the way out the logger has its handlers and level back (the handlers taken out
    are put back, not closed). A command's `main()` runs in this: called in-process (tests,
    a notebook), it used to leave the root at its level with its handler for the rest of
    the process, so every later INFO record of any library reached stderr and any
    `caplog`, and the caller's own handlers were closed (review s52 flaky2, LOW-2)."""
    target = logging.getLogger(logger)
    handler = StderrHandler(fmt)
    saved_level, saved_handlers = target.level, target.handlers[:]
    target.setLevel(level.upper() if isinstance(level, str) else level)  # bad: changes nothing
    if replace:
        for h in saved_handlers:
            target.removeHandler(h)
    target.addHandler(handler)
    try:
        yield
    finally:
        target.removeHandler(handler)
        handler.close()
        for h in saved_handlers if replace else ():
            if h not in target.handlers:
                target.addHandler(h)
        target.setLevel(saved_level)
