"""A bare grpc.aio echo server (no ctxembed code): what one round trip costs on this machine.

    python -m benchmarks.echo_server   # prints "port N" once listening, serves until killed

It runs on the same (default) event loop as ``ctxembed serve``, so the difference between its
round trip and ctxembed's is ctxembed's own overhead.
"""

from __future__ import annotations

import sys

import grpc

from ctxembed.service import event_loop

METHOD = "/bench.Echo/Echo"


async def _serve() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
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
