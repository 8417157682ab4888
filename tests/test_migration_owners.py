"""A failed import gives the exporter's blocks back to it on every failure path, on both
cores (review s49 gate3, finding 4): the import's open marks its hits shared (owner None);
before, only the pause's take-back gave back, and only the GPU index's longest prefix, so
`step_started` raising, `allocate_slots` failing, or a host-tier gap left them disowned for
good (saga then dropped the exporter's group and filed its blocks as plain cache)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.policy import LRUPolicy, SagaPolicy

BS = 4
CORES = ["python", *(["cpp"] if cpp_available() else [])]


class Saga(SagaPolicy):
    fail: str | None = None

    def step_started(self, s, now):
        if self.fail == "step_started" and s.session_id == "b":
            raise RuntimeError("step_started failed (a policy bug)")
        super().step_started(s, now)

    def choose_victims(self, n, now, *a):
        if self.fail == "choose_victims":
            raise RuntimeError("choose_victims failed (a policy bug)")
        return super().choose_victims(n, now, *a)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("hook", ["step_started", "choose_victims"])
def test_an_import_failing_as_it_opens_gives_the_exporters_blocks_back(core, hook):
    p = Saga()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 5, policy=p, clock=lambda: 0.0,
                       core=core)
    m.begin_step("a", list(range(8)))
    m.allocate_slots("a", 8)
    m.append_tokens("a", [99])
    m.finish_step("a", tool="t")  # a: 2 blocks and a tail
    m.begin_step("z", list(range(500, 508)))
    m.allocate_slots("z", 8)
    m.finish_step("z")
    src = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, clock=lambda: 0.0)
    src.begin_step("x", list(range(16)))
    src.allocate_slots("x", 16)
    src.finish_step("x")
    export = replace(src.export_session("x").export, session_id="b")  # hits a's 2 blocks
    owners, groups = list(m.block_owner), {k: list(v) for k, v in p.groups.items()}
    p.fail = hook
    with pytest.raises(RuntimeError, match=f"{hook} failed"):
        m.import_session(export)
    p.fail = None
    m.check_integrity()
    p.check_integrity()
    assert list(m.block_owner) == owners
    assert {k: list(v) for k, v in p.groups.items()} == groups


class EvictsHead(LRUPolicy):
    victims: list[list[int]] = []
    fail = False

    def choose_victims(self, n, now, *a):
        if self.victims:
            return self.victims.pop(0)
        return super().choose_victims(n, now, *a)

    def step_finished(self, s, now, hint):
        if self.fail and s.session_id == "b":
            raise RuntimeError("step_finished failed (a policy bug)")
        super().step_finished(s, now, hint)


@pytest.mark.parametrize("core", CORES)
def test_a_taken_back_import_gives_back_the_gpu_blocks_past_a_host_only_block(core):
    """a's first block lives on the host tier only; the import hits its 2nd and 3rd on the
    GPU past it (`_host_walk`); its pause raises. Before, those two stayed disowned."""
    p = EvictsHead()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 5, policy=p, clock=lambda: 0.0,
                       num_host_blocks=8, core=core)
    m.begin_step("a", list(range(12)))
    m.allocate_slots("a", 12)
    m.append_tokens("a", [99])
    m.finish_step("a")
    table = list(m.sessions["a"].block_ids)
    m.begin_step("x", list(range(500, 512)))
    p.victims = [[table[0]]]  # a's first block offloaded to the host tier
    m.allocate_slots("x", 12)
    m.finish_step("x")
    m.end_session("x")
    m.take_transfers()
    export = replace(m.export_session("a").export, session_id="b")
    assert [m.block_owner[b] for b in table[1:]] == ["a", "a"]
    p.fail = True
    with pytest.raises(RuntimeError, match="step_finished failed"):
        m.import_session(export)
    m.check_integrity()
    assert [m.block_owner[b] for b in table[1:]] == ["a", "a"]
