"""bench/policies_cv.py: the tune rules cross-validated on saved rows, on a constructed row
set whose picks and held-out scores are worked out by hand below; and bench/policies_seen.py's
guards (no fresh or fit seeds, no adaptive whose experts' constants are not saved)."""

from __future__ import annotations

import pytest

from tests.bench.test_policies import load  # bench/NAME.py, bench/ on the path
from tests.exits import usage_error

A, B = "graph[spread=1]", "graph[demoted_release=1]"
X = ("web-short", 102, 0.3)  # ttl's outlier: lru is best there, ttl 5x
Y = ("swe-slow", 201, 0.3)  # B's small miss (1.05x)
CASES = [(t, s, 0.3) for t in ("swe-slow", "web-short", "swe") for s in (102, 201)]


def _rows():
    rows = []
    for case in CASES:
        if case == X:
            tokens = {"lru": 100, "saga": 150, "ttl": 500, A: 110, B: 200}
        else:
            tokens = {"lru": 200, "saga": 150, "ttl": 100, A: 110,
                      B: 105 if case == Y else 100}
        for p, x in tokens.items():
            t, s, f = case
            rows.append({"trace": t, "seed": s, "frac": f, "policy": p,
                         "recomputed_tokens": x, "hit_rate": 0.9, "num_gpu_blocks": 100})
    return rows


CANDIDATES = ["lru", "saga", "ttl", A, B]


def test_rules_on_all_rows():
    cv = load("policies_cv")
    rows = _rows()
    # worst ratio: A 1.10, B 2.0, ttl 5.0 -> A; count above 1.0: ttl 1, B 2, A 6 -> ttl
    assert cv.RULES["worst"](rows, CANDIDATES) == A
    assert cv.RULES["count"](rows, CANDIDATES) == "ttl"
    assert cv.ratios(rows, "ttl") == pytest.approx([1.0, 1.0, 5.0, 1.0, 1.0, 1.0])
    assert cv.ratios([r for r in rows if r["policy"] != B or r["seed"] != 102], B) is None


def test_leave_one_trace_out_by_hand():
    cv = load("policies_cv")
    scores = cv.cross_validate(_rows(), CANDIDATES, "trace", ["ttl", A])
    # worst: swe-slow and swe held out -> A (0 of 4 within); web-short held out -> the rest
    # has no outlier, ttl is 1.0x everywhere -> ttl, which is 5x on X: 1 of 2 within
    w = scores["worst"]
    assert dict(w.picks) == {A: 2, "ttl": 1}
    assert w.cells()[:2] == ["1 of 6", "5.00x (web-short 102, 30%)"]
    # count: swe-slow out -> ttl and B one case above each, B's worst lower -> B (Y is held
    # out: 1 of 2 within); swe out -> ttl (2 of 2); web-short out -> ttl (1 of 2)
    c = scores["count"]
    assert dict(c.picks) == {B: 1, "ttl": 2}
    assert c.cells()[0] == "4 of 6"
    assert scores["fixed ttl"].cells()[:2] == ["5 of 6", "5.00x (web-short 102, 30%)"]
    assert scores[f"fixed {A}"].cells()[:2] == ["0 of 6", "1.10x (swe-slow 102, 30%)"]
    assert not scores[f"fixed {A}"].picks


def test_seed_folds_and_transfer():
    cv = load("policies_cv")
    assert cv.seed_group(1) == cv.seed_group(101) == "families"
    assert cv.seed_group(102) == cv.seed_group(103) == "100s"
    assert cv.seed_group(951) == cv.seed_group(952) != cv.seed_group(961)
    rows = _rows()
    scores = cv.cross_validate(rows, CANDIDATES, "seeds", [])
    # 102 out: the rest (201) has Y only -> worst picks ttl (1.0x), scored 5x on X
    assert scores["worst"].picks["ttl"] >= 1
    assert len(scores["worst"].ratios) == 6
    train = [r for r in rows if r["seed"] == 201]
    test = [r for r in rows if r["seed"] == 102]
    t = cv.transfer(train, test, CANDIDATES, ["lru"])
    assert dict(t["worst"].picks) == {"ttl": 1}
    assert t["worst"].cells()[0] == "2 of 3"
    assert t["fixed lru"].cells()[0] == "1 of 3"
    assert cv.common_candidates(rows, test) == CANDIDATES
    assert cv.common_candidates(rows, [r for r in test if r["policy"] != A]) == \
        ["lru", "saga", "ttl", B]


