"""Logging to the process's current standard error.

A handler made with `logging.StreamHandler()` keeps the `sys.stderr` of the moment it was
made. A `main()` called in-process (tests, a notebook) may see `sys.stderr` swapped and
closed after it returns (pytest's capsys); a record logged later, often from a server's or
engine's thread, would then print '--- Logging error ---' instead of its line. This one
looks `sys.stderr` up at every record.
"""

from __future__ import annotations

import logging
import sys


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
