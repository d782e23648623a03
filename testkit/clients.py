"""Closed-loop gRPC load: many concurrent callers over a few connections, counting status codes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import grpc

from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc


async def run_clients(
    address: str,
    clients: int,
    seconds: float,
    request: Callable[[int], pb.EmbedRequest],
    timeout: float = 30.0,
    stop_on_unavailable: bool = False,
) -> Counter[str]:
    """``clients`` concurrent callers for ``seconds``; the status codes they got."""
    codes: Counter[str] = Counter()
    end = time.monotonic() + seconds
    channels = [grpc.aio.insecure_channel(address) for _ in range(8)]

    async def caller(n: int) -> None:
        stub = pb_grpc.WordEmbedderStub(channels[n % len(channels)])
        i = n
        while time.monotonic() < end:
            try:
                await stub.Embed(request(i), timeout=timeout)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                if stop_on_unavailable and error.code() == grpc.StatusCode.UNAVAILABLE:
                    return
            i += clients

    try:
        await asyncio.gather(*(caller(n) for n in range(clients)))
    finally:
        for channel in channels:
            await channel.close(None)
    return codes
