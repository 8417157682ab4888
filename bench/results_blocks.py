"""The parts of bench/RESULTS.md a script writes, marked as its own and the only text it touches.

RESULTS.md's sections hold a script's output and, around it, what sessions wrote by hand
(fresh-seed runs, diagnoses, notes the index points to). A writer that replaced a whole
section from its heading to the next wiped those records (sessions 12-44's subsections of
"Scheduling (simulated)", session 37's throughput reading). So a script's output goes between
two marker lines naming the script:

    <!-- begin: written by bench/NAME.py (...); sha256:DIGEST -->
    ...
    <!-- end: written by bench/NAME.py -->

DIGEST is a digest of the text between them as written. `replace_block` rewrites that block
and nothing else, and refuses (`BlockError`) when the text between the markers is no longer
what the script wrote (edited by hand since) or the markers are broken; `append_block` adds a
new marked block after the ones before it and rewrites nothing. A new block goes at the end
of its parent section (the section headed by the line `parent`, up to the next heading of its
level or above; headings inside fenced code do not count), or, without one, at the end of the
file under a new `parent` heading.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_BEGIN = re.compile(r"^<!-- begin: written by (?P<script>\S+) .*sha256:(?P<digest>[0-9a-f]+) -->$")


class BlockError(ValueError):
    """A block a script would write over is not (only) what it wrote: nothing was written."""


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _end(script: str) -> str:
    return f"<!-- end: written by {script} -->"


def block(script: str, body: str, note: str) -> list[str]:
    """The lines of a marked block holding `body` (`note`: what a reader may do with it)."""
    inner = ["", *body.rstrip("\n").splitlines(), ""]
    return [f"<!-- begin: written by {script} ({note}); sha256:{_digest(inner)} -->", *inner,
            _end(script)]


def _headings(lines: list[str]) -> list[tuple[int, int]]:
    """(index, level) of every Markdown heading outside fenced code."""
    out, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^(#{1,6}) ", line)):
            out.append((i, len(m.group(1))))
    return out


def _parent_end(lines: list[str], parent: str, path: Path) -> int | None:
    """Index of the first line after the section headed `parent` (None: no such heading).

    Raises:
        BlockError: `parent` heads two sections (which one a block belongs to is unclear).
    """
    heads = _headings(lines)
    at = [(i, level) for i, level in heads if lines[i] == parent]
    if len(at) > 1:
        raise BlockError(f"{path}: {len(at)} sections are headed {parent!r}; nothing written")
    if not at:
        return None
    i, level = at[0]
    return next((j for j, lv in heads if j > i and lv <= level), len(lines))


def _insert(lines: list[str], new: list[str], parent: str, path: Path) -> list[str]:
    """`new` at the end of the section headed `parent`, or under a new such heading at the
    end of the file, with a blank line on either side."""
    at = _parent_end(lines, parent, path)
    if at is None:
        new, at = [parent, "", *new], len(lines)
    j = at
    while j > 0 and not lines[j - 1]:  # the blank lines before the next heading: one kept
        j -= 1
    return [*lines[:j], *([""] if j else []), *new, *([""] if at < len(lines) else []),
            *lines[at:]]


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def replace_block(path: Path, parent: str, script: str, body: str) -> None:
    """Write `body` as `script`'s one block of the file at `path`: in place of the block it
    wrote before, or (none yet) at the end of the section headed `parent`.

    Raises:
        BlockError: `script`'s markers are broken (a begin without its end, more than one
            block), or the text between them is not what it wrote (its digest differs: edited
            by hand since). The file is left as it was.
    """
    lines = _read(path)
    new = block(script, body, "its next run replaces this block: write by hand outside it")
    at = own_block(path, script, lines)
    if at is None:
        _write(path, _insert(lines, new, parent, path))
    else:
        _write(path, [*lines[:at[0]], *new, *lines[at[1] + 1:]])


def own_block(path: Path, script: str, lines: list[str] | None = None) -> tuple[int, int] | None:
    """The begin and end line indices of `script`'s one block in the file at `path` (None:
    it has none), checked as `replace_block` checks it: a script calls this before a long
    run, so that a refusal comes before the run, not after it.

    Raises:
        BlockError: as `replace_block`.
    """
    lines = _read(path) if lines is None else lines
    begins = [i for i, x in enumerate(lines) if (m := _BEGIN.match(x)) and m["script"] == script]
    ends = [i for i, x in enumerate(lines) if x == _end(script)]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise BlockError(f"{path}: the markers of {script}'s block are broken ({len(begins)} "
                         f"begin, {len(ends)} end lines); fix them by hand, nothing written")
    b, e = begins[0], ends[0]
    if _digest(lines[b + 1:e]) != _BEGIN.match(lines[b])["digest"]:
        raise BlockError(f"{path}: the block {script} wrote (lines {b + 1}-{e + 1}) was edited "
                         "since it was written; move the hand-written text out of its markers "
                         "(or delete the block) and run again; nothing written")
    return b, e


def append_block(path: Path, parent: str, script: str, body: str) -> None:
    """Add `body` as a new block of `script`'s at the end of the section headed `parent`
    (after everything there, earlier runs and notes included); nothing is rewritten.

    Raises:
        BlockError: `parent` heads more than one section.
    """
    new = block(script, body, "one run, kept: later runs are added after it")
    _write(path, _insert(_read(path), new, parent, path))
