"""Scale-out figures: replicas behind one client, and bulk words/s three ways.

    python -m benchmarks.bench_scale --model-dir DIR [--seconds 5] [--rounds 2] [--texts 2000]

1. `serve` vs `serve --workers 2` (32 concurrent calls over 8 connections: the kernel spreads
   connections over workers, not calls).
2. One client channel (32 concurrent calls, the corpus) against 1 server, then against 3
   servers behind gRPC's round_robin (``ipv4:127.0.0.1:a,127.0.0.1:b,127.0.0.1:c``), in
   interleaved rounds; each server's share of the calls from its own counters. On one machine
   the replicas share its cores, so each of the 3 gets ``--threads 1 --parallel-runs 1``, and
   the 1-server setting is measured both with its defaults and with that same one core.
3. Bulk: the first ``--texts`` corpus lines in process (``embed`` in calls of 32), through
   ``embed_file`` (the same engine, plus Parquet parts and assembly), and through Ray Data
   (``WordEmbeddingActor``, two actors of one core on ``ray.init(num_cpus=2)``; the time
   includes starting the actors, not Ray itself), in interleaved rounds.

Prints JSON and writes ``--out`` (JSON) and the Markdown beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import bench_grpc
from testkit.corpus import load_corpus
from testkit.servers import ProcessServer

ONE_CORE = ["--threads", "1", "--parallel-runs", "1"]


def _start(model_dir: Path, flags: Sequence[str]) -> ProcessServer:
    server, _ = bench_grpc.start_server(model_dir, flags)
    return server


def servers(
    model_dir: Path,
    settings: dict[str, list[list[str]]],
    seconds: float,
    rounds: int,
    channels: int,
) -> dict[str, Any]:
    """32 calls in flight over ``channels`` connections against each setting's servers (several:
    one client, round_robin), in interleaved rounds."""
    servers = {name: [_start(model_dir, f) for f in flags] for name, flags in settings.items()}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    try:
        for _ in range(rounds):
            for name, group in servers.items():
                hosts = ",".join(s.address for s in group)
                target = hosts if len(group) == 1 else f"ipv4:{hosts}"
                runs[name].append(bench_grpc.load(target, 32, seconds, 1024, channels))
    finally:
        shares = {name: [bench_grpc.stop(s) for s in group] for name, group in servers.items()}
    result: dict[str, Any] = {}
    for name, loads in runs.items():
        done = [
            int(process.get("requests_done", 0))
            for stats in shares[name]
            for process in stats["per_process"]
        ]
        result[name] = {
            "texts_per_s": statistics.median(r["texts_per_s"] for r in loads),
            "rounds_texts_per_s": [r["texts_per_s"] for r in loads],
            "p50_ms": statistics.median(r["p50_ms"] for r in loads),
            "errors": sum(int(r["errors"]) for r in loads),
            "calls_per_server": done,
        }
    return result


def replicas(model_dir: Path, seconds: float, rounds: int) -> dict[str, Any]:
    settings: dict[str, list[list[str]]] = {
        "1 server (defaults)": [[]],
        "1 server (one core)": [ONE_CORE],
        "3 replicas (one core each)": [ONE_CORE] * 3,
    }
    return servers(model_dir, settings, seconds, rounds, channels=1)


def workers(model_dir: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """`serve` vs `serve --workers 2`, both with 8 client connections: the kernel spreads
    connections, not calls, so one connection would reach one worker."""
    settings: dict[str, list[list[str]]] = {
        "--workers 1": [[]],
        "--workers 2": [["--workers", "2"]],
    }
    return servers(model_dir, settings, seconds, rounds, channels=8)


def _in_process(embedder: Any, texts: list[str]) -> dict[str, float]:
    start, words = time.perf_counter(), 0
    for i in range(0, len(texts), 32):
        words += sum(len(r.words) for r in embedder.embed(texts[i : i + 32]))
    return {"seconds": time.perf_counter() - start, "words": words}


def _embed_file(embedder: Any, texts: list[str]) -> dict[str, float]:
    from ctxembed.bulk import embed_file

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "corpus.txt"
        source.write_text("\n".join(texts) + "\n", encoding="utf-8")
        summary = embed_file(
            source, Path(tmp) / "out.parquet", embedder.embed, embedder.dimension, progress=None
        )
    return {"seconds": summary.seconds, "words": summary.words}


def _ray(model_dir: Path, texts: list[str]) -> dict[str, float]:
    import pyarrow as pa
    import ray

    from ctxembed.ray_data import WordEmbeddingActor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
        start = time.perf_counter()
        out = ds.map_batches(
            WordEmbeddingActor,
            fn_constructor_kwargs={"model_dir": str(model_dir)},
            concurrency=2,
            num_cpus=1,
            batch_size=256,
            batch_format="pyarrow",
        ).materialize()
        seconds = time.perf_counter() - start
        words = pa.concat_tables(ray.get(out.to_arrow_refs())).num_rows
    finally:
        ray.shutdown()
    return {"seconds": seconds, "words": words}


def bulk(model_dir: Path, count: int, rounds: int) -> dict[str, Any]:
    from ctxembed.runtime import WordEmbedder

    texts = [t for t in load_corpus(count) if t.strip()]
    embedder = WordEmbedder.load(model_dir, "cpu", parallel_runs=None)  # as embed-file loads it
    ways: dict[str, Callable[[], dict[str, float]]] = {
        "in process (embed, calls of 32)": lambda: _in_process(embedder, texts),
        "embed_file (same engine, Parquet)": lambda: _embed_file(embedder, texts),
        "Ray Data (2 actors x 1 core)": lambda: _ray(model_dir, texts),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            runs[name].append(way())
    embedder.close()
    return {
        name: {
            "texts": len(texts),
            "words": r[0]["words"],
            "words_per_s": statistics.median(x["words"] / x["seconds"] for x in r),
            "rounds_words_per_s": [x["words"] / x["seconds"] for x in r],
        }
        for name, r in runs.items()
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Scale-out (benchmarks/bench_scale.py)",
        "",
        f"Machine: {result['machine']}. Medians of {result['rounds']} interleaved rounds.",
        "",
    ]
    titles = {
        "workers": "Workers of one server (32 concurrent calls over 8 connections)",
        "replicas": "Replicas behind one client (32 concurrent calls, one channel, round_robin)",
    }
    for part, title in titles.items():
        if part not in result:
            continue
        lines += [
            f"## {title}",
            "",
            "| setting | texts/s | rounds | p50 ms | errors | calls per process |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in result[part].items():
            rounds = ", ".join(f"{x:.0f}" for x in r["rounds_texts_per_s"])
            lines.append(
                f"| {name} | {r['texts_per_s']:.0f} | {rounds} | {r['p50_ms']:.1f} |"
                f" {r['errors']} | {r['calls_per_server']} |"
            )
        lines.append("")
    lines += [
        f"## Bulk words/s ({result['texts']} corpus texts)",
        "",
        "| way | words/s | rounds | words |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in result["bulk"].items():
        rounds = ", ".join(f"{x:.0f}" for x in r["rounds_words_per_s"])
        lines.append(f"| {name} | {r['words_per_s']:.0f} | {rounds} | {r['words']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.machine import machine_facts

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = p.parse_args(argv)
    facts = machine_facts()
    result: dict[str, Any] = {
        "machine": f"{facts['cpu']}, {facts['logical_cpus']} vCPUs",
        "rounds": args.rounds,
        "texts": args.texts,
        "workers": workers(args.model_dir, args.seconds, args.rounds),
        "replicas": replicas(args.model_dir, args.seconds, args.rounds),
        "bulk": bulk(args.model_dir, args.texts, args.rounds),
    }
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
