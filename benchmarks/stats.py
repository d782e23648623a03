"""The figures' arithmetic, kept apart from timing so that tests can check it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds (nearest-rank percentiles)."""
    if not samples_s:
        raise ValueError("no samples")
    ordered = sorted(samples_s)

    def rank(p: float) -> float:
        k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
        return ordered[k] * 1000

    return {
        "p50_ms": rank(50),
        "p90_ms": rank(90),
        "p99_ms": rank(99),
        "mean_ms": statistics.fmean(ordered) * 1000,
        "n": float(len(ordered)),
    }


def median_spread(values: Sequence[float]) -> dict[str, float]:
    """Median of repeated measurements and their spread (min, max, relative half-range)."""
    if not values:
        raise ValueError("no values")
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "median": med,
        "min": lo,
        "max": hi,
        "spread_pct": 0.0 if med == 0 else 100 * (hi - lo) / 2 / med,
    }


def ratio(numerator: float, denominator: float) -> float:
    return float("nan") if denominator == 0 else numerator / denominator


def encoder_flops_per_token(hidden: int, layers: int, intermediate: int, seq_len: int) -> float:
    """Forward FLOPs per token of a BERT encoder (2 FLOPs per multiply-add).

    Per layer: Q, K, V and output projections 4·h² MACs, feed-forward 2·h·i MACs, attention
    scores and weighted values 2·s·h MACs. Embedding lookups, layer norms and softmax are
    negligible next to these.
    """
    per_layer_macs = 4 * hidden * hidden + 2 * hidden * intermediate + 2 * seq_len * hidden
    return 2.0 * layers * per_layer_macs


def roofline_fraction(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Fraction of the measured matrix-multiply rate that a throughput figure reaches."""
    return ratio(tokens_per_s * flops_per_token, peak_flops)
