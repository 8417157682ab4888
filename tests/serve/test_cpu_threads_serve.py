"""kvsaga-serve under `--cpu-host auto` (KVSAGA_CPU_THREADS=adaptive): the engine thread
sizes torch's team between steps (kvsaga.engine.cpu_threads), and /metrics shows the count
and the load it read."""

from __future__ import annotations

import contextlib
import itertools
import math
import re
from pathlib import Path

import httpx
import pytest
import torch

from kvsaga.engine import cpu_threads
from kvsaga.engine.cpu_threads import ThreadGovernor
from kvsaga.serve import async_engine
from kvsaga.serve.app import build_app

from .conftest import MODEL, LiveServer, make_engine, settings


class BusyNeighbour:
    """A load reader that reports one other process on one of two cores at every window."""

    cpus = frozenset({0, 1})
    window_s = 1.0

    def sample(self) -> float:
        return 1.0


def _gauge(text: str, name: str) -> float | None:
    m = re.search(rf'^{re.escape(name)}{{model_name="{MODEL}"}} (\S+)$', text, re.M)
    return None if m is None else float(m.group(1))


def test_a_busy_neighbour_shrinks_the_engine_threads_team(tiny_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    clock = itertools.count()  # a window passes at every read
    built: list[ThreadGovernor] = []

    def governor_for(device_type: str) -> tuple[ThreadGovernor, None]:
        assert device_type == "cpu"
        gov = ThreadGovernor(BusyNeighbour(), max_threads=2, set_threads=torch.set_num_threads,
                             clock=lambda: float(next(clock)), read_quota=lambda: 3.0)
        built.append(gov)
        return gov, None

    monkeypatch.setattr(async_engine, "governor_for", governor_for)
    main_threads = torch.get_num_threads()
    app = build_app(make_engine(tiny_dir), settings())
    # torch.set_num_threads also sets the count threads started later begin with: put it
    # back for the tests after this one.
    with contextlib.ExitStack() as restore, LiveServer(app) as s:
        restore.callback(torch.set_num_threads, main_threads)
        out = s.client().completions.create(model=MODEL, prompt="agent ", max_tokens=8,
                                            temperature=0, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 8
        assert len(built) == 1 and built[0].changes == 1
        # The engine thread's team is 1 now; the test's own thread keeps its count.
        assert s.call(lambda e: torch.get_num_threads()) == 1
        assert torch.get_num_threads() == main_threads
        text = httpx.get(f"{s.url}/metrics", timeout=60).text
        assert _gauge(text, "kvsaga:cpu_threads") == 1.0
        assert _gauge(text, "kvsaga:cpu_foreign_cores") == 1.0
        assert _gauge(text, "kvsaga:cpu_thread_changes_total") == 1.0
        assert _gauge(text, "kvsaga:cpu_quota_cores") == 3.0  # read, not binding 2 threads
        s.wait_idle()


def test_fixed_threads_by_default_and_no_gauges(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KVSAGA_CPU_THREADS", raising=False)
    app = build_app(make_engine(tiny_dir), settings())
    with LiveServer(app) as s:
        s.client().completions.create(model=MODEL, prompt="agent ", max_tokens=2)
        assert app.state.engine.governor is None
        text = httpx.get(f"{s.url}/metrics", timeout=60).text
        assert "kvsaga:cpu_threads" not in text and "kvsaga:cpu_quota_cores" not in text


def test_adaptive_reads_this_host(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The real reader on this machine: the engine thread builds a governor at its own
    thread count and the gauges are served (what it decides depends on the machine's
    load; tests/engine/test_cpu_threads.py checks the reader's units)."""
    from kvsaga.engine.cpu_threads import ForeignLoad

    if ForeignLoad.open() is None:
        pytest.skip("no /proc/stat here: nothing to govern")
    monkeypatch.setenv("KVSAGA_CPU_THREADS", "adaptive")
    main_threads = torch.get_num_threads()
    app = build_app(make_engine(tiny_dir), settings())
    with contextlib.ExitStack() as restore, LiveServer(app) as s:
        restore.callback(torch.set_num_threads, main_threads)  # if it shrank the team
        s.client().completions.create(model=MODEL, prompt="agent ", max_tokens=2)
        gov = app.state.engine.governor
        assert gov is not None and gov.failed is None
        # its ceiling: the CPUs it may use, or the count it started from where more
        assert gov.max_threads == max(cpu_threads.team_ceiling(), main_threads)

        def freeze(engine) -> tuple[int, int]:  # on the engine thread, between polls
            gov._next = math.inf
            return torch.get_num_threads(), gov.threads

        team, threads = s.call(freeze)
        assert team == threads and 1 <= threads <= gov.max_threads
        text = httpx.get(f"{s.url}/metrics", timeout=60).text
        assert _gauge(text, "kvsaga:cpu_threads") == threads
