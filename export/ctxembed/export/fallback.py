"""fp32 fallback by measured harm: the few MatMuls whose int8 breaks a scheme's worst words.

The ``outlier`` scheme held all-mpnet-base-v2's mean (0.998) but left 2 words of 3,000 selection
texts under 0.98 (a ``.`` at 0.9715). The harm was not spread evenly: with one layer's six
MatMuls in fp32 at a time, layer 4 lifted the 40 worst texts' worst word to 0.9833 (other layers
0.968-0.979), and within layer 4 its FFN down-projection alone to 0.9847 (q, k, v, o or the
up-projection alone: 0.973-0.978). The down-projections read the GELU's output, which carries
the largest outliers (int8_schemes.py), so they are the candidates here.

The search: on the selection texts where the scheme is worst, each candidate in fp32 alone is
built and scored by its shortfall, the sum over those texts of how far each one's worst word
stays below the threshold (the worst word alone cannot tell apart two nodes that leave the same
text worst but fix different others); candidates are then added best first until those texts
pass, at most ``MAX_NODES``. The whole selection set then decides, as for any scheme, and
the manifest records the nodes and every probe's figure. The search scores the nodes in fp32;
the export then tries them block-wise first (``int8_schemes.FallbackForm``: MatMulNBits with
per-block activation scales, most of fp32's accuracy at int8's memory traffic) and keeps fp32
only where that fails: ``blockwise_fallback`` or ``fp32_fallback`` in the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctxembed.export.validate import Reference, worst_words

WORST_TEXTS = 32  # the selection texts the candidates are scored on
# Each fp32 node runs ~3x slower than on int8 kernels: one of MPNet's down-projections cost
# ~10% at the bank sentence (2.56x -> 2.27x fp32), nothing measurable on corpus batches.
MAX_NODES = 3

Build = Callable[[Sequence[str]], Any]  # the scheme with these nodes in fp32 -> a session


@dataclass(frozen=True)
class Fallback:
    nodes: list[str]  # chosen, in the order added; empty when no choice lifted the worst texts
    probes: dict[str, tuple[float, float]]  # candidate -> (shortfall, worst word), it alone
    worst_before: float  # the worst texts' worst word with no fallback
    worst_after: float  # ... with ``nodes`` in fp32

    def facts(self) -> dict[str, Any]:
        """What the manifest records beside the nodes (``fp32_fallback``)."""
        return {
            "worst_texts": WORST_TEXTS,
            "worst_word_before": round(self.worst_before, 6),
            "worst_word_after": round(self.worst_after, 6),
            "probes": {
                name: {"shortfall": round(short, 6), "worst_word": round(worst, 6)}
                for name, (short, worst) in self.probes.items()
            },
        }


def choose_fallback(
    build: Build,
    candidates: Sequence[str],
    refs: Sequence[Reference],
    word_min: float,
    log: Callable[[str], None] = lambda _: None,
) -> Fallback:
    """``candidates`` to keep in fp32, the most helpful first (greedy, by measured harm), until
    the worst ``WORST_TEXTS`` of ``refs`` reach ``word_min``; ``nodes`` is empty when the best
    ``MAX_NODES`` do not get there."""
    per_text = worst_words(build([]), refs)
    worst = [refs[i] for i in np.argsort(per_text, kind="stable")[:WORST_TEXTS]]
    before = float(per_text.min())

    def score(nodes: Sequence[str]) -> tuple[float, float]:
        texts = worst_words(build(nodes), worst)
        return float(np.maximum(word_min - texts, 0.0).sum()), float(texts.min())

    probes = {}
    for node in candidates:
        probes[node] = score([node])
        log(f"{node} in fp32: shortfall {probes[node][0]:.4f}, worst word {probes[node][1]:.4f}")
    ranked = sorted(candidates, key=lambda n: (probes[n][0], -probes[n][1]))
    chosen: list[str] = []
    after = before
    for node in ranked[:MAX_NODES]:
        chosen.append(node)
        after = probes[node][1] if len(chosen) == 1 else score(chosen)[1]
        if after >= word_min:
            return Fallback(chosen, probes, before, after)
    return Fallback([], probes, before, after)
