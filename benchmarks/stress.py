"""`make stress`: the reliability suite. Every scenario is bounded in time, runs `ctxembed serve`
on loopback with the real model, and prints what it counted.

    python -m benchmarks.stress --model-dir DIR [--only 1,3] [--soak-seconds 600]
                                [--fuzz-examples 100000] [--soak-args "--parallel-runs 1"]
                                [--name stress-low-memory]

1. SIGTERM under 64 concurrent clients: accepted calls all complete, later ones get UNAVAILABLE,
   exit 0 within the grace.
2. 50 clients killed (SIGKILL) mid-call, 5 waves: SERVING after each, live calls accepted; RSS,
   threads and open files before and after.
3. Overload with a small queue: only OK and RESOURCE_EXHAUSTED; SERVING after.
4. 1 ms deadlines and calls cancelled right after sending: how many the server skipped or
   stopped; results unchanged after.
5. Structure-aware fuzzing (testkit/fuzz.py): never INTERNAL or UNKNOWN.
6. Soak: saturation, RSS sampled; growth after warm-up, and the peak against the edge budget
   (200 MiB for the default model; ``--soak-args`` runs it in another serving profile).
7. Flood: while heavy calls keep every batch slot busy, 64 clients send large requests with
   50 ms deadlines; peak RSS against the warmed-up idle figure (within 20%), codes only OK,
   DEADLINE_EXCEEDED, CANCELLED or RESOURCE_EXHAUSTED, SERVING after.

Writes benchmarks/results/stress.{json,md} (or --name .{json,md}).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.bench_grpc import start_server, stop
from benchmarks.machine import machine_facts
from benchmarks.saving import save_results
from ctxembed.client import Client
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc
from testkit.clients import run_clients
from testkit.corpus import load_corpus
from testkit.fuzz import fuzz

ROOT = Path(__file__).resolve().parents[1]
BANK = "I live near the bank of America"
TEXTS = load_corpus(64)


def _request(i: int, size: int = 4) -> pb.EmbedRequest:
    return pb.EmbedRequest(inputs=[pb.TextInput(text=TEXTS[(i + k) % 64]) for k in range(size)])


def process_facts(pid: int) -> dict[str, float]:
    """RSS (MB), threads and open file descriptors of a process, from /proc."""
    facts = {"rss_mb": float("nan"), "threads": float("nan")}
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                facts["rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("Threads:"):
                facts["threads"] = int(line.split()[1])
    facts["open_fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return facts


def _serving(address: str) -> bool:
    with Client(address, timeout=5) as client:
        return client.health() == "SERVING"


def sigterm_under_load(model_dir: Path) -> dict[str, Any]:
    server, _ = start_server(model_dir, ["--grace", "20"])

    async def run() -> Counter[str]:
        loop = asyncio.get_running_loop()
        loop.call_later(1.5, server.proc.send_signal, signal.SIGTERM)
        return await run_clients(server.address, 64, 15.0, _request, stop_on_unavailable=True)

    started = time.monotonic()
    codes = asyncio.run(run())
    code, _ = server.finish(timeout=30)
    accepted = sum(codes.values()) - codes["UNAVAILABLE"]
    return {
        "codes": dict(codes),
        "accepted": accepted,
        "completed": codes["OK"],
        "lost": accepted - codes["OK"],
        "exit_code": code,
        "seconds_to_exit_after_sigterm": time.monotonic() - started - 1.5,
        "passed": accepted - codes["OK"] == 0 and code == 0,
    }


KILLED_CLIENT = """
import sys, grpc
from ctxembed.v1 import embedder_pb2 as pb, embedder_pb2_grpc as pb_grpc
stub = pb_grpc.WordEmbedderStub(grpc.insecure_channel(sys.argv[1]))
request = pb.EmbedRequest(inputs=[pb.TextInput(text="long text " * 300)] * 8)
print("ready", flush=True)
while True:
    stub.Embed(request, timeout=60)
