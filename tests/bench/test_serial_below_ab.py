"""bench/serial_below_ab.py: bad flags stop before any run; a tiny real run prints its
batch size's row with the ratio to the first value."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_bench


@pytest.fixture(scope="module")
def ab():
    return load_bench("serial_below_ab")


@pytest.mark.parametrize("argv, message", [
    (["--values", "default,8MiB"], "neither 'default' nor a byte count"),
    (["--seqs", "1,x"], "--seqs must be comma-separated integers"),
    (["--seqs", "0"], "--seqs values must be >= 1"),
    (["--repeat", "0"], "--repeat must be >= 1"),
])
def test_bad_flags_stop_before_any_run(ab, argv, message):
    with pytest.raises(SystemExit, match=message):
        ab.main(argv)


def test_tiny_run_prints_a_row_per_batch(ab, capsys):
    ab.main(["--values", "default,0", "--seqs", "1", "--context", "24", "--steps", "2",
             "--repeat", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "| seqs | default (ms) | 0 (ms) | default / 0 |" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 1
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        default_ms, zero_ms, ratio = float(cells[1]), float(cells[2]), cells[3]
        assert default_ms > 0 and zero_ms > 0
        # the ratio is of the unrounded medians; the ms cells are rounded to 0.1
        assert ratio.endswith("x")
        assert float(ratio[:-1]) == pytest.approx(default_ms / zero_ms, abs=0.02)
