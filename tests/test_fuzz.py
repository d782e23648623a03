"""A few hundred fuzzed requests against a real server with the real model (make stress runs
100,000): never INTERNAL or UNKNOWN, never a hang, the server SERVING after."""

from __future__ import annotations

from pathlib import Path

from ctxembed.client import Client
from ctxembed.runtime import WordEmbedder
from testkit.fuzz import fuzz
from testkit.servers import ThreadServer


def test_fuzzed_requests_get_only_expected_codes(model_dir: Path) -> None:
    server = ThreadServer(WordEmbedder.load(model_dir, provider="cpu"))
    try:
        seen = fuzz(server.address, examples=300)
        assert seen["OK"] and seen["INVALID_ARGUMENT"]  # both paths were exercised
        with Client(server.address) as client:
            assert client.health() == "SERVING"
            assert client.embed(["still fine"])[0].vectors.shape == (2, 384)
    finally:
        server.stop()
