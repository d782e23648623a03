"""Closed-loop gRPC load: C concurrent clients, each sending one corpus sentence per call.

    python -m benchmarks.load --server HOST:PORT --concurrency C --seconds S

Runs in its own process (grpc.aio, ``--channels`` connections) and prints JSON: latency
percentiles, texts/s, words/s. One Python process tops out near 1,300 calls/s; ``--processes P``
splits the clients over P such processes and merges their samples, for servers faster than that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc

from benchmarks.stats import percentiles
from ctxembed.client import CHANNEL_OPTIONS
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc
from testkit.corpus import load_corpus


async def run(
    server: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    limit: int | None,
    channels: int = 1,
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients over ``channels`` channels (connections): the kernel
    spreads `serve --workers` connections, not calls, so one channel reaches one worker."""
    texts = load_corpus(limit)
    latencies: list[float] = []
    counts = {"texts": 0, "words": 0, "errors": 0}
    # Channels to one target share one connection unless each has its own subchannel pool.
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    opened = [grpc.aio.insecure_channel(server, options=options) for _ in range(channels)]
    stubs = [pb_grpc.WordEmbedderStub(channel) for channel in opened]
    try:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def client(k: int) -> None:
            stub = stubs[k % len(stubs)]
            i = k * 997
            while (now := time.perf_counter()) < stop_at:
                request = pb.EmbedRequest(inputs=[pb.TextInput(text=texts[i % len(texts)])])
                i += 1
                try:
                    response = await stub.Embed(request, timeout=30)
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1
                    continue
                if now >= measure_from:
                    latencies.append(time.perf_counter() - now)
                    counts["texts"] += 1
                    counts["words"] += len(response.results[0].words)

        await asyncio.gather(*(client(k) for k in range(concurrency)))
    finally:
        for channel in opened:
            await channel.close(None)
    return summary(concurrency, seconds, latencies, counts)


def summary(
    concurrency: int, seconds: float, latencies: list[float], counts: dict[str, int]
) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        **percentiles(latencies),
        "texts_per_s": counts["texts"] / seconds,
        "words_per_s": counts["words"] / seconds,
        "errors": counts["errors"],
        "latencies_s": latencies,
        "texts": counts["texts"],
        "words": counts["words"],
    }


def split(args: argparse.Namespace) -> dict[str, Any]:
    """The clients over ``args.processes`` child processes, started together; samples merged."""
    procs = []
    for k in range(args.processes):
        share = len(range(k, args.concurrency, args.processes))
        channels = max(1, len(range(k, args.channels, args.processes)))
        command = [sys.executable, "-m", "benchmarks.load", "--server", args.server]
        command += ["--concurrency", str(share), "--seconds", str(args.seconds)]
        command += ["--warmup", str(args.warmup), "--channels", str(channels)]
        command += ["--texts", str(args.texts)] if args.texts else []
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    parts = [json.loads(proc.communicate()[0]) for proc in procs]
    latencies = [x for part in parts for x in part["latencies_s"]]
    counts = {key: sum(int(part[key]) for part in parts) for key in ("texts", "words", "errors")}
    return {**summary(args.concurrency, args.seconds, latencies, counts), "processes": len(parts)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--texts", type=int, default=None, help="corpus lines to cycle through")
    p.add_argument("--channels", type=int, default=1, help="connections the clients share")
    p.add_argument("--processes", type=int, default=1, help="load processes the clients share")
    args = p.parse_args(argv)
    if args.processes > 1:
        result = split(args)
    else:
        result = asyncio.run(
            run(args.server, args.concurrency, args.seconds, args.warmup, args.texts, args.channels)
        )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
