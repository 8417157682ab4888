"""Agent-session traces: the JSON Lines format (docs/workloads.md), its loader and writer.

One agent session a line::

    {"id": str, "workflow": str, "arrival_s": float, "tenant": str (optional),
     "shared_prefix": {"group": str, "tokens": int},
     "steps": [{"input_tokens": int, "output_tokens": int, "tool": str | null,
                "tool_s": float}, ...]}

Step k's prompt is the shared prefix, then every earlier step's input and output, then step
k's own input. After step k the session waits `tool_s` seconds on `tool`; the last step has
`tool: null` and `tool_s: 0`. Sessions of one prefix `group` share the prefix tokens exactly.
Times (`arrival_s`, `tool_s`) are seconds from 0 to `MAX_TRACE_SECONDS` (1e9, about 31 years).
The token ids themselves are not stored: `prompt_token_ids` and `output_token_ids` (defined in
`kvsaga.sim.tokens`, re-exported here) synthesize them deterministically.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate
from pathlib import Path
from typing import Any

from kvsaga._validate import check_unicode, is_int, is_number


class TraceError(ValueError):
    """A trace entry is malformed.

    Attributes:
        field: dotted path of the bad field inside the session (`steps[3].tool_s`), or None
            when the whole line is bad (not JSON, not an object).
        value: the offending value.
        line: 1-based line number in the trace file, or None outside a file.
        path: the trace file, or None outside a file.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: Any = None,
        line: int | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.field = field
        self.value = value
        self.line = line
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where += f"{self.path}:"
        if self.line is not None:
            where += f"line {self.line}: "
        elif where:
            where += " "
        what = f"field {self.field!r:.200}: " if self.field is not None else ""
        return f"{where}{what}{self.message}"

    def located(self, *, prefix: str = "", line: int | None = None,
                path: str | None = None) -> TraceError:
        """A copy of this error with a field-path prefix and a file position added."""
        return TraceError(
            self.message,
            field=f"{prefix}{self.field}" if self.field is not None else prefix.rstrip(".") or None,
            value=self.value,
            line=self.line if line is None else line,
            path=self.path if path is None else path,
        )


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; `true` tokens is a typo, not a count.
    if not is_int(value):
        raise TraceError(f"must be an integer, got {value!r:.200}", field=name, value=value)
    if value < minimum:
        raise TraceError(f"must be >= {minimum}, got {value!r:.200}", field=name, value=value)


# The most seconds an arrival or a tool's wait may be: about 31.7 years. The simulator's
# clock is a float in seconds, and far beyond this its resolution passes a decode step's
# length (at 1e15 s it is 0.125 s, and a decode run raised IndexError there).
MAX_TRACE_SECONDS = 1e9


def _check_float(name: str, value: Any) -> None:
    if not is_number(value):
        raise TraceError(f"must be a number, got {value!r:.200}", field=name, value=value)
    if not _finite(value) or value < 0:
        raise TraceError(f"must be a finite number >= 0, got {value!r:.200}", field=name,
                         value=value)
    if value > MAX_TRACE_SECONDS:
        raise TraceError(f"must be at most {MAX_TRACE_SECONDS:g} seconds (about 31 years; "
                         f"the simulator's clock loses a step's resolution far beyond), got "
                         f"{value!r:.200}", field=name, value=value)


