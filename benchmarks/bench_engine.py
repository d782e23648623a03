"""Engine figures (issue: embed ≤ 1.15× a bare session.run; words/s; RSS < 300 MB; latency
after an idle gap per spin-after-run setting; words/s with opt-in parallel runs).

    python -m benchmarks.bench_engine --model-dir DIR [--variant int8] [--texts N]

Bare session and embed are timed interleaved, call by call, so that the machine's drift hits
both alike; the ratio of their medians is the overhead of tokenize + pool + bookkeeping.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.engines import BANK, BATCH
from benchmarks.stats import percentiles, ratio
from ctxembed.runtime import TextInput, WordEmbedder
from ctxembed.runtime.cpu import physical_cores
from ctxembed.runtime.settings import EngineSettings
from testkit.corpus import load_corpus


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the address space, which exec replaces;
    ru_maxrss survives exec, so it would report a large parent's RSS (the benchmark runner
    after a torch export) as ours."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _bare_feed(
    emb: WordEmbedder, ids: np.ndarray, mask: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Feeds for the bare call: onnxruntime's public InferenceSession.run, built beforehand."""
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else mask}
    if "token_type_ids" in {i.name for i in emb.session.session.get_inputs()}:
        feed["token_type_ids"] = np.zeros_like(ids)
    return feed


def bank_overhead(emb: WordEmbedder, reps: int) -> dict[str, Any]:
    inputs = [TextInput(text=BANK, select_words=["bank"])]
    prepared = emb.prepare(inputs)
    tok = prepared.texts[0].tokens
    feed = _bare_feed(emb, tok.framed_ids[None, :].copy(), None)
    output = [emb.manifest.layer_outputs[emb.manifest.num_layers]]
    bare, full, prep, fwd, fin = [], [], [], [], []
    for i in range(reps + 20):
        t0 = time.perf_counter()
        emb.session.session.run(output, feed)
        t1 = time.perf_counter()
        emb.embed(inputs)
        t2 = time.perf_counter()
        p = emb.prepare(inputs)
        t3 = time.perf_counter()
        states = emb.forward(p.texts, p.layer_ids)
        t4 = time.perf_counter()
        emb.finish(p, states, p.layer_ids)
        t5 = time.perf_counter()
        if i >= 20:
            bare.append(t1 - t0)
            full.append(t2 - t1)
            prep.append(t3 - t2)
            fwd.append(t4 - t3)
            fin.append(t5 - t4)
    b, f = percentiles(bare), percentiles(full)
    return {
        "tokens": int(feed["input_ids"].shape[1]),
        "bare_session": b,
        "embed": f,
        "ratio_p50": ratio(f["p50_ms"], b["p50_ms"]),
        "stages_p50_ms": {
            "tokenize": percentiles(prep)["p50_ms"],
            "run": percentiles(fwd)["p50_ms"],
            "pool": percentiles(fin)["p50_ms"],
        },
    }


