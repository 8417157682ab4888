"""bench/policies_seen.py's `--tune-json`: the fit rows compared with (and the constants the
seen rows run with) come from the file named, not always bench/plots/policies_tune.json
(session 34: the tune rerun on the scheduler's round-41 default was saved beside it)."""

from __future__ import annotations

import json

import pytest

from tests.bench.test_policies import load
from tests.bench.test_policies_cv import CANDIDATES, _rows
from tests.exits import usage_error


def _fit(tmp_path, name, candidates, scale):
    rows = [{**r, "recomputed_tokens": r["recomputed_tokens"] * scale} for r in _rows()]
    path = tmp_path / name
    path.write_text(json.dumps({"rows": rows, "candidates": candidates, "constants": {}}))
    return path


def test_the_fit_rows_come_from_the_file_named(tmp_path, monkeypatch, capsys):
    seen = load("policies_seen")
    saved = tmp_path / "seen.json"
    saved.write_text(json.dumps({"rows": _rows(), "seeds": [102, 201],
                                 "candidates": CANDIDATES, "command": "x", "wall_s": 60.0}))
    monkeypatch.setattr(seen, "SEEN_JSON", saved)
    # the default path lacks a candidate: the file named is the one read
    monkeypatch.setattr(seen, "TUNE_JSON", _fit(tmp_path, "old.json", CANDIDATES[:3], 1))
    with pytest.raises(SystemExit) as e:
        seen.main(["--from-json", "--policies", ",".join(CANDIDATES)])
    assert f"{CANDIDATES[3:]}: not candidates of the saved fit rows" in usage_error(e, capsys)
    new = _fit(tmp_path, "new.json", CANDIDATES, 1)
    assert seen.main(["--from-json", "--policies", ",".join(CANDIDATES),
                      "--tune-json", str(new)]) == 0
    out = capsys.readouterr().out
    assert "fit set (all)" in out and "seen held-out seeds" in out
