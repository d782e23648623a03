"""Triton's perf_analyzer against `ctxembed serve`, beside the project's own load generator.

    python -m benchmarks.perf_analyzer [--model-dir DIR] [--concurrency 1,4,16,32] [--seconds 5]

perf_analyzer (C++, no Python in the loop) speaks the open inference protocol; here it sends one
corpus sentence per request as ``TEXT``. At each concurrency, in one run, perf_analyzer and
``benchmarks.load`` (Python, grpc.aio, ctxembed.v1) load the same server in turn: p50, p99 and
texts/s side by side. On 2 vCPUs both load generators compete with the server for the cores;
perf_analyzer also runs pinned to one core (``taskset``) at the highest concurrency, to show
whether pinning helps. Where the tools cannot be installed or started, prints why and skips.
Writes benchmarks/results/perf-analyzer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_grpc import load
from benchmarks.machine import machine_facts
from benchmarks.saving import save_results
from ctxembed.client import Client
from testkit.corpus import load_corpus
from testkit.servers import ProcessServer
from testkit.triton import TritonTools, Unavailable, check_perf_analyzer, ensure

ROOT = Path(__file__).resolve().parents[1]


def perf_analyzer(
    tools: TritonTools,
    address: str,
    model: str,
    data: Path,
    concurrency: int,
    seconds: float,
    pin: str | None = None,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "out.csv"
        args = [str(tools.perf_analyzer), "-i", "grpc", "-u", address, "-m", model]
        args += ["--input-data", str(data), "--concurrency-range", str(concurrency)]
        args += ["--measurement-interval", str(int(seconds * 1000)), "-f", str(csv)]
        if pin is not None:
            args = ["taskset", "-c", pin, *args]
        proc = subprocess.run(
            args, capture_output=True, text=True, env=tools.perf_analyzer_env(), timeout=600
        )
        if proc.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed: {(proc.stdout + proc.stderr)[-1000:]}")
        header, row = csv.read_text().splitlines()[:2]
    figures = dict(zip(header.split(","), row.split(","), strict=True))
    return {
        "concurrency": concurrency,
        "p50_ms": int(figures["p50 latency"]) / 1000,
        "p99_ms": int(figures["p99 latency"]) / 1000,
        "texts_per_s": float(figures["Inferences/Second"]),
    }


def measure(model_dir: Path, levels: Sequence[int], seconds: float) -> dict[str, Any]:
    tools = ensure()
    check_perf_analyzer(tools)
    server = ProcessServer(model_dir)
    try:
        with Client(server.address) as client:
            model = client.info().name
        texts = load_corpus(256)
        data = Path(tempfile.mkstemp(suffix=".json")[1])
        rows = [{"TEXT": {"content": [t], "shape": [1]}} for t in texts]
        data.write_text(json.dumps({"data": rows}), encoding="utf-8")
        table = []
        for c in levels:
            pa = perf_analyzer(tools, server.address, model, data, c, seconds)
            own = load(server.address, c, seconds, 256)
            table.append({"concurrency": c, "perf_analyzer": pa, "python_load": own})
            print(
                f"  {c:3} clients: perf_analyzer p50 {pa['p50_ms']:.2f} ms, {pa['texts_per_s']:.0f}"
                f" texts/s; benchmarks.load p50 {own['p50_ms']:.2f} ms,"
                f" {own['texts_per_s']:.0f} texts/s",
                flush=True,
            )
        pinned = None
        if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
            top = max(levels)
            core = str((os.cpu_count() or 2) - 1)
            pinned = {
                "core": core,
                "pinned": perf_analyzer(tools, server.address, model, data, top, seconds, core),
                "unpinned": perf_analyzer(tools, server.address, model, data, top, seconds),
            }
        data.unlink()
    finally:
        server.proc.terminate()
        server.finish()
    return {"model": model, "levels": table, "pinning": pinned}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    head = f"# perf_analyzer beside the Python load generator ({result['started']})"
    if "skipped" in result:
        return f"{head}\n\nSkipped: {result['skipped']}\n"
    lines = [
        head,
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} CPUs; model {result['model']}"
        f" ({result['model_dir']}), `ctxembed serve` defaults. One corpus sentence per request;"
        f" {result['seconds']:.0f} s per measurement. perf_analyzer 2.45 calls"
        " `inference.GRPCInferenceService/ModelInfer`; `benchmarks.load` calls"
        " `ctxembed.v1.WordEmbedder/Embed` from Python (grpc.aio). Both share the 2 vCPUs with"
        " the server, so their figures include that competition.",
        "",
        "| clients | perf_analyzer p50 ms | p99 ms | texts/s | benchmarks.load p50 ms | p99 ms"
        " | texts/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["levels"]:
        pa, own = row["perf_analyzer"], row["python_load"]
        lines.append(
            f"| {row['concurrency']} | {pa['p50_ms']:.2f} | {pa['p99_ms']:.2f} |"
            f" {pa['texts_per_s']:.0f} | {own['p50_ms']:.2f} | {own['p99_ms']:.2f} |"
            f" {own['texts_per_s']:.0f} |"
        )
    pin = result.get("pinning")
    if pin:
        p, u = pin["pinned"], pin["unpinned"]
        lines += [
            "",
            f"perf_analyzer pinned to core {pin['core']} (`taskset`) at {p['concurrency']}"
            f" clients: {p['texts_per_s']:.0f} texts/s, p50 {p['p50_ms']:.2f} ms; unpinned"
            f" {u['texts_per_s']:.0f} texts/s, p50 {u['p50_ms']:.2f} ms"
            f" (**{p['texts_per_s'] / u['texts_per_s']:.2f}×** pinned).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "all-MiniLM-L6-v2")
    p.add_argument("--concurrency", default="1,4,16,32")
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_facts(),
        "model_dir": str(args.model_dir),
        "seconds": args.seconds,
    }
    print("perf_analyzer (Triton's load generator) against ctxembed serve ...", flush=True)
    try:
        result |= measure(
            args.model_dir, [int(c) for c in args.concurrency.split(",")], args.seconds
        )
    except Unavailable as exc:
        result["skipped"] = str(exc)
        print(f"perf_analyzer: skipped: {exc}", flush=True)
    save_results("perf-analyzer", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