def _finite(value: int | float) -> bool:
    """Finite as a float: an int too large for one (JSON allows any number of digits) is
    not, where `math.isfinite` and `float` raise OverflowError."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_str(name: str, value: Any) -> None:
    """A non-empty str of Unicode text: JSON's "\\ud800" escape decodes to a lone surrogate,
    which hashing (the token synthesizer, the manager's prefix salt) cannot encode, far from
    the line that held it."""
    if not isinstance(value, str) or not value:
        raise TraceError(f"must be a non-empty string, got {value!r:.200}", field=name,
                         value=value)
    check_unicode("the string", value, lambda msg: TraceError(msg, field=name, value=value))


# The tenant key of the sessions without a tenant in results (`kvsaga.sim.metrics.tenant_key`);
# no session may name it as its tenant (the manager and scheduler would serve it apart from
# them while the results merged the two).
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class SharedPrefix:
    """Tokens at the start of every prompt of every session of one group.

    Args:
        group: name of the group (a system prompt + tool definitions); sessions of one group
            share these tokens exactly.
        tokens: number of prefix tokens (0 for none).
    """

    group: str
    tokens: int

    def __post_init__(self) -> None:
        _check_str("group", self.group)
        _check_int("tokens", self.tokens, 0)


@dataclass(frozen=True)
class Step:
    """One LLM call of a session, and the tool call that follows it.

    Args:
        input_tokens: tokens appended to the context before this call (the task for the first
            step, the previous tool's observation afterwards); at least 1.
        output_tokens: tokens the model generates; at least 1.
        tool: the tool called after this step, or None (always None on the last step).
        tool_s: seconds the session then waits before its next step.
    """

    input_tokens: int
    output_tokens: int
    tool: str | None = None
    tool_s: float = 0.0

    def __post_init__(self) -> None:
        _check_int("input_tokens", self.input_tokens, 1)
        _check_int("output_tokens", self.output_tokens, 1)
        if self.tool is not None:
            _check_str("tool", self.tool)
        _check_float("tool_s", self.tool_s)


@dataclass(frozen=True)
class Session:
    """One agent task: a chain of steps whose prompts extend each other.

    Args:
        id: unique within a trace; also seeds the session's synthesized token ids.
        workflow: the workflow type (the workload family) for per-workflow learning.
        arrival_s: when the first step arrives, in seconds from the start of the trace.
        shared_prefix: the prefix group and its length.
        steps: the LLM calls, in order; at least one. The last step has `tool` None and
            `tool_s` 0; an earlier step may have `tool` None too (a pause of unknown kind).
        tenant: who owns the session; the manager salts prefix hashes per tenant, so sessions
            of different tenants never share blocks even within one prefix group. None: no
            tenant (reported as "default" in results, so that name is refused here).
    """

    id: str
    workflow: str
    arrival_s: float
    shared_prefix: SharedPrefix
    steps: tuple[Step, ...]
    tenant: str | None = None

    def __post_init__(self) -> None:
        _check_str("id", self.id)
        _check_str("workflow", self.workflow)
        _check_float("arrival_s", self.arrival_s)
        if self.tenant is not None:
            _check_str("tenant", self.tenant)
            if self.tenant == DEFAULT_TENANT:
                raise TraceError(f"{DEFAULT_TENANT!r} is reserved: it names the sessions without "
                                 "a tenant in results; leave the field out for those, or name "
                                 "the tenant otherwise", field="tenant", value=self.tenant)
        if not isinstance(self.shared_prefix, SharedPrefix):
            raise TraceError(f"must be a SharedPrefix, got {self.shared_prefix!r:.200}",
                             field="shared_prefix", value=self.shared_prefix)
        if isinstance(self.steps, list):
            object.__setattr__(self, "steps", tuple(self.steps))
        if not isinstance(self.steps, tuple) or not self.steps:
            raise TraceError(f"must be a non-empty list of steps, got {self.steps!r:.200}",
                             field="steps", value=self.steps)
        for k, step in enumerate(self.steps):
            if not isinstance(step, Step):
                raise TraceError(f"must be a Step, got {step!r:.200}", field=f"steps[{k}]",
                                 value=step)
        last = self.steps[-1]
        k = len(self.steps) - 1
        if last.tool is not None:
            raise TraceError(f"the last step calls no tool, got {last.tool!r:.200}",
                             field=f"steps[{k}].tool", value=last.tool)
        if last.tool_s != 0:
            raise TraceError(f"the last step waits 0 s, got {last.tool_s!r:.200}",
                             field=f"steps[{k}].tool_s", value=last.tool_s)

    @property
    def num_steps(self) -> int:
        """Number of LLM calls."""
        return len(self.steps)

    @cached_property
    def input_offsets(self) -> tuple[int, ...]:
        """Position of each step's first input token in the session's token sequence.

        The sequence is prefix, in_0, out_0, in_1, out_1, ...; entry k is where in_k starts;
        a final extra entry is the length of the whole sequence (the last step's output
        included).
        """
        sizes = [self.shared_prefix.tokens]
        for step in self.steps:
            sizes.append(step.input_tokens + step.output_tokens)
        return tuple(accumulate(sizes))

    def prompt_length(self, k: int) -> int:
        """Tokens in step k's prompt: prefix, earlier inputs and outputs, then step k's input.

        Args:
            k: step index, 0 <= k < num_steps.

        Returns:
            The prompt length in tokens.
        """
        self._check_step(k)
        return self.input_offsets[k] + self.steps[k].input_tokens

    @property
    def total_tokens(self) -> int:
        """Length of the final context: every prompt and output, the last step's included."""
        return self.input_offsets[-1]

    def _check_step(self, k: int) -> None:
        if not is_int(k) or not 0 <= k < len(self.steps):
            raise IndexError(f"step index {k!r:.200} out of range for session "
                             f"{self.id!r:.200} with {len(self.steps)} steps")

    def to_dict(self) -> dict[str, Any]:
        """The session as one JSON object of the trace format."""
        out: dict[str, Any] = {
            "id": self.id,
            "workflow": self.workflow,
            "arrival_s": self.arrival_s,
        }
        if self.tenant is not None:
            out["tenant"] = self.tenant
        out["shared_prefix"] = {"group": self.shared_prefix.group,
                                "tokens": self.shared_prefix.tokens}
        out["steps"] = [
            {"input_tokens": s.input_tokens, "output_tokens": s.output_tokens,
             "tool": s.tool, "tool_s": s.tool_s}
            for s in self.steps
        ]
        return out

    @classmethod
    def from_dict(cls, obj: Any) -> Session:
        """Parse one trace-format object.

        Args:
            obj: the decoded JSON value of one line.

        Returns:
            The session.

        Raises:
            TraceError: naming the bad field (`steps[2].tool_s`) and its value; unknown keys
                are errors too, so that typos do not pass silently. A step may leave out
                `tool` (None) and then `tool_s` (0.0); a step that names a tool must give
                `tool_s`, so that a converter that forgets it does not replay every tool
                wait as 0 s.
        """
        _expect_keys(obj, required={"id", "workflow", "arrival_s", "shared_prefix", "steps"},
                     optional={"tenant"}, where=None)
        prefix = obj["shared_prefix"]
        _expect_keys(prefix, required={"group", "tokens"}, optional=set(),
                     where="shared_prefix")
        try:
            shared = SharedPrefix(group=prefix["group"], tokens=prefix["tokens"])
        except TraceError as e:
            raise e.located(prefix="shared_prefix.") from None
        raw_steps = obj["steps"]
        if not isinstance(raw_steps, list) or not raw_steps:
            raise TraceError(f"must be a non-empty list, got {raw_steps!r:.200}", field="steps",
                             value=raw_steps)
        steps = []
        for k, raw in enumerate(raw_steps):
            where = f"steps[{k}]"
            _expect_keys(raw, required={"input_tokens", "output_tokens"},
                         optional={"tool", "tool_s"}, where=where)
            try:
                steps.append(Step(input_tokens=raw["input_tokens"],
                                  output_tokens=raw["output_tokens"],
                                  tool=raw.get("tool"), tool_s=raw.get("tool_s", 0.0)))
            except TraceError as e:
                raise e.located(prefix=f"{where}.") from None
            if steps[-1].tool is not None and "tool_s" not in raw:
                raise TraceError(f"is missing: a step that calls a tool ({steps[-1].tool!r:.200})"
                                 " says how many seconds it waits (0 for none)",
                                 field=f"{where}.tool_s", value=None)
        arrival = obj["arrival_s"]
        return cls(id=obj["id"], workflow=obj["workflow"],
                   arrival_s=float(arrival) if is_number(arrival) and _finite(arrival)
                   else arrival,
                   shared_prefix=shared, steps=tuple(steps), tenant=obj.get("tenant"))



def _expect_keys(obj: Any, *, required: set[str], optional: set[str],
                 where: str | None) -> None:
    if not isinstance(obj, Mapping):
        # A line holding a JSON array of sessions: say what a trace is.
        lines = " (a trace is JSON Lines: one session object a line, not a JSON array)" \
            if where is None and isinstance(obj, list) else ""
        raise TraceError(f"must be a JSON object{lines}, got {obj!r:.200}", field=where,
                         value=obj)
    missing = sorted(required - obj.keys())
    if missing:
        name = missing[0] if where is None else f"{where}.{missing[0]}"
        raise TraceError("is missing", field=name, value=None)
    unknown = sorted(obj.keys() - required - optional)
    if unknown:
        name = unknown[0] if where is None else f"{where}.{unknown[0]}"
        raise TraceError(f"is not a trace field (known: {', '.join(sorted(required | optional))})",
                         field=name, value=obj[unknown[0]])


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # a byte that `surrogateescape` could not decode

# (tenant, prefix group) -> (its shared_prefix.tokens, where the first session declared it)
_PrefixGroups = dict[tuple[str | None, str], tuple[int, str]]


def _check_prefix_group(groups: _PrefixGroups, session: Session, where: str) -> None:
    """Record the session's prefix group; TraceError when the group declared another length.

    The simulator caches a group's prefix once, up to the longest length declared: a
    session declaring a shorter one would have its own tokens counted as recomputed."""
    key = (session.tenant, session.shared_prefix.group)
    tokens = session.shared_prefix.tokens
    first = groups.setdefault(key, (tokens, where))
    if first[0] != tokens:
        who = "no tenant" if session.tenant is None else f"tenant {session.tenant!r:.200}"
        raise TraceError(
            f"prefix group {key[1]!r:.200} ({who}) has {first[0]} tokens {first[1]}, here "
            f"{tokens} (session {session.id!r:.200}): the sessions of a group share its prefix "
            "exactly (name a new group for another prefix)",
            field="shared_prefix.tokens", value=tokens)


def check_prefix_groups(sessions: Iterable[Session]) -> None:
    """Refuse sessions of one tenant's prefix group that declare different
    `shared_prefix.tokens` (`_check_prefix_group` says why), as `load_trace` does for a
    file: for traces built in memory (the simulator, `mixed`, `write_trace`).

    Raises:
        TraceError: naming the group, both lengths and both sessions.
    """
    groups: _PrefixGroups = {}
    for s in sessions:
        _check_prefix_group(groups, s, f"in session {s.id!r:.200}")


def serve_order(sessions: Iterable[Session]) -> list[Session]:
    """The sessions by arrival, ties by id: the order the simulator queues them and sums
    their results in, so that a trace's record order changes nothing (summed in file
    order, a shuffled trace's `tct_mean_s` differed in its last bits)."""
    return sorted(sessions, key=lambda s: (s.arrival_s, s.id))


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's `object_pairs_hook`: an object as a dict, refusing a key given twice (json keeps
    the last silently, so a hand-edited line could lose a field without a word)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


# What JSON counts as whitespace: a line of only these is blank. `str.strip()` would take
# Unicode spaces (U+00A0, U+2028, \x1c) too, skipping a line that is not JSON.
_JSON_SPACE = " \t\r\n"


def _utf16_hint(text: str, lineno: int) -> str:
    """What a file opening with a UTF-16 byte order mark (FF FE or FE FF, read as two
    undecodable bytes) is: PowerShell's `>` and some Windows editors write UTF-16."""
    if lineno == 1 and text[:2] in ("\udcff\udcfe", "\udcfe\udcff"):
        return "; the file starts with a UTF-16 byte order mark: save it as UTF-8"
    return ""


def _json_error(e: json.JSONDecodeError, text: str) -> str:
    """The message for a line that is not JSON. Where json stopped at the end of the line
    (its position past the line's last character, which it counts as column 1 of a next
    line), the line ended inside a value: a session written over several lines, as the
    pretty-printed JSON that editors and `json.dump(indent=...)` make, or a cut-off line."""
    if e.pos >= len(text.rstrip(_JSON_SPACE)):
        return (f"not valid JSON: the line ends inside a JSON value ({e.msg}); a trace is "
                "JSON Lines, each session one whole JSON object on one line (a session "
                "written over several lines, as pretty-printed JSON, does not load)")
    return f"not valid JSON ({e.msg} at column {e.colno})"


def load_trace(path: str | Path) -> list[Session]:
    """Read a JSON Lines trace.

    Blank lines are skipped. Session ids must be unique, and the sessions of one tenant's
    prefix group must declare the same `shared_prefix.tokens`. The file is UTF-8 (a leading
    byte order mark is skipped).

    Args:
        path: the trace file.

    Returns:
        The sessions in file order.

    Raises:
        TraceError: for the first malformed line, naming the file, the 1-based line number,
            the field and the bad value.
    """
    path = Path(path)
    sessions: list[Session] = []
    seen: dict[str, int] = {}
    prefixes: _PrefixGroups = {}
    # Bytes that are not UTF-8 are kept as lone surrogates (`surrogateescape`) and refused
    # by line below: a strict decode failed inside the file's read buffer, naming no line.
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip(_JSON_SPACE):
                continue
            if not text.isascii() and (bad := _NOT_UTF8.search(text)) is not None:
                raise TraceError(f"not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x} at "
                                 f"character {bad.start() + 1}{_utf16_hint(text, lineno)})",
                                 line=lineno, path=str(path))
            try:
                obj = json.loads(text, object_pairs_hook=_unique_keys)
            except _DuplicateKey as e:
                raise TraceError(f"duplicate JSON key {e.key!r:.200} (the last would win silently)",
                                 field=e.key, line=lineno, path=str(path)) from None
            except json.JSONDecodeError as e:
                raise TraceError(_json_error(e, text), value=text.rstrip("\n"), line=lineno,
                                 path=str(path)) from None
            except ValueError as e:  # an integer past Python's digit limit for str -> int
                raise TraceError(f"not a trace entry: {e}", line=lineno,
                                 path=str(path)) from None
            except RecursionError:  # json's parser recurses once per level of nesting
                raise TraceError("not a trace entry: JSON nested too deeply",
                                 line=lineno, path=str(path)) from None
            try:
                session = Session.from_dict(obj)
            except TraceError as e:
                raise e.located(line=lineno, path=str(path)) from None
            if session.id in seen:
                raise TraceError(f"duplicate session id {session.id!r:.200} (first on line "
                                 f"{seen[session.id]})", field="id", value=session.id,
                                 line=lineno, path=str(path))
            seen[session.id] = lineno
            try:
                _check_prefix_group(prefixes, session, f"on line {lineno}")
            except TraceError as e:
                raise e.located(line=lineno, path=str(path)) from None
            sessions.append(session)
    return sessions


def write_trace(sessions: Iterable[Session], path: str | Path) -> None:
    """Write sessions as a JSON Lines trace, one session a line.

    Everything is checked and serialized before the file is touched (unique ids, one length
    per prefix group: what `load_trace` will ask), then written to a temporary file beside
    it and moved over it: an error leaves the old trace whole. A symlink is written through
    (its target is replaced, the link kept), and a file that existed keeps its permissions.

    Args:
        sessions: the sessions, written in order.
        path: the file to create or overwrite.

    Raises:
        TraceError: a repeated session id or a prefix group with two lengths.
        TypeError: an item that is not a Session.
    """
    sessions = list(sessions)
    seen: set[str] = set()
    for s in sessions:
        if not isinstance(s, Session):
            raise TypeError(f"write_trace: not a Session: {s!r:.200}")
        if s.id in seen:
            raise TraceError(f"duplicate session id {s.id!r:.200}", field="id", value=s.id)
        seen.add(s.id)
    check_prefix_groups(sessions)
    text = "".join(json.dumps(s.to_dict(), separators=(",", ":")) + "\n" for s in sessions)
    # The link's target is what gets replaced: os.replace over the link would replace it.
    path = Path(os.path.realpath(path))
    # Opened "x" (not mkstemp) so that a new file gets the umask's mode, as open(path, "w")
    # did; one that existed keeps its own (os.replace gives the path the new file's).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# The token synthesizer lives in its own module; re-exported so that the trace API is one import.
from kvsaga.sim.tokens import (  # noqa: E402
    TokenSynthesizer,
    output_token_ids,
    prompt_token_ids,
)

__all__ = [
    "SharedPrefix",
    "Session",
    "Step",
    "TokenSynthesizer",
    "TraceError",
    "check_prefix_groups",
    "load_trace",
    "output_token_ids",
    "prompt_token_ids",
    "serve_order",
    "write_trace",
]
