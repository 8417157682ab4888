"""What each judged pair of arms must show: every part of its issue's goal, not the mean-TCT
half alone (`report.comparisons` reads the per-round paired ratios, base over arm)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    """A pair's goal: the median over rounds of base/arm mean TCT at least `tct` (above it
    when `strict`), and, when asked, fewer prefill tokens (the median base/arm ratio above 1)
    and a p95 TCT no worse (the median base/arm p95 ratio at least 1)."""

    issue: str
    tct: float
    strict: bool = False
    fewer_prefill: bool = False
    p95_no_worse: bool = False

    def text(self) -> str:
        """The goal as a line says it after "mean TCT speed-up": ">= 1.64x and fewer prefill
        tokens"."""
        parts = [f"{'>' if self.strict else '>='} {self.tct:g}x"]
        if self.fewer_prefill:
            parts.append("fewer prefill tokens")
        if self.p95_no_worse:
            parts.append("p95 TCT no worse")
        return " and ".join(parts)

    def missed(self, tct: list[float], p95: list[float], prefill: list[float]) -> list[str]:
        """The parts of the goal the per-round ratios miss (empty: met). A part with no
        ratio (no round gave one) is missed."""
        def med(values: list[float]) -> float:
            return statistics.median(values) if values else math.nan

        out = []
        t = med(tct)
        if not (t > self.tct if self.strict else t >= self.tct):
            out.append(f"mean TCT {t:.2f}x")
        if self.fewer_prefill and not med(prefill) > 1.0:
            out.append(f"prefill tokens base/arm {med(prefill):.2f}x, not fewer")
        if self.p95_no_worse and not med(p95) >= 1.0:
            out.append(f"p95 TCT {med(p95):.2f}x, worse")
        return out


# issue 13: vLLM + the kvsaga connector against plain vLLM
CONNECTOR_VS_VLLM = Goal("issue 13", 1.64, fewer_prefill=True)
# issue 13: kvsaga-serve against vLLM + the connector: at least as fast
SERVE_VS_CONNECTOR = Goal("issue 13", 1.0)
# issue 10: a scheduler+policy arm against the first (fcfs+lru)
SCHEDULER_VS_BASE = Goal("issue 10", 2.0, p95_no_worse=True)
# issue 12: kvsaga's router against another: a lower mean task time (a speed-up above 1)
# and fewer prefill tokens
ROUTER_VS_OTHER = Goal("issue 12", 1.0, strict=True, fewer_prefill=True)
