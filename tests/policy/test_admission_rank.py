"""`graph[admission_rank=1]`: a demoted session whose step waits for admission is priced by
its place in the scheduler's queue (kvsaga/policy/admission_rank.py), learned from the
places told and the admissions seen; off (the default), graph's decisions are unchanged."""
# Every policy here keeps graph's demoted sessions priced (`demoted_release` off, the default
# until session 32): these tests read the option's own pricing of a demoted session.


from __future__ import annotations

import math

import pytest

from kvsaga.policy import GraphPolicy
from kvsaga.policy.admission_rank import AdmissionRanks
from kvsaga.sim.compare import peak_prompt_working_set
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.workloads import WORKLOADS
from tests.policy.helpers import run_step, tokens
from tests.policy.test_scenarios import demoted_on_grep, small_and_big_demoted


def _learned(r: AdmissionRanks, n: int, per_place: float, wf: str = "default") -> None:
    """n past admissions, each told rank 1 at 0 and admitted 2 x per_place later."""
    for i in range(n):
        r.told(f"past-{i}", 1, 0.0)
        assert r.admitted(f"past-{i}", wf, 2 * per_place)


def test_no_admission_seen_or_no_rank_gives_the_fallback():
    r = AdmissionRanks(prior=4.0)
    r.told("d", 3, 0.0)
    assert r.time("d", "default", 0.7) == 0.7  # no data: graph as it was
    _learned(r, 4, 1.0)
    assert r.time("other", "default", 0.7) == 0.7  # no rank told: its step does not wait


def test_the_time_is_places_times_the_learned_rate_mixed_by_the_admissions_seen():
    r = AdmissionRanks(prior=4.0)
    _learned(r, 4, 1.0)  # 4 admissions, 8 s over 8 places: 1 s a place
    assert r.seconds_per_place("default") == pytest.approx(1.0)
    r.told("d", 2, 5.0)
    w = 4 / (4 + 4.0)
    assert r.time("d", "default", 0.5) == pytest.approx(w * 3 * 1.0 + (1 - w) * 0.5)
    r.told("d", 0, 6.0)  # moved up: the rank told last prices it
    assert r.time("d", "default", 0.5) == pytest.approx(w * 1 * 1.0 + (1 - w) * 0.5)
    # its admission at 7.0 learns both tells: (7 - 5) + (7 - 6) s over 3 + 1 places
    assert r.admitted("d", "default", 7.0)
    n, sec, places = r._sums[None]
    assert (n, sec, places) == (5, pytest.approx(11.0), 12)
    assert "d" not in r.rank and not r.admitted("d", "default", 8.0)


def test_a_workflow_rate_is_shrunk_towards_the_pooled_one():
    r = AdmissionRanks(prior=2.0)
    _learned(r, 3, 1.0, "a")  # 6 s over 6 places
    _learned(r, 1, 4.0, "b")  # 8 s over 2 places
    pooled = 14.0 / 8
    assert r.seconds_per_place(None) == pytest.approx(pooled)
    assert r.seconds_per_place("b") == pytest.approx((8.0 + 2.0 * pooled) / (2 + 2.0))
    assert r.seconds_per_place("never-seen") == pytest.approx(pooled)


def test_none_drops_what_was_told():
    r = AdmissionRanks(prior=4.0)
    r.told("d", 2, 0.0)
    r.told("d", None, 1.0)  # its step left the queue without being admitted
    assert "d" not in r.rank and not r.admitted("d", "default", 2.0)


@pytest.mark.parametrize("prior", [0, -1.0, math.inf, math.nan, "4", True, None])
def test_a_bad_prior_is_refused(prior):
    with pytest.raises(ValueError, match="prior"):
        AdmissionRanks(prior=prior)


@pytest.mark.parametrize("rank", [-1, 1.5, "2", True])
def test_a_bad_rank_is_refused_and_leaves_the_state(rank):
    r = AdmissionRanks(prior=4.0)
    r.told("d", 1, 0.0)
    with pytest.raises(ValueError, match="rank"):
        r.told("d", rank, 1.0)
    assert r.rank == {"d": 1} and r._told["d"] == [1.0, 0.0, 2.0]


def test_a_bad_admission_rank_flag_is_refused():
    with pytest.raises(ValueError, match="admission_rank"):
        GraphPolicy(demoted_release=False, admission_rank="yes")


def _two_demoted_waiting(policy: GraphPolicy):
    """`small` (2 blocks) and `big` (5 blocks) paused on a 0.1 s tool at 0, demoted at 0.3;
    their steps wait: small told rank 0, big rank 5; 8 admissions seen at 1 s a place."""
    m = small_and_big_demoted(policy)
    if policy.ranks is not None:
        _learned(policy.ranks, 8, 1.0)
    policy.session_admission_rank(m.sessions["small"], 0, 0.5)
    policy.session_admission_rank(m.sessions["big"], 5, 0.5)
    return m


