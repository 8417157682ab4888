"""A command's `main()` called in-process (tests, a notebook) gives the process's logging
back as it found it (review s52 flaky2, LOW-2). Before session 53, `kvsaga --log-level` and
`kvsaga-serve` left the root logger at their level with their handler, and closed the
caller's handlers; `kvsaga sim` left `kvsaga.sim` at INFO with a stderr handler. Every later
record at that level, from any library and any thread, then reached stderr and any
`caplog` of the rest of the run, and a later simulation printed its lines, `--quiet` or
not."""

from __future__ import annotations

import logging

import pytest

from kvsaga import cli
from kvsaga.serve import cli as serve_cli


class _Kept(logging.Handler):
    """A caller's handler: records what reaches it, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.closed = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True
        super().close()


@pytest.fixture
def caller_logging():
    """The root logger as a caller set it up (level WARNING, one handler of its own), put
    back as it was after the test whatever the code under test did."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    kept = _Kept()
    root.handlers[:] = [kept]
    root.setLevel(logging.WARNING)
    try:
        yield kept
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _root_state() -> tuple[list[logging.Handler], int]:
    root = logging.getLogger()
    return root.handlers[:], root.level


@pytest.mark.parametrize("level", ["info", "debug"])
def test_kvsaga_main_gives_the_root_logger_back(caller_logging, capsys, level):
    before = _root_state()
    assert cli.main(["generate", "hi", "--model", "/nope", "--log-level", level]) == 2
    assert "error" in capsys.readouterr().err  # it ran, and said why it failed
    assert _root_state() == before
    assert not caller_logging.closed
    logging.getLogger("tests.logging_scope").info("an INFO record of a later test")
    assert caller_logging.records == []  # the caller's level again: INFO is not emitted


def test_kvsaga_serve_main_gives_the_root_logger_back(caller_logging, capsys):
    before = _root_state()
    assert serve_cli.main(["--replicas", "0", "--log-level", "info"]) == 2
    assert "--replicas must be >= 1" in capsys.readouterr().err
    assert _root_state() == before
    assert not caller_logging.closed


def test_a_record_logged_while_the_command_runs_goes_to_its_stderr_only(caller_logging,
                                                                          capsys):
    with cli.command_logging("info"):
        logging.getLogger("kvsaga.test").info("during")
    assert capsys.readouterr().err.endswith("kvsaga.test: during\n")
    assert caller_logging.records == []  # the command's handler stood in for the caller's


def test_a_bad_level_changes_nothing(caller_logging):
    before = _root_state()
    with pytest.raises(ValueError, match="LOUD"), cli.command_logging("loud"):
        pass
    assert _root_state() == before


SIM = ["sim", "--workload", "swe", "--sessions", "3", "--scale", "0.05", "--arrival-rate", "1",
       "--kv-memory", "1G", "--policy", "lru", "--jobs", "1"]


def test_kvsaga_sim_gives_its_logger_back(capsys):
    from kvsaga.sim.compare import compare
    from kvsaga.sim.simulator import SimConfig
    from kvsaga.sim.workloads import generate

    sim_log = logging.getLogger("kvsaga.sim")
    before = (sim_log.handlers[:], sim_log.level)
    assert cli.main(SIM) == 0
    err = capsys.readouterr().err  # captured: not a terminal, so a line per simulation
    assert "kvsaga sim: simulated lru" in err
    assert (sim_log.handlers[:], sim_log.level) == before
    compare(generate("swe", 3, seed=0, scale=0.05), SimConfig(num_gpu_blocks=200), ["lru"],
            jobs=1)
    assert "simulated" not in capsys.readouterr().err  # a later simulation is quiet again
