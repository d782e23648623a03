"""gRPC figures: start-up, one-client latency vs in-process, throughput vs concurrency, RSS.

python -m benchmarks.bench_grpc --model-dir DIR [--seconds S] [--levels 1,4,16,32,64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks import echo_server
from benchmarks.engines import BANK, time_calls
from benchmarks.stats import percentiles
from ctxembed.client import Client
from ctxembed.runtime import TextInput, WordEmbedder
from testkit.servers import ProcessServer

STATS = re.compile(r"stats (\{.*\})")


def start_server(model_dir: Path, extra: Sequence[str]) -> tuple[ProcessServer, float]:
    """Start `ctxembed serve`; seconds from process start to health SERVING."""
    t0 = time.perf_counter()
    server = ProcessServer(model_dir, *extra)
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while (
            health.Check(health_pb2.HealthCheckRequest()).status
            != health_pb2.HealthCheckResponse.SERVING
        ):
            time.sleep(0.005)
    return server, time.perf_counter() - t0


def import_torch_seconds() -> float:
    code = (
        "import time; t=time.perf_counter(); import torch, transformers; "
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


def load(
    address: str,
    concurrency: int,
    seconds: float,
    texts: int | None,
    channels: int = 1,
    processes: int = 1,
) -> dict[str, Any]:
    limit = ["--texts", str(texts)] if texts else []
    limit += ["--channels", str(channels), "--processes", str(processes)]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--server",
            address,
            "--concurrency",
            str(concurrency),
            "--seconds",
            str(seconds),
            *limit,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    result.pop("latencies_s", None)  # the raw samples stay out of the reports
    return result


def stop(server: ProcessServer) -> dict[str, Any]:
    server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    found = [json.loads(m.group(1)) for m in STATS.finditer(log)]
    stats: dict[str, Any] = dict(found[0]) if found else {}
    stats["per_process"] = found  # one per worker with --workers
    stats["exit_code"] = code
    return stats


def stage_split(stats: dict[str, Any]) -> dict[str, float]:
    """Milliseconds per request spent in each server stage (prepare is the tokenize stage)."""
    n = max(1, int(stats.get("requests_done", 0)))
    names = {
        "queue": "queue",
        "tokenize": "prepare",
        "run": "run",
        "pool": "pool",
        "serialize": "serialize",
    }
    return {name: 1000 * float(stats.get(f"{key}_s", 0.0)) / n for name, key in names.items()}


@contextlib.contextmanager
def _echo_server() -> Iterator[int]:
    """benchmarks.echo_server in a subprocess; yields its port."""
    with port_server("benchmarks.echo_server") as port:
        yield port


@contextlib.contextmanager
def port_server(module: str, *args: str) -> Iterator[int]:
    """``python -m module args`` (a server that prints "port N" once listening); yields N."""
    with port_process([sys.executable, "-m", module, *args]) as port:
        yield port


@contextlib.contextmanager
def port_process(command: list[str], env: dict[str, str] | None = None) -> Iterator[int]:
    """A server process that prints "port N" once listening; yields N."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline().split()[1])
    finally:
        proc.kill()
        proc.wait()


def bare_echo_round_trip(reps: int) -> dict[str, float]:
    """p50 of one call to a grpc.aio echo server with no ctxembed code (benchmarks.echo_server)."""
    with _echo_server() as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(echo_server.METHOD, None, None)
        return percentiles(time_calls(lambda: echo(b""), reps, warmup=50))


async def _echo_load(port: int, concurrency: int, seconds: float) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(echo_server.METHOD, None, None)
        done, stop_at = 0, time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await echo(b"x" * 100)
                done += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / seconds


def bare_echo_throughput(concurrency: int, seconds: float) -> float:
    """Requests/s a grpc.aio echo server (no ctxembed code) answers to C concurrent clients of
    the same kind as benchmarks.load: the gRPC stack's own ceiling on this machine."""
    with _echo_server() as port:
        asyncio.run(_echo_load(port, concurrency, 0.5))  # warm-up
        return asyncio.run(_echo_load(port, concurrency, seconds))


FLOOR_ROUNDS = 4


