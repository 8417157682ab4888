"""The command line of bench/vllm_scheduler_replay.py: every option of the replay, its
report and its fit (`add_arguments`), kept apart from the replay loop so each file stays one
concept. The script builds its parser around these (`vllm_scheduler_replay.build_parser`,
which the diagnosis scripts and a RESULTS section's title read); which seeds a run may use is
bench/vllm_replay_seeds.py's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ascii_args import float_arg, int_arg
from vllm_offload_sim import DEFAULT_OFFLOAD_TOKEN_S
from vllm_replay_report import ALL_HITS_ARM

# Where agent_replay.py --engine vllm writes the SmolLM2 HF directory.
DEFAULT_MODEL_DIR = Path.home() / ".cache/kvsaga/SmolLM2-135M-Instruct.Q4_1-hf"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of bench/vllm_scheduler_replay.py, on `p`."""
    a = p.add_argument
    a("--workload", default="swe", help="a kvsaga.sim workload (swe, web, bfcl, assistant)")
    a("--sessions", type=int_arg, default=6, help="agent sessions replayed per seed")
    a("--steps", type=int_arg, default=8, help="most steps replayed per session (the rest cut)")
    a("--seeds", default="0",
      help="comma-separated generator seeds (held out: a seed any fit read, bench/"
           "fit_seeds.py, the vLLM gate's seen seeds and the default 0 among them, is refused "
           "where the run writes results, --write-results or --json, without --fit-seeds)")
    a("--fit-seeds", action="store_true",
      help="a diagnosis on seeds a fit read (those of bench/fit_seeds.py only), labelled fit "
           "seeds, not held out, in the output, the JSON and the RESULTS section; held-out "
           "seeds beside them only in --seed-groups groups of their own; not with "
           "--fit (which runs on the gate's fit seeds only)")
    a("--seed-groups", default=None,
      help="seed groups reported apart, e.g. '5,6,7,8,9;10,11,12,13,14' (default: one)")
    a("--unbounded-blocks", type=int_arg, default=0,
      help="also replay plain vLLM with this many usable KV blocks (an arm 'vllm@N': how "
           "much any retention could gain)")
    a("--all-hits", action="store_true",
      help=f"also replay plain vLLM at the same budget with a cache that never evicts: arm "
           f"'{ALL_HITS_ARM}' (vLLM's order: the TCT with every prefix hit kept, what any "
           "retention can reach without changing which requests run together) and "
           f"'{ALL_HITS_ARM}+srpt' (a clairvoyant order, the session with the fewest decode "
           "steps left first: what reordering could add on top) and "
           f"'{ALL_HITS_ARM}+sched' (the online order of kvsaga's scheduler plug-in, "
           "KVSagaScheduler: how much of that an online order takes)")
    a("--token-scale", type=float_arg, default=0.02, help="multiplies every token count")
    a("--time-scale", type=float_arg, default=20.0,
      help="multiplies every tool pause (before --max-tool-s caps it)")
    a("--max-tool-s", type=float_arg, default=10.0, help="cap on one scaled tool pause, seconds")
    a("--arrival-gap", type=float_arg, default=1.0,
      help="simulated seconds between session arrivals")
    a("--hint", choices=("median", "exact", "none", "session", "close"), default="median",
      help="what each request tells the connector besides its session: the tool its reply "
           "calls and that tool's median pause (median), the pause itself (exact), the tool "
           "alone (none), all with last_step on a session's last step; session: the session "
           "and workflow only (a client does not know its reply's tool, nor that it is the "
           "last, before the model has replied); close: as session, and once a session's last "
           "reply is in, a one-token request with last_step (the client ends the session)")
    a("--kv-fraction", type=float_arg, default=0.5,
      help="usable KV blocks as a share of every session's final context at once (at least "
           "the longest context and a block)")
    a("--block-size", type=int_arg, default=32, help="tokens per KV block")
    a("--max-num-seqs", type=int_arg, default=16, help="vLLM's most requests per step")
    a("--max-num-batched-tokens", type=int_arg, default=4096,
      help="vLLM's token budget per step")
    a("--policies", default="ttl+nogate,ttl",
      help="connector arms (plain vLLM always runs): POLICY (the connector's defaults: "
           "session gate on), POLICY+nogate (retention alone), POLICY+gate (gate forced on), "
           "POLICY+noroom (the gate without room admission), POLICY+fifo (the gate in vLLM's "
           "queue order), POLICY+ride (deferred steps ride along: best_effort_steps 10); any of "
           "them +sched (kvsaga's scheduler plug-in too: KVSagaScheduler, vLLM's priority "
           "policy) or +srpt (a clairvoyant order, a reference: vLLM's priority policy, the "
           "session with the fewest decode steps left first); offload-lru, offload-kvsaga, "
           "offload-kvsaga-graph (vLLM's CPU offload tier with vLLM's LRU or kvsaga's cache "
           "policy, --host-factor) and ARM+offload-... (the connector arm ARM and the tier in "
           "vLLM's MultiConnector)")
    a("--host-factor", type=float_arg, default=2.0,
      help="offload arms (offload-lru, offload-kvsaga, offload-kvsaga-graph, or POLICY+"
           "offload-...: the retention connector and the tier in vLLM's MultiConnector): the "
           "host tier's chunks (one block each) as a multiple of the usable GPU KV blocks")
    a("--offload-token-s", type=float_arg, default=DEFAULT_OFFLOAD_TOKEN_S,
      help="simulated seconds per token an offload arm moves between host and GPU, loads and "
           "stores alike, added to the step that issues them (bench/vllm_offload_sim.py: "
           "this machine's measured copy rate for SmolLM2's float32 KV)")
    a("--connector-extra", default="{}",
      help="JSON of more kv_connector_extra_config entries for the connector arms (a "
           "POLICY+nogate arm leaves out the gate's: gate_args, keep_demoted, "
           "best_effort_steps)")
    a("--template-tokens", type=int_arg, default=8,
      help="chat-template tokens around each user/tool message (header, end, the "
           "assistant's header): SmolLM2's template adds about 8")
    a("--template-end-tokens", type=int_arg, default=2,
      help="template tokens after each reply (end of turn, newline)")
    a("--reply-tokens", type=int_arg, default=None,
      help="cap every reply at this many tokens, as a live model that ends at EOS (greedy "
           "SmolLM2 at x0.05: a mean of 6.2 tokens live where the trace asks 12.7; min(trace, "
           "8) matches it on fit seed 0); the KV budget still counts the trace's lengths")
    a("--kv-blocks", type=int_arg, default=None,
      help="usable KV blocks (overrides --kv-fraction; vLLM's null block is added)")
    a("--step-s", type=float_arg, default=0.05, help="simulated seconds per step")
    a("--token-s", type=float_arg, default=0.002, help="simulated seconds per scheduled token")
    a("--model-dir", default=str(DEFAULT_MODEL_DIR),
      help="an HF directory whose config.json vLLM's scheduler reads (no weights are loaded)")
    a("--json", default=None, metavar="PATH",
      help="also write the config and every arm's rows to this JSON file")
    a("--label", default="",
      help="words added to the RESULTS section's title (sections of other workloads kept apart)")
    a("--write-results", action="store_true",
      help="write this run's block of bench/RESULTS.md (its section: one per step cost, "
           "reply cap, label and every other setting not at its default)")
    a("--trace", action="store_true", help="print every request's first scheduling")
    a("--breakdown", action="store_true",
      help="also print per seed where each arm's task time goes: tool pauses + queue waits "
           "+ service (bench/vllm_replay_breakdown.py)")
    a("--fit", action="store_true",
      help="rerun the gate's admission-order fit (bench/vllm_gate_fit.py) instead of the "
           "arms: every --fit-grid setting as the connector arm 'ttl' on --seeds (the "
           "connector's fit seeds 0-4 only), chosen by the highest worst seed then median")
    a("--fit-arm", default=None,
      help="the connector arm --fit replays each setting as (default: ttl, the connector "
           "alone; e.g. ttl+sched: with kvsaga's scheduler plug-in)")
    a("--fit-grid", default=None,
      help="the fit's settings, ';'-separated 'fifo' or 'AGING_S:PRIOR_STEPS' (default: the "
           "grid the connector's defaults were chosen from, bench/vllm_gate_fit.DEFAULT_GRID)")


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/vllm_scheduler_replay.py"))
