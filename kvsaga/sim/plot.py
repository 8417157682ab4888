"""Plots of a capacity sweep: recomputed tokens against KV capacity, one line per policy (per
scheduler and policy when the rows hold several schedulers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_sweep(rows: Sequence[dict], path: str | Path, title: str, x_key: str = "kv_gib",
               x_label: str = "GPU KV capacity (GiB)", dpi: int = 80,
               fmt: str | None = None) -> None:
    """Write an image (a PNG by default) of `recomputed_tokens` against `x_key`, one line
    per `policy`.

    Args:
        rows: sweep rows, each with `policy`, `recomputed_tokens` and `x_key`.
        path: the file to write.
        title: the plot's title.
        x_key: the row field on the x axis.
        x_label: its label.
        dpi: resolution; the default keeps the file small (tens of KB).
        fmt: the image format (None: by `path`'s suffix, PNG without one, when matplotlib
            adds ".png" to the name).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        several = len({r.get("scheduler") for r in rows}) > 1

        def label(r: dict) -> str:
            return f"{r['scheduler']} + {r['policy']}" if several else r["policy"]

        for name in dict.fromkeys(label(r) for r in rows):
            pts = sorted((r[x_key], r["recomputed_tokens"]) for r in rows if label(r) == name)
            ax.plot([x for x, _ in pts], [y / 1e6 for _, y in pts], marker="o", label=name)
        ax.set_xlabel(x_label)
        ax.set_ylabel("recomputed prompt tokens (M)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=dpi, format=fmt)
    finally:
        plt.close(fig)
