"""Session 51 mutation testing of kvsaga/manager_signals.py: the session signals' state
checks and their take-backs, where the suite's other tests let a mutant change them unseen.
Each test names the mutant it kills."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.errors import InvalidRequest
from kvsaga.policy import LRUPolicy

BS = 4


class Told(LRUPolicy):
    """LRU recording the session signals it is told."""

    def bind(self, view):
        super().bind(view)
        self.told = []

    def pause_hinted(self, session, now, hint):
        self.told.append(("pause_hinted", session.session_id))
        super().pause_hinted(session, now, hint)

    def resume_hinted(self, session, now):
        self.told.append(("resume_hinted", session.session_id))
        super().resume_hinted(session, now)

    def resume_withdrawn(self, session, now):
        self.told.append(("resume_withdrawn", session.session_id))
        super().resume_withdrawn(session, now)


def make(core, num_blocks=8, **kw):
    p = Told()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_blocks, policy=p,
                       clock=lambda: 0.0, core=core.name, **kw)
    return m, p


@pytest.mark.parametrize("host", [0, 4], ids=["gpu-only", "host-tier"])
def test_a_running_session_signals_no_resume_and_takes_no_pause_hint(core, host):
    """Mutants `if True` (was `s.state is PAUSED`) in `resume_hint` / `resume_withdrawn`,
    and `if False` (was `is RUNNING`) in `pause_hint`: a running session's resume signals
    are no-ops (the policy is not told), and a pause hint for it is refused."""
    m, p = make(core, num_host_blocks=host)
    m.begin_step("a", list(range(6)))
    m.allocate_slots("a", 6)
    m.resume_hint("a")
    m.resume_withdrawn("a")
    with pytest.raises(InvalidRequest, match="is running; hint at finish_step"):
        m.pause_hint("a", tool="grep", expected_s=3.0)
    assert p.told == [] and m.session("a").hint is None
    m.finish_step("a")
    m.pause_hint("a", tool="grep", expected_s=3.0)
    m.resume_hint("a")
    m.resume_withdrawn("a")
    assert p.told == [("pause_hinted", "a"), ("resume_hinted", "a"),
                      ("resume_withdrawn", "a")]
    m.check_integrity()


def test_ending_a_session_whose_tail_block_was_reused_keeps_the_new_content(core):
    """Mutant `end_session` dropping the retained tail's block when CACHED without its
    generation check: a's tail (block 1) was evicted and reused by c, whose full block it
    now is, cached; ending a must leave it (and its owner) as it is: c still hits 3."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 4, clock=lambda: 0.0,
                       core=core.name)
    m.begin_step("a", list(range(6)))
    m.allocate_slots("a", 6)
    m.finish_step("a")
    tail = m.session("a").tail[0]
    prompt = list(range(100, 113))
    m.begin_step("c", prompt)
    m.allocate_slots("c", 12)  # evicts a's tail block, and takes it again
    m.finish_step("c")
    assert tail in m.session("c").block_ids and m.is_cached(tail)
    assert m.lookup("c", prompt).gpu_hit_blocks == 3
    m.end_session("a")
    assert m.lookup("c", prompt).gpu_hit_blocks == 3 and m.block_owner[tail] == "c"
    m.check_integrity()
