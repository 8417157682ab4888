"""The argparse types of bench/'s numeric flags: `int_arg` and `float_arg`, as `type=int` and
`type=float` but for ASCII digits only (no "٤" or "４" read as 4, no "1_000").

The rule and messages are kvsaga/ascii_numbers.py's (`kvsaga-serve`, `kvsaga sim`), written
again here because several scripts import no kvsaga at module level: they run under another
interpreter whose kvsaga is older or absent (bench/generate.py --baseline, bench/engine_ab.py
--before, bench/extend_step.py's vLLM worker, bench/vllm_block_pool.py), or from a bare
checkout (bench/gpu_check.py). `ascii_int` and `ascii_float` are drop-ins for int() and
float() (ValueError) where a script reads numbers out of a flag's text.
"""

from __future__ import annotations

import argparse

RULE = "write numbers with the ASCII digits 0-9, no '_'"


def _plain(text: str) -> bool:
    return text.isascii() and "_" not in text


def ascii_int(text: str) -> int:
    """`int(text)` for ASCII text with no "_", else ValueError (as int() raises): a drop-in
    for int() where a script reads numbers out of a flag's text (a comma list, NAME=VALUE)."""
    if not _plain(text):  # int() reads any Unicode digit, and "_"
        raise ValueError(f"{text!r} is not an integer ({RULE})")
    return int(text)


def ascii_float(text: str) -> float:
    """`float(text)` for ASCII text with no "_", else ValueError (as float() raises)."""
    if not _plain(text):
        raise ValueError(f"{text!r} is not a number ({RULE})")
    return float(text)


def _arg(parse, name: str, text: str):
    try:
        return parse(text)
    except ValueError:
        rule = "" if _plain(text) else f" ({RULE})"
        raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r}{rule}") from None


def int_arg(text: str) -> int:
    """An argparse type: as `type=int`, for ASCII text with no "_"."""
    return _arg(ascii_int, "int", text)


def float_arg(text: str) -> float:
    """An argparse type: as `type=float`, for ASCII text with no "_"."""
    return _arg(ascii_float, "float", text)


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__))
