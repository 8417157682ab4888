"""bench/agent_replay.py --host-memory gives kvsaga-serve a host tier; with --engine vllm the
vLLM arms would get none (review repro r9: only the kvsaga-serve arm got the flag, while the
help said "passed to every server"), so that pairing is refused before anything starts."""

from __future__ import annotations

import pytest

from tests.bench.test_agent_replay import _load_script


def test_host_memory_is_refused_with_the_vllm_engine() -> None:
    m = _load_script()
    args = m.build_parser().parse_args(["--engine", "vllm", "--host-memory", str(1 << 30),
                                        "--kvsaga-policies", "graph", "--vllm-policies", "ttl"])
    with pytest.raises(SystemExit, match="--host-memory .* not with --engine vllm"):
        m.arms(args)
    with pytest.raises(SystemExit, match="not with --engine vllm"):
        m.main(["--engine", "vllm", "--host-memory", str(1 << 30)])
    # kvsaga-serve arms alone: every one of them gets it
    ok = m.build_parser().parse_args(["--host-memory", str(1 << 30), "--policies", "lru"])
    assert [a.name for a in m.arms(ok)] == ["lru"]
    assert m.arms(m.build_parser().parse_args(["--engine", "vllm"]))  # no host tier: fine
    assert "passed to every server" not in m.build_parser().format_help()
