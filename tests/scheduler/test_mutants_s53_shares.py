"""Session 53 mutation review of Agent Fair Share of compute
(kvsaga/scheduler/fair_share.py `ComputeShares`): tests that kill hand mutants of the
catch-up's virtual time and of the favoured tenant's room under a prefill cap, which the
suite let survive (/work/lanes/findings/s53/mutsched.md lists each mutant)."""

from __future__ import annotations

from kvsaga.scheduler.fair_share import ComputeShares, favoured_allowances
from tests.sched_helpers import ToyRequest
from tests.scheduler.helpers import toks
from tests.scheduler.test_fair_share_lag import _bare


def test_a_tenant_competing_alone_does_not_move_the_virtual_time():
    """The virtual time is the least weighted service of the last TWO or more tenants to
    compete: a step in which one tenant runs alone does not raise it to that tenant's own
    service. a (900) and b (100) compete, b leaves, a runs alone, then a leaves as b comes
    back with a newcomer c: the floor is 100 - the lag (0), so b keeps its 100, c enters at
    0 and is favoured; raised to a's 900 - 100, b would lose its credit to a tenant no
    longer there, tied with c."""
    c = _bare({}, 100.0, {"a": 900.0, "b": 100.0})
    c._catch_up(["a", "b"])
    c._catch_up(["a"])  # b leaves
    c._catch_up(["a"])  # a alone: not counted
    c._catch_up(["b", "c"])  # a leaves; b is back with c
    assert c._virtual == 100.0
    assert c._served == {"a": 900.0, "b": 100.0}
    fav, _ = favoured_allowances(["b", "c"], {}, c._served, 128, 8192)
    assert fav == "c"


def test_the_favoured_tenants_running_prefills_keep_their_summed_room_under_a_cap():
    """Under a prefill cap the favoured tenant's running prefills not granted yet keep ALL
    their prompt tokens ahead of another tenant's chunk (`favoured_room`: their sum, 30 +
    50), not the largest one's alone; a decode (need 1) keeps none; the favoured tenant's
    own chunk is kept nothing ahead of it."""
    a1, a2, a3 = (ToyRequest(x, toks(0, 4), tenant="a") for x in ("a1", "a2", "a3"))
    b1 = ToyRequest("b1", toks(0, 4), tenant="b")

    class Bare(ComputeShares):
        tenant_weights: dict = {}
        max_num_batched_tokens = 8192
        running = [a1, b1, a2, a3]

        def _waiting_heads(self):
            return []

    c = Bare()
    c._init_compute_share(128, 8192.0, 0.5)
    c._served = {"a": 0.0, "b": 100.0}  # a is behind: favoured
    allow = c._compete([30, 40, 50, 1])
    assert allow == {"a": 8192 - 1, "b": 128}
    assert c.favoured_room(b1) == 80
    assert c.favoured_room(a1) == 0 and c.is_favoured(a2) and not c.is_favoured(a3)