def test_admission_rank_evicts_the_session_admitted_later_first():
    """Off, both demoted sessions read the same residual demotion and the small one's
    cheaper tail goes first (the ranks told are ignored); on, big, five places further back
    in the queue, goes first. Both ways on the same state."""
    victims = {}
    for on in (False, True):
        policy = GraphPolicy(demoted_release=False, admission_rank=on)
        _two_demoted_waiting(policy)
        t_small = policy.deferred_time("small", 0.01, 1.0)
        t_big = policy.deferred_time("big", 0.01, 1.0)
        if on:
            w = 8 / (8 + 4.0)  # 8 admissions seen, calib_prior 4; the same fallback
            assert t_big > 3 * t_small
            assert t_big - t_small == pytest.approx(w * 5 * 1.0)
        else:
            assert policy.ranks is None
            assert t_big == pytest.approx(t_small)
        victims[on] = policy._owner[policy.choose_victims(1, 1.0)[0]]
    assert victims == {False: "small", True: "big"}


def test_the_keys_follow_a_later_rank_tell():
    """On one policy: big, five places back, goes first; the places told reversed after
    that victim search (which keyed them), small goes first (a tell re-keys). All at one
    instant: a later search would re-key the timed sessions anyway."""
    policy = GraphPolicy(demoted_release=False, admission_rank=True)
    m = _two_demoted_waiting(policy)
    assert policy._owner[policy.choose_victims(1, 1.0)[0]] == "big"
    policy.session_admission_rank(m.sessions["small"], 5, 1.0)
    policy.session_admission_rank(m.sessions["big"], 0, 1.0)
    assert policy._owner[policy.choose_victims(1, 1.0)[0]] == "small"


def test_graph_learns_a_rank_when_the_step_starts_and_forgets_an_ended_session():
    policy = GraphPolicy(demoted_release=False, admission_rank=True)
    m = demoted_on_grep(policy, {"d": tokens(100, 8)})
    policy.session_admission_rank(m.sessions["d"], 1, 0.5)
    policy.session_deferred(m.sessions["d"], False, 1.5)
    run_step(m, "d", tokens(100, 12), now=1.5, tool="grep")  # admitted 1 s later, 2 places
    assert policy.ranks._sums[None] == [1.0, pytest.approx(1.0), 2.0]
    assert policy.ranks.seconds_per_place("default") == pytest.approx(0.5)
    policy.session_admission_rank(m.sessions["d"], 0, 2.0)
    m.end_session("d", now=2.5)
    assert "d" not in policy.ranks.rank and "d" not in policy.ranks._told


def _victims_on_a_small_swe_run(policy: GraphPolicy, hook: bool, monkeypatch
                                 ) -> tuple[list[int], int]:
    """Every victim graph names on 8 swe sessions at 30% of their peak, with the workflow
    scheduler telling the ranks (`hook`) or not; and how many ranks were told."""
    spec = WORKLOADS["swe"]
    trace = spec.generate(8, 3, arrival_rate=spec.arrival_rate / 0.2, scale=0.2)
    base = SimConfig(preset="a100-llama3-8b")
    longest = max(base.cost.kv_spec.num_blocks_for(s.total_tokens) for s in trace)
    blocks = max(int(peak_prompt_working_set(trace, base) * 0.3), longest + 1)
    victims: list[int] = []
    choose = policy.choose_victims

    def spy(n: int, now: float) -> list[int]:
        got = choose(n, now)
        victims.extend(got)
        return got
    policy.choose_victims = spy
    told = []
    tell = policy.session_admission_rank
    policy.session_admission_rank = lambda s, r, now: (told.append(r), tell(s, r, now))
    if not hook:
        from kvsaga.scheduler.admission_order import AdmissionOrder
        monkeypatch.setattr(AdmissionOrder, "_tell_ranks", lambda self, now: None)
    config = SimConfig(preset="a100-llama3-8b", num_gpu_blocks=blocks, policy="graph")
    Simulator(trace, config, policy=policy).run()
    return victims, len(told)


def test_the_default_graph_decides_as_without_the_hook(monkeypatch):
    """The scheduler's ranks reach graph on a run that demotes, and graph at its defaults
    names exactly the victims it names when the scheduler tells it nothing."""
    with_hook, told = _victims_on_a_small_swe_run(GraphPolicy(), True, monkeypatch)
    without, none_told = _victims_on_a_small_swe_run(GraphPolicy(), False, monkeypatch)
    assert told > 0 and none_told == 0
    assert with_hook and with_hook == without