def corpus_throughput(emb: WordEmbedder, texts: Sequence[str]) -> dict[str, Any]:
    """Words/s of embed() in calls of 32, next to the bare session on the same token ids."""
    batches = [list(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
    emb.embed(batches[0])
    start = time.perf_counter()
    words = sum(len(r.words) for b in batches for r in emb.embed(b))
    embed_s = time.perf_counter() - start
    # The bare session gets each call's texts padded to that call's longest, truncated to the
    # window: what a hand-written loop around session.run does.
    output = [emb.manifest.layer_outputs[emb.manifest.num_layers]]
    feeds = []
    for b in batches:
        rows = [
            np.concatenate([emb._prefix, t.tokens.ids[: emb.capacity], emb._suffix])
            for t in emb.prepare(b).texts
        ]
        width = max(r.shape[0] for r in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : r.shape[0]], mask[i, : r.shape[0]] = r, 1
        feeds.append(_bare_feed(emb, ids, mask))
    start = time.perf_counter()
    for feed in feeds:
        emb.session.session.run(output, feed)
    bare_s = time.perf_counter() - start
    tokens = sum(t.tokens.num_tokens for b in batches for t in emb.prepare(b).texts)
    return {
        "texts": len(texts),
        "words": words,
        "tokens": tokens,
        "embed_words_per_s": words / embed_s,
        "bare_session_words_per_s": words / bare_s,
        "embed_texts_per_s": len(texts) / embed_s,
    }


def onnx_ceiling(
    emb: WordEmbedder, texts: Sequence[str], batch_sizes: Sequence[int] = (1, 8)
) -> dict[str, float]:
    """Texts/s of the ONNX runs alone with every core busy: one single-threaded session run
    from ``physical_cores()`` threads at once on prebuilt, length-sorted feeds (no Python
    around them). What no server on this machine can exceed, whatever it batches."""
    import threading

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(emb.session.path), options, providers=["CPUExecutionProvider"]
    )
    output = [emb.manifest.layer_outputs[emb.manifest.num_layers]]
    rows = [
        np.concatenate([emb._prefix, t.tokens.ids[: emb.capacity], emb._suffix])
        for t in emb.prepare(list(texts)).texts
    ]
    rows.sort(key=len)
    workers = physical_cores()
    result = {}
    for size in batch_sizes:
        feeds = []
        for i in range(0, len(rows), size):
            group = rows[i : i + size]
            ids = np.zeros((len(group), len(group[-1])), np.int64)
            mask = np.zeros_like(ids)
            for r, row in enumerate(group):
                ids[r, : len(row)], mask[r, : len(row)] = row, 1
            feeds.append(_bare_feed(emb, ids, mask))
        session.run(output, feeds[0])

        def work(share: list[dict[str, np.ndarray]]) -> None:
            for feed in share:
                session.run(output, feed)

        threads = [threading.Thread(target=work, args=(feeds[k::workers],)) for k in range(workers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result[str(size)] = len(rows) / (time.perf_counter() - start)
    return result


def after_idle(
    model_dir: str, variant: str, gaps_ms: Sequence[float] = (0, 1, 3, 10), reps: int = 150
) -> dict[str, dict[str, float]]:
    """embed p50 (bank) for a request arriving after an idle gap, per spin-after-run setting.

    Closed-loop benchmarks never leave the server idle; real traffic does. The settings take
    turns in blocks of calls, so that the machine's drift hits both alike.
    """
    inputs = [TextInput(text=BANK, select_words=["bank"])]
    embedders = {
        spin: WordEmbedder.load(model_dir, provider="cpu", variant=variant, spin_after_run_us=spin)
        for spin in (0, EngineSettings.spin_after_run_us)
    }
    times: dict[tuple[int, float], list[float]] = {}
    for gap in gaps_ms:
        for _ in range(5):
            for spin, emb in embedders.items():
                time.sleep(0.02)  # the other session's threads stop spinning meanwhile
                for k in range(reps // 5):
                    time.sleep(gap / 1000)
                    t0 = time.perf_counter()
                    emb.embed(inputs)
                    if k:  # the first call of a block follows the pause above, not the gap
                        times.setdefault((spin, gap), []).append(time.perf_counter() - t0)
    return {
        str(spin): {f"{gap:g}": percentiles(times[spin, gap])["p50_ms"] for gap in gaps_ms}
        for spin in embedders
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--variant", default="int8")
    p.add_argument("--texts", type=int, default=None, help="corpus lines (default: all)")
    p.add_argument("--reps", type=int, default=500)
    args = p.parse_args(argv)
    emb = WordEmbedder.load(args.model_dir, provider="cpu", variant=args.variant)
    result = {
        "variant": args.variant,
        "threads": emb.session.threads,
        "bank": bank_overhead(emb, args.reps),
        "corpus": corpus_throughput(emb, load_corpus(args.texts)),
        # The whole process, model and Python included; taken before after_idle() loads two
        # more sessions.
        "peak_rss_mb": peak_rss_mb(),
    }
    del emb
    # Opt-in parallel single-threaded runs (a second session): same calls, words/s.
    texts = load_corpus(args.texts)
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    parallel = WordEmbedder.load(
        args.model_dir, provider="cpu", variant=args.variant, parallel_runs=physical_cores()
    )
    parallel.embed(batches[0])
    start = time.perf_counter()
    words = sum(len(r.words) for b in batches for r in parallel.embed(b))
    result["corpus"]["embed_parallel_runs_words_per_s"] = words / (time.perf_counter() - start)
    result["corpus"]["parallel_runs"] = parallel.session.parallel_runs
    del parallel
    emb = WordEmbedder.load(args.model_dir, provider="cpu", variant=args.variant)
    result["onnx_ceiling_texts_per_s"] = onnx_ceiling(emb, texts)
    del emb
    result["after_idle_p50_ms"] = after_idle(args.model_dir, args.variant)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
