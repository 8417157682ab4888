"""What bench/scheduling.py and `bench/serve_throughput.py --write-results` write into
bench/RESULTS.md: only a block of their own, between markers naming them (session 45's
review: scheduling.py's writer replaced everything under "## Scheduling (simulated)", 68
hand-written subsections, and serve_throughput.py's the whole Throughput subsection, seven
recorded runs). Run on a small RESULTS.md in a temporary folder; nothing is simulated."""

from __future__ import annotations

import pytest

from tests.bench_scripts import bench_modules, import_bench

mods = bench_modules("scheduling", "serve_throughput")

HAND = """# Measured results

## Scheduling (simulated)

### Fresh seeds 195, 196 (the lead, session 44; by hand around the scripts' output)

Seed 195 met the goal; the index points here.

```
# a comment in a code block, not a heading
```

### Goals (an old run's, pasted by hand)

- (By hand.) a note inside an old run's goals.

## Eviction policies (simulated)

Not scheduling.py's.
"""


@pytest.fixture
def sched(mods, tmp_path, monkeypatch):
    scheduling, _ = mods
    (tmp_path / "RESULTS.md").write_text(HAND, encoding="utf-8")
    monkeypatch.setattr(scheduling, "HERE", tmp_path)
    return scheduling, tmp_path / "RESULTS.md"


def test_scheduling_writes_its_own_block_and_keeps_the_hand_written_subsections(sched):
    scheduling, path = sched
    scheduling.write_section("Command: `first`\n\n### Goals (workflow+graph)\n\n- one")
    first = path.read_text()
    hand = HAND.split("## Eviction")[0].rstrip("\n")
    assert first.startswith(hand)  # every hand-written line kept, in place
    assert first.endswith("## Eviction policies (simulated)\n\nNot scheduling.py's.\n")
    assert first.count("<!-- begin: written by bench/scheduling.py") == 1
    assert scheduling.OWN_HEADING in first and "Command: `first`" in first
    # The next run replaces its block only.
    scheduling.write_section("Command: `second`\n\n- two")
    second = path.read_text()
    assert "Command: `first`" not in second and "Command: `second`" in second
    assert second.startswith(hand)
    assert second.count("<!-- begin: written by bench/scheduling.py") == 1
    assert second.index("Command: `second`") < second.index("## Eviction policies")


def test_scheduling_refuses_a_block_edited_by_hand_or_broken(sched):
    scheduling, path = sched
    blocks = import_bench("results_blocks")
    scheduling.write_section("Command: `first`\n\n- one")
    edited = path.read_text().replace("- one", "- one\n- (By hand.) a note added later")
    path.write_text(edited)
    with pytest.raises(blocks.BlockError, match="edited since it was written"):
        scheduling.write_section("Command: `second`")
    assert path.read_text() == edited  # nothing written
    broken = edited.replace("<!-- end: written by bench/scheduling.py -->\n", "")
    path.write_text(broken)
    with pytest.raises(blocks.BlockError, match="markers .* are broken"):
        scheduling.write_section("Command: `second`")
    assert path.read_text() == broken


def test_scheduling_main_refuses_before_it_simulates(sched, monkeypatch, capsys):
    """A block it may not write over stops the run before its simulations (minutes), not
    after them."""
    scheduling, path = sched
    scheduling.write_section("Command: `first`\n\n- one")
    path.write_text(path.read_text().replace("- one", "- one, edited"))
    import scheduling_fit

    def never(*a, **k):
        raise AssertionError("simulated before refusing")

    monkeypatch.setattr(scheduling_fit, "run_reusing", never)
    with pytest.raises(SystemExit) as e:
        scheduling.main(["--families", "swe", "--no-mix"])
    assert e.value.code == 2
    assert "edited since it was written" in capsys.readouterr().err


THROUGHPUT = """## vLLM as the peer

### Throughput (`python bench/serve_throughput.py --vllm-python VENV/bin/python`)

`python bench/serve_throughput.py --repeat 3 --write-results`: session 4's run.

**Session 37, a fresh reading** (by hand). Not met on this reading: 0.99x.

### The agent-replay step shape

Another subsection.
"""


def test_serve_throughput_adds_each_run_after_the_recorded_ones(mods, tmp_path):
    _, serve = mods
    path = tmp_path / "RESULTS.md"
    path.write_text(THROUGHPUT, encoding="utf-8")
    serve._write_results("TABLE A", path)
    text = path.read_text()
    for kept in ("session 4's run", "Not met on this reading: 0.99x"):
        assert kept in text
    serve._write_results("TABLE B", path, "2026-12-06 13:00 UTC")
    text = path.read_text()
    head, rest = text.split("### The agent-replay step shape")
    for kept in ("session 4's run", "Not met on this reading: 0.99x"):
        assert kept in head
    assert head.index("0.99x") < head.index("TABLE A") < head.index("TABLE B")
    assert "written by `--write-results`, 2026-12-06 13:00 UTC" in head
    assert head.count("<!-- begin: written by bench/serve_throughput.py") == 2
    assert rest == "\n\nAnother subsection.\n"


