"""A simulated move whose KV import finds no room on the receiver is refused as the serving
path refuses it (docs/cluster.md, "Moving a session"). The simulator ended the sender's copy
before it tried the import, then recomputed the whole context on the receiver, and never
told the router: the session was held by no GPU, counted as moved, and the receiver was
not cooled off (review s46 simcluster, finding 1; repro refused_move.py).

The simulator's reports are live by default, and since session 48 a steal needs the
thief's report to show room for the session (`KvsagaRouter._has_room`), so no simulated
import is refused unless a report lags: the tests of the refusal path stand that in for one
(`lagging_reports`: every replica looks roomy). Since session 49 `report_period_s` makes
the reports lag (test_sim_cluster_report_period.py reaches a refusal without the patch)."""

from __future__ import annotations

import pytest

from kvsaga.routing import KvsagaRouter, RoutingConfig
from kvsaga.sim.cluster import _GPU, RETRY_AFTER_S, ClusterSimulator
from kvsaga.sim.config import SimConfig
from tests.cluster.sim_sessions import session as _session

# Two GPUs of 320 blocks. S, D, S2 and S3 share a prefix group, so they all go to gpu1 (B's
# big step landed first on gpu0); when S's tool returns, gpu1 has steps waiting and gpu0 is
# idle: gpu0 steals S, but B's context still fills it (36 blocks free, S needs 63).
SESSIONS = [
    _session("D", 0.0, "g", [(300, 1000, 0)]),
    _session("B", 0.0, "big", [(4500, 500, 0)]),
    _session("S2", 0.001, "g", [(300, 1000, 0)]),
    _session("S3", 0.002, "g", [(300, 1000, 0)]),
    _session("S", 0.003, "g", [(1000, 10, 0.5), (50, 10, 0)]),
]
CONFIG = SimConfig(num_gpu_blocks=320, scheduler="fcfs", policy="lru")


@pytest.fixture
def lagging_reports(monkeypatch):
    """Every GPU's report shows room for any session, as a report taken before the GPU
    filled up would (the live path's reports lag by up to a stats period): the steal is
    tried and the import refused."""
    monkeypatch.setattr(KvsagaRouter, "_has_room",
                        staticmethod(lambda x, tokens, stats: True))


class _Watched(_GPU):
    """Records where and when each step of S is placed."""

    def place(self, t, session, k):
        if session.id == "S":
            self.cluster.placed.append((k, self.name, t))
        super().place(t, session, k)


def _run():
    routing = RoutingConfig(bytes_per_token=CONFIG.cost.kv_spec.bytes_per_token,
                            cost=CONFIG.cost, steal_margin=1.0, busy_balance=0.0,
                            prefix_slack=100.0)
    sim = ClusterSimulator(SESSIONS, CONFIG, gpus=2, router="kvsaga", routing=routing)
    sim.gpu_class = _Watched
    sim.placed = []
    holders = []
    route = sim._route

    def routed(t, session, k):
        route(t, session, k)
        if session.id == "S" and k:  # (step 0 opens it where it runs)
            holders.append(sorted(g.name for g in sim.gpus.active
                                  if "S" in g.manager.sessions))
    sim._route = routed
    return sim, sim.run(), holders


@pytest.mark.usefixtures("lagging_reports")
def test_a_refused_import_keeps_the_session_and_its_kv_on_the_sender():
    sim, res, holders = _run()
    assert sim.router.num_stolen == 1  # the steal was tried
    # S never left gpu1: neither the refused routing of its step 1 nor the retry left it
    # on no GPU (or on two), and the step ran there on its KV instead of recomputing its
    # 1010 tokens on gpu0.
    assert holders == [["gpu1"], ["gpu1"]]
    assert (res.num_moved, res.num_migrated, res.migrated_gb) == (0, 0, 0.0)
    assert res.recomputed_tokens == 0
    assert sim.num_refused == 1


@pytest.mark.usefixtures("lagging_reports")
def test_the_step_comes_back_after_the_retry_and_runs_at_home():
    sim, _, _ = _run()
    (k0, home, _), (k1, ran, at) = sim.placed
    assert (k0, home, k1, ran) == (0, "gpu1", 1, "gpu1")
    released = SESSIONS[-1].arrival_s  # S's step 1 is released at its step 0's end + 0.5
    assert at > released + 0.5 + RETRY_AFTER_S


@pytest.mark.usefixtures("lagging_reports")
def test_the_router_hears_of_the_refusal_and_cools_the_receiver_off():
    """The refusal was at the step's release; the retry ran at home after the refused
    export's transfer (the serving path's sender exports the KV and the receiver pulls
    it before refusing the import: S's 63 full blocks) and the `Retry-After`. Before
    session 49 the retry came after the `Retry-After` alone."""
    sim, res, _ = _run()
    cooled = sim.router._cooling
    assert list(cooled) == ["gpu0"]
    transfer = sim.routing.migrate_s(63 * CONFIG.cost.kv_spec.block_size)
    assert sim.placed[1][2] - RETRY_AFTER_S - transfer == pytest.approx(cooled["gpu0"])
    assert res.refused_gb == pytest.approx(63 * CONFIG.cost.block_bytes / 1e9)


