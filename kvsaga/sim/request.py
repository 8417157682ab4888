"""A simulated session's tokens and its steps as the scheduler sees them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvsaga.sim.trace import Session

if TYPE_CHECKING:
    from kvsaga.sim.simulator import Simulator


class SimTokens:
    """One trace session's token ids (a list, for the manager) and their block hashes."""

    __slots__ = ("sid", "ids", "hashes", "root", "high_water", "_prompt")

    def __init__(self, sid: str, ids: list[int], root: bytes) -> None:
        self.sid = sid
        self.ids = ids
        self.hashes: list[bytes] = []
        self._prompt: list[int] = []
        self.root = root
        self.high_water = 0  # tokens [0, high_water) have had their KV computed

    def prompt(self, n: int) -> list[int]:
        """The first `n` ids, as a list kept from one call to the next: a session's
        prompts only grow (each repeats the last and adds to it), so each call copies only
        the ids past the last one, not the whole context. Only read it (`begin_step` copies
        what it keeps)."""
        p = self._prompt
        if len(p) < n:
            p += self.ids[len(p):n]
        elif len(p) > n:
            del p[n:]
        return p


class IdsPrefix(Sequence):
    """The first `n` ids of a list, without copying them: a waiting step's prompt, which
    the scheduler's lookups may ask for at every batch step."""

    __slots__ = ("_ids", "_n")

    def __init__(self, ids: list[int], n: int) -> None:
        self._ids = ids
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._ids[slice(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("token index out of range")
        return self._ids[i]


class SimRequest:
    """One step of a session (it survives preemptions); a `kvsaga.scheduler.StepRequest`."""

    __slots__ = ("session", "k", "tokens", "base_len", "num_out", "num_sampled",
                 "attempt_len", "num_computed", "context_len", "slots_ahead", "prefilling",
                 "retried", "session_id", "salt", "workflow", "tenant", "arrival", "resumed",
                 "_sim")

    def __init__(self, session: Session, k: int, tokens: SimTokens, arrival: float,
                 sim: Simulator) -> None:
        self.session = session
        self.k = k
        self.tokens = tokens
        self.base_len = session.prompt_length(k)
        self.num_out = session.steps[k].output_tokens
        self.num_sampled = 0
        self.attempt_len = 0  # the current attempt's prompt: base + tokens sampled before it
        self.num_computed = 0  # tokens of the context with KV slots
        self.context_len = 0  # tokens of the context the manager holds
        self.slots_ahead = 0  # decode slots allocated beyond the token fed now
        self.prefilling = True
        self.retried = False  # preempted at least once: later attempts redo lost work
        self.session_id = session.id
        self.salt = self.tenant = session.tenant
        self.workflow = session.workflow
        self.arrival = arrival
        self.resumed = k > 0
        self._sim = sim

    @property
    def fed_position(self) -> int:
        """Position of the token a decode step feeds: the last one sampled."""
        return self.base_len + self.num_sampled - 1

    @property
    def num_tokens(self) -> int:
        """The context the next attempt starts from: the prompt and the tokens sampled."""
        return self.base_len + self.num_sampled

    @property
    def max_num_tokens(self) -> int:
        return self.base_len + self.num_out

    @property
    def token_ids(self) -> Sequence[int]:
        """The next attempt's context, as a view (lookups read its length and a few ids;
        `begin` passes the manager a list of them)."""
        return IdsPrefix(self.tokens.ids, self.num_tokens)

    @property
    def block_hashes(self) -> list[bytes]:
        """Hashes of the next attempt's full blocks (kept per session: lookups are cheap)."""
        return self._sim._hashes(self.tokens, (self.num_tokens - 1) // self._sim.block_size)
