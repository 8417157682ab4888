"""The SessionGate's admission-order fit, rerun from the repository:
`bench/vllm_scheduler_replay.py --fit`.

    VENV/bin/python bench/vllm_scheduler_replay.py --fit --model-dir DIR --sessions 10 \
        --token-scale 0.1 --time-scale 2 --max-tool-s 7200 --kv-fraction 0.15 \
        --step-s 0.025 --token-s 0.00065

The gate's `admission_order` "predicted" has two settings, `aging_s` and `prior_steps`
(kvsaga/integrations/vllm/gate_order.py). They were first chosen by a driver in /tmp that
called the replay script's `replay` and was not kept; this module is that fit, kept: every
setting of the grid (and "fifo", the order before) replayed through vLLM's scheduler as the
connector arm "ttl" on the connector's fit seeds only, each seed's speed-up the plain vLLM
arm's mean TCT over the setting's, and the setting chosen by a stated rule:

- **the highest worst seed, then the highest median** (speed-ups compared unrounded; a tie
  on both goes to the setting listed first in the grid).

Only the connector's fit seeds (`FIT_SEEDS`, 0-4) are accepted: the other seeds are either
seen report seeds or fresh ones, and tuning on them would make their figures a fit.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ascii_args import ascii_float

FIT_WRITER = "bench/vllm_scheduler_replay.py --fit"  # its RESULTS.md blocks' writer
FIT_SEEDS = (0, 1, 2, 3, 4)  # the connector's fit seeds (bench/RESULTS.md, "vLLM as the peer")
# The grid the defaults were chosen from (gate_order's docstring): "fifo", then
# (aging_s, prior_steps) in {10, 30, 100} x {1, 8}, {3, 5, 20} x {8}, {5, 10, 20} x {4, 16}.
DEFAULT_GRID = ("fifo;10:1;10:8;30:1;30:8;100:1;100:8;3:8;5:8;20:8;"
                "5:4;10:4;20:4;5:16;10:16;20:16")
FIT_ARM = "ttl"  # the connector arm fitted: ttl with the connector's defaults, gate on


@dataclass(frozen=True)
class Setting:
    """One point of the grid: the gate's `admission_order` and, for "predicted", its two
    settings; `extra`: more connector settings, (key, value) pairs, a key `gate.NAME` a
    `gate_args` entry, a key `sched.NAME` a `scheduler_args` entry (KVSagaScheduler), any
    other a top-level `kv_connector_extra_config` entry (e.g. `best_effort_steps`)."""

    order: str
    aging_s: float | None = None
    prior_steps: float | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        base = ("fifo" if self.order == "fifo"
                else f"predicted {self.aging_s:g} / {self.prior_steps:g}")
        return " ".join([base, *(f"{k}={json.dumps(v)}" for k, v in self.extra)])

    def gate_args(self) -> dict[str, Any]:
        """The `gate_args` entries (kv_connector_extra_config) that select this setting."""
        out: dict[str, Any] = ({"admission_order": "fifo"} if self.order == "fifo" else
                               {"admission_order": "predicted", "aging_s": self.aging_s,
                                "prior_steps": self.prior_steps})
        out.update((k[5:], v) for k, v in self.extra if k.startswith("gate."))
        return out

    def connector_extra(self, base: dict[str, Any]) -> dict[str, Any]:
        """`base` (the run's --connector-extra) with this setting's entries over it."""
        out = {**base, **{k: v for k, v in self.extra if not k.startswith(("gate.", "sched."))}}
        out["gate_args"] = {**base.get("gate_args", {}), **self.gate_args()}
        sched = {k[6:]: v for k, v in self.extra if k.startswith("sched.")}
        if sched:  # KVSagaScheduler's settings (`--fit-arm POLICY+sched`)
            out["scheduler_args"] = {**base.get("scheduler_args", {}), **sched}
        return out


def _bad(entry: str) -> SystemExit:
    return SystemExit(f"--fit-grid entry {entry!r} is not 'fifo' or 'AGING_S:PRIOR_STEPS' "
                      "(aging_s > 0, prior_steps >= 1), then optional KEY=JSON settings")


def parse_grid(text: str) -> list[Setting]:
    """'fifo;20:16;10:8 best_effort_steps=0' -> settings: entries separated by ';', each
    "fifo" or "AGING_S:PRIOR_STEPS" (numbers, aging_s > 0, prior_steps >= 1, as the gate
    demands), then optional space-separated KEY=VALUE connector settings (VALUE as JSON;
    KEY `gate.NAME` for a gate argument). The connector checks the values when it starts."""
    out: list[Setting] = []
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        head, *pairs = entry.split()
        extra = []
        for pair in pairs:
            key, eq, value = pair.partition("=")
            try:
                extra.append((key, json.loads(value)))
            except ValueError:
                raise _bad(entry) from None
            if not (eq and key) or key in ("gate_args", "gate.admission_order", "gate.aging_s",
                                           "gate.prior_steps"):
                raise _bad(entry)
        if head == "fifo":
            setting = Setting("fifo", extra=tuple(extra))
        else:
            aging, colon, prior = head.partition(":")
            try:
                setting = Setting("predicted", ascii_float(aging), ascii_float(prior), tuple(extra))
            except ValueError:
                raise _bad(entry) from None
            if (not colon or not 0 < setting.aging_s < float("inf")
                    or not 1 <= setting.prior_steps < float("inf")):
                raise _bad(entry)
        if setting in out:
            raise SystemExit(f"--fit-grid lists {entry!r} twice")
        out.append(setting)
    if not out:
        raise SystemExit("--fit-grid names no setting")
    return out


def check_fit_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds to fit on: some of `FIT_SEEDS`, none other (clear error otherwise)."""
    bad = [s for s in seeds if s not in FIT_SEEDS]
    if bad or not seeds:
        raise SystemExit(f"--fit runs on the connector's fit seeds {list(FIT_SEEDS)} only; got "
                         f"{list(seeds)} (seen and fresh seeds are for reporting, never for "
                         "fitting)")
    return list(dict.fromkeys(seeds))


def score(ups: dict[int, float]) -> tuple[float, float]:
    """(worst seed, median) of one setting's speed-ups: what the rule ranks by."""
    return min(ups.values()), statistics.median(ups.values())


def choose(speedups: dict[Setting, dict[int, float]]) -> Setting:
    """The rule: the highest worst seed, then the highest median; ties to the first listed
    (dicts keep the grid's order, and `max` returns the first of equal keys)."""
    return max(speedups, key=lambda s: score(speedups[s]))


def fit_arm(args: Any) -> str:
    """The connector arm fitted: `--fit-arm` (e.g. "ttl+sched", the connector with kvsaga's
    scheduler plug-in), by default `FIT_ARM`."""
    return getattr(args, "fit_arm", None) or FIT_ARM


def fit(args: Any, model_dir: str, seeds: Sequence[int], grid: Sequence[Setting],
        replay: Callable[..., Any]) -> dict[str, Any]:
    """Replay plain vLLM and every setting on every seed (`replay(args, model_dir, seed,
    policy)` -> an ArmResult, with `args.connector_extra` naming the setting); return the
    plain TCTs, each setting's speed-ups, the chosen setting and the run's --connector-extra
    (every setting ran over it, so the table can say which entry really ran the defaults)."""
    base_extra = json.loads(args.connector_extra)
    plain = {seed: replay(args, model_dir, seed, None).figures()["task_time_mean_s"]
             for seed in seeds}
    speedups: dict[Setting, dict[int, float]] = {}
    for setting in grid:
        extra = setting.connector_extra(base_extra)
        ns = type(args)(**{**vars(args), "connector_extra": json.dumps(extra)})
        speedups[setting] = {
            seed: plain[seed] / replay(ns, model_dir, seed, fit_arm(args)).figures()[
                "task_time_mean_s"]
            for seed in seeds}
    return {"plain_tct_s": plain, "speedups": speedups, "chosen": choose(speedups),
            "connector_extra": base_extra}


def fit_table(result: dict[str, Any], default: Setting) -> list[str]:
    """Markdown: one row per setting (speed-ups per seed, worst, median), the chosen one in
    bold, then the rule, the pick, and whether the connector's default is the pick. Every
    setting ran over the run's --connector-extra (`result["connector_extra"]`), so an entry
    is the default only if its settings over that extra are the defaults."""
    speedups: dict[Setting, dict[int, float]] = result["speedups"]
    chosen: Setting = result["chosen"]
    base: dict[str, Any] = result.get("connector_extra", {})
    seeds = list(result["plain_tct_s"])
    out = ["| setting | " + " | ".join(f"seed {s}" for s in seeds) + " | worst | median |",
           "|---|" + "---:|" * (len(seeds) + 2)]
    for setting, ups in speedups.items():
        worst, med = score(ups)
        name = f"**{setting.label}**" if setting == chosen else setting.label
        out.append(f"| {name} | " + " | ".join(f"{ups[s]:.2f}x" for s in seeds)
                   + f" | {worst:.2f}x | {med:.2f}x |")
    worst, med = score(speedups[chosen])
    mine = find_default(list(speedups), default, base)
    if mine == chosen:
        verdict = "is the pick."
    elif mine is not None:
        verdict = (f"is not the pick ({score(speedups[mine])[0]:.2f}x worst, "
                   f"{score(speedups[mine])[1]:.2f}x median).")
    else:
        near = find_default(list(speedups), default)
        verdict = "is not the pick: it is not in this grid" + (
            f" as run ({near.label} ran with " + " ".join(
                f"{k}={json.dumps(v)}" for k, v in differs(near, default, base))
            + " from --connector-extra, so it is not the default)." if near is not None
            else ".")
    out += ["", "Plain vLLM's mean TCT per seed: " + ", ".join(
                f"{s} {t:.1f} s" for s, t in result["plain_tct_s"].items()) + "."
            + (f" Every setting ran over --connector-extra {json.dumps(base)}." if base else ""),
            f"Rule: the highest worst seed, then the highest median (unrounded; ties to the "
            f"first listed). Chosen: **{chosen.label}** ({worst:.2f}x worst, {med:.2f}x "
            f"median). The connector's default ({default.label}) {verdict}"]
    return out


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """`fit`'s result as plain JSON (settings by label)."""
    return {"plain_tct_s": result["plain_tct_s"],
            "speedups": {s.label: ups for s, ups in result["speedups"].items()},
            "chosen": result["chosen"].label,
            "connector_extra": result.get("connector_extra", {})}


def gate_default() -> Setting:
    """The connector's current defaults for what the grid varies: the gate's order
    (SessionGate's signature) and `best_effort_steps` (step_cost.BEST_EFFORT_STEPS)."""
    import inspect

    from kvsaga.integrations.vllm.gate import SessionGate
    from kvsaga.integrations.vllm.step_cost import BEST_EFFORT_STEPS

    p = inspect.signature(SessionGate.__init__).parameters
    extra = (("best_effort_steps", BEST_EFFORT_STEPS),)
    if p["admission_order"].default == "fifo":
        return Setting("fifo", extra=extra)
    return Setting(p["admission_order"].default, float(p["aging_s"].default),
                   float(p["prior_steps"].default), extra)


def _flat(extra: dict[str, Any]) -> dict[str, Any]:
    """kv_connector_extra_config entries as KEY -> value, a `gate_args` entry as `gate.NAME`
    (the grid's spelling)."""
    out = {k: v for k, v in extra.items() if k != "gate_args"}
    out.update((f"gate.{k}", v) for k, v in extra.get("gate_args", {}).items())
    return out


def differs(setting: Setting, default: Setting,
            base: dict[str, Any] | None = None) -> list[tuple[str, Any]]:
    """What `setting`, run over `base` (the run's --connector-extra), sets other than
    `default` does: entries with another value, or that `default` does not name (whose
    defaults the fit does not know); an entry left out runs its default."""
    want = _flat(default.connector_extra({}))
    return [(k, v) for k, v in _flat(setting.connector_extra(base or {})).items()
            if k not in want or want[k] != v]


def find_default(grid: Sequence[Setting], default: Setting,
                 base: dict[str, Any] | None = None) -> Setting | None:
    """The grid's setting that, run over `base` (the run's --connector-extra), runs the
    connector as `default` does (an entry that leaves a setting out runs its default), or
    None."""
    return next((s for s in grid if not differs(s, default, base)), None)


def run(args: Any, argv: list[str] | None, model_dir: str, seeds: Sequence[int],
        replay: Callable[..., Any], ar: Any, section: Callable[..., tuple[str, str]]) -> int:
    """`vllm_scheduler_replay.py --fit`: the fit printed, with `--json` written, with
    `--write-results` its own block of bench/RESULTS.md (`ar`: bench/agent_replay.py, whose
    `write_section` replaces that block and nothing else, and whose `refuse_early` refuses
    before the fit what it would refuse after; `section`: the replay's `results_section`,
    the title and body the arms' sections get too)."""
    seeds = check_fit_seeds(seeds)
    grid = parse_grid(args.fit_grid or DEFAULT_GRID)
    title, body = section(
        args, argv, "The gate's admission-order fit", FIT_WRITER,
        f"; connector arm '{fit_arm(args)}' with each setting's gate_args; speed-up: plain "
        "vLLM's mean TCT over the setting's, per fit seed.")
    if args.write_results:
        ar.refuse_early(ar.RESULTS, title, FIT_WRITER, ar.VLLM_SECTION)
    result = fit(args, model_dir, seeds, grid, replay)
    lines = fit_table(result, gate_default())
    print("\n".join(lines))
    if args.write_results:
        ar.write_section(ar.RESULTS, title, "\n".join([body, "", *lines]), FIT_WRITER,
                         ar.VLLM_SECTION)
        print("wrote bench/RESULTS.md")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), **to_json(result)},
                                              indent=1))
    return 0


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/vllm_scheduler_replay.py"))
