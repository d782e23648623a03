"""What ctxembed's fused kernels give: the int8 graph run with and without them.

    python -m benchmarks.fused_kernels --model-dir DIR [--rounds 5] [--reps 200] [--texts 128]

An exported graph carries its layer norms and, for the ``outlier`` int8 scheme (docs/int8.md),
each int8 product's per-row chains as ONNX functions of the ``ctxembed`` domain;
``ctxembed.kernels`` runs each as one kernel, where the install built it, and onnxruntime
otherwise inlines their bodies (its standard operators). The
same folder loads twice through ``WordEmbedder``, ``fused_kernels`` on and off, all else equal;
interleaved rounds time the bank sentence's p50 and corpus texts/s in calls of 32, and the
vectors of a corpus call are compared: the int8 chains' kernels give the same numbers bit for
bit, the layer norms' to float rounding (its worst word's cosine and largest difference).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.engines import BANK, BATCH, throughput, time_calls
from benchmarks.stats import percentiles
from ctxembed.kernels import library
from ctxembed.runtime import TextInput, WordEmbedder
from ctxembed.runtime.manifest import load_manifest
from testkit.corpus import load_corpus


def measure(model_dir: Path, rounds: int, reps: int, texts: int) -> dict[str, Any]:
    """Both ways, in the same rounds; nothing timed for an int8 graph without the functions."""
    int8 = next((v for v in load_manifest(model_dir).variants if v.precision == "int8"), None)
    facts = int8.optimization.get("fused_chains") if int8 else None
    if not facts:
        return {"products": 0, "layer_norms": 0}
    found = {k: facts.get(k, 0) for k in ("products", "layer_norms", "nodes")}
    if library() is None:
        return found | {"error": "the kernels are not built (no C compiler at install)"}
    engines = {
        "kernels": WordEmbedder.load(model_dir, provider="cpu"),
        "standard": WordEmbedder.load(model_dir, provider="cpu", fused_kernels=False),
    }
    bank = [TextInput(text=BANK, select_words=["bank"])]
    corpus = load_corpus(texts)
    kernels, standard = (
        np.concatenate([r.vectors for r in e.embed(corpus[:BATCH])]) for e in engines.values()
    )
    cosine = (kernels * standard).sum(-1) / (
        np.linalg.norm(kernels, axis=-1) * np.linalg.norm(standard, axis=-1)
    )
    p50: dict[str, list[float]] = {k: [] for k in engines}
    rate: dict[str, list[float]] = {k: [] for k in engines}
    for emb in engines.values():  # both warm, buffers grown, before the first round
        time_calls(functools.partial(emb.embed, bank), 0, warmup=30)
    for _ in range(rounds):
        for key, emb in engines.items():
            p50[key].append(
                percentiles(time_calls(functools.partial(emb.embed, bank), reps))["p50_ms"]
            )
            rate[key].append(throughput(emb.embed, corpus, BATCH, repeats=1))
    bank_ms = {k: statistics.median(v) for k, v in p50.items()}
    texts_per_s = {k: statistics.median(v) for k, v in rate.items()}
    return found | {
        "rounds": rounds,
        "identical": bool(np.array_equal(kernels, standard)),
        "worst_word_cosine": float(cosine.min()),
        "max_abs_diff": float(np.abs(kernels - standard).max()),
        "bank_p50_ms": bank_ms,
        "corpus_texts_per_s": texts_per_s,
        "bank_saving_ms": bank_ms["standard"] - bank_ms["kernels"],
        "corpus_speedup": texts_per_s["kernels"] / texts_per_s["standard"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--texts", type=int, default=128, help="corpus lines per round")
    args = p.parse_args(argv)
    json.dump(measure(args.model_dir, args.rounds, args.reps, args.texts), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
