"""kvsaga-serve --routing-config: the kvsaga router's RoutingConfig fields, checked before
anything loads and refused where no kvsaga router would read them."""

from __future__ import annotations

import pytest

from kvsaga.routing import RoutingConfig
from kvsaga.serve import cli
from kvsaga.serve.cli import build_parser, main, settings_from_args
from kvsaga.serve.settings import ServerSettings, routing_config_of


@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail the test if the model would be checked or the replicas started; returns the
    (settings, replicas, router) that `run_replicas` was called with, when it may be."""
    calls: list = []

    def no_preflight(settings):
        raise AssertionError("nothing may load for a refused --routing-config")

    monkeypatch.setattr(cli, "preflight", no_preflight)
    monkeypatch.setattr("kvsaga.serve.replicas.run_replicas",
                        lambda *a: calls.append(a))
    return calls


def test_the_flag_reaches_the_settings():
    args = build_parser().parse_args(["--replicas", "2", "--routing-config",
                                      '{"busy_balance_quiet": 0, "steal_margin": 2.5}'])
    s = settings_from_args(args)
    assert s.routing_config == {"busy_balance_quiet": 0, "steal_margin": 2.5}
    assert routing_config_of(s.routing_config) == RoutingConfig(busy_balance_quiet=0,
                                                                steal_margin=2.5)
    assert settings_from_args(build_parser().parse_args([])).routing_config is None


@pytest.mark.parametrize("router", [None, "kvsaga"])
def test_with_replicas_and_the_kvsaga_router_it_is_served(router, nothing_loads,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli, "preflight", lambda s: None)
    argv = ["--replicas", "2", "--routing-config", '{"busy_balance_quiet": 0}']
    assert main(argv + (["--router", router] if router else [])) == 0
    [(settings, replicas, name)] = nothing_loads
    assert (replicas, name) == (2, "kvsaga")
    assert settings.routing_config == {"busy_balance_quiet": 0}


@pytest.mark.parametrize("value,message", [
    ('{"busy_balance_quiet": -1}',
     "--routing-config: RoutingConfig.busy_balance_quiet must be a finite number >= 0, got -1"),
    ('{"busy_balance_quiet": "0"}',
     "--routing-config: RoutingConfig.busy_balance_quiet must be a finite number >= 0, "
     "got '0'"),
    ('{"steal_min_waiting": 1.5}',
     "--routing-config: RoutingConfig.steal_min_waiting must be an int >= 0, got 1.5"),
    ('{"busy_balance": NaN}', "RoutingConfig.busy_balance must be a finite number >= 0, got nan"),
    ('{"resume_weight": Infinity}',
     "RoutingConfig.resume_weight must be a finite number >= 0, got inf"),
    ('{"steal_margin": 0}', "RoutingConfig.steal_margin must be > 0"),
    ('{"link_bandwidth": 0}', "RoutingConfig.link_bandwidth must be a finite number > 0, got 0"),
    ('{"busy_balance_qiuet": 0}',
     "--routing-config: unknown RoutingConfig field(s) ['busy_balance_qiuet']; known: "
     "busy_balance, "),
    ('{"cost": 1}', "RoutingConfig.cost must be a CostModel"),
])
def test_a_bad_field_exits_2_in_one_line_naming_it(value, message, nothing_loads, capsys):
    assert main(["--replicas", "2", "--routing-config", value]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert err.startswith("kvsaga-serve: error: ")
    assert not nothing_loads


@pytest.mark.parametrize("value,message", [
    ("{bad", "not JSON"),
    ('[["busy_balance_quiet", 0]]', "must be a JSON object"),
])
def test_not_a_json_object_is_a_usage_error(value, message, nothing_loads, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--replicas", "2", "--routing-config", value])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not nothing_loads


@pytest.mark.parametrize("argv,message", [
    ([], "--routing-config configures the kvsaga router between replicas; give "
         "--replicas N too"),
    (["--replicas", "2", "--router", "affinity"],
     "--routing-config sets the kvsaga router's RoutingConfig; --router affinity takes none"),
    (["--replicas", "2", "--router", "round-robin"], "--router round-robin takes none"),
    (["--replicas", "2", "--router", "ray-default"], "--router ray-default takes none"),
])
def test_refused_where_no_kvsaga_router_reads_it(argv, message, nothing_loads, capsys):
    assert main([*argv, "--routing-config", '{"busy_balance_quiet": 0}']) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not nothing_loads


def test_an_empty_object_is_refused_without_replicas_too(nothing_loads, capsys):
    assert main(["--routing-config", "{}"]) == 2
    assert "give --replicas N too" in capsys.readouterr().err


def test_settings_built_directly_check_it():
    with pytest.raises(ValueError, match=r"^routing_config: RoutingConfig\.prefix_memory"):
        ServerSettings(routing_config={"prefix_memory": -1})
    with pytest.raises(ValueError, match="RoutingConfig fields must be a JSON object"):
        ServerSettings(routing_config=[("busy_balance_quiet", 0)])
    with pytest.raises(ValueError, match=r"unknown RoutingConfig field\(s\) \[1, 'x'\]"):
        ServerSettings(routing_config={1: 0, "x": 0})
    assert ServerSettings(routing_config={}).routing_config == {}


def test_help_names_the_flag_and_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--routing-config JSON" in out and "RoutingConfig fields" in out
    assert "needs --replicas and --router kvsaga" in out
