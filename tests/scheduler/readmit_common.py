"""Shared checks of the readmit_charge value tests (test_readmit_binding.py,
test_readmit_binding_short.py, test_readmit_charge_cost.py, the test_room_*.py files): a
value is named, refused values are named in the error, and `kvsaga-serve
--scheduler-params` takes it."""

from __future__ import annotations

import re

import pytest

from kvsaga.scheduler import WorkflowScheduler
from tests.scheduler.helpers import manager, wf

VALUES = ("uncached, room, room_queue, room_fits, room_contexts, room_ranked, room_overdue, "
          "room_priced, room_returns, room_returns_fair, room_returns_stay, room_returns_queue, "
          "room_returns_queue_seen, room_returns_queue_leave, room_returns_queue_corrected, "
          "room_returns_queue_steps, room_returns_queue_shrink, room_returns_queue_cleared, "
          "room_returns_queue_demoted, "
          "context, full, "
          "binding, binding_short, "
          "cost, cost_ends, cost_leave, cost_leave_waits")


def assert_refused_and_off_by_default(bad: str) -> None:
    """`readmit_charge=bad` is refused naming every value; the default is
    "room_returns_queue_demoted" (`--fit` round 41, session 33)."""
    with pytest.raises(ValueError, match=re.escape(
            f"readmit_charge must be one of {VALUES}, got '{bad}'")):
        wf(manager(16), readmit_charge=bad)
    default = WorkflowScheduler.__init__.__kwdefaults__["readmit_charge"]
    assert default == "room_returns_queue_demoted"


def assert_serve_takes(value: str, bad: str) -> None:
    """`kvsaga-serve --scheduler-params` takes `value` like the other values, and
    `ServerSettings` refuses `bad` before any model loads."""
    from kvsaga.serve.cli import build_parser, settings_from_args
    from kvsaga.serve.settings import ServerSettings
    args = build_parser().parse_args(["--scheduler-params", f'{{"readmit_charge": "{value}"}}'])
    assert settings_from_args(args).scheduler_params == {"readmit_charge": value}
    with pytest.raises(ValueError, match=re.escape(
            f"readmit_charge must be one of {VALUES}, got '{bad}'")):
        ServerSettings(scheduler_params={"readmit_charge": bad})


def assert_value_named(value: str, bad: str, serve_bad: str | None = None) -> None:
    """The workflow scheduler takes `readmit_charge=value`, refuses `bad` naming every value
    (`assert_refused_and_off_by_default`) and, with `serve_bad`, `kvsaga-serve` takes `value`
    and refuses `serve_bad` (`assert_serve_takes`)."""
    assert wf(manager(16), readmit_charge=value).readmit_charge == value
    assert_refused_and_off_by_default(bad)
    if serve_bad is not None:
        assert_serve_takes(value, serve_bad)