def test_a_gpu_whose_live_report_shows_no_room_is_not_stolen_for():
    """gpu0, idle but filled by B, has no room for S: the steal is not tried, and S's step
    runs at home on its KV without waiting out a refusal's Retry-After."""
    sim, res, holders = _run()
    assert sim.num_refused == 0 and sim.router.num_stolen == 0
    assert holders == [["gpu1"]]
    (_, home, _), (k1, ran, at) = sim.placed
    assert (home, k1, ran) == ("gpu1", 1, "gpu1")
    assert at < SESSIONS[-1].arrival_s + 0.5 + RETRY_AFTER_S


def _chain(gpus: int):
    """`gpus` - 1 GPUs each filled by a big session (B0..), their last GPU holding S, D, S2
    and S3 (a shared prefix group): when S's tool returns, its home has steps waiting and
    the others are idle but full, so each refuses S's import. Returns the simulator and
    the refusals per step."""
    sessions = [_session(f"B{b}", 0.0, f"big{b}", [(4500, 600, 0)]) for b in range(gpus - 1)]
    sessions += [_session("D", 0.0005, "g", [(300, 1000, 0)]),
                 _session("S2", 0.001, "g", [(300, 1000, 0)]),
                 _session("S3", 0.002, "g", [(300, 1000, 0)]),
                 _session("S", 0.003, "g", [(1000, 10, 0.5), (50, 10, 0)])]
    need = max(CONFIG.cost.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    config = SimConfig(num_gpu_blocks=max(320, need), scheduler="fcfs", policy="lru")
    routing = RoutingConfig(bytes_per_token=config.cost.kv_spec.bytes_per_token,
                            cost=config.cost, steal_margin=1.0, busy_balance=0.0,
                            prefix_slack=100.0)
    sim = ClusterSimulator(sessions, config, gpus=gpus, router="kvsaga", routing=routing)
    refusals: dict[tuple[str, int], list[str]] = {}
    refused = sim._refused

    def counted(route, t, session, k):
        refusals.setdefault((session.id, k), []).append(route.replica)
        refused(route, t, session, k)
    sim._refused = counted
    sim.run()
    return sim, refusals


def test_a_refused_steps_retry_is_not_stolen_by_the_next_full_gpu():
    """On 6 GPUs the retry of S's refused step was stolen by the next full GPU and refused
    again, once per full GPU: 5 refusals, each a full KV export and a refused import, S
    done 4 s later than after one (review s46 simholddiff, finding 2). Session 48 first
    kept the refused session home (1 refusal, S done at 1.89 s); now no full GPU is a
    thief at all (their reports show no room): no refusal, S done at 0.88 s."""
    sim, refusals = _chain(6)
    assert refusals == {}  # before: gpu0, gpu1, ..., gpu4; then gpu0
    assert sim.num_refused == 0 and sim.router.num_stolen == 0
    assert sim._finished["S"] < 1.0 + RETRY_AFTER_S


def test_a_session_moves_to_the_gpu_with_room_not_the_full_one():
    """3 GPUs: gpu0 runs a big session (full, idle of steps: it sorts first), gpu1 holds
    one small paused session and room to spare, gpu2 is S's loaded home. S's steps move
    to gpu1. Between session 48's two fixes gpu0 took S's step 1 and refused it, and S
    then ran every step on the loaded gpu2 for `refused_move_s` (review s48 refuseddiff,
    r5: S done at 6.885 s, 5.816 s now)."""
    s_steps = [(1000, 10, 0.5)] + [(50, 10, 0.5)] * 8 + [(50, 10, 0)]
    sessions = [_session("B0", 0.0, "big0", [(4500, 600, 0)]),
                _session("R", 0.0001, "r", [(100, 10, 3.0), (50, 10, 0)]),
                _session("D", 0.0005, "g", [(300, 1000, 0)]),
                _session("S2", 0.001, "g", [(300, 1000, 0)]),
                _session("S3", 0.002, "g", [(300, 1000, 0)]),
                _session("S", 0.003, "g", s_steps)]
    routing = RoutingConfig(bytes_per_token=CONFIG.cost.kv_spec.bytes_per_token,
                            cost=CONFIG.cost, steal_margin=1.0, busy_balance=0.0,
                            resume_weight=2.0, prefix_slack=100.0)
    sim = ClusterSimulator(sessions, CONFIG, gpus=3, router="kvsaga", routing=routing)
    sim.gpu_class = _Watched
    sim.placed = []
    sim.run()
    assert sim.num_refused == 0  # before: 1 (gpu0)
    where = [gpu for k, gpu, _ in sim.placed]
    assert where == ["gpu2"] + ["gpu1"] * 9  # before: gpu2 for all 10