def test_cli_refuses_unknown_fixed(tmp_path, capsys):
    cv = load("policies_cv")
    import json
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": _rows(), "candidates": CANDIDATES}))
    with pytest.raises(SystemExit) as e:
        cv.main(["--rows", str(path), "--fixed", "belady"])
    assert f"['belady']: not in {path}'s rows" in usage_error(e, capsys)
    assert cv.main(["--rows", str(path), "--fixed", "ttl"]) == 0
    out = capsys.readouterr().out
    assert "| fixed ttl | - | 5 of 6 |" in out


def test_seen_guards():
    seen = load("policies_seen")
    with pytest.raises(ValueError, match="fresh or fit"):
        seen.simulate([501, 991], ["lru"], 1, {})
    with pytest.raises(ValueError, match="fresh or fit"):
        seen.simulate([402], ["lru"], 1, {})
    with pytest.raises(ValueError, match="adaptive"):
        seen.specs_to_run(["adaptive[experts=graph+ttl]"], {})
    consts = {"graph[spread=1]": {"demoted_release": 0.0, "spread": 1.0}}
    assert seen.specs_to_run(["ttl", "graph[spread=1]"], consts) == {
        "ttl": "ttl", "graph[spread=1]": "graph[demoted_release=0,spread=1]"}
    assert not set(seen.SEEN_ALL) & set(seen.FRESH)
    table = seen.case_table(_rows())
    assert [c["best"] for c in table].count("lru") == 1


def test_pairs_rule_tolerances_and_seed_groups():
    cv = load("policies_cv")
    rows = _rows()
    # per seed group's worst, averaged: A 1.10, saga 1.50, B (2.0 + 1.05) / 2, ttl 3.0
    assert cv.pair_worst(rows, "ttl") == pytest.approx(3.0)
    assert cv.pair_worst(rows, B) == pytest.approx(1.525)
    assert cv.RULES["pairs"](rows, CANDIDATES) == A
    tol = {line.split(" | ")[0]: line for line in cv.tolerance_table(rows, CANDIDATES)}
    assert tol["| `ttl`"] == "| `ttl` | 0 | 5 | 5 | 5 | 5 | 1 |"
    assert tol[f"| `{B}`"] == f"| `{B}` | 0 | 4 | 4 | 5 | 5 | 1 |"
    groups = cv.group_table(rows, CANDIDATES)
    assert groups[2].startswith("| 100s | 3 |") and groups[2].endswith(f"| `{A}` |")
    assert groups[3].startswith("| 200s | 3 |") and groups[3].endswith("| `ttl` |")
    assert groups[-1] == f"First by the tune rule per seed group: `{A}` 1, `ttl` 1."


def test_head_to_head_counts_cases():
    cv = load("policies_cv")
    lines = cv.head_to_head(_rows(), B, CANDIDATES)
    # B against ttl: less on X (200 < 500), more on Y (105 > 100), equal on the other 4
    assert "| `ttl` | 1 | 1 | 4 |" in lines
    assert f"| `{A}` | 5 | 1 | 0 |" in lines
    assert not any(line.startswith(f"| `{B}` |") for line in lines)


def test_second_goal_against_the_best_run_found():
    cv = load("policies_cv")
    rows = _rows()
    assert cv.found_table(rows, CANDIDATES) == []  # no hindsight: not judged
    for t, s, f in CASES:
        rows.append({"trace": t, "seed": s, "frac": f, "policy": "hindsight",
                     "recomputed_tokens": 95, "hit_rate": 0.9, "num_gpu_blocks": 100})
    lines = cv.found_table(rows, [*CANDIDATES, "hindsight"])
    # ttl 100/95 within 1.10x but 500/95 on X; B 105/95 on Y is above; A 110/95 everywhere
    assert "| `ttl` | 5 of 6 | 5.26x |" in lines
    assert f"| `{B}` | 4 of 6 | 2.11x |" in lines
    assert f"| `{A}` | 0 of 6 | 1.16x |" in lines
    assert not any("`hindsight`" in line for line in lines)
