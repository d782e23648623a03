"""A few hundred fuzzed requests against a real server with the real model (make stress runs
100,000): never INTERNAL or UNKNOWN, never a hang, the server SERVING after; NOT_FOUND only for
a request that names a model it does not serve."""

from __future__ import annotations

from pathlib import Path

from ctxembed.client import Client
from ctxembed.runtime import WordEmbedder
from ctxembed.v1 import embedder_pb2 as pb
from testkit.fuzz import fuzz, names_a_model
from testkit.servers import ThreadServer


def test_fuzzed_requests_get_only_expected_codes(model_dir: Path) -> None:
    server = ThreadServer(WordEmbedder.load(model_dir, provider="cpu"))
    try:
        seen = fuzz(server.address, examples=300)
        assert seen["OK"] and seen["INVALID_ARGUMENT"] and seen["NOT_FOUND"]  # all exercised
        with Client(server.address) as client:
            assert client.health() == "SERVING"
            assert client.embed(["still fine"])[0].vectors.shape == (2, 384)
    finally:
        server.stop()


def test_not_found_is_allowed_only_for_a_named_model() -> None:
    """make stress found b"B\\x03\\0\\0\\0" (field 8, ``model``: three NULs) answered NOT_FOUND,
    as an unknown model is; bytes that do not parse, or name none, may not get it."""
    assert names_a_model(b"B\x03\x00\x00\x00")
    assert names_a_model(pb.EmbedRequest(model="nope"))
    assert not names_a_model(b"\xff\xff") and not names_a_model(pb.EmbedRequest())
