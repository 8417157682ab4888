"""LLMEngine: requests in, tokens out; every KV byte lives in the kvsaga pool.

The engine is what an outside serving engine would be: it asks `KVCacheManager` for prefix
hits and slots exactly through the public API, and runs attention through `kvsaga.kernels`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kvsaga._validate import check_bool, check_positive_int, check_str
from kvsaga.config import PoolConfig
from kvsaga.engine.cost import device_profile, model_cost
from kvsaga.engine.cuda_graphs import (
    GRAPH_CAPTURE,
    MIXED_TOKEN_CAP,
    TOKEN_SIZES,
    DecodeGraphs,
    MixedGraphs,
    graphs_apply,
)
from kvsaga.engine.detokenizer import IncrementalDetokenizer
from kvsaga.engine.host_copies import HostCopies
from kvsaga.engine.loader import (
    COMPUTE_DTYPES,
    default_model_path,
    load_checkpoint,
    resolve_device_dtype,
)
from kvsaga.engine.request import (
    ContextTooLong,
    Request,
    RequestOutput,
    one_shot_session_id,
    prompt_token_ids,
)
from kvsaga.engine.runner import ModelRunner
from kvsaga.engine.sampling import SamplingParams
from kvsaga.engine.scheduler import Scheduler
from kvsaga.engine.step_output import StepOutput, generator_states, restore_generators
from kvsaga.engine.step_times import StepClock, StepTimes, step_kind
from kvsaga.engine.weights import open_checkpoint
from kvsaga.errors import InvalidRequest
from kvsaga.manager import CacheStats, KVCacheManager
from kvsaga.offload import TransferEngine
from kvsaga.policy import DEFAULT_POLICY, POLICIES, EvictionPolicy, make_policy, online_policies
from kvsaga.policy.base import check_unbound, unbind
from kvsaga.prefix import root_hash
from kvsaga.scheduler import DEFAULT_SCHEDULER, check_param_names
from kvsaga.session import (
    DEFAULT_SESSION_IDLE_S,
    IdleSweep,
    PauseHint,
    check_session_idle,
    idle_sessions,
)
from kvsaga.storage import KVStorage, free_device_bytes

DEFAULT_CPU_KV_MEMORY_BYTES = 512 * 2**20


@dataclass(frozen=True, slots=True)
class EngineStats:
    """What `LLMEngine.stats()` reports: the cache, the queues and the KV block shape."""

    cache: CacheStats
    num_waiting: int
    num_running: int
    num_preemptions: int
    policy: str
    block_size: int
    bytes_per_block: int
    step_times: StepTimes


class LLMEngine(StepOutput):
    """Args:
    model: HF directory, .gguf file, or None for the default SmolLM2-135M-Instruct.
    device / dtype: where and in what precision to run (defaults: CUDA if present, else CPU;
        fp32 on CPU, bf16 on CUDA).
    kv_memory_bytes: GPU-tier budget; default 512 MiB on CPU, 90% of free memory on CUDA.
    block_size: tokens per KV block.
    policy: eviction policy name, priced with `cost` (this model on this device, from
        `kvsaga.engine.cost`); or a ready policy instance, used as it is (one no other
        manager, engine or simulator was given: InvalidRequest before the weights load).
    max_num_seqs / max_num_batched_tokens: batch limits per step (positive ints).
    max_model_len: longest context; default the model's. Refused (InvalidRequest, before
        the weights load) past a mistral model's sliding window, and past its
        max_position_embeddings (times the factor of linear RoPE scaling:
        `ModelConfig.max_context_len`) unless $KVSAGA_ALLOW_LONG_MAX_MODEL_LEN is set
        (`ModelConfig.check_max_model_len`).
    progress: progress bar while loading weights.
    host_memory_bytes: host-tier budget (pinned on CUDA machines); 0 disables offload.
    transfer_delay: test hook slowing each CPU block copy (see `TransferEngine`).
    scheduler / scheduler_params: the core scheduler (`kvsaga.scheduler`: "workflow",
        the default, or "fcfs") and its parameters; InvalidRequest for an unknown name
        (before the load), ValueError for a bad value (as the scheduler is built).
    enforce_eager: on CUDA, run every pass eagerly instead of replaying CUDA graphs
        (`kvsaga.engine.cuda_graphs`); no effect elsewhere. `KVSAGA_KERNELS=torch` runs
        eagerly too (`graphs_apply`: the reference kernels cannot be captured).
    max_graph_tokens: on CUDA, the most tokens a step with prefill tokens may hold to replay
        from a CUDA graph (`MixedGraphs`), also capped by `max_num_batched_tokens`; 0: such
        steps run eagerly (decode steps still replay). Default `MIXED_TOKEN_CAP` (512).
    graph_capture: when CUDA graphs are recorded: "lazy" (the default), at the first step
        of each padded shape, which that step waits for; "startup", every shape here, before
        the first step (seconds at start, no stall later: kvsaga-serve's default). No effect
        where no graphs apply.
    session_idle_s: a paused session whose pause has lasted longer than this (seconds on
        `clock`) and has no request queued is ended as abandoned (`end_session`: its full
        blocks stay as plain prefix cache), checked by `step` and `tick` at most every
        min(60 s, session_idle_s / 4). A client that stops coming back never ends its
        session, which would otherwise keep its context and the policy's and scheduler's
        records for good. None or inf: never; default `DEFAULT_SESSION_IDLE_S` (1800 s,
        kvsaga-serve's `--session-idle`). Also a settable attribute.

    Attributes (beyond the arguments): `device_profile` and `cost`, the eviction cost model
    built from them; `spec` (the KV block shape); `tokenizer`, `config`;
    `num_expired_sessions`, the sessions ended as abandoned.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        kv_memory_bytes: int | None = None,
        block_size: int = 16,
        policy: str | EvictionPolicy = DEFAULT_POLICY,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 1024,
        max_model_len: int | None = None,
        progress: bool = True,
        clock=time.monotonic,
        host_memory_bytes: int = 0,
        transfer_delay=None,
        scheduler: str = DEFAULT_SCHEDULER,
        scheduler_params: dict | None = None,
        enforce_eager: bool = False,
        max_graph_tokens: int = MIXED_TOKEN_CAP,
        graph_capture: str = "lazy",
        session_idle_s: float | None = DEFAULT_SESSION_IDLE_S,
    ) -> None:
        check_session_idle(session_idle_s, error=InvalidRequest)
        if graph_capture not in GRAPH_CAPTURE:
            raise InvalidRequest(f"graph_capture must be one of {GRAPH_CAPTURE}, got "
                                 f"{graph_capture!r}")
        if (isinstance(max_graph_tokens, bool) or not isinstance(max_graph_tokens, int)
                or not 0 <= max_graph_tokens <= TOKEN_SIZES[-1]):
            raise InvalidRequest(f"max_graph_tokens must be an int in 0..{TOKEN_SIZES[-1]}, "
                                 f"got {max_graph_tokens!r}")
        # Checked before the weights load (seconds to minutes), each naming its argument.
        check_positive_int("max_model_len", max_model_len, InvalidRequest, none_ok=True)
        # (On CUDA the graphs use these two before the core scheduler could check them.)
        check_positive_int("max_num_seqs", max_num_seqs, InvalidRequest)
        check_positive_int("max_num_batched_tokens", max_num_batched_tokens, InvalidRequest)
        if not isinstance(policy, (str, EvictionPolicy)):
            raise InvalidRequest(f"policy must be a policy name or an EvictionPolicy, got "
                                 f"{policy!r}")
        if isinstance(policy, EvictionPolicy):
            check_unbound(policy)  # (the manager's own check comes after the weights load)
        if scheduler_params is not None and not isinstance(scheduler_params, Mapping):
            raise InvalidRequest(f"scheduler_params must be a dict or None, got "
                                 f"{scheduler_params!r}")
        check_bool("enforce_eager", enforce_eager, InvalidRequest)
        if not callable(clock):
            raise InvalidRequest(f"clock must be a callable returning seconds, got {clock!r}")
        check_positive_int("block_size", block_size, InvalidRequest)
        _check_names(policy, scheduler, scheduler_params or {})
        try:
            PoolConfig(kv_memory_bytes=kv_memory_bytes, host_memory_bytes=host_memory_bytes)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        ckpt = open_checkpoint(default_model_path() if model is None else model)
        ckpt.config.check_max_model_len(max_model_len)
        dev, dtype = resolve_device_dtype(device, dtype)
        self.spec = ckpt.config.kv_spec(COMPUTE_DTYPES[dtype], block_size)
        if kv_memory_bytes is None and dev.type != "cuda":
            kv_memory_bytes = DEFAULT_CPU_KV_MEMORY_BYTES
        pool = PoolConfig(kv_memory_bytes=kv_memory_bytes, host_memory_bytes=host_memory_bytes)
        try:  # a budget that holds no block of this model's, before the weights load
            pool.check_budgets(self.spec)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        loaded = load_checkpoint(ckpt, dev, dtype, progress)
        self.model, self.config, self.tokenizer = loaded.model, loaded.config, loaded.tokenizer
        self.tokenizer.whole_pieces()  # (built here, not on the engine thread at a request)
        self.model_path = loaded.path
        self.device = self.model.device
        self.dtype = self.model.embed_tokens.dtype
        cfg = self.config
        try:
            free = free_device_bytes(self.device) if pool.sized_by_fraction else None
            num_blocks = pool.num_gpu_blocks(self.spec, free)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        self.max_model_len = min(
            max_model_len or cfg.max_context_len, num_blocks * block_size
        )
        self.clock = clock
        num_host_blocks = pool.num_host_blocks(self.spec)
        # Evictions are priced for this model on this device, not the A100 default.
        self.device_profile = device_profile(
            self.device, self.dtype, cfg, self.spec.bytes_per_block
        )
        self.cost = model_cost(cfg, self.spec, self.device_profile)
        if isinstance(policy, str):
            policy = make_policy(policy, cost=self.cost)
        self.manager = KVCacheManager(
            self.spec,
            num_blocks,
            policy=policy,
            clock=clock,
            max_model_len=self.max_model_len,
            num_host_blocks=num_host_blocks,
        )
        try:  # the manager bound the policy: a later failure (a CUDA OOM allocating the KV
            # cache, graph capture, the scheduler) unbinds it for the caller's retry
            self.storage = KVStorage(self.spec, num_blocks, self.device)
            transfers = None
            if num_host_blocks:
                host = KVStorage(self.spec, num_host_blocks, "cpu", pin_memory=True)
                transfers = TransferEngine(self.storage.kv, host.kv, delay=transfer_delay)
            self.copies = HostCopies(self.manager, transfers, self._cut_cached_tokens)
            graphs = mixed = None
            if graphs_apply(self.device, enforce_eager):
                graphs = DecodeGraphs(self.model, self.storage.kv, block_size, self.max_model_len,
                                      max_num_seqs)
                mixed_tokens = min(max_graph_tokens, max_num_batched_tokens)
                if mixed_tokens > 0:  # one memory pool for every graph
                    mixed = MixedGraphs(self.model, self.storage.kv, block_size,
                                        self.max_model_len, max_num_seqs, mixed_tokens,
                                        pool=graphs.pool)
            self.runner = ModelRunner(self.model, self.storage.kv, self.manager, graphs, mixed)
            if graph_capture == "startup":
                self.runner.capture_graphs(progress)
            self.scheduler = Scheduler(self.manager, max_num_seqs, max_num_batched_tokens,
                                       name=scheduler, **(scheduler_params or {}))
        except BaseException:
            unbind(self.manager.policy)
            raise
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.requests: dict[str, Request] = {}
        # The outputs made and not yet returned: step() returns them; those of a step that
        # an interrupt cut short, with the next step's.
        self._undelivered: list[RequestOutput] = []
        # Ended requests (out of `requests` and the core scheduler) whose hand-back raised
        # (a policy hook): retried or ended as `StepOutput._retry_hand_backs` says.
        self._ended: list[Request] = []
        self._ids = itertools.count()
        self._idle_sweep = IdleSweep(session_idle_s)
        self.num_expired_sessions = 0
        self._expiry_errors_logged: set[tuple[bool, str]] = set()  # (`_expire_session`)
        # Where step() spends its wall time, by kind of step and phase (`stats().step_times`).
        self.step_clock = StepClock()
        # The last step scheduled no chunk and preempted nobody: the next one decides the
        # same unless a request arrives or ends, or the time reaches `wake_time`. Its time
        # (on `clock`): `last_step_time`.
        self.last_step_idle = False
        self.last_step_time = -float("inf")

    # -- requests -------------------------------------------------------------------------
    def add_request(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        session_id: str | None = None,
        salt: str | None = None,
        workflow: str = "default",
        tool: str | None = None,
        expected_s: float | None = None,
        last_step: bool = False,
    ) -> Request:
        """Queue a request.

        Args:
            prompt_ids: the whole prompt (for a session step: the full context).
            session_id: continue this agent session (its cache is kept between steps);
                None makes a one-shot session that ends with the request ("" is refused).
            salt: tenant salt for prefix sharing.
            tool / expected_s / last_step: the pause that follows this step, if known.
        Raises:
            InvalidRequest: empty or out-of-vocabulary prompt (ids must be ints; numpy
                and torch integer scalars are taken as their values, bools are refused), a
                prompt that leaves no room to generate (ContextTooLong), a session that
                already has a request in flight, `params` not a SamplingParams or None (or
                with n != 1: one completion per request, or a field set to a bad value
                after construction: `SamplingParams.check`), an id or workflow not a str, a
                request_id or session_id of "", a request_id in flight, a salt not a str or
                bytes, a bad pause hint (tool not a str, expected_s not a number >= 0,
                last_step not a bool); nothing is queued.

        Without `request_id`, the engine makes one ("req-<n>") that no request in flight
        has; a one-shot request's session is "oneshot-<request id>", with a suffix
        (".<k>") where a session of that name is known or busy: it never joins (and then
        ends) a caller's session.
        """
        if params is None:
            params = SamplingParams()
        elif not isinstance(params, SamplingParams):
            raise InvalidRequest(
                f"params must be a SamplingParams or None, got {type(params).__name__}")
        params.check()  # (a field set after construction is checked here)
        if params.n != 1:  # one completion per request: a caller that wants n adds n
            raise InvalidRequest(f"SamplingParams.n={params.n}: the engine runs one "
                                 "completion per request (n=1); add the request n times")
        prompt = prompt_token_ids(prompt_ids, self.config.vocab_size)
        # Every hint is checked here, as the manager would check it: a bad one found later,
        # at `begin_step` or `finish_step` inside `step()`, would break that step for the
        # whole batch and leave this request's blocks held.
        check_str("request_id", request_id, InvalidRequest, none_ok=True)
        check_str("session_id", session_id, InvalidRequest, none_ok=True)
        if session_id == "":  # (would be taken as None, yet not ended with the request)
            raise InvalidRequest("session_id must be a non-empty str or None, got ''")
        if request_id == "":  # (would be replaced by an id the caller does not know)
            raise InvalidRequest("request_id must be a non-empty str or None, got ''")
        root_hash(salt)  # InvalidRequest for a salt that is not a str, bytes or None
        check_str("workflow", workflow, InvalidRequest, none_ok=True)
        PauseHint(tool, expected_s)  # InvalidRequest naming a bad tool or expected_s
        check_bool("last_step", last_step, InvalidRequest)
        if len(prompt) >= self.max_model_len:
            raise ContextTooLong(len(prompt), self.max_model_len)
        rid = request_id
        if rid is None:  # (skipping ids a caller gave to requests in flight)
            while (rid := f"req-{next(self._ids)}") in self.requests or self._id_ended(rid):
                pass
        elif rid in self.requests or self._id_ended(rid):  # (ended: not handed back yet)
            raise InvalidRequest(f"request id {rid!r} is already in flight")
        owns = session_id is None
        sid = session_id if session_id is not None else one_shot_session_id(
            rid, lambda s: s in self.manager.sessions or self._session_busy(s))
        if not owns and any(r.session_id == sid for r in self.requests.values()):
            raise InvalidRequest(f"session {sid!r} already has a request in flight")
        if self._ended and not owns:  # its last step ended, but its hand-back raised
            self._hand_back_ended(sid)  # (raises again: nothing queued)
        known = self.manager.sessions.get(sid)
        if known is not None and salt is not None and root_hash(salt) != known.root:
            # Checked here: the scheduler's begin_step would raise it mid-step.
            raise InvalidRequest(f"session {sid!r} was opened with another salt")
        req = Request(
            rid,
            sid,
            prompt,
            params,
            self.clock(),
            owns,
            salt,
            workflow,
            tool,
            expected_s,
            last_step,
            tenant=salt,
            resumed=known is not None,
        )
        req.detokenizer = IncrementalDetokenizer(self.tokenizer, prompt)
        req.generator = params.make_generator(self.device)
        self.scheduler.add(req)  # may refuse it: then nothing here knows of it
        self.requests[rid] = req
        return req

    def abort(self, request_id: str) -> None:
        """Stop a request now; its step's blocks are released (kept as cache). Unknown or
        finished: a no-op. InvalidRequest if `request_id` is not a str.

        The request stops at once. If its hand-back to the manager raises (a policy hook
        in `finish_step` / `end_session` / `resume_withdrawn`), the error propagates and
        the hand-back waits (its session stays busy): the next step retries it, as does
        an abort again, or `end_session` ends the session. A request that ended in a step
        whose hand-back raised is handed back here."""
        check_str("request_id", request_id, InvalidRequest)
        self._abort(request_id)

    def has_unfinished(self) -> bool:
        """A request is queued or running, or outputs wait for the next step (made in a step
        an interrupt or a failed hand-back cut short). A hand-back still failing is not
        work: `tick` (and the next step) retries it."""
        return self.scheduler.has_work or bool(self._undelivered)

    @property
    def wake_time(self) -> float:
        """When (on `clock`) a waiting request may become admissible with nothing running
        and nothing arriving: the core scheduler's `wake_time` (inf: only an arrival or a
        finish changes its decision). A driver whose last step was idle
        (`last_step_idle`) may sleep until then rather than step again at once."""
        return self.scheduler.wake_time

    # -- sessions -------------------------------------------------------------------------
    def resume_hint(self, session_id: str) -> int:
        """Say that a paused session's next request has arrived, before it is scheduled.

        The policy learns that the pause is over, and the session's blocks that were
        offloaded to the host tier start loading back now, so the copy overlaps whatever
        runs before the request is scheduled (other requests' steps); the next forward
        pass waits for it. kvsaga-serve calls it right after `add_request` accepted the
        request, so a refused request starts no reload. A no-op for a session the engine
        does not know or that is running.

        Returns:
            Blocks whose load from the host tier started.
        Raises:
            InvalidRequest: `session_id` is not a str.
        """
        check_str("session_id", session_id, InvalidRequest)
        if session_id not in self.manager.sessions:
            return 0
        self.copies.drop_failed()  # (as `step`: before a reload reads a host copy)
        self.manager.resume_hint(session_id, now=self.clock())
        return self.copies.submit_alone()

    def end_session(self, session_id: str) -> list[str]:
        """End a session: abort its request in flight, if any, and forget its context (its
        full blocks stay as plain prefix cache). Unknown sessions are ignored. A failed
        hand-back of its request is not retried: the end replaces it (`StepOutput`).

        Returns:
            The ids of the requests that were aborted.
        Raises:
            InvalidRequest: `session_id` is not a str; a policy hook's error (the manager's
                `end_session` changed nothing: retry).
        """
        check_str("session_id", session_id, InvalidRequest)
        return self._end_session(session_id)  # (`StepOutput`: also ends failed hand-backs)

    def tick(self) -> None:
        """Housekeeping while idle: the policy expires TTLs and may start prefetches of
        sessions it predicts will resume soon (their copies start now)."""
        now = self.clock()
        if self._ended:  # hand-backs that raised before: retried (logged if they raise)
            self._retry_hand_backs()
        self.copies.drop_failed()  # (as `step`: before a prefetch reads a host copy)
        self.manager.tick(now)
        self._end_idle_sessions(now)
        self.copies.submit_alone()

    @property
    def session_idle_s(self) -> float | None:
        return self._idle_sweep.limit

    @session_idle_s.setter
    def session_idle_s(self, value: float | None) -> None:
        """InvalidRequest unless a number > 0 (inf: never) or None (never)."""
        self._idle_sweep = IdleSweep(check_session_idle(value, error=InvalidRequest))

    def _end_idle_sessions(self, now: float) -> None:
        """End the paused sessions idle past `session_idle_s` that have no request queued,
        and `_end_stuck_sessions` (`IdleSweep`: at most every min(60 s, limit / 4))."""
        if not self._idle_sweep.due(now):
            return
        idle = idle_sessions(self.manager.sessions, self._idle_sweep.limit, now)
        if idle:
            queued = {r.session_id for r in self.requests.values()}
            for sid in idle:
                if sid not in queued:  # (`StepOutput`: a failing hook ends it too)
                    self._expire_session(sid)
        self._end_stuck_sessions(self._idle_sweep.limit, now)

    def stats(self) -> EngineStats:
        """Cache and queue figures, for metrics."""
        sched = self.scheduler
        return EngineStats(
            cache=self.manager.stats(),
            num_waiting=len(sched.waiting),
            num_running=len(sched.running),
            num_preemptions=sched.num_preemptions,
            policy=self.manager.policy.name,
            block_size=self.spec.block_size,
            bytes_per_block=self.spec.bytes_per_block,
            step_times=self.step_clock.read(),
        )

    @property
    def transfers(self) -> TransferEngine | None:
        """The copy engine between the GPU and host tiers; None without a host tier."""
        return self.copies.transfers

    def settle_transfers(self, undo: Callable[[], object] | None = None) -> None:
        """Finish every host-tier copy now, for a caller that reads or writes the KV tiers
        between steps (`kvsaga.migration`; call on the engine's thread): the manager's
        pending plan is submitted and every plan in flight waited on, as `step` does before
        a forward pass; then the copy stream is synchronized with the host, so that the CPU
        may read the host tier's bytes at once (`HostCopies.settle`).

        A failed copy is taken as `step` takes it: `undo` runs first (the caller takes back
        its own slots over blocks not written, as `step` discards its chunks), then the
        failed plans are dropped (`KVCacheManager.drop_transfer`) and the RuntimeError
        propagates; no plan stays pending either way.
        """
        self.copies.settle(undo)

    def _cut_cached_tokens(self, cut: dict[str, int]) -> None:
        """Failed copies cut these sessions' cached prefixes back (`HostCopies.drop_failed`):
        a running request cut back before its first token reports the hits it kept."""
        for req in self.requests.values():
            n = cut.get(req.session_id)
            if (n is not None and req.first_token_time is None
                    and req.num_cached_tokens is not None):
                req.num_cached_tokens = min(req.num_cached_tokens, n)

    # -- the loop -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run one forward pass, sample; returns outputs of requests that moved.

        A forward pass (or its wait for host-tier copies) that raises leaves every request
        as it was before the pass: its slots are taken back (`Scheduler.discard`), and so is
        what the core scheduler counted for its chunks (Agent Fair Share's compute service),
        nothing is sampled, and the exception propagates. The requests stay queued: a later step
        retries them, or the caller aborts them. A failed host-tier copy raises here too
        (RuntimeError), and the blocks its plan was to write are dropped first
        (`KVCacheManager.drop_transfer`: host copies never written leave the host tier,
        GPU blocks being loaded leave the prefix index, and a running step that took one
        as a hit computes those tokens again); the failed plan is not waited on again.
        An interrupt while the sampled tokens are recorded (on CUDA, where the host first
        waits for the pass) leaves every sampled row whole (`_advance_all`, in
        `kvsaga.engine.step_output`): recorded and, if it ended, finished, or taken back in
        the same way to be computed and sampled again, its seeded generator back where it
        was; the outputs of the rows recorded come first in the next step's list (which may
        then hold two outputs of one request, in order).
        One while waiting for the copies keeps the plans not waited on for the next step
        (`HostCopies.wait`). A request's hand-back at its end that raises (a policy hook) is
        raises once every sampled row is recorded; the next step retries it first and, if
        it raises again, logs it and goes on (the request already left the scheduler).
        """
        if self._ended:  # hand-backs that raised before: retried (logged if they raise)
            self._retry_hand_backs()
        if self.copies.failed_plans:  # a drop an interrupt cut short: before any lookup
            self.copies.drop_failed()
        t0 = time.perf_counter()
        now = self.clock()
        self.last_step_idle = False
        self.last_step_time = now
        self.manager.tick(now)
        self._end_idle_sessions(now)
        preempted = self.scheduler.num_preemptions
        chunks = self.scheduler.schedule(now)
        self.last_step_idle = not chunks and self.scheduler.num_preemptions == preempted
        t1 = time.perf_counter()
        num_decode = num_tokens = 0
        draws = generator_states(chunks)
        try:
            if self.copies.transfers is not None:
                # Offloads of this step's evictions, then host hits and prefetches; the
                # forward below must see the loads (and must not overwrite blocks before
                # they are read), and the earlier plans that resume hints started between
                # steps: each is waited on, so that a failure of any is seen.
                self.copies.submit()
                self.copies.wait()
            t2 = time.perf_counter()
            if chunks:
                for c in chunks:
                    num_tokens += c.num_tokens
                    num_decode += c.start >= len(c.request.prompt_ids)
                sampled, out = self.runner.run(chunks)
        except BaseException:
            # The chunks' K/V was not (all) written, yet their full blocks are indexed and
            # their tokens counted as computed: take the slots back, so no later lookup
            # hits those blocks and the requests stay runnable (a later step computes the
            # same tokens again); the caller decides whether to abort them.
            try:
                restore_generators(draws, chunks)  # (the sampler may have drawn)
                self.scheduler.discard(chunks)
            finally:  # after discard, which cuts back to chunk starts
                self.copies.drop_failed()
            raise
        t3 = time.perf_counter()
        if chunks and out is not None:
            self._advance_all(sampled, out, now, draws)
        t4 = time.perf_counter()
        self.step_clock.record(step_kind(num_decode, len(chunks) - num_decode), len(chunks),
                               num_tokens, t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        outputs, self._undelivered = self._undelivered, []
        return outputs


def _check_names(policy: str | EvictionPolicy, scheduler: object,
                 scheduler_params: Mapping) -> None:
    """InvalidRequest for a policy name `make_policy` would refuse here (unknown, or an
    offline one that needs an oracle), an unknown scheduler, or a parameter it does not
    take (`max_num_seqs` / `max_num_batched_tokens` are arguments of their own): before
    the weights load. The scheduler checks the values of its parameters itself."""
    if isinstance(policy, str):
        cls = POLICIES.get(policy)
        if cls is None:
            raise InvalidRequest(f"unknown policy {policy!r}; choose one of {online_policies()}")
        if getattr(cls, "needs_oracle", False):
            raise InvalidRequest(f"policy {policy!r} needs a FutureOracle (trace replay "
                                 f"only); pass a built EvictionPolicy instead")
    try:
        check_param_names(scheduler, scheduler_params,
                          exclude=("max_num_seqs", "max_num_batched_tokens"))
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
