"""A tracer that raises KeyboardInterrupt where CPython could: at the points of one function
where its eval loop checks for pending signals (a loop's jump back, the return of a call), one
point at a time, with opcode tracing. Shared by the interrupt tests."""

from __future__ import annotations

import dis
import sys


def _points(code) -> set[int]:
    """Offsets where the eval loop may raise an interrupt in `code`: jumps back and the
    instruction after each call."""
    out: set[int] = set()
    after_call = False
    for ins in dis.get_instructions(code):
        if after_call and not ins.opname.startswith("CACHE"):
            out.add(ins.offset)
            after_call = False
        if ins.opname.startswith("JUMP_BACKWARD"):
            out.add(ins.offset)
        if ins.opname in ("CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW",
                          "CALL_FUNCTION_EX", "CALL_KW"):
            after_call = True
    return out


class Cut:
    """While active, raises KeyboardInterrupt (or `exc`: a signal handler may raise any
    exception) at the `k`-th interrupt point (counted from 0) reached in a frame of `code`
    (none of its callees): once. `hits` counts the points reached."""

    def __init__(self, code, k: int, exc: type[BaseException] = KeyboardInterrupt) -> None:
        self.code, self.k, self.hits, self.fired, self.exc = code, k, 0, False, exc
        self.points = _points(code)

    def _local(self, frame, event, arg):
        if event == "opcode" and frame.f_lasti in self.points:
            self.hits += 1
            if self.hits - 1 == self.k and not self.fired:
                self.fired = True
                raise self.exc
        return self._local

    def _global(self, frame, event, arg):
        if event == "call" and frame.f_code is self.code:
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return self._local
        return None

    def __enter__(self):
        self.before = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.before)
        return False
