"""A bare grpc.aio echo server (no ctxembed code): what one round trip costs on this machine.

    python -m benchmarks.echo_server   # prints "port N" once listening, serves until killed

It runs on the same (default) event loop as ``ctxembed serve``, so the difference between its
round trip and ctxembed's is ctxembed's own overhead. An empty request is echoed at once; a
request of ``busy_request(seconds)`` keeps the handler computing (a busy loop on the event loop,
touching no memory) for that long first, as a server's model run would: what a round trip
around that much server work costs, with no ctxembed code in it.
"""

from __future__ import annotations

import struct
import sys
import time

import grpc

from ctxembed.service import event_loop

METHOD = "/bench.Echo/Echo"
_SECONDS = struct.Struct("<d")


def busy_request(seconds: float) -> bytes:
    """The request that keeps the echo's handler busy for ``seconds`` before it answers."""
    return _SECONDS.pack(seconds)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _serve() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if len(request) == _SECONDS.size:
            _spin(_SECONDS.unpack(request)[0])
            return b""
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


def main() -> int:
    event_loop.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
