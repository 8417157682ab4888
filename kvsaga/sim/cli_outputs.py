"""`kvsaga sim`'s output files (--json, --plot): checked for real before any simulation runs,
and written with errors that name the flag."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
import shutil
import stat
from collections.abc import Callable

from kvsaga.sim.cluster import MAX_GPUS


def check_outputs(args) -> None:
    """ValueError naming the flag: --gpus over `MAX_GPUS`, --json or --plot names a file
    that cannot be written, --plot with --gpus/--router (the cluster run does not sweep),
    without matplotlib or with a suffix matplotlib cannot write."""
    if args.gpus > MAX_GPUS:
        raise ValueError(f"--gpus {args.gpus:,} is more than {MAX_GPUS:,} (every GPU costs "
                         "the routers per-GPU state, reached by a step or not; see --help)")
    if args.plot is not None and (args.gpus > 1 or args.router is not None):
        raise ValueError("--plot sweeps one GPU's KV capacity; it does not apply with --gpus "
                         "or --router")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'kvsaga[sim]'")
    if args.plot is not None:
        plot_format(args.plot)
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            _check_writable(flag, path)


def plot_format(path: str) -> str:
    """The image format `path`'s suffix names ("png" without one: the file is written under
    that very name, not with ".png" added as matplotlib would). ValueError naming --plot
    and the formats when matplotlib writes no such format."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    if not suffix:
        return "png"
    known = FigureCanvasBase.get_supported_filetypes()
    if suffix not in known:
        raise ValueError(f"--plot {path!r}: matplotlib writes no {suffix!r} file; name one "
                         f"of {', '.join(sorted(known))} (or no suffix for PNG)")
    if suffix == "pgf":  # matplotlib looks for the TeX program only when it saves
        import matplotlib

        tex = matplotlib.rcParams["pgf.texsystem"]
        if shutil.which(tex) is None:
            raise ValueError(f"--plot {path!r}: matplotlib writes PGF through {tex}, which "
                             "is not installed; install it or name another format")
    return suffix


def _check_writable(flag: str, path: str) -> None:
    """Check that `path` can be written as the run's end will (following a symlink, through
    every folder of the path as written): a path that looked fine by its folder (a dangling
    symlink, `nosuchdir/../x.json`) failed only after the whole run. An existing file is
    opened without truncating; a missing one is probed by a temporary file made in the
    folder the write will use, never under `path` itself: removing a probe made there
    deleted the file another run wrote there meanwhile."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; name a file")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: directory {folder!r} does not exist")
    try:
        if os.path.exists(path):
            if stat.S_ISREG(os.stat(path).st_mode):
                os.close(os.open(path, os.O_WRONLY))  # no O_TRUNC: left as it is
            elif not os.access(path, os.W_OK):  # a pipe or device: not opened (would block)
                raise PermissionError(13, "Permission denied")
            return
        target = os.path.realpath(path) if os.path.islink(path) else path
        # joined as written, not by `tempfile.mkstemp`, which normalises `nosuchdir/..` away
        probe = os.path.join(os.path.dirname(target), f".kvsaga-probe-{secrets.token_hex(8)}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{flag} {path!r}: {e.strerror or e}") from None


def save(flag: str, path: str, write: Callable[[str], None]) -> None:
    """`write(path)`, an error of the writer (a folder removed or a disk filled during the
    run, a matplotlib writer that fails) raised as a ValueError naming `flag`."""
    try:
        write(path)
    except OSError as e:
        raise ValueError(f"{flag} {path!r}: {e.strerror or e}") from None
    except Exception as e:  # any writer's failure (matplotlib's too) is the flag's error
        raise ValueError(f"{flag} {path!r}: {type(e).__name__}: {e}") from None


def write_json(path: str, out: dict) -> None:
    """Write `--json`'s file as strict JSON: a non-finite figure (a `belady_ratio` of NaN,
    where Belady recomputed nothing and the row did) as null. `json.dump`'s default wrote a
    bare `NaN`, which is no JSON: jq and `JSON.parse` refuse the whole file."""
    data = finite_or_null(out)  # before the file opens: a value it refuses leaves none half
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=False)


def finite_or_null(value):
    """`value` with every non-finite number, nested in dicts and lists, made None, and other
    numbers not int (numpy scalars) made float (what `json.dump(default=float)` did)."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if value is None or isinstance(value, (str, int)):  # bool is an int
        return value
    value = float(value)
    return value if math.isfinite(value) else None