"""


def killedrun_clients(model_dir: Path, waves: int = 5, clients: int = 50) -> dict[str, Any]:
    server, _ = start_server(model_dir, [])
    rows: list[dict[str, Any]] = []
    try:
        for wave in range(waves):
            before = process_facts(server.proc.pid)
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", KILLED_CLIENT, server.address],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(clients)
            ]
            for proc in procs:  # every client is in a call before the kill
                assert proc.stdout is not None
                proc.stdout.readline()
            time.sleep(0.5)
            for proc in procs:
                proc.kill()
            for proc in procs:
                proc.wait()
            start = time.monotonic()
            with Client(server.address, timeout=30) as client:
                client.embed([BANK])  # a live client is served, not refused
            rows.append(
                {
                    "wave": wave + 1,
                    "serving": _serving(server.address),
                    "live_call_s": time.monotonic() - start,
                    "before": before,
                    "after": process_facts(server.proc.pid),
                }
            )
    finally:
        stats = stop(server)
    # From after the first wave: the first heavy calls grow the allocator's arenas once.
    first, last = rows[0]["after"], rows[-1]["after"]
    return {
        "waves": rows,
        "server_stats": stats,
        "rss_growth_pct": 100 * (last["rss_mb"] / first["rss_mb"] - 1),
        "thread_growth": last["threads"] - first["threads"],
        "fd_growth": last["open_fds"] - first["open_fds"],
        "passed": all(r["serving"] for r in rows) and last["open_fds"] - first["open_fds"] <= 4,
    }


def overload(model_dir: Path, seconds: float = 4.0) -> dict[str, Any]:
    server, _ = start_server(model_dir, ["--max-queue", "4"])
    try:
        codes = asyncio.run(run_clients(server.address, 64, seconds, _request))
        serving = _serving(server.address)
    finally:
        stats = stop(server)
    return {
        "codes": dict(codes),
        "serving_after": serving,
        "server_stats": stats,
        "passed": set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and serving,
    }


def deadlines_and_cancels(model_dir: Path, calls: int = 200) -> dict[str, Any]:
    server, _ = start_server(model_dir, [])
    try:
        with Client(server.address) as client:
            before = client.embed([BANK])[0].vectors

        async def run() -> Counter[str]:
            codes: Counter[str] = Counter()
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = pb_grpc.WordEmbedderStub(channel)
                for i in range(calls):
                    try:
                        await stub.Embed(_request(i, 16), timeout=0.001)
                        codes["OK"] += 1
                    except grpc.aio.AioRpcError as error:
                        codes[error.code().name] += 1
                    call = stub.Embed(_request(i, 16), timeout=30)
                    await asyncio.sleep(0)
                    call.cancel()
                    codes["cancelled_by_client"] += 1
            await asyncio.sleep(1.0)
            return codes

        codes = asyncio.run(run())
        with Client(server.address) as client:
            after = client.embed([BANK])[0].vectors
        serving = _serving(server.address)
    finally:
        stats = stop(server)
    skipped = stats.get("dropped_cancelled", 0) + stats.get("dropped_deadline", 0)
    return {
        "codes": dict(codes),
        "requests_sent": 2 * calls,
        "skipped_before_running": skipped,
        "stopped_between_runs": stats.get("abandoned_batches", 0),
        "computed": stats.get("requests_done", 0) + stats.get("requests_failed", 0),
        "results_unchanged": bool(np.array_equal(before, after)),
        "serving_after": serving,
        "passed": bool(np.array_equal(before, after)) and serving,
    }


def fuzzing(model_dir: Path, examples: int) -> dict[str, Any]:
    server, _ = start_server(model_dir, [])
    try:
        started = time.monotonic()
        codes = fuzz(server.address, examples)
        serving = _serving(server.address)
    finally:
        stats = stop(server)
    return {
        "examples": examples,
        "codes": dict(codes),
        "seconds": time.monotonic() - started,
        "serving_after": serving,
        "exit_code": stats.get("exit_code"),
        "passed": serving,  # fuzz() itself fails on a forbidden code
    }


RSS_BUDGET_MIB = 200.0  # the edge target for the default model (docs/service.md, "Memory")


def soak(
    model_dir: Path, seconds: float, server_args: Sequence[str] = (), warmup: float = 60.0
) -> dict[str, Any]:
    server, _ = start_server(model_dir, list(server_args))
    samples: list[tuple[float, float]] = []

    async def run() -> Counter[str]:
        async def sample() -> None:
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                samples.append((time.monotonic() - start, process_facts(server.proc.pid)["rss_mb"]))
                await asyncio.sleep(5)

        sampler = asyncio.ensure_future(sample())
        codes = await run_clients(server.address, 32, seconds, lambda i: _request(i, 1))
        await sampler
        return codes

    try:
        codes = asyncio.run(run())
    finally:
        stats = stop(server)
    settled = [rss for t, rss in samples if t >= min(warmup, seconds / 3)]
    head, tail = settled[: max(1, len(settled) // 4)], settled[-max(1, len(settled) // 4) :]
    growth = 100 * (float(np.mean(tail)) / float(np.mean(head)) - 1)
    peak_mib = max(rss for _, rss in samples)  # /proc reports KiB: rss_mb is MiB
    return {
        "seconds": seconds,
        "server_args": list(server_args),
        "codes": dict(codes),
        "peak_rss_mib": peak_mib,
        "within_rss_budget": peak_mib < RSS_BUDGET_MIB,
        "rss_mb_samples": samples,
        "rss_growth_after_warmup_pct": growth,
        "server_stats": stats,
        "passed": growth < 5.0 and set(codes) == {"OK"},
    }


FLOOD_TEXT = "The river bank flooded after the storm, and the bank closed its branch. " * 40


def flood(model_dir: Path, seconds: float = 15.0) -> dict[str, Any]:
    """Dead callers' work must not pile up: inputs of requests whose callers have gone are
    freed at once, and the queue is bounded by estimated tokens as well as by requests."""
    server, _ = start_server(model_dir, [])
    heavy = pb.EmbedRequest(inputs=[pb.TextInput(text="long text " * 300)] * 8)
    big = pb.EmbedRequest(inputs=[pb.TextInput(text=FLOOD_TEXT)] * 16)  # ~46 KB of text

    async def load(duration: float, flooding: bool, samples: list[float]) -> Counter[str]:
        codes: Counter[str] = Counter()
        end = time.monotonic() + duration
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(8)]

        async def caller(n: int, request: pb.EmbedRequest, timeout: float) -> None:
            stub = pb_grpc.WordEmbedderStub(channels[n % len(channels)])
            while time.monotonic() < end:
                try:
                    await stub.Embed(request, timeout=timeout)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1

        async def sample() -> None:
            while time.monotonic() < end:
                samples.append(process_facts(server.proc.pid)["rss_mb"])
                await asyncio.sleep(0.2)

        tasks = [caller(n, heavy, 60.0) for n in range(4)]  # keeps every batch slot busy
        if flooding:
            tasks += [caller(n, big, 0.05) for n in range(64)]
        try:
            await asyncio.gather(sample(), *tasks)
        finally:
            for channel in channels:
                await channel.close(None)
        return codes

    try:
        warm: list[float] = []
        asyncio.run(load(5.0, False, warm))  # the heavy work grows the allocator's arenas
        time.sleep(2.0)
        idle = process_facts(server.proc.pid)["rss_mb"]
        samples: list[float] = []
        codes = asyncio.run(load(seconds, True, samples))
        serving = _serving(server.address)
    finally:
        stats = stop(server)
    peak = max(samples)
    allowed = {"OK", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"}
    return {
        "seconds": seconds,
        "codes": dict(codes),
        "idle_rss_mb_after_warmup": idle,
        "peak_rss_mb": peak,
        "peak_over_idle_pct": 100 * (peak / idle - 1),
        "server_stats": stats,
        "serving_after": serving,
        "passed": peak <= 1.2 * idle and set(codes) <= allowed and serving,
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["scenarios"]
    lines = [f"# Reliability suite ({result['started']}, {result['model_dir']})", ""]
    if "machine" in result:
        m = result["machine"]
        flags = ", ".join(m.get("cpu_flags", []))
        lines += [f"Machine: {m.get('cpu', '?')}, {m.get('logical_cpus', '?')} CPUs ({flags})", ""]
    if "sigterm" in s:
        r = s["sigterm"]
        lines.append(
            f"1. SIGTERM under 64 clients: {r['accepted']} calls accepted, {r['completed']}"
            f" completed, **{r['lost']} lost**; later calls UNAVAILABLE"
            f" ({r['codes'].get('UNAVAILABLE', 0)}); exit code {r['exit_code']},"
            f" {r['seconds_to_exit_after_sigterm']:.2f} s after SIGTERM"
        )
    if "killed" in s:
        r = s["killed"]
        lines.append(
            f"2. 50 clients SIGKILLed mid-call, {len(r['waves'])} waves: SERVING after every wave"
            f" {all(w['serving'] for w in r['waves'])}; a live call after each took at most"
            f" {max(w['live_call_s'] for w in r['waves']):.2f} s; from after wave 1 to after the"
            f" last: RSS {r['rss_growth_pct']:+.1f}%, threads {r['thread_growth']:+.0f}, open"
            f" files {r['fd_growth']:+.0f}"
        )
    if "overload" in s:
        r = s["overload"]
        lines.append(
            f"3. Overload, --max-queue 4, 64 clients: codes {r['codes']}; SERVING after"
            f" {r['serving_after']}"
        )
    if "deadlines" in s:
        r = s["deadlines"]
        lines.append(
            f"4. {r['requests_sent']} calls with 1 ms deadlines or cancelled at once: the server"
            f" skipped {r['skipped_before_running']} before running them, stopped"
            f" {r['stopped_between_runs']} batches between runs, computed {r['computed']};"
            f" results unchanged after: {r['results_unchanged']}"
        )
    if "fuzz" in s:
        r = s["fuzz"]
        lines.append(
            f"5. Fuzzing, {r['examples']} structured requests + {r['examples'] // 4} raw"
            f" payloads in {r['seconds']:.0f} s: codes {r['codes']}; never INTERNAL or UNKNOWN;"
            f" SERVING after {r['serving_after']}"
        )
    if "soak" in s:
        r = s["soak"]
        lines.append(
            f"6. Soak, {r['seconds']:.0f} s of 32 saturating clients: RSS growth after warm-up"
            f" **{r['rss_growth_after_warmup_pct']:+.1f}%**; codes {r['codes']}; peak RSS"
            f" {r.get('peak_rss_mib', float('nan')):.0f} MiB (edge budget {RSS_BUDGET_MIB:.0f}:"
            f" {'within' if r.get('within_rss_budget') else 'over'});"
            f" server args {' '.join(r.get('server_args', [])) or 'default'}"
        )
    if "flood" in s:
        r = s["flood"]
        lines.append(
            f"7. Flood, {r['seconds']:.0f} s: 64 clients of 16-text requests with 50 ms deadlines"
            f" while heavy calls hold every batch slot: peak RSS {r['peak_rss_mb']:.0f} MB,"
            f" **{r['peak_over_idle_pct']:+.1f}%** over the warmed-up idle"
            f" {r['idle_rss_mb_after_warmup']:.0f} MB (limit +20%); codes {r['codes']}; SERVING"
            f" after {r['serving_after']}"
        )
    lines += ["", "All passed: " + str(all(v["passed"] for v in s.values()))]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "all-MiniLM-L6-v2")
    p.add_argument("--only", default="1,2,3,4,5,6,7")
    p.add_argument("--soak-seconds", type=float, default=600.0)
    p.add_argument("--fuzz-examples", type=int, default=100_000)
    p.add_argument("--soak-args", default="", help="extra `ctxembed serve` flags for the soak")
    p.add_argument("--name", default="", help="results file stem (default: stress)")
    args = p.parse_args(argv)
    only = {int(x) for x in args.only.split(",")}
    scenarios: dict[int, tuple[str, Callable[[], dict[str, Any]]]] = {
        1: ("sigterm", lambda: sigterm_under_load(args.model_dir)),
        2: ("killed", lambda: killedrun_clients(args.model_dir)),
        3: ("overload", lambda: overload(args.model_dir)),
        4: ("deadlines", lambda: deadlines_and_cancels(args.model_dir)),
        5: ("fuzz", lambda: fuzzing(args.model_dir, args.fuzz_examples)),
        6: ("soak", lambda: soak(args.model_dir, args.soak_seconds, shlex.split(args.soak_args))),
        7: ("flood", lambda: flood(args.model_dir)),
    }
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_facts(),
        "model_dir": str(args.model_dir),
        "scenarios": {},
    }
    for number in sorted(only):
        name, run = scenarios[number]
        print(f"[{number}] {name} ...", flush=True)
        result["scenarios"][name] = run()
        print(f"    passed: {result['scenarios'][name]['passed']}", flush=True)
    stem = args.name or ("stress" if only == set(scenarios) else "stress-partial")
    save_results(stem, result, markdown(result), default=str)
    return 0 if all(v["passed"] for v in result["scenarios"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
