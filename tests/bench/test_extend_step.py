"""bench/extend_step.py: its scripted step shape, its case syntax, and a real kvsaga run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import extend_step  # noqa: E402


class FakeEngine:
    """Every running request gets one token per step (its prompt's length mod 1000)."""

    def __init__(self) -> None:
        self.prompts: dict[str, list[int]] = {}
        self.running: dict[str, tuple[int, list[int]]] = {}
        self.aborted: list[str] = []

    def add(self, rid: str, ids: list[int], max_tokens: int) -> None:
        self.prompts[rid] = ids
        self.running[rid] = (max_tokens, [])

    def step(self) -> list[tuple[str, list[int], bool]]:
        out = []
        for rid, (m, toks) in list(self.running.items()):
            toks.append(len(self.prompts[rid]) % 1000)
            out.append((rid, list(toks), len(toks) == m))
            if len(toks) == m:
                del self.running[rid]
        return out

    def abort(self, rid: str) -> None:
        self.aborted.append(rid)
        self.running.pop(rid, None)


def test_scenario_times_the_extend_then_the_decode_window():
    case = {"P": 40, "N": 7, "S": 2, "D": 1}
    eng = FakeEngine()
    sc = extend_step.Scenario(eng, case, seed=3, max_tokens=5)
    sc.warm()
    assert not eng.running
    res = sc.run(0)
    assert (res["extend_steps"], res["decode_steps"]) == (1, 4)
    assert res["tokens"] == [[47] * 5, [47] * 5]
    assert eng.aborted == ["d0-0"] and not eng.running
    ext = [eng.prompts["e0-0"], eng.prompts["e0-1"]]
    assert ext[0][:40] == sc.prefixes[0] and ext[1][:40] == sc.prefixes[1]
    assert eng.prompts["d0-0"][:40] == sc.prefixes[2]
    sc.run(1)
    assert eng.prompts["e1-0"][40:] != ext[0][40:], "a round's new tokens were cached"


def test_cases_parse_and_bad_ones_name_themselves():
    assert extend_step.parse_cases("1024:128:1:2,64:8:2:0") == [
        {"P": 1024, "N": 128, "S": 1, "D": 2}, {"P": 64, "N": 8, "S": 2, "D": 0}]
    for bad in ("1024:128:1", "1024:0:1:1", "a:1:1:1", "0:1:1:1"):
        with pytest.raises(SystemExit, match=bad.split(",")[0]):
            extend_step.parse_cases(bad)


def test_kvsaga_alone_runs_and_writes_its_section(tmp_path, capsys, monkeypatch):
    """A real worker (the default model, two tiny cases, one repeat): the table has both
    windows of each case, and --write-results writes its own block in its subsection only
    (one per thread count), after the text there before it."""
    results = tmp_path / "RESULTS.md"
    other = extend_step.section_title(2) + "\n\nother\n"
    results.write_text("# Measured\n\n" + extend_step.section_title(1) + "\n\nold\n\n"
                       + other + "\n## Next\nkept\n")
    monkeypatch.setattr(extend_step, "RESULTS_PATH", results)
    assert extend_step.main(["--cases", "64:16:1:1,48:32:1:0", "--repeat", "1",
                             "--max-tokens", "2", "--threads", "1", "--write-results"]) == 0
    out = capsys.readouterr().out
    assert "| P=64 N=16 S=1 D=1 | extend | 1 |" in out
    assert "| P=48 N=32 S=1 D=0 | decode | 1 |" in out
    text = results.read_text()
    assert text.endswith(other + "\n## Next\nkept\n")  # the 2-thread subsection untouched
    mine = text.split(extend_step.section_title(1))[1].split(other)[0]
    assert mine.startswith("\n\nold\n\n<!-- begin: written by bench/extend_step.py (")
    assert "| P=64 N=16 S=1 D=1 | decode |" in mine
