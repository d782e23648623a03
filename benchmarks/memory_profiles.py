"""Serving profiles side by side: peak memory and what it costs in throughput.

    python -m benchmarks.memory_profiles [--model-dir DIR] [--seconds 20] [--rounds 2]

Each profile is `ctxembed serve` with some flags (the default, and the low-memory profile
``--parallel-runs 1``: one session, one copy of the weights); in interleaved rounds each gets 32
closed-loop clients for ``--seconds`` (the machine drifts: ratios come from one run). Prints and
writes benchmarks/results/memory-profiles.{json,md}: the server's peak RSS (VmHWM, the whole
process) and texts/s, with the throughput ratio to the default.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_grpc import load
from benchmarks.machine import machine_facts
from benchmarks.saving import save_results
from testkit.servers import ProcessServer

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"default": (), "low-memory": ("--parallel-runs", "1")}
BUDGET_MIB = 200  # the edge target for the default model


def measure(model_dir: Path, seconds: float, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in PROFILES}
    for _ in range(rounds):
        for name, flags in PROFILES.items():
            server = ProcessServer(model_dir, *flags)
            try:
                texts_per_s = load(server.address, 32, seconds, None)["texts_per_s"]
                runs[name].append((texts_per_s, server.peak_rss_mb))
            finally:
                server.proc.terminate()
                server.finish()
            print(f"  {name:11} {texts_per_s:7.1f} texts/s, peak {runs[name][-1][1]:.0f} MiB")
    base = statistics.median(t for t, _ in runs["default"])
    return {
        name: {
            "flags": list(PROFILES[name]),
            "texts_per_s": statistics.median(t for t, _ in values),
            "throughput_vs_default": statistics.median(t for t, _ in values) / base,
            "peak_rss_mib": max(rss for _, rss in values),
        }
        for name, values in runs.items()
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Serving profiles ({result['started']}, {result['model_dir']})",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} CPUs. 32 closed-loop clients, one corpus"
        f" sentence per call, {result['seconds']:.0f} s per profile, medians of"
        f" {result['rounds']} interleaved rounds; peak RSS is the server process's VmHWM.",
        "",
        "| profile | flags | texts/s | × default | peak RSS MiB | within 200 MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in result["profiles"].items():
        lines.append(
            f"| {name} | {' '.join(p['flags']) or '—'} | {p['texts_per_s']:.1f} |"
            f" {p['throughput_vs_default']:.2f} | {p['peak_rss_mib']:.0f} |"
            f" {'yes' if p['peak_rss_mib'] < BUDGET_MIB else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "all-MiniLM-L6-v2")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    result = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_facts(),
        "model_dir": str(args.model_dir),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "profiles": measure(args.model_dir, args.seconds, args.rounds),
    }
    save_results("memory-profiles", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
