"""README.md's "kvsaga-serve" section names /metrics series; each name, and each label value it
lists, is what /metrics serves (session 54, docs lane: the README named the families only,
and a query needs a counter's `_total` sample name, which it now says)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import LiveServer

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README.split("\n## kvsaga-serve\n", 1)[1].split("\n## ", 1)[0]
# Served only by the CPU thread governor of `--cpu-host auto` (the CLI's default; a test app
# has none), the quota one only inside a container with a CPU limit (kvsaga/serve/metrics.py).
CONDITIONAL = {"kvsaga:cpu_threads", "kvsaga:cpu_quota_cores"}


def _scrape(server: LiveServer) -> tuple[dict, set[str]]:
    fams = {f.name: f for f in text_string_to_metric_families(
        httpx.get(f"{server.url}/metrics", timeout=60).text)}
    return fams, {s.name for f in fams.values() for s in f.samples}


def _labels(fam, label: str) -> set[str]:
    return {s.labels[label] for s in fam.samples if label in s.labels}


def test_every_metric_the_readme_names_is_served(server: LiveServer):
    fams, samples = _scrape(server)
    named = set(re.findall(r"`((?:kvsaga|vllm):[a-z_]+)`", SECTION))
    assert {"kvsaga:request_success", "kvsaga:request_success_total",
            "kvsaga:engine_idle_seconds"} <= named
    missing = {n for n in named - CONDITIONAL if n not in fams and n not in samples}
    assert missing == set()
    # A counter's family name is no sample name: the README says so, naming the _total one.
    assert "kvsaga:request_success" not in samples
    assert "kvsaga:request_success_total" in samples


def test_the_label_values_the_readme_lists_are_served(server: LiveServer):
    fams, _ = _scrape(server)
    assert _labels(fams["kvsaga:request_success"], "finished_reason") == \
        _labels(fams["vllm:request_success"], "finished_reason") == \
        {"stop", "length", "abort", "error"}
    assert _labels(fams["kvsaga:evictions"], "action") == {"offload", "kept_on_host", "discard"}
    assert _labels(fams["kvsaga:engine_steps"], "kind") == {"decode", "prefill", "mixed", "empty"}
    phases = _labels(fams["kvsaga:engine_step_seconds"], "phase")
    assert phases == {"schedule", "transfer", "forward", "output"}
    for value in ("`stop`", "`length`", "`abort`", "`error`", "`offload`", "`kept_on_host`",
                  "`discard`", "(decode, prefill, mixed, empty)",
                  "(schedule, transfer, forward, output)"):
        assert value in SECTION, value
