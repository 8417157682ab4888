"""Numbers a user writes (a flag's value, a KVSAGA_* variable): ASCII digits only.

Python's `int()` and `float()` read every Unicode decimal digit ("٤" and "４" are 4) and "_"
between digits ("1_000"), and `str.isdigit()` holds for "²", which `int()` then refuses. A
command line that took "--port ٨٠٠٠" or "KVSAGA_CPU_SERIAL_BELOW=٨" read a number no other
tool (OpenMP, a shell, a config checker) reads the same way, so kvsaga's readers of user
numbers refuse anything but ASCII: an optional sign, the digits 0-9 and, for a float, a
point and an exponent (and `float()`'s inf and nan, which each flag's range check refuses or
takes). `kvsaga.config.parse_bytes` keeps its own grammar, ASCII too.
"""

from __future__ import annotations

RULE = "write numbers with the ASCII digits 0-9, no '_'"


def is_plain(text: str) -> bool:
    """`text` holds only ASCII characters and no "_" (the characters a number may use)."""
    return text.isascii() and "_" not in text


def hint(text: str) -> str:
    """" (RULE)" for a text that is not plain (to add to a caller's own error), else ""."""
    return "" if is_plain(text) else f" ({RULE})"


def parse_int(text: str) -> int:
    """`int(text)` for a plain (ASCII, no "_") text. Raises ValueError naming the text."""
    if not is_plain(text):
        raise ValueError(f"{text!r} is not an integer ({RULE})")
    return int(text)


def parse_float(text: str) -> float:
    """`float(text)` for a plain (ASCII, no "_") text. Raises ValueError naming the text."""
    if not is_plain(text):
        raise ValueError(f"{text!r} is not a number ({RULE})")
    return float(text)


def int_arg(text: str) -> int:
    """An argparse type: as `type=int`, ASCII digits only ("invalid int value: ..." as
    argparse says for `type=int`, with the rule when the text broke it)."""
    try:
        return parse_int(text)
    except ValueError:
        raise _type_error(f"invalid int value: {text!r}{hint(text)}") from None


def float_arg(text: str) -> float:
    """An argparse type: as `type=float`, ASCII digits only."""
    try:
        return parse_float(text)
    except ValueError:
        raise _type_error(f"invalid float value: {text!r}{hint(text)}") from None


def _type_error(message: str) -> Exception:
    import argparse  # here: kvsaga.envs imports this module, and argparse costs ~6 ms

    return argparse.ArgumentTypeError(message)
