"""A tracer that raises KeyboardInterrupt where CPython could: at the points of one function
where its eval loop checks for pending signals (a loop's jump back, the return of a call), one
point at a time, with opcode tracing. Shared by the interrupt tests.

By default every call's return is a point. CPython 3.11 does not check on a Python function's
return to its Python caller (the callee runs inline; it checks at the callee's entry, its loops
and its own C calls): `c_returns_only=True` skips the return of a call that ran a Python frame
(measured: /work/lanes/findings/s54/pyloops.md, 90,000 timer signals in a loop calling a
Python function never landed at its return). A C function that calls back into Python (`sum`
over a generator, `sorted` with a key) is then taken for a Python call, its return skipped:
not for code whose C calls run Python callbacks."""

from __future__ import annotations

import dis
import sys


def _points(code, returns: set[int] | None = None) -> set[int]:
    """Offsets where the eval loop may raise an interrupt in `code`: jumps back and the
    instruction after each call (also added to `returns`, when given)."""
    out: set[int] = set()
    after_call = False
    for ins in dis.get_instructions(code):
        if after_call and not ins.opname.startswith("CACHE"):
            out.add(ins.offset)
            if returns is not None:
                returns.add(ins.offset)
            after_call = False
        if ins.opname.startswith("JUMP_BACKWARD"):
            out.add(ins.offset)
        if ins.opname in ("CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW",
                          "CALL_FUNCTION_EX", "CALL_KW"):
            after_call = True
    return out


class _Tracing:
    """A context manager that installs `self._global` as the trace function and puts back
    the one it found (coverage's, a debugger's) on the way out."""

    def __enter__(self):
        self.before = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.before)
        return False


class Cut(_Tracing):
    """While active, raises KeyboardInterrupt (or `exc`: a signal handler may raise any
    exception) at the `k`-th interrupt point (counted from 0) reached in a frame of `code`
    (none of its callees): once. `hits` counts the points reached."""

    def __init__(self, code, k: int, exc: type[BaseException] = KeyboardInterrupt,
                 c_returns_only: bool = False) -> None:
        self.code, self.k, self.hits, self.fired, self.exc = code, k, 0, False, exc
        self.returns: set[int] = set()
        self.points = _points(code, self.returns)
        self.c_returns_only = c_returns_only
        self._ran_python: set[int] = set()  # frames of `code` whose last call ran Python

    def _local(self, frame, event, arg):
        if event == "opcode" and frame.f_lasti in self.points:
            if self.c_returns_only and frame.f_lasti in self.returns:
                ran = id(frame) in self._ran_python
                self._ran_python.discard(id(frame))
                if ran:
                    return self._local
            self.hits += 1
            if self.hits - 1 == self.k and not self.fired:
                self.fired = True
                raise self.exc
        return self._local

    def _global(self, frame, event, arg):
        if event == "call" and self.c_returns_only and frame.f_back is not None \
                and frame.f_back.f_code is self.code:
            self._ran_python.add(id(frame.f_back))
        if event == "call" and frame.f_code is self.code:
            self._ran_python.discard(id(frame))  # (a new frame, maybe at a freed one's id)
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return self._local
        return None


class Cuts(_Tracing):
    """Several `Cut`s of different functions at once, under one tracer (sys.settrace has
    one): e.g. a first interrupt in a method and a second in the undo it runs."""

    def __init__(self, *cuts: Cut) -> None:
        assert len({c.code for c in cuts}) == len(cuts)
        self.cuts = cuts

    def _global(self, frame, event, arg):
        found = None
        for c in self.cuts:
            local = c._global(frame, event, arg)
            if local is not None:
                found = local
        return found


def rearm(monkeypatch, cuts: Cuts, undos) -> None:
    """CPython unsets a trace function that raised (the first cut's): each undo in `undos`,
    (class, method name) pairs, sets the tracer again when it is called (test-only), so that
    a second `Cut` can land in it. A name the class lacks is skipped."""
    for cls, name in undos:
        real = getattr(cls, name, None)
        if real is None:
            continue

        def traced(*args, _real=real, **kwargs):
            before = sys.gettrace()
            sys.settrace(cuts._global)
            try:
                return _real(*args, **kwargs)
            finally:
                sys.settrace(before)

        monkeypatch.setattr(cls, name, traced)
