"""What a command that exits said: a test of a refusal checks it was refused for the reason
the test is about, not for another (a different bad flag, an import that failed)."""

from __future__ import annotations

import pytest


def usage_error(exc: pytest.ExceptionInfo[SystemExit], capsys: pytest.CaptureFixture) -> str:
    """The line argparse's `error()` printed, after checking the exit was its code 2. Only
    that last line is evidence: the usage printed above it names every flag."""
    assert exc.value.code == 2, f"exited with {exc.value.code!r}, not argparse's usage error"
    err = capsys.readouterr().err.strip()
    assert err, "exited 2 and said nothing on stderr"
    return err.splitlines()[-1]
