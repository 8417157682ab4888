"""bench/scheduling_mix.py's fit rule for Agent Fair Share of compute (`pick_default`): the
lowest mean ratio among the arms whose mean TCT stays within the slack of off's at every
fit point, off when none qualifies or none lowers the ratio."""

from __future__ import annotations

from tests.bench_scripts import bench_modules

OFF = (0, 0)


mix = bench_modules("scheduling_mix")


def point(**arms):
    """One fit point: arm name -> (mean TCT, ratio); names "off", "s64", "s128", ..."""
    def key(name):
        return OFF if name == "off" else (int(name[1:]), 8192)
    return {key(n): {"tct_mean_s": t, "ratio": r} for n, (t, r) in arms.items()}


def test_lowest_mean_ratio_within_the_slack_at_every_point(mix):
    pts = [point(off=(10.0, 2.0), s64=(10.2, 1.2), s128=(10.3, 1.4)),
           point(off=(20.0, 1.5), s64=(20.0, 1.2), s128=(20.0, 1.3))]
    assert mix.pick_default(pts, 0.03) == (64, 8192)
    # 64 costs 3.5% at one point: out, though its mean TCT over the points is lower
    pts[1][(64, 8192)]["tct_mean_s"] = 20.7
    pts[0][(64, 8192)]["tct_mean_s"] = 9.0
    assert mix.pick_default(pts, 0.03) == (128, 8192)
    # a wider slack lets it back in
    assert mix.pick_default(pts, 0.04) == (64, 8192)


def test_off_when_nothing_qualifies_or_nothing_helps(mix):
    pts = [point(off=(10.0, 2.0), s64=(11.0, 1.0))]
    assert mix.pick_default(pts, 0.03) == OFF  # 10% worse: out
    pts = [point(off=(10.0, 1.2), s64=(9.0, 1.2), s128=(9.0, 1.3))]
    assert mix.pick_default(pts, 0.03) == OFF  # a tie with off keeps off
    pts = [point(off=(10.0, 1.3), s64=(9.0, 1.2), s128=(9.0, 1.2))]
    assert mix.pick_default(pts, 0.03) == (128, 8192)  # tie: the larger step share


def test_the_fit_arms_start_with_off(mix):
    assert mix.FIT_ARMS[0] == OFF
    assert all(n > 0 and lag > 0 for n, lag in mix.FIT_ARMS[1:])


def test_a_tie_at_one_step_size_goes_to_fit_arms_order(mix):
    """At one step size the lags tie to the order the arms are listed in, which the fit
    builds from `FIT_ARMS`: 8192 before 32768."""
    assert mix.FIT_ARMS.index((128, 8192)) < mix.FIT_ARMS.index((128, 32768))
    arms = [OFF, (128, 8192), (128, 32768)]
    figs = {OFF: (10.0, 1.3), (128, 8192): (9.0, 1.2), (128, 32768): (9.0, 1.2)}
    pts = [{a: {"tct_mean_s": figs[a][0], "ratio": figs[a][1]} for a in arms}]
    assert mix.pick_default(pts, 0.03) == (128, 8192)
    pts = [{a: pts[0][a] for a in reversed(arms)}]  # listed the other way round
    assert mix.pick_default(pts, 0.03) == (128, 32768)
