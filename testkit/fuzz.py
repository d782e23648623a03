"""Structure-aware fuzzing of a running server (hypothesis): shared by `make test` (a few hundred
examples) and `make stress` (100,000).

Requests are built field by field: Unicode of every kind (no lone surrogates: protobuf strings
are UTF-8), empty and whitespace words, huge and reversed spans, unknown enum values, layers
anywhere in int32, many inputs; raw byte strings go to the method as they are. A call may succeed
or fail with a status that names the client's mistake or the server's limits (NOT_FOUND only
for a request that names a model: one the server does not serve); it must never be INTERNAL or
UNKNOWN (a bug of ctxembed's), and never hang.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxembed.v1 import embedder_pb2 as pb

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # queue full, or a message over the size limits
}
UINT32 = st.integers(0, 2**32 - 1)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=300) | st.sampled_from(
    ["", " ", "\t\n", "\u00a0", "bank " * 30_000, "🙂" * 1000, "a\u0301" * 500]
)
words = st.lists(texts, max_size=12)
spans = st.builds(pb.CharSpan, start=UINT32, end=UINT32)


@st.composite
def text_inputs(draw: Any) -> pb.TextInput:
    # Any field may be wrong: words or spans the text lacks, no text at all.
    item = pb.TextInput(
        select_words=draw(st.just([]) | st.lists(texts, max_size=3)),
        select_spans=draw(st.just([]) | st.lists(spans, max_size=3)),
    )
    kind = draw(st.sampled_from(["text", "text", "text", "words", "none"]))
    if kind == "text":
        item.text = draw(texts)
    elif kind == "words":
        item.words.words.extend(draw(words))
    return item


@st.composite
def plausible_inputs(draw: Any) -> pb.TextInput:
    """A text, all of it or some of its own words or a span inside it selected: what a client
    sends."""
    text = draw(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=200))
    item = pb.TextInput(text=text)
    select = draw(st.sampled_from(["all", "words", "span"]))  # the two cannot be combined
    if select == "words" and text.split():
        item.select_words.extend(draw(st.lists(st.sampled_from(text.split()), max_size=3)))
    elif select == "span":
        start = draw(st.integers(0, len(text) - 1))
        item.select_spans.append(
            pb.CharSpan(start=start, end=draw(st.integers(start + 1, len(text))))
        )
    return item


# Fully random requests are almost all rejected (one bad field of many is enough: a few in a
# hundred pass), so half are drawn plausible, with every option in range: the engine and the
# response path get exercised under odd text as well as the checks.
wild_requests = st.builds(
    pb.EmbedRequest,
    inputs=st.lists(text_inputs(), min_size=1, max_size=6) | st.lists(text_inputs(), max_size=300),
    pooling=st.sampled_from([0, 0, 1, 2, 3, 4, 5, 9, 2**31 - 1]),  # 0-5 known
    layers=st.just([]) | st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3),
    layer_combine=st.sampled_from([0, 0, 1, 2, 7]),
    dtype=st.sampled_from([0, 0, 1, 2, 5]),
    normalize=st.booleans(),
    include_tokens=st.booleans(),
    model=st.just("") | texts,  # almost always not served: NOT_FOUND
)
plausible_requests = st.builds(
    pb.EmbedRequest,
    inputs=st.lists(plausible_inputs(), min_size=1, max_size=8),
    pooling=st.integers(0, 5),
    layers=st.just([]) | st.just([-1]),
    layer_combine=st.integers(0, 2),
    dtype=st.integers(0, 2),
    normalize=st.booleans(),
    include_tokens=st.booleans(),
)
requests = wild_requests | plausible_requests
payloads = st.binary(max_size=256)


def names_a_model(message: pb.EmbedRequest | bytes) -> bool:
    """Whether the request names a model (raw bytes: if they parse as a request that does)."""
    if isinstance(message, bytes):
        try:
            message = pb.EmbedRequest.FromString(message)
        except DecodeError:
            return False
    return bool(message.model)


def fuzz(address: str, examples: int, timeout: float = 30.0) -> Counter[str]:
    """Send ``examples`` structured requests and a quarter as many raw payloads; returns the
    status codes seen. Raises AssertionError on a forbidden code."""
    seen: Counter[str] = Counter()
    config = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    with grpc.insecure_channel(
        address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        embed = channel.unary_unary(
            "/ctxembed.v1.WordEmbedder/Embed",
            pb.EmbedRequest.SerializeToString,
            pb.EmbedResponse.FromString,
        )
        raw = channel.unary_unary("/ctxembed.v1.WordEmbedder/Embed", None, None)

        def call(method: Any, message: Any) -> None:
            try:
                method(message, timeout=timeout)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            seen[code.name] += 1
            unknown_model = code == grpc.StatusCode.NOT_FOUND and names_a_model(message)
            assert code in ALLOWED or unknown_model, f"{code.name} for {message!r:.300}"

        @config
        @given(requests)
        def structured(request: pb.EmbedRequest) -> None:
            call(embed, request)

        @settings(config, max_examples=max(1, examples // 4))
        @given(payloads)
        def bytes_(payload: bytes) -> None:
            call(raw, payload)

        structured()
        bytes_()
    return seen
