"""The least a Python gRPC server of ctxembed's ``Embed`` can do: the floor under its path.

    python -m benchmarks.floor_server MODEL_DIR   # prints "port N" once listening

grpc.aio on the same event loop as ``ctxembed serve``, one handler: decode the request, run
``WordEmbedder.embed`` inline on the loop, encode the response. No batcher, limits, metrics,
deadlines or error mapping, so not a server to run: the lower bound for one written in Python
on this machine (``benchmarks/serving_path.py`` sets both beside a bare echo).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from ctxembed.runtime import WordEmbedder
from ctxembed.service import event_loop
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1.wire import call_from_request, response_from_results


def embed_call(engine: WordEmbedder, request: pb.EmbedRequest) -> pb.EmbedResponse:
    """The floor's work for one call: decode, ``WordEmbedder.embed``'s stages, encode."""
    call = call_from_request(request)
    prepared = engine.prepare(call.inputs, call.options)
    states = engine.forward(prepared.texts, prepared.layer_ids)
    return response_from_results(engine.finish(prepared, states, prepared.layer_ids))


def bytes_handler(model_dir: str) -> Callable[[bytes], bytes]:
    """The same work from request bytes to response bytes: what benchmarks/native/front.cc
    calls in its embedded interpreter, the gRPC transport being its own."""
    engine = WordEmbedder.load(Path(model_dir), provider="cpu")
    return lambda data: embed_call(engine, pb.EmbedRequest.FromString(data)).SerializeToString()


async def _serve(model_dir: Path) -> None:
    engine = WordEmbedder.load(model_dir, provider="cpu")

    async def embed(request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        return embed_call(engine, request)

    service = pb.DESCRIPTOR.services_by_name["WordEmbedder"].full_name
    method = grpc.unary_unary_rpc_method_handler(
        embed,
        request_deserializer=pb.EmbedRequest.FromString,
        response_serializer=pb.EmbedResponse.SerializeToString,
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {"Embed": method}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


def main() -> int:
    event_loop.run(_serve(Path(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