def one_client(
    address: str, reps: int, floor_model: Path | None = None, busy_s: float | None = None
) -> dict[str, Any]:
    """Bank-sentence latency, and an empty RPC's (GetModelInfo): gRPC's own floor here. With
    ``floor_model``, also the same call to benchmarks.floor_server over that model (the least a
    Python grpc.aio server adds), and with ``busy_s`` a bare echo whose handler computes that
    long (the in-process p50: what a round trip around that much server work costs with no
    ctxembed code), in rounds interleaved with ctxembed's (the machine drifts)."""
    bank = [TextInput(text=BANK, select_words=["bank"])]
    result: dict[str, Any] = {}
    with Client(address) as client:
        if floor_model is None:
            result |= percentiles(time_calls(lambda: client.embed(bank), reps, warmup=50))
        else:
            samples: dict[str, list[float]] = {"served": [], "floor": [], "busy": []}
            with (
                port_server("benchmarks.floor_server", str(floor_model)) as port,
                Client(f"127.0.0.1:{port}") as floor,
                _echo_server() as echo_port,
                grpc.insecure_channel(f"127.0.0.1:{echo_port}") as channel,
            ):
                echo = channel.unary_unary(echo_server.METHOD, None, None)
                calls: dict[str, Callable[[], object]] = {
                    "served": lambda: client.embed(bank),
                    "floor": lambda: floor.embed(bank),
                }
                if busy_s is not None:
                    calls["busy"] = functools.partial(echo, echo_server.busy_request(busy_s))
                for _ in range(FLOOR_ROUNDS):
                    for name, call in calls.items():
                        samples[name] += time_calls(call, reps // FLOOR_ROUNDS, warmup=20)
            result |= percentiles(samples["served"])
            result["python_floor"] = percentiles(samples["floor"])
            if busy_s is not None:
                result["busy_echo"] = percentiles(samples["busy"]) | {"busy_ms": busy_s * 1e3}
        result["empty_rpc"] = percentiles(time_calls(client.info, reps, warmup=50))
    return result | {"bare_echo": bare_echo_round_trip(reps)}


def metrics_cost(model_dir: Path, reps: int, rounds: int = 4) -> dict[str, float]:
    """Bank p50 over gRPC with --metrics-port on and off: two servers side by side, measured in
    interleaved rounds (this machine drifts), so the ratio is what recording costs."""
    off, _ = start_server(model_dir, [])
    on, _ = start_server(model_dir, ["--metrics-port", "0"])
    bank = [TextInput(text=BANK, select_words=["bank"])]
    samples: dict[str, list[float]] = {"off": [], "on": []}
    try:
        with Client(off.address) as plain, Client(on.address) as measured:
            for _ in range(rounds):
                for name, client in (("off", plain), ("on", measured)):
                    calls = time_calls(lambda c=client: c.embed(bank), reps // rounds, warmup=20)  # type: ignore[misc]
                    samples[name] += calls
    finally:
        stop(off)
        stop(on)
    p50 = {name: percentiles(values)["p50_ms"] for name, values in samples.items()}
    return {"p50_ms_off": p50["off"], "p50_ms_on": p50["on"], "ratio": p50["on"] / p50["off"]}


def run_setting(
    model_dir: Path,
    extra: Sequence[str],
    levels: Sequence[int],
    seconds: float,
    reps: int,
    texts: int | None = None,
    channels: int = 1,
    busy_s: float | None = None,
) -> dict[str, Any]:
    """One server with ``extra`` flags: start-up, one client, the concurrency sweep, memory.
    The default setting (no flags) is also set beside the Python floor and, given the in-process
    p50 as ``busy_s``, an echo computing that long (see one_client)."""
    server, startup = start_server(model_dir, extra)
    try:
        floor = None if extra else model_dir
        single = one_client(server.address, reps, floor, busy_s if floor else None)
        sweep = [load(server.address, c, seconds, texts, min(c, channels)) for c in levels]
        rss = server.peak_rss_mb
    finally:
        stats = stop(server)
    return {
        "flags": list(extra),
        "startup_s": startup,
        "ready_line_s": server.ready_s,
        "one_client": single,
        "concurrency": sweep,
        "peak_rss_mb": rss,
        "server_stats": stats,
        "stage_ms_per_request": stage_split(stats),
    }


def in_process_bank(model_dir: Path, reps: int) -> dict[str, float]:
    emb = WordEmbedder.load(model_dir, provider="cpu")
    bank = [TextInput(text=BANK, select_words=["bank"])]
    return percentiles(time_calls(lambda: emb.embed(bank), reps, warmup=50))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--levels", default="1,4,16,32,64")
    p.add_argument("--reps", type=int, default=500)
    p.add_argument("--compare-spinning", action="store_true")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    bank = in_process_bank(args.model_dir, args.reps)
    result: dict[str, Any] = {
        "in_process_bank": bank,
        "import_torch_transformers_s": import_torch_seconds(),
        "default": run_setting(
            args.model_dir, [], levels, args.seconds, args.reps, busy_s=bank["p50_ms"] / 1e3
        ),
        "bare_echo_32_clients_per_s": bare_echo_throughput(32, args.seconds),
    }
    if args.compare_spinning:
        for flag in ("--spinning", "--no-spinning"):
            result[flag] = run_setting(args.model_dir, [flag], [1, 32], args.seconds, args.reps)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
