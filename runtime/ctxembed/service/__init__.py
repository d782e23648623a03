"""gRPC transport for the engine: protobuf ↔ numpy conversion, micro-batching, the aio server.

The engine (``ctxembed.runtime``) never imports this package or grpc.
"""
