"""Review s55 vleft4 (item 2 of the brief; s54 vleft3 finding 4): a session id reused after
its `last_step`, whose first new step stores nothing (its prompt already in the tier), is
filed under no session by kvsaga's tier policy. Checked through vLLM's real scheduler and
`OffloadingConnector`: nothing is lost by that. The ended session's chunks are shared
cache, so such a step owns none; a fresh id's first step that stores nothing is forgotten
at once for that reason (`_forget_if_idle`), and ends in the same state; in both, the id's
next step that stores starts the session, and its hint then ranks the chunks it owns."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from .harness import TOKEN, make_request  # noqa: E402
from .test_offload_parallel import _clocked, _prompt, _sound  # noqa: E402


@pytest.mark.parametrize("sid", ["S", "F"])
def test_a_reused_ids_first_step_that_stores_nothing_is_as_a_fresh_ids(
        hf_model_dir, sim, replay_mod, sid):
    """Session S runs two steps, the second its `last_step`. Then `sid` (S again, or a fresh
    id F) sends S's first prompt, every chunk of which the tier holds (prompts only
    offloaded: it stores nothing), and then a step that stores a new chunk."""
    r, pol, t, calls = _clocked(sim, replay_mod, hf_model_dir, "ttl", True)
    first = _prompt(1, 4)
    hint = {"session_id": "S", "tool": "t", "expected_s": 30}
    r.run([make_request(first, 2, hint)])
    t[0] = 110.0
    r.run([make_request(first + [TOKEN] * 2 + _prompt(2, 1), 2, {**hint, "last_step": True})])
    assert calls == [("step_started", "S"), ("step_finished", "S"), ("step_started", "S"),
                     ("session_ended", "S")]
    shared = {key for key, (owner, _) in pol._owner.items() if owner is None}
    assert len(shared) == len(pol.chunks) >= 5  # the ended session's chunks: shared cache
    del calls[:]
    t[0] = 120.0
    again = {"session_id": sid, "tool": "u", "expected_s": 60}
    r.run([make_request(list(first), 2, again)])
    assert all(owner is None for owner, _ in pol._owner.values())  # it owns no chunk
    assert sid not in pol._sessions and sid not in pol._owned and sid not in pol.policy.views
    # (S: no session; F: a step, then forgotten, which the policy's base ends unlearned)
    assert calls == ([] if sid == "S" else
                     [("step_started", sid), ("step_finished", sid), ("session_ended", sid)])
    del calls[:]
    t[0] = 130.0
    r.run([make_request(first + [TOKEN] * 2 + _prompt(3, 1), 2, again)])
    assert calls == [("step_started", sid), ("step_finished", sid)]
    assert sid in pol._sessions and sid not in pol._ended and pol._owned[sid] >= 1
    view = pol.policy.views[sid]
    assert view.paused_at == 130.0 and not view.running
    _sound(r)
