"""AsyncEngine: the synchronous LLMEngine driven by one thread, fed from asyncio.

`LLMEngine` is not thread-safe, so exactly one thread (the engine thread) ever touches it or
its manager. Everything else reaches it by submitting a command (a function of the engine)
to a thread-safe queue; the engine thread runs commands between steps. Tokens flow back per
request into its `OutputStream` through `loop.call_soon_threadsafe`; a stream holds at
most one output its reader has not taken (a reader that falls behind reads the steps since
its last read as one, the newest, with `delta` and `new_token_ids` joined over them).

Invariants:
- A request's stream gives its outputs in order, none lost (an output taken late carries
  the deltas of the ones merged into it), and ends with one whose `finish_reason` is set,
  or with an exception.
- A stream that its consumer leaves early (client disconnect, cancellation) aborts its
  request, so its blocks go back to the pool.
- Every command submitted gets its result or an exception: once the engine thread has
  stopped (or its model failed to load, or the thread failed), a command is failed at once
  with `EngineStopped`, and the ones still queued when it stopped are failed too, never left
  pending; `stop()` fails them itself, and ends every request's stream, when the thread
  does not end within its timeout (stuck in a step).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import torch

from kvsaga.engine.admission_wait import AdmissionBackoff
from kvsaga.engine.cpu_threads import ThreadGovernor, governor_for, use_threads
from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.request import RequestOutput
from kvsaga.engine.sampling import SamplingParams
from kvsaga.serve.engine_snapshot import SnapshotKeeper, _retrieved
from kvsaga.serve.output_stream import OutputStream

log = logging.getLogger("kvsaga.serve")
T = TypeVar("T")
EngineFactory = Callable[[], LLMEngine]


class RequestAborted(Exception):
    """The request was aborted (its client went away) before it finished."""


class SessionEnded(RequestAborted):
    """The request was aborted because its session was ended (`end_engine_session`), so
    its client can be told why."""


class EngineStopped(RuntimeError):
    """The engine thread has stopped (shutdown, a failed model load, or a failure of the
    thread itself), so the command or request will never run. In-flight requests get it
    at shutdown too."""


SHUTTING_DOWN = "the server is shutting down"
# After a step that raised, the engine thread waits (a command wakes it) this long, doubled
# while steps keep failing, up to the max, rather than step again at once.
FAILED_STEP_WAIT_S = 0.01
FAILED_STEP_MAX_WAIT_S = 1.0
# How long kvsaga-serve's shutdown drain (kvsaga/serve/shutdown.py) waits for the engine
# thread to leave the step it is in before `stop` ends the streams itself: a step that
# hangs must not use up the time the final events have. The app's own stop joins no longer
# than this either (then it waits in short slices, kvsaga/serve/app.py `EngineWait`).
STOP_JOIN_S = 0.5


class AsyncEngine(SnapshotKeeper):
    """Owns the engine thread.

    Args:
        engine_or_factory: a ready LLMEngine, or a function that builds one (it runs on the
            engine thread, so the server can answer 503 while the model loads).
        idle_wait_s: how long the idle thread sleeps between housekeeping rounds; also the
            longest wait between steps while requests wait for admission (see
            `_wait_for_admission`).
    """

    def __init__(self, engine_or_factory: LLMEngine | EngineFactory, idle_wait_s: float = 0.5):
        if isinstance(engine_or_factory, LLMEngine):
            self.engine: LLMEngine | None = engine_or_factory
            self._factory: EngineFactory | None = None
        else:
            self.engine = None
            self._factory = engine_or_factory
        self.load_error: BaseException | None = None
        self._init_snapshot()  # `snapshot` and how it is kept (engine_snapshot.py)
        self.num_in_flight = 0  # requests submitted and not yet finished (event-loop side)
        # Seconds the engine thread has spent in `engine.step()` (its accumulated work, which
        # a Ray replica reports for routing: `ReplicaStats.busy_s`); engine thread only.
        self.busy_s = 0.0
        # When the step now running began (`time.perf_counter()`), None between steps; set
        # on the engine thread, read from any (`step_running_s`).
        self._step_started: float | None = None
        # Seconds it has waited with no unfinished request (engine thread only).
        self.idle_s = 0.0
        # Sizes torch's thread team to the cores other processes leave, on a CPU engine
        # under KVSAGA_CPU_THREADS=adaptive (`--cpu-host auto`); set on the engine thread.
        self.governor: ThreadGovernor | None = None
        self._idle_wait_s = idle_wait_s
        self._commands: queue.SimpleQueue[tuple[Callable[[LLMEngine], Any], Any]] = (
            queue.SimpleQueue()
        )
        self._wake = threading.Event()
        self._streams: dict[str, OutputStream] = {}  # engine thread only (`_end_streams` copies)
        self._stop = threading.Event()
        # Why commands fail at once, set (under `_lock`) when the engine thread ends; after
        # that nothing more is queued, so the thread's last drain of the queue is complete.
        self._lock = threading.Lock()
        self._stopped: str | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        # Set once the load's outcome is known: loaded, failed, or stopped (`wait_ready`).
        self._settled = threading.Event()
        self._admission = AdmissionBackoff(idle_wait_s)  # waits between idle steps
        self._step_failures = 0  # steps that raised in a row (engine thread only)

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def stopped(self) -> bool:
        """Whether commands are refused: `stop()` was called, or the engine thread ended."""
        return self._stop.is_set() or self._stopped is not None

    @property
    def stop_reason(self) -> str:
        """Why commands are refused (`EngineStopped`'s text), once `stopped`."""
        return self._stopped or SHUTTING_DOWN

    def start(self) -> None:
        """Start the engine thread (it first builds the engine if given a factory); nothing
        once `stop()` was called (a stopped engine loads no model)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="kvsaga-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still running, commands still queued and commands
        submitted from now on get `EngineStopped`, within `timeout` even where the thread
        is still inside a step (a hung forward pass) or a model load then."""
        self._stop.set()
        self._wake.set()
        self._settled.set()  # a load still running will not make it ready any more
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                return
        # Never started, or the thread is stuck: nothing will run the queued commands, and
        # its requests' readers must not wait for it.
        self._close(SHUTTING_DOWN)
        self._end_streams(EngineStopped(SHUTTING_DOWN))
        self._settle_refresh()  # its readers read the last snapshot now

    @property
    def thread_alive(self) -> bool:
        """Whether the engine thread is still running (after `stop()`: still inside the step
        or model load it was in); from any thread."""
        return self._thread is not None and self._thread.is_alive()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the model has loaded (True), its load failed or the engine stopped
        (False), or `timeout` passed (False)."""
        self._settled.wait(timeout)
        return self.ready

    @property
    def step_running_s(self) -> float:
        """Seconds the engine thread has been inside the step it runs now (0.0 between
        steps); from any thread. A step that never returns (a hung forward pass) leaves
        the thread alive and every request waiting, which `stopped` does not show: a Ray
        replica fails its health check on it (`EngineReplica.check_health`)."""
        started = self._step_started
        return 0.0 if started is None else time.perf_counter() - started

    # -- calls into the engine thread -----------------------------------------------------
    def _submit(self, fn: Callable[[LLMEngine], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if not self.stopped:
                self._commands.put((fn, fut))
                self._wake.set()
                return fut
        fut.set_running_or_notify_cancel()
        fut.set_exception(EngineStopped(self.stop_reason))
        return fut

    async def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run `fn(engine)` on the engine thread between steps; its result or exception
        (`EngineStopped` once the engine thread has stopped)."""
        return await asyncio.wrap_future(self._submit(fn))

    def call_sync(self, fn: Callable[[LLMEngine], T], timeout: float = 30.0) -> T:
        """`call` for threads other than the event loop's (tests, the CLI)."""
        return self._submit(fn).result(timeout)

    async def submit(
        self, prompt_ids: list[int], params: SamplingParams, *,
        on_added: Callable[[LLMEngine], Any] | None = None, **request_kwargs: Any
    ) -> RequestHandle:
        """Queue a request; its outputs are read from the returned handle.

        Args:
            prompt_ids: the whole prompt.
            params: sampling settings.
            on_added: run on the engine thread right after `add_request` accepted the
                request, in the same command (before any step); not run for a refused
                one. A failure of it is logged; the request stays queued.
            **request_kwargs: passed to `LLMEngine.add_request` (request_id is required;
                session_id, salt, workflow, tool, expected_s, last_step).
        Returns:
            The request's handle. The caller must read it to the end or `abort()` it.
        Raises:
            InvalidRequest: what `add_request` raised (nothing was queued).
        """
        stream = OutputStream(asyncio.get_running_loop())
        rid: str = request_kwargs["request_id"]

        def add(engine: LLMEngine) -> None:
            engine.add_request(prompt_ids, params, **request_kwargs)
            self._streams[rid] = stream  # only once accepted: a rejected one has no stream
            if on_added is not None:
                try:
                    on_added(engine)
                except Exception:
                    log.exception("after adding request %s", rid)

        self.num_in_flight += 1
        try:
            await self.call(add)
        except BaseException:
            self.num_in_flight -= 1
            raise
        return RequestHandle(self, rid, stream)

    def post(self, fn: Callable[[LLMEngine], Any]) -> None:
        """Run `fn(engine)` on the engine thread between steps, without waiting for it
        (commands run in order, so it runs before anything submitted later); a failure is
        logged."""
        self._submit(fn).add_done_callback(_log_failure)

    async def end_session(self, engine_session_id: str) -> None:
        """End a session in the engine, aborting its request in flight (whose reader gets
        `SessionEnded`).

        The end runs even when the awaiting task is cancelled meanwhile: a caller forgets
        the session before it awaits this, and a cancelled end would leave the session (and
        its step in flight) in the engine alone, so a later step of the id would meet it.
        """
        fut = self._submit(lambda e: self.end_engine_session(e, engine_session_id))
        fut.add_done_callback(_log_failure)  # seen even when nobody awaits it any more
        # `wrap_future` would cancel the command with its awaiter; the shield keeps it.
        waiter = asyncio.wrap_future(fut)
        waiter.add_done_callback(_retrieved)
        await asyncio.shield(waiter)

    def end_engine_session(self, engine: LLMEngine, engine_session_id: str) -> list[str]:
        """On the engine thread: end a session (`LLMEngine.end_session`) and wake the reader
        of each request the end aborted with `SessionEnded` (the engine gives an aborted
        request no output: a reader not woken would wait for good, its step counted in
        flight). Returns their ids."""
        aborted = engine.end_session(engine_session_id)
        for rid in aborted:
            stream = self._streams.pop(rid, None)
            if stream is not None:
                stream.put(SessionEnded(rid))
        return aborted

    def abort_request(self, engine: LLMEngine, request_id: str) -> None:
        """On the engine thread: abort a request and wake its reader, with the abort's own
        error if it failed (its stream is gone by then: a reader not woken would wait for
        good, and its session would stay reserved)."""
        stream = self._streams.pop(request_id, None)
        told: BaseException = RequestAborted(request_id)
        try:
            engine.abort(request_id)
        except BaseException as e:
            told = e
            raise
        finally:
            if stream is not None:
                stream.put(told)

    # -- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        # What the governor sets is undone when the thread ends: torch.set_num_threads also
        # sets the count threads started later begin with, and a lowered count left behind
        # became the next engine's in the process.
        threads = torch.get_num_threads()
        try:
            engine = self._load()
            if engine is not None:
                self._serve(engine)
        finally:
            use_threads(threads)
            self._settled.set()

    def _load(self) -> LLMEngine | None:
        """Build the engine (from the factory) and its governor; None, with every command
        refused, where the load failed or `stop()` came first (it stops no load under way,
        but the engine loaded then never serves)."""
        try:
            if self.engine is None and not self._stop.is_set():
                assert self._factory is not None
                self.engine = self._factory()
            if self.engine is not None and not self._stop.is_set():
                self.governor = governor_for(self.engine.device.type)[0]
        except BaseException as e:  # reported by /health, 503s and kvsaga-serve's exit
            log.debug("loading the model failed", exc_info=True)
            self.load_error = e
            self._close(f"the model failed to load: {e}")
            return None
        if self._stop.is_set():
            self._close(SHUTTING_DOWN)
            return None
        return self.engine

    def _serve(self, engine: LLMEngine) -> None:
        """Run commands and steps until `stop()` or a failure of the thread."""
        governor = self.governor
        reason = SHUTTING_DOWN
        try:
            self._publish(engine)
            self._ready.set()
            self._settled.set()
            while not self._stop.is_set():
                self._run_commands(engine)
                if engine.has_unfinished():
                    self._stepping = True
                    self._answer_refresh(engine)  # after the flag: see `fresh_snapshot`
                    stepped = self._step(engine)
                    self._stepping = False
                    self._dirty = True
                    if time.perf_counter() - self._published_at >= self.snapshot_every_s:
                        self._publish_logged(engine)  # a clock read a step; stats() once a second
                    if not stepped:
                        self._back_off()
                    elif engine.last_step_idle:
                        self._wait_for_admission(engine)
                    else:
                        self._admission.reset()
                else:
                    if self._dirty or self._refresh is not None:  # gone idle, or a reader
                        self._answer_refresh(engine, force=True)
                    # Requests that waited for admission and left (aborted) leave the
                    # backoff where it was: the next wait for admission starts afresh.
                    self._admission.reset()
                    start = time.perf_counter()
                    self._wake.wait(self._idle_wait_s)
                    self.idle_s += time.perf_counter() - start
                    self._wake.clear()
                    engine.tick()
                if governor is not None:  # after a step or an idle wait: windows of 1-1.5 s
                    governor.poll()
        except BaseException as e:  # a bug outside a step (tick, stats): the thread is done
            log.exception("the engine thread failed; stopping it")
            reason = f"the engine thread failed: {type(e).__name__}"
        finally:
            # Queued commands are failed, not run: an add run now would queue a request
            # that no step would ever serve.
            self._close(reason)
            self._fail_all(engine, EngineStopped(reason))
            # The figures it stopped with, for a scrape after the stop (`fresh_snapshot`
            # takes no new one then); a failing `stats()` leaves the last one.
            with contextlib.suppress(Exception):
                self._publish(engine)
            self._settle_refresh()

    def _wait_for_admission(self, engine: LLMEngine) -> None:
        """After a step that scheduled nothing (requests wait for admission, none runs),
        wait for a command (a request, an abort, an end), the scheduler's `wake_time` or
        the doubling backoff, whichever comes first, rather than step again at once: the
        engine thread spun at full CPU there (`kvsaga.engine.admission_wait`)."""
        timeout = self._admission.next_wait(engine)
        if timeout > 0:
            self._wake.wait(timeout)
            self._wake.clear()  # (commands run next, before any step)

    @property
    def num_admission_waits(self) -> int:
        """Idle steps that were followed by a wait for admission."""
        return self._admission.num_waits

    def _close(self, reason: str) -> None:
        """Refuse every later command with `reason`, and fail those still queued."""
        with self._lock:
            self._stopped = reason
        while True:
            try:
                _, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_exception(EngineStopped(reason))

    def _run_commands(self, engine: LLMEngine) -> None:
        # Once stop() is called, what is left is failed by `_close`, not run.
        while not self._stop.is_set():
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(engine))
            except BaseException as e:  # handed to the caller; the thread carries on
                fut.set_exception(e)

    def _back_off(self) -> None:
        """After a step that raised: wait for a command, or FAILED_STEP_WAIT_S doubled at
        each failure in a row up to FAILED_STEP_MAX_WAIT_S, before the next step. A failure
        that repeated at every step spun the engine thread (~46k steps/s, a traceback
        each: review s50 diff-engine finding 2)."""
        n = min(self._step_failures, 32)
        self._wake.wait(min(FAILED_STEP_WAIT_S * 2 ** (n - 1), FAILED_STEP_MAX_WAIT_S))
        self._wake.clear()  # (commands run next, before any step)

    def _step(self, engine: LLMEngine) -> bool:
        """One engine step, its outputs put into their streams; False if it raised."""
        start = self._step_started = time.perf_counter()
        try:
            outputs = engine.step()
        except Exception as e:
            failed = getattr(e, "kvsaga_failed_request_ids", None)
            if failed:  # only these requests' hand-backs raised: the rest of the step stands
                outputs = self._fail_some(engine, failed, e)
            else:
                # A bug below us; failing every request in flight (and aborting it, so its
                # blocks are released) keeps the server and the pool consistent. A failure
                # repeated in a row is logged at its 2nd, 4th, 8th... time, with the count.
                self._step_failures = n = self._step_failures + 1
                if n == 1:
                    log.exception("engine step failed; aborting every request in flight")
                elif n & (n - 1) == 0:
                    log.error("engine step failed again (%d in a row; retried after up to "
                              "%.1f s): %s: %s", n, FAILED_STEP_MAX_WAIT_S,
                              type(e).__name__, e)
                self._fail_all(engine, e)
                return False
        finally:
            self._step_started = None
            self.busy_s += time.perf_counter() - start
        if self._step_failures:
            if self._step_failures > 1:
                log.warning("engine steps work again after %d failures in a row",
                            self._step_failures)
            self._step_failures = 0
        streams = self._streams
        for out in outputs:
            stream = streams.get(out.request_id)
            if stream is None:
                continue
            if out.finished:
                del streams[out.request_id]
            stream.put(out)
        return True

    def _end_streams(self, error: BaseException) -> None:
        """From `stop()`, whose thread is not the engine thread: end every request's stream
        with `error`. The dict is copied in one C call (atomic under the GIL) and left to
        the engine thread, which drops the requests when it gets out of its step (what it
        puts into an ended stream then is dropped)."""
        for stream in self._streams.copy().values():
            stream.put(error)

    def _fail_some(self, engine: LLMEngine, rids: tuple[str, ...],
                   error: BaseException) -> list:
        """A step that raised for `rids` alone (a policy hook in their hand-backs, which the
        engine retries; they ended, out of the scheduler): their streams get `error`, and
        the step's other outputs are returned (`take_outputs`) to be delivered as usual.
        Failing every stream here killed every other session's request."""
        log.error("the hand-back of request(s) %s failed (retried by the engine); "
                  "failing only them", ", ".join(map(repr, rids)), exc_info=error)
        for rid in rids:
            stream = self._streams.pop(rid, None)
            if stream is not None:
                stream.put(error)
        return [o for o in engine.take_outputs() if o.request_id not in rids]

    def _fail_all(self, engine: LLMEngine, error: BaseException) -> None:
        for rid, stream in list(self._streams.items()):
            try:
                engine.abort(rid)
            except Exception:
                log.exception("abort of %s failed", rid)
            stream.put(error)
        self._streams.clear()


