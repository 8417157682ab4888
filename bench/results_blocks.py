"""The parts of bench/RESULTS.md a script writes, marked as its own and the only text it touches.

RESULTS.md's sections hold a script's output and, around it, what sessions wrote by hand
(fresh-seed runs, diagnoses, notes the index points to). A writer that replaced a whole
section from its heading to the next wiped those records (sessions 12-44's subsections of
"Scheduling (simulated)", session 37's throughput reading, the notes under the eviction
scaling, cluster, reference and regret sections). So a script's output goes between two
marker lines naming the writer (the script, with its mode where one script writes several
kinds of block, e.g. `bench/policies.py --reference`):

    <!-- begin: written by bench/NAME.py (...); sha256:DIGEST -->
    ...
    <!-- end: written by bench/NAME.py -->

DIGEST is a digest of the text between them as written. A block belongs to its parent
section (the section headed by the line `parent`, up to the next heading of its level or
above): `replace_block` rewrites the writer's one block there and nothing else, and refuses
(`BlockError`) when the text between the markers is no longer what the writer wrote (edited
by hand since) or the markers are broken; `append_block` adds a new marked block after the
ones before it and rewrites nothing. A new block goes at the end of its parent section, or,
without one, under a new `parent` heading at the end of the file, or, for a writer whose
sections are subsections of another (one per run's settings, e.g. bench/agent_replay.py's
under "## vLLM as the peer"), at the end of the section whose heading starts with `within`.
`check` runs the checks a write would run, so that a script refuses before a long run, not
after it.

Headings and marker lines inside fenced code (``` or ~~~, three or more, closed by the same
character at least as many times) do not count: a note may quote the marker format. Lines
are split on "\\n" only and written back as they were read: CRLF files stay CRLF, and form
feeds or U+2028 in hand-written text stay where they are.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_BEGIN = re.compile(r"^<!-- begin: written by (?P<script>.+?) \([^()]*\); "
                    r"sha256:(?P<digest>[0-9a-f]+) -->$")
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<rest>.*)$")
_HEADING = re.compile(r"^(#{1,6}) ")


class BlockError(ValueError):
    """A block a script would write over is not (only) what it wrote: nothing was written."""


def _bare(line: str) -> str:
    """A line as read (split on "\\n") without the "\\r" of a CRLF file."""
    return line[:-1] if line.endswith("\r") else line


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(map(_bare, lines)).encode()).hexdigest()[:16]


def _end(script: str) -> str:
    return f"<!-- end: written by {script} -->"


def _outside_code(lines: list[str]) -> list[bool]:
    """Per line, whether it is outside fenced code (a fence line itself is inside): CommonMark's
    fences, ``` or ~~~ three or more times (up to three spaces in), closed by a line of the
    same character at least as many times and nothing else; an unclosed fence runs to the end."""
    out, open_ = [], None
    for line in lines:
        m = _FENCE.match(_bare(line))
        if open_ is None:
            opens = m is not None and not (m["fence"][0] == "`" and "`" in m["rest"])
            open_ = m["fence"] if opens else None
            out.append(not opens)
        else:
            if (m and m["fence"][0] == open_[0] and len(m["fence"]) >= len(open_)
                    and not m["rest"].strip()):
                open_ = None
            out.append(False)
    return out


def _headings(lines: list[str]) -> list[tuple[int, int]]:
    """(index, level) of every Markdown heading outside fenced code."""
    outside = _outside_code(lines)
    return [(i, len(m.group(1))) for i, line in enumerate(lines)
            if outside[i] and (m := _HEADING.match(_bare(line)))]


def _level(heading: str) -> int:
    m = _HEADING.match(heading)
    if m is None or "\n" in heading:
        raise ValueError(f"{heading!r} is not one Markdown heading line")
    return len(m.group(1))


def block(script: str, body: str, note: str, parent: str) -> list[str]:
    """The lines of a marked block holding `body` under `parent` (`note`: what a reader may do
    with it).

    Raises:
        ValueError: `script` or `note` would break the markers (a newline, " (" in the name,
            brackets in the note), or `body` holds a heading of `parent`'s level or above (it
            would end the section before the block's end marker).
    """
    if "\n" in script or " (" in script or re.search(r"[()\n]", note):
        raise ValueError(f"writer {script!r} / note {note!r} would break the marker lines")
    inner = ["", *body.rstrip("\n").split("\n"), ""]
    top = [inner[i] for i, lv in _headings(inner) if lv <= _level(parent)]
    if top:
        raise ValueError(f"{script}'s block under {parent!r} holds the heading {top[0]!r}: "
                         "its headings must be below the section's level")
    return [f"<!-- begin: written by {script} ({note}); sha256:{_digest(inner)} -->", *inner,
            _end(script)]


def _section(lines: list[str], parent: str, path: Path) -> tuple[int, int] | None:
    """The heading's index and the first index after the section headed `parent` (None: no
    such heading).

    Raises:
        BlockError: `parent` heads two sections (which one a block belongs to is unclear).
    """
    heads = _headings(lines)
    at = [(i, level) for i, level in heads if _bare(lines[i]) == parent]
    if len(at) > 1:
        raise BlockError(f"{path}: {len(at)} sections are headed {parent!r} (lines "
                         f"{', '.join(str(i + 1) for i, _ in at)}); retitle all but one by "
                         "hand; nothing written")
    if not at:
        return None
    i, level = at[0]
    return i, next((j for j, lv in heads if j > i and lv <= level), len(lines))


def _within(lines: list[str], within: str | None, path: Path) -> int:
    """Where a new section goes: the end of the section whose heading starts with `within`
    (None, or no such heading: the end of the file).

    Raises:
        BlockError: more than one heading starts with `within`.
    """
    heads = _headings(lines)
    at = [(i, lv) for i, lv in heads if within is not None and _bare(lines[i]).startswith(within)]
    if len(at) > 1:
        raise BlockError(f"{path}: {len(at)} headings start with {within!r} (lines "
                         f"{', '.join(str(i + 1) for i, _ in at)}); retitle all but one by "
                         "hand; nothing written")
    if not at:
        return len(lines)
    i, level = at[0]
    return next((j for j, lv in heads if j > i and lv <= level), len(lines))


def _insert(lines: list[str], new: list[str], parent: str, path: Path,
            within: str | None = None) -> list[str]:
    """`new` at the end of the section headed `parent`, or under a new such heading where
    `_within` puts it, with a blank line on either side."""
    crlf = bool(lines) and lines[0].endswith("\r")
    new = [x + "\r" for x in new] if crlf else new
    found = _section(lines, parent, path)
    if found is None:
        new = [parent + ("\r" if crlf else ""), "\r" if crlf else "", *new]
        at = _within(lines, within, path)
    else:
        at = found[1]
    j = at
    while j > 0 and not _bare(lines[j - 1]):  # the blank lines before the next heading: one kept
        j -= 1
    blank = ["\r" if crlf else ""]
    return [*lines[:j], *(blank if j else []), *new, *(blank if at < len(lines) else []),
            *lines[at:]]


def _read(path: Path) -> list[str]:
    """The file's lines, split on "\n" only (a CRLF file's keep their "\r")."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return f.read().split("\n")


def _write(path: Path, lines: list[str]) -> None:
    """`lines` (as `_read` split them) back to `path`, ending in one line break of the file's
    kind (CRLF when its first line is)."""
    while lines and not _bare(lines[-1]):
        lines = lines[:-1]
    eol = "\r\n" if lines and lines[0].endswith("\r") else "\n"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join([*lines[:-1], *map(_bare, lines[-1:])]) + eol)


def replace_block(path: Path, parent: str, script: str, body: str,
                  within: str | None = None) -> None:
    """Write `body` as `script`'s one block of the section headed `parent` in the file at
    `path`: in place of the block it wrote there before, or (none yet) at the section's end;
    without that section, under a new `parent` heading at the end of the section whose
    heading starts with `within` (None, or no such heading: the end of the file).

    Raises:
        BlockError: as `check`. The file is left as it was.
    """
    lines = _read(path)
    new = block(script, body, "its next run replaces this block: write by hand outside it",
                parent)
    at = own_block(path, parent, script, lines)
    if at is None:
        _write(path, _insert(lines, new, parent, path, within))
    else:
        crlf = lines[at[0]].endswith("\r")
        _write(path, [*lines[:at[0]], *([x + "\r" for x in new] if crlf else new),
                      *lines[at[1] + 1:]])


def own_block(path: Path, parent: str, script: str,
              lines: list[str] | None = None) -> tuple[int, int] | None:
    """The begin and end line indices of `script`'s one block in the section headed `parent`
    of the file at `path` (None: it has none there), checked as `replace_block` checks it.

    Raises:
        BlockError: as `check`.
    """
    lines = _read(path) if lines is None else lines
    found = _section(lines, parent, path)
    if found is None:
        return None
    outside = _outside_code(lines)
    mine = range(*found)
    begins = [i for i in mine if outside[i] and (m := _BEGIN.match(_bare(lines[i])))
              and m["script"] == script]
    ends = [i for i in mine if outside[i] and _bare(lines[i]) == _end(script)]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise BlockError(f"{path}: the markers of {script}'s block under {parent!r} are broken "
                         f"({len(begins)} begin, {len(ends)} end lines); fix them by hand, "
                         "nothing written")
    b, e = begins[0], ends[0]
    if _digest(lines[b + 1:e]) != _BEGIN.match(_bare(lines[b]))["digest"]:
        raise BlockError(f"{path}: the block {script} wrote (lines {b + 1}-{e + 1}) was edited "
                         "since it was written; move the hand-written text out of its markers "
                         "(or delete the block) and run again; nothing written")
    return b, e


def check(path: Path, parent: str, script: str | None = None,
          within: str | None = None) -> None:
    """Refuse now what a write would refuse after the run: `parent` heading more than one
    section, and, given `script` (a writer that replaces its block), a block of its there with
    broken markers or edited by hand; without a `parent` section, `within` starting more
    than one heading. A script calls this before simulating.

    Raises:
        BlockError: `parent` heads more than one section; `script`'s markers under it are
            broken (a begin without its end, more than one block) or the text between them
            is not what it wrote (its digest differs: edited by hand since); no `parent`
            section and more than one heading starts with `within`.
    """
    lines = _read(path)
    if _section(lines, parent, path) is None:
        _within(lines, within, path)
    if script is not None:
        own_block(path, parent, script, lines)


def append_block(path: Path, parent: str, script: str, body: str) -> None:
    """Add `body` as a new block of `script`'s at the end of the section headed `parent`
    (after everything there, earlier runs and notes included); nothing is rewritten.

    Raises:
        BlockError: `parent` heads more than one section.
    """
    new = block(script, body, "one run, kept: later runs are added after it", parent)
    _write(path, _insert(_read(path), new, parent, path))


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(
        __file__, __doc__, "bench/policies.py", "bench/scheduling.py", "bench/allocator.py",
        "bench/sim_speed.py", "bench/serve_throughput.py", "bench/extend_step.py"))
