"""Per-victim regret by block class (`python bench/policies.py --regret`): a diagnosis on
any seed, split from bench/policies.py to keep it short."""

from __future__ import annotations

from policies import PRESET, _capacity, build_trace, parse_spec  # bench/ is on the path

from kvsaga.policy import make_policy
from kvsaga.sim.regret import CLASSES, record_regret
from kvsaga.sim.simulator import SimConfig, Simulator


def regret_report(traces: list[str], seed: int, frac: float, policies: list[str],
                  command: str) -> str:
    """Per policy and block class: victims, how many a later step read, how soon."""
    lines = [f"Per-victim regret (`{command}`, seed {seed}, capacity "
             f"{frac:.0%} of the peak working set). Per class: victims, victims a later step "
             "read (each one a rebuild), the median time until that read by the trace "
             "(release times), the median simulated time until the victim's session next "
             "started a step (`step`), and the share evicted while a block needed later "
             "by the trace stayed cached (premature). `demoted`: sessions the scheduler "
             "demoted (they wait for re-admission):", "",
             "| trace | policy | recomputed (M) | " + " | ".join(CLASSES) + " |",
             "|---|---|---:|" + "---|" * len(CLASSES)]
    for name in traces:
        trace = build_trace(name, seed)
        if trace is None:
            continue
        blocks, _ = _capacity(trace, frac)
        for p in policies:
            base, params = parse_spec(p)
            config = SimConfig(preset=PRESET, num_gpu_blocks=blocks, policy=base)
            policy = make_policy(base, cost=config.cost, **params)
            sim = Simulator(trace, config, policy=policy)
            log = record_regret(sim)
            r = sim.run()
            s = log.summary()
            cells = []
            for c in CLASSES:
                x = s.get(c)
                cells.append("-" if x is None else
                             f"{x['victims']} / {x['reused']} reused, "
                             f"{x['median_next_use_s']:.2f} s, step "
                             f"{x['median_step_s']:.2f} s, {x['premature']:.0%} prem.")
            lines.append(f"| {name} | {p} | {r.recomputed_tokens / 1e6:.3f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def regret_smoothed(traces: list[str], seed: int, frac: float, policies: list[str],
                    command: str) -> str:
    """`--regret --smooth`: per policy and block class, victims and victims read again,
    summed over the case's five smoothing pool sizes (bench/policies_smooth.py), beside the
    mean recomputation over them: where a policy loses in expectation, not at one draw."""
    from policies import _blocks, _peak
    from policies_smooth import pool_sizes
    lines = [f"Per-victim regret over five pool sizes (`{command}`, seed {seed}, capacity "
             f"{frac:.0%} of the peak working set and +-2%). Per class: victims / victims a "
             "later step read, summed over the sizes:", "",
             "| trace | policy | pool sizes | mean recomputed (M) | " + " | ".join(CLASSES)
             + " |", "|---|---|---|---:|" + "---:|" * len(CLASSES)]
    for name in traces:
        trace = build_trace(name, seed)
        if trace is None:
            continue
        peak, longest = _peak(name, seed)
        sizes = pool_sizes(_blocks(peak, longest, frac), longest)
        for p in policies:
            base, params = parse_spec(p)
            victims = {c: [0, 0] for c in CLASSES}
            recomputed = 0
            for blocks in sizes:
                config = SimConfig(preset=PRESET, num_gpu_blocks=blocks, policy=base)
                policy = make_policy(base, cost=config.cost, **params)
                sim = Simulator(trace, config, policy=policy)
                log = record_regret(sim)
                recomputed += sim.run().recomputed_tokens
                for c, x in log.summary().items():
                    victims[c][0] += x["victims"]
                    victims[c][1] += x["reused"]
            cells = [f"{v} / {r}" if v else "-" for v, r in victims.values()]
            lines.append(f"| {name} | {p} | {sizes[0]}-{sizes[-1]} | "
                         f"{recomputed / len(sizes) / 1e6:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/policies.py"))
