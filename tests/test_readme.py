"""The README's two commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fenced_commands(text: str, heading: str) -> list[str]:
    section = text.split(heading, 1)[1]
    block = section.split("```", 2)[1]
    return [ln.strip() for ln in block.splitlines()[1:] if ln.strip()]


def test_ci_runs_exactly_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    setup = _fenced_commands(readme, "## Set up")
    test = _fenced_commands(readme, "## Test")
    assert len(setup) == 1 and len(test) == 1
    ci = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()]
    assert ci.index(setup[0]) < ci.index(test[0])