# Review of dd5a077 (fences.py, dup_parent.py): fences, line breaks, a refusal before the run.
S, P = "bench/scheduling.py", "## Scheduling (simulated)"


def _write(tmp_path, text: str, raw: bool = False):
    blocks = import_bench("results_blocks")
    path = tmp_path / "RESULTS.md"
    path.write_bytes(text.encode()) if raw else path.write_text(text, encoding="utf-8")
    return blocks, path


def test_marker_lines_quoted_in_fenced_code_are_not_a_block(tmp_path):
    """A note quoting the marker format made every run fail "was edited"."""
    quoted = (f"<!-- begin: written by {S} (x); sha256:0123456789abcdef -->\n"
              f"<!-- end: written by {S} -->\n")
    text = f"## Notes\n\n```\n{quoted}```\n\n{P}\n\nhand\n\n~~~~\n{quoted}~~~~\n"
    blocks, path = _write(tmp_path, text)
    blocks.replace_block(path, P, S, "one")
    blocks.replace_block(path, P, S, "two")
    out = path.read_text()
    assert out.count(quoted) == 2 and "one" not in out
    assert out.endswith(f"\ntwo\n\n<!-- end: written by {S} -->\n")


@pytest.mark.parametrize("fenced", ["~~~\n## shell comment\n~~~", "````\n```\n## x\n````",
                                    "```py\n## a\n~~~\n```"])
def test_headings_in_any_fence_do_not_end_the_section(tmp_path, fenced):
    """~~~ fences and fences longer than three (holding a ``` line) broke the tracking."""
    blocks, path = _write(tmp_path, f"{P}\n\n{fenced}\n\nhand\n\n## Next\n\nx\n")
    blocks.replace_block(path, P, S, "body")
    out = path.read_text()
    assert out.index("hand") < out.index("body") < out.index("## Next")
    assert out.startswith(f"{P}\n\n{fenced}\n\nhand\n\n<!-- begin")
    assert out.endswith("## Next\n\nx\n")


def test_crlf_and_other_line_separators_are_written_back_as_they_were(tmp_path):
    """splitlines() and "\\n".join made CRLF into LF and form feeds, \\x1c-\\x1e, \\x85 and
    U+2028/9 in hand-written text into line breaks."""
    odd = "a\u2028b\x0cc\x1cd\x1de\x1ef\x85g\u2029h"
    text = f"# R\r\n\r\n{odd}\r\n\r\n{P}\r\n\r\nhand\r\n\r\n## Next\r\n\r\nx\r\n"
    blocks, path = _write(tmp_path, text, raw=True)
    blocks.replace_block(path, P, S, "one")
    blocks.replace_block(path, P, S, "two")  # its own block found again, digest intact
    raw = path.read_bytes().decode()
    assert raw.startswith(f"# R\r\n\r\n{odd}\r\n\r\n{P}\r\n\r\nhand\r\n\r\n<!-- begin")
    assert "\n" not in raw.replace("\r\n", "") and raw.endswith("## Next\r\n\r\nx\r\n")
    assert "\r\ntwo\r\n" in raw and "one" not in raw


def test_a_duplicated_parent_is_refused_before_the_run(tmp_path):
    blocks, path = _write(tmp_path, f"# R\n\n{P}\n\nold\n\n## Other\n\n{P}\n\ncopy\n")
    with pytest.raises(blocks.BlockError, match="2 sections are headed"):
        blocks.check(path, P, S)
    with pytest.raises(blocks.BlockError, match="2 sections are headed"):
        blocks.check(path, P)


def test_scheduling_main_refuses_a_duplicated_section_before_it_simulates(
        sched, monkeypatch, capsys):
    """dup_parent.py: with no block yet and two sections headed "## Scheduling (simulated)",
    the refusal came only after the whole simulation."""
    scheduling, path = sched
    path.write_text(path.read_text() + f"\n{scheduling.SECTION}\n\na copy\n")
    import scheduling_fit

    def never(*a, **k):
        raise AssertionError("simulated before refusing")

    monkeypatch.setattr(scheduling_fit, "run_reusing", never)
    with pytest.raises(SystemExit) as e:
        scheduling.main(["--families", "swe", "--no-mix"])
    assert e.value.code == 2
    assert "2 sections are headed" in capsys.readouterr().err


def test_a_block_belongs_to_its_section(tmp_path):
    """One writer may keep a block in each of several sections (cluster.py's fleets), each
    replaced alone; a body heading at its section's level would end the section early."""
    blocks, path = _write(tmp_path, "## A\n\na\n\n## B\n\nb\n")
    for body in ("one", "two"):
        blocks.replace_block(path, "## A", S, f"A {body}")
        blocks.replace_block(path, "## B", S, f"B {body}")
    out = path.read_text()
    assert "one" not in out and out.index("A two") < out.index("## B") < out.index("B two")
    with pytest.raises(ValueError, match="below the section's level"):
        blocks.replace_block(path, "## A", S, "## Not a subsection")
    assert path.read_text() == out
