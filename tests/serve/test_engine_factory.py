"""What `kvsaga-serve`'s settings build: the engine behind the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvsaga.scheduler import DEFAULT_SCHEDULER, SCHEDULERS
from kvsaga.serve.app import build_app
from kvsaga.serve.cli import build_parser, engine_factory, main, settings_from_args
from kvsaga.serve.settings import ServerSettings

from .conftest import MODEL, LiveServer


def test_policies_price_evictions_for_the_served_model(tiny_dir: Path):
    settings = ServerSettings(model=str(tiny_dir), device="cpu", policy="graph",
                              kv_memory_bytes=2**20)
    engine = engine_factory(settings)()
    assert engine.manager.policy.cost is engine.cost
    assert engine.cost.block_bytes == engine.spec.bytes_per_block


def test_scheduler_flag_reaches_settings_and_defaults_to_the_cores():
    assert settings_from_args(build_parser().parse_args([])).scheduler == DEFAULT_SCHEDULER
    for name in SCHEDULERS:
        args = build_parser().parse_args(["--scheduler", name])
        assert settings_from_args(args).scheduler == name


def test_an_unknown_scheduler_is_rejected_before_the_model_loads(capsys, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("the model must not load for a bad scheduler name")

    monkeypatch.setattr("kvsaga.engine.engine.load_checkpoint", no_load)
    with pytest.raises(SystemExit) as e:
        main(["--scheduler", "round-robin", "--model", "/nonexistent/model"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--scheduler" in err and "'round-robin'" in err and "workflow" in err
    with pytest.raises(ValueError, match="unknown scheduler 'round-robin'; choose one of"):
        ServerSettings(scheduler="round-robin")


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_server_runs_the_named_scheduler(tiny_dir: Path, name: str):
    settings = ServerSettings(model=str(tiny_dir), device="cpu", scheduler=name,
                              kv_memory_bytes=4 * 2**20, served_model_name=MODEL)
    with LiveServer(build_app(engine_factory(settings), settings)) as srv:
        assert srv.app.state.engine.wait_ready(60), "the model did not load"
        c = srv.client()
        for _ in range(2):  # a session's two steps
            out = c.completions.create(model=MODEL, prompt="agent step", max_tokens=4,
                                       temperature=0, extra_body={"session_id": "s"})
        assert out.choices[0].finish_reason in ("length", "stop")
        assert srv.call(lambda e: e.scheduler.name) == name
        srv.wait_idle()


def test_scheduler_params_reach_the_engines_scheduler(tiny_dir: Path):
    args = build_parser().parse_args(["--scheduler-params",
                                      '{"undo_demotion": true, "shrink_after": 1.0}'])
    settings = settings_from_args(args)
    assert settings.scheduler_params == {"undo_demotion": True, "shrink_after": 1.0}
    assert settings_from_args(build_parser().parse_args([])).scheduler_params is None
    built = ServerSettings(model=str(tiny_dir), device="cpu", kv_memory_bytes=2**20,
                           scheduler_params=settings.scheduler_params)
    core = engine_factory(built)().scheduler.core
    assert core.undo_demotion is True and core.shrink_after == 1.0


@pytest.mark.parametrize("flag,message", [
    ("[1]", "must be a JSON object"),
    ("{undo", "not JSON"),
    ('{"undo": true}', "scheduler 'workflow' has no parameter 'undo'; its parameters:"),
    ('{"undo_demotion": "yes"}', "undo_demotion must be one of True, False, 'unused', "
                                   "'unclaimed', got 'yes'"),
    ('{"max_num_seqs": 4}', "'max_num_seqs' has its own flag (--max-num-seqs)")])
def test_bad_scheduler_params_are_rejected_before_the_model_loads(capsys, monkeypatch, flag,
                                                                  message):
    def no_load(*a, **k):
        raise AssertionError("the model must not load for bad scheduler parameters")

    monkeypatch.setattr("kvsaga.engine.engine.load_checkpoint", no_load)
    try:  # argparse exits on a flag it cannot parse; main returns 2 for bad settings
        code = main(["--scheduler-params", flag, "--model", "/nonexistent/model"])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_scheduler_params_are_checked_for_the_named_scheduler():
    with pytest.raises(ValueError, match="scheduler 'fcfs' has no parameter 'undo_demotion'"):
        ServerSettings(scheduler="fcfs", scheduler_params={"undo_demotion": True})
    with pytest.raises(ValueError, match="scheduler parameters must be a JSON object"):
        ServerSettings(scheduler_params=[("undo_demotion", True)])


def test_an_unknown_parameter_lists_only_the_parameters_the_flag_takes():
    with pytest.raises(ValueError, match="has no parameter 'undo'") as e:
        ServerSettings(scheduler_params={"undo": True})
    listed = str(e.value).split("its parameters: ")[1].split(", ")
    assert "undo_demotion" in listed
    assert "max_num_seqs" not in listed and "max_num_batched_tokens" not in listed


def test_the_startup_line_names_the_parameters_changed():
    from kvsaga.serve.settings import non_default_params

    assert non_default_params("workflow", None) == {}
    assert non_default_params("workflow", {"undo_demotion": False, "shrink_after": 0.0}) == {}
    assert non_default_params("workflow", {"undo_demotion": True, "max_wait_s": 120.0,
                                           "shrink_after": 1}) == {
        "undo_demotion": True, "shrink_after": 1}
