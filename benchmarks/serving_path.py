"""The serving path alone: what a gRPC call costs beyond the engine, with and without inline runs.

    python -m benchmarks.serving_path [--model-dir DIR] [--rounds 6] [--reps 150] [--seconds 3]

In interleaved rounds (the machine drifts): the bank sentence in process (``WordEmbedder.embed``),
over gRPC to ``ctxembed serve`` (default: lone requests run inline) and to one with
``--inline-max-tokens 0``, an empty call to a bare grpc.aio echo server, a call that keeps that
echo's handler busy for the round's in-process p50 (what a round trip around that much server
work costs with no ctxembed code), and the same request to ``benchmarks.floor_server`` (decode,
``embed`` inline, encode; nothing else): the least a Python grpc.aio server can add here. Where
grpc++ can be built (``benchmarks.native``): the same echo in C++, empty and busy (what a native
front would pay for the round trip alone), and the floor's Python work behind a C++ transport. The
speed issue's target 4: gRPC p50 − in-process p50 ≤ the echo's p50 + 0.25 ms. Then closed-loop
clients (1, 2, 4, 16, 32; one corpus sentence per call) against both servers, so that inline runs
are seen to cost nothing under concurrency. Writes benchmarks/results/serving-path.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from benchmarks import echo_server, native
from benchmarks.bench_grpc import _echo_server, load, port_server
from benchmarks.engines import BANK, time_calls
from benchmarks.machine import machine_facts
from benchmarks.saving import save_results
from benchmarks.stats import percentiles
from ctxembed.client import Client
from ctxembed.runtime import TextInput, WordEmbedder
from testkit.servers import ProcessServer

ROOT = Path(__file__).resolve().parents[1]
SERVERS = {"inline": (), "no-inline": ("--inline-max-tokens", "0")}
LEVELS = (1, 2, 4, 16, 32)
TARGET_MS = 0.25  # beyond the echo's round trip
FLOOR = "python floor"  # benchmarks.floor_server
BUSY = "busy echo"  # the echo's handler computing for the in-process p50
NATIVE, NATIVE_BUSY = "native echo", "native busy echo"  # the same in C++ (grpc++)
NATIVE_FRONT = "native front"  # the floor's Python work behind a C++ transport
ECHOES = ("in_process", "echo", NATIVE)  # the rest are measured beyond the echo


def measure(model_dir: Path, rounds: int, reps: int, seconds: float) -> dict[str, Any]:
    emb = WordEmbedder.load(model_dir, provider="cpu")
    bank = [TextInput(text=BANK, select_words=["bank"])]
    servers = {name: ProcessServer(model_dir, *flags) for name, flags in SERVERS.items()}
    samples: dict[str, list[float]] = {"in_process": []}  # the rest once their servers are up
    throughput: dict[str, dict[int, list[float]]] = {n: {c: [] for c in LEVELS} for n in servers}
    built = {name: native.build(name) for name in ("echo", "front")}
    for name, why in built.items():
        if isinstance(why, str):
            print(f"  no native {name}: {why}", flush=True)
    try:
        clients = {name: Client(s.address) for name, s in servers.items()}
        with contextlib.ExitStack() as stack:
            port = stack.enter_context(_echo_server())
            channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
            echoes = {"echo": channel.unary_unary(echo_server.METHOD, None, None)}
            busy_echoes = {BUSY: echoes["echo"]}
            if isinstance(binary := built["echo"], Path):
                native_port = stack.enter_context(native.serve(binary))
                to = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{native_port}"))
                echoes[NATIVE] = busy_echoes[NATIVE_BUSY] = to.unary_unary(
                    echo_server.METHOD, None, None
                )
            if isinstance(binary := built["front"], Path):
                front_port = stack.enter_context(native.serve(binary, str(model_dir)))
                clients[NATIVE_FRONT] = Client(f"127.0.0.1:{front_port}")
            floor_port = stack.enter_context(port_server("benchmarks.floor_server", str(model_dir)))
            clients[FLOOR] = Client(f"127.0.0.1:{floor_port}")
            samples |= {name: [] for name in [*echoes, *busy_echoes, *clients]}
            for _ in range(rounds):
                engine = time_calls(lambda: emb.embed(bank), reps, warmup=20)
                samples["in_process"] += engine
                work = echo_server.busy_request(statistics.median(engine))
                for name, echo in busy_echoes.items():
                    samples[name] += time_calls(functools.partial(echo, work), reps, warmup=20)
                for name, client in clients.items():
                    call = lambda c=client: c.embed(bank)  # noqa: E731
                    samples[name] += time_calls(call, reps, warmup=20)
                for name, echo in echoes.items():
                    samples[name] += time_calls(functools.partial(echo, b""), reps, warmup=20)
        for client in clients.values():
            client.close()
        for _ in range(2):
            for level in LEVELS:
                for name, server in servers.items():
                    texts_per_s = load(server.address, level, seconds, None)["texts_per_s"]
                    throughput[name][level].append(texts_per_s)
    finally:
        for server in servers.values():
            server.proc.terminate()
            server.finish()
    p50 = {name: percentiles(values)["p50_ms"] for name, values in samples.items()}
    beyond = {n: p50[n] - p50["in_process"] - p50["echo"] for n in p50 if n not in ECHOES}
    return {
        "p50_ms": p50,
        "beyond_echo_ms": beyond,
        "native": {name: "built" if isinstance(why, Path) else why for name, why in built.items()},
        "texts_per_s": {
            name: {str(c): statistics.median(v) for c, v in levels.items()}
            for name, levels in throughput.items()
        },
    }


def markdown(result: dict[str, Any]) -> str:
    m, r = result["machine"], result["result"]
    p50, beyond, tput = r["p50_ms"], r["beyond_echo_ms"], r["texts_per_s"]
    lines = [
        f"# The serving path ({result['started']}, {result['model_dir']})",
        "",
        f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['logical_cpus']} CPUs,"
        f" grpcio {m['versions'].get('grpcio')}. Bank sentence, p50 of"
        f" {result['rounds']} interleaved rounds of {result['reps']} calls each.",
        "",
        f"| | p50 ms | gRPC − in-process − echo, ms (target ≤ {TARGET_MS}) |",
        "|---|---|---|",
        f"| in process (`WordEmbedder.embed`) | {p50['in_process']:.3f} | |",
        f"| bare grpc.aio echo, empty call | {p50['echo']:.3f} | |",
    ]
    for name in SERVERS:
        verdict = "met" if beyond[name] <= TARGET_MS else "missed"
        lines.append(f"| gRPC, {name} | {p50[name]:.3f} | **{beyond[name]:.3f}** ({verdict}) |")
    floor, busy = beyond[FLOOR], beyond.get(BUSY)
    lines += [
        f"| gRPC, the Python floor (`benchmarks.floor_server`) | {p50[FLOOR]:.3f} | {floor:.3f} |",
    ]
    if busy is not None:  # results saved before the busy echo lack it
        lines.append(
            f"| the echo, its handler busy for the in-process p50 | {p50[BUSY]:.3f} | {busy:.3f} |"
        )
    native_busy, front = beyond.get(NATIVE_BUSY), beyond.get(NATIVE_FRONT)
    if native_busy is not None:
        lines += [
            f"| C++ grpc++ echo (`benchmarks/native/echo.cc`), empty call | {p50[NATIVE]:.3f} | |",
            f"| the C++ echo, busy for the in-process p50 | {p50[NATIVE_BUSY]:.3f} |"
            f" {native_busy:.3f} |",
        ]
    if front is not None:
        lines.append(
            f"| gRPC, the floor's Python work behind a C++ transport (`benchmarks/native/front.cc`)"
            f" | {p50[NATIVE_FRONT]:.3f} | {front:.3f} |"
        )
    lines += [
        "",
        f"The floor: a grpc.aio handler that only decodes the request, runs `embed` inline and"
        f" encodes the response adds {floor:.3f} ms beyond the echo; ctxembed serve (inline) adds"
        f" {beyond['inline'] - floor:.3f} ms on top of it (its batcher, limits, deadline, metrics"
        f" and error mapping).",
    ]
    if busy is not None:
        lines.append(
            f"Of the floor, {busy:.3f} ms is paid by the bare echo when its handler computes as"
            f" long as `embed` (a busy loop, no ctxembed code, nothing to encode): this machine's"
            f" price of a round trip around that much server work. The other"
            f" {floor - busy:.3f} ms is the floor's own: decoding, encoding, and the engine"
            f" running slower right after gRPC work than back to back."
        )
    if floor > TARGET_MS:
        lines.append(
            f"The target ({TARGET_MS} ms) sits below that floor on this machine: no server written"
            " in Python on grpc.aio reaches it here; only a native front (gRPC and response"
            " building outside Python) could."
        )
    if native_busy is not None:
        slack = TARGET_MS - native_busy
        lines.append(
            f"A native front's round trip alone: the C++ echo busy as long as `embed` adds"
            f" {native_busy:.3f} ms beyond the grpc.aio echo, so one would meet the target if its"
            f" decoding, encoding and engine slowdown after gRPC work stayed under"
            f" {slack:.3f} ms" + (" (none can: below zero)." if slack < 0 else ".")
        )
    if front is not None:
        verdict = "meets" if front <= TARGET_MS else "misses"
        lines.append(
            f"Moving only the transport out of Python (the floor's decode, `embed` and encode"
            f" called in an embedded interpreter per request) {verdict} it: {front:.3f} ms beyond"
            f" the echo, against the Python floor's {floor:.3f}."
        )
    for name, why in r.get("native", {}).items():
        if why != "built":
            lines.append(f"No C++ {name} in this run: {why}.")
    lines += [
        "",
        f"Closed-loop clients, one corpus sentence per call, medians of 2 interleaved rounds of"
        f" {result['seconds']:.0f} s:",
        "",
        "| clients | " + " | ".join(f"{n} texts/s" for n in SERVERS) + " | inline ÷ no-inline |",
        "|---" * (len(SERVERS) + 2) + "|",
    ]
    for level in LEVELS:
        row = [tput[name][str(level)] for name in SERVERS]
        ratio = row[0] / row[1]
        lines.append(f"| {level} | " + " | ".join(f"{v:.1f}" for v in row) + f" | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "all-MiniLM-L6-v2")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--reps", type=int, default=150)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    result = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_facts(),
        "model_dir": str(args.model_dir),
        "rounds": args.rounds,
        "reps": args.reps,
        "seconds": args.seconds,
        "result": measure(args.model_dir, args.rounds, args.reps, args.seconds),
    }
    save_results("serving-path", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
