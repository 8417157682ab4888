"""Deterministic token ids for trace sessions, whose lines store only token counts.

A session's whole token sequence is `prefix, in_0, out_0, in_1, out_1, ...`; step k's prompt
is the first `session.prompt_length(k)` tokens of it and step k's output the `out_k` tokens
that follow. So every prompt extends the previous step's context exactly, by construction.

- Prefix tokens are drawn from a stream seeded by the prefix group's name only, so sessions of
  one group share them exactly (tenants are kept apart by the manager's hash salt, not here).
- All other tokens are drawn from a stream seeded by the session id. Two sessions share a
  non-prefix block only if every session token in it matches by chance; with the default id
  space of 2**31 - 1 values, the worst case (a block holding one session token after the
  prefix's last partial block) has odds 4.7e-10 per pair of sessions.

Arrays are returned, not lists: a prompt is a read-only view of a cached per-session array,
O(1) to produce, so 50 steps of a 100k-token session cost one 100k-token draw. Call
`.tolist()` where a list is needed. Ids are int64, the type `np.asarray` gives a Python list.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from kvsaga._validate import is_int

if TYPE_CHECKING:
    from kvsaga.sim.trace import Session

DEFAULT_VOCAB_SIZE = 2**31 - 1


def _stream(label: str, n: int, vocab_size: int) -> np.ndarray:
    """The first n ids of the stream named `label`; a prefix of any longer draw."""
    seed = int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "little")
    # Raw 64-bit draws keep every stream prefix-stable (the first n of a longer draw are the
    # same n), which Generator.integers does not promise. Modulo bias is < vocab/2**64.
    raw = np.random.PCG64(seed).random_raw(n)
    return (raw % np.uint64(vocab_size)).astype(np.int64)


class TokenSynthesizer:
    """Makes and caches token ids for sessions.

    Args:
        vocab_size: ids are drawn from [0, vocab_size). Pass the model's vocabulary size to
            replay a trace through a real model; the large default keeps accidental sharing
            between sessions negligible.
        max_cached_sessions: how many sessions' sequences to keep (least recently used go
            first). A 100k-token session holds 800 KB.
    """

    def __init__(self, vocab_size: int = DEFAULT_VOCAB_SIZE,
                 max_cached_sessions: int = 64) -> None:
        if not is_int(vocab_size) or not (
                2 <= vocab_size <= 2**62):
            raise ValueError(f"vocab_size must be an integer in [2, 2**62], got {vocab_size!r}")
        if not is_int(max_cached_sessions) or (
                max_cached_sessions < 1):
            raise ValueError(f"max_cached_sessions must be an integer >= 1, got "
                             f"{max_cached_sessions!r}")
        self.vocab_size = vocab_size
        self.max_cached_sessions = max_cached_sessions
        self._sessions: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._prefixes: dict[str, np.ndarray] = {}

    def prefix_ids(self, group: str, num_tokens: int) -> np.ndarray:
        """The first `num_tokens` prefix ids of `group` (read-only)."""
        cached = self._prefixes.get(group)
        if cached is None or len(cached) < num_tokens:
            cached = _stream(f"prefix\0{group}", num_tokens, self.vocab_size)
            cached.flags.writeable = False
            self._prefixes[group] = cached
        return cached[:num_tokens]

    def token_ids(self, session: Session) -> np.ndarray:
        """The session's whole sequence: prefix, then every step's input and output.

        Args:
            session: the session.

        Returns:
            A read-only int64 array of `session.total_tokens` ids.
        """
        prefix = session.shared_prefix
        key = (session.id, prefix.group, prefix.tokens, session.total_tokens)
        seq = self._sessions.get(key)
        if seq is not None:
            self._sessions.move_to_end(key)
            return seq
        own = _stream(f"session\0{session.id}", session.total_tokens - prefix.tokens,
                      self.vocab_size)
        seq = np.concatenate([self.prefix_ids(prefix.group, prefix.tokens), own])
        seq.flags.writeable = False
        self._sessions[key] = seq
        if len(self._sessions) > self.max_cached_sessions:
            self._sessions.popitem(last=False)
        return seq

    def prompt_token_ids(self, session: Session, k: int) -> np.ndarray:
        """Step k's prompt: the shared prefix, every earlier input and output, step k's input.

        Args:
            session: the session.
            k: step index, 0 <= k < session.num_steps.

        Returns:
            A read-only int64 view of `session.prompt_length(k)` ids.
        """
        return self.token_ids(session)[: session.prompt_length(k)]

    def output_token_ids(self, session: Session, k: int) -> np.ndarray:
        """The ids that step k generates (they follow its prompt in every later prompt).

        Args:
            session: the session.
            k: step index, 0 <= k < session.num_steps.

        Returns:
            A read-only int64 view of `session.steps[k].output_tokens` ids.
        """
        start = session.prompt_length(k)
        return self.token_ids(session)[start: start + session.steps[k].output_tokens]


_DEFAULT = TokenSynthesizer()


def prompt_token_ids(session: Session, k: int) -> np.ndarray:
    """Step k's prompt ids from the default synthesizer; see `TokenSynthesizer`."""
    return _DEFAULT.prompt_token_ids(session, k)


def output_token_ids(session: Session, k: int) -> np.ndarray:
    """Step k's output ids from the default synthesizer; see `TokenSynthesizer`."""
    return _DEFAULT.output_token_ids(session, k)