def _log_failure(fut: concurrent.futures.Future) -> None:
    if fut.cancelled():
        return
    e = fut.exception()
    if isinstance(e, EngineStopped):  # shutdown: nothing left for the command to do
        log.debug("engine command not run: %s", e)
    elif e is not None:
        log.error("engine command failed", exc_info=e)


class RequestHandle:
    """A submitted request: iterate `outputs()` once; `abort()` at any time (idempotent).

    Args:
        engine: the AsyncEngine it runs on.
        request_id: its id in the engine.
    """

    def __init__(self, engine: AsyncEngine, request_id: str, stream: OutputStream) -> None:
        self.engine = engine
        self.request_id = request_id
        self._stream = stream
        self.done = False

    def _close(self) -> None:
        if not self.done:
            self.done = True
            self.engine.num_in_flight -= 1

    def abort(self) -> None:
        """Stop the request; its blocks go back to the pool. No-op once it has finished."""
        if not self.done:
            self._close()
            rid = self.request_id
            fut = self.engine._submit(lambda e: self.engine.abort_request(e, rid))
            fut.add_done_callback(_log_failure)  # nobody awaits it: a failure is logged

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs, one per step (one token each) while the reader keeps
        up; the steps since its last read as one where it falls behind (`OutputStream`: the
        newest, with `delta` and `new_token_ids` joined over them). The last has
        `finish_reason` set.

        Raises:
            RequestAborted: `abort()` was called meanwhile.
            Exception: the engine failed (the request was aborted).
        """
        try:
            while True:
                item = await self._stream.get()
                if isinstance(item, BaseException):
                    self._close()  # the engine thread has already dropped the request
                    raise item
                if item.finished:
                    self._close()
                yield item
                if item.finished:
                    return
        finally:
            self.abort()  # consumer left early (disconnect, cancellation)
