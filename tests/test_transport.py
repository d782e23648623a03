"""The gRPC transport over real calls to a real server, with a fake model behind the stages.

Status mapping, streaming, limits, overload, deadlines, health, TLS and the client's types: none
of it depends on the model, so these run in seconds without an export (``fake_model.py``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from fake_model import DIM, FakeModel, word_vector
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import wait_for

from ctxembed.client import CHANNEL_OPTIONS, AsyncClient, Client, WordNotFound
from ctxembed.runtime import InvalidInput, Limits, ModelInfo, TextInput
from ctxembed.service.settings import BatcherSettings
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc
from ctxembed.v1.wire import field_violations, field_violations_of
from testkit.servers import ThreadServer


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    running = ThreadServer(FakeModel())
    yield running
    running.stop()


@pytest.fixture()
def stub(server: ThreadServer) -> Iterator[pb_grpc.WordEmbedderStub]:
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.WordEmbedderStub(channel)


def test_embed_converts_both_ways(server: ThreadServer) -> None:
    with Client(server.address) as client:
        [res, sel] = client.embed(
            ["river  bank", TextInput(text="The Bank and the bank", select_words=["bank"])]
        )
        [half] = client.embed(["river bank"], dtype="float16")
        assert client.embed_word("bank to bank", "bank", occurrence=1).shape == (DIM,)
        with pytest.raises(WordNotFound, match="occurrence 2"):
            client.embed_word("bank to bank", "bank", occurrence=2)
    assert [(w.text, w.start, w.end, w.index) for w in res.words] == [
        ("river", 0, 5, 0),
        ("bank", 7, 11, 1),
    ]
    np.testing.assert_array_equal(res.vectors[1], word_vector("bank", 1, NUM_LAST))
    assert [(w.text, w.index) for w in sel.words] == [("Bank", 1), ("bank", 4)]
    assert half.vectors.dtype == np.float16 and half.vectors.shape == (2, DIM)


NUM_LAST = 2  # the fake model's last layer


def test_stream_in_order(server: ThreadServer) -> None:
    batches = [[f"sentence number {i} about a bank"] for i in range(40)]
    with Client(server.address) as client:
        results = list(client.embed_stream(batches))
    assert [r[0].words[2].text for r in results if isinstance(r, list)] == [
        str(i) for i in range(40)
    ]


def test_a_bad_stream_request_fails_alone(
    stub: pb_grpc.WordEmbedderStub, server: ThreadServer
) -> None:
    requests = [
        pb.EmbedRequest(inputs=[pb.TextInput(text="fine")]),
        pb.EmbedRequest(inputs=[pb.TextInput(text="")]),
        pb.EmbedRequest(inputs=[pb.TextInput(text="still fine")]),
    ]
    responses = list(stub.EmbedStream(iter(requests)))  # the stream ends OK
    assert [r.HasField("error") for r in responses] == [False, True, False]
    error = responses[1].error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "stream request 1" in error.message and not responses[1].results
    assert field_violations_of(error) == [("inputs[0].text", "must not be empty")]
    assert len(responses[2].results) == 1
    batches = [["fine"], [""], ["still fine"]]
    with Client(server.address) as client:
        got = list(client.embed_stream(batches, errors="return"))
        assert isinstance(got[1], InvalidInput) and got[1].field == "inputs[0].text"
        assert isinstance(got[2], list) and got[2][0].words[1].text == "fine"
        with pytest.raises(InvalidInput, match="must not be empty"):
            list(client.embed_stream(batches))  # errors="raise", the default


@pytest.mark.parametrize(
    "payload",
    [b"\x0a\x04\x0a\x02\xc0\x80", b"\xff\xff\xff\xff", b"\x0a\x10short"],
    ids=["invalid-utf8-text", "garbage", "truncated"],
)
def test_undecodable_bytes_are_invalid_argument(
    server: ThreadServer, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary("/ctxembed.v1.WordEmbedder/Embed", lambda b: b, lambda b: b)
        with caplog.at_level("WARNING"), pytest.raises(grpc.RpcError) as info:
            raw(payload, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, _)] = field_violations(info.value)
    assert field == "request"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_request_token_limit_names_itself() -> None:
    server = ThreadServer(FakeModel(limits=Limits(max_tokens_per_request=10)))
    try:
        with Client(server.address) as client:
            with pytest.raises(InvalidInput) as info:
                client.embed(["one two three four five six", "seven eight nine ten eleven"])
            assert len(client.embed(["one two three"])[0].words) == 3
            assert client.info().limits.max_tokens_per_request == 10
        assert info.value.field == "inputs" and "limit is 10" in info.value.description
    finally:
        server.stop()


def test_a_response_too_large_to_send_is_refused_before_computing() -> None:
    model = FakeModel(limits=Limits(max_tokens_per_request=10**6))
    server = ThreadServer(model, max_send_mb=1)
    try:
        with Client(server.address) as client, pytest.raises(InvalidInput) as info:
            client.embed(["a " * 49_999])  # 50,000 words
        assert info.value.field == "inputs" and "limit is 1 MiB" in info.value.description
        assert model.texts_computed == 0
    finally:
        server.stop()


def _request(**kwargs: object) -> pb.EmbedRequest:
    return pb.EmbedRequest(**kwargs)  # type: ignore[arg-type]


BAD = [
    (_request(), "inputs"),
    (_request(inputs=[pb.TextInput(text="x")] * 257), "inputs"),
    (_request(inputs=[pb.TextInput(text="")]), "inputs[0].text"),
    (
        _request(inputs=[pb.TextInput(text="ok"), pb.TextInput(text="x" * 100_001)]),
        "inputs[1].text",
    ),
    (_request(inputs=[pb.TextInput(words=pb.WordList(words=["a", " "]))]), "inputs[0].words[1]"),
    (_request(inputs=[pb.TextInput(words=pb.WordList(words=["a"] * 10_001))]), "inputs[0].words"),
    (_request(inputs=[pb.TextInput()]), "inputs[0]"),
    (
        _request(inputs=[pb.TextInput(text="abc", select_spans=[pb.CharSpan(start=2, end=9)])]),
        "inputs[0].select_spans[0]",
    ),
    (
        _request(
            inputs=[pb.TextInput(text="abc", select_spans=[pb.CharSpan(start=0, end=1)] * 1001)]
        ),
        "inputs[0].select_spans",
    ),
    (_request(inputs=[pb.TextInput(text="ok")], layers=[9]), "layers[0]"),
    (_request(inputs=[pb.TextInput(text="ok")], pooling=99), "pooling"),
    (_request(inputs=[pb.TextInput(text="ok")], dtype=7), "dtype"),
]


@pytest.mark.parametrize(("request_", "field"), BAD)
def test_bad_input_is_invalid_argument_with_field(
    stub: pb_grpc.WordEmbedderStub, request_: pb.EmbedRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(got, description)] = field_violations(info.value)
    assert got == field and description
    assert field in str(info.value.details())


def test_client_raises_invalid_input(server: ThreadServer) -> None:
    with Client(server.address) as client, pytest.raises(InvalidInput) as info:
        client.embed(["ok", "x" * 100_001])
    assert info.value.field == "inputs[1].text" and "100000" in info.value.description


def test_info_is_typed(server: ThreadServer) -> None:
    model = server.running.model
    with Client(server.address) as client:
        info = client.info()
    assert isinstance(info, ModelInfo) and isinstance(info.limits, Limits)
    assert info.server_version  # set by the server, not the model
    assert dataclasses.replace(info, server_version="") == model.info()

    async def remote() -> ModelInfo:
        async with AsyncClient(server.address) as client:
            return await client.info()

    import asyncio

    assert asyncio.run(remote()) == info


def _blocked_server(model: FakeModel, **overrides: object) -> ThreadServer:
    model.gate.clear()
    return ThreadServer(model, **overrides)


def test_overload_is_resource_exhausted() -> None:
    model = FakeModel()
    server = _blocked_server(model, batcher=BatcherSettings(max_queue=1))
    request = pb.EmbedRequest(inputs=[pb.TextInput(text="busy bank")])
    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.WordEmbedderStub(channel)
            running = stub.Embed.future(request)
            assert model.entered.wait(10)  # the one batch slot is taken
            queued = stub.Embed.future(request)
            wait_for(lambda: server.running.batcher.queued == 1, what="the call to queue")
            with pytest.raises(grpc.RpcError) as info:
                stub.Embed(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "overloaded: 1 requests already queued" in str(info.value.details())
            model.gate.set()
            assert len(running.result().results) == len(queued.result().results) == 1
        assert server.running.batcher.stats.rejected_overload == 1
    finally:
        model.gate.set()
        server.stop()


def test_deadline_and_cancel_are_not_computed() -> None:
    model = FakeModel()
    server = _blocked_server(model)
    small = pb.EmbedRequest(inputs=[pb.TextInput(text="bank")])
    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.WordEmbedderStub(channel)
            blocker = stub.Embed.future(small)
            assert model.entered.wait(10)
            cancelled = stub.Embed.future(small)
            late = stub.Embed.future(small, timeout=0.2)
            wait_for(lambda: server.running.batcher.jobs_in_queue == 2, what="both calls queued")
            cancelled.cancel()
            with pytest.raises(grpc.RpcError) as info:
                late.result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            model.gate.set()
            blocker.result()
            stats = server.running.batcher.stats
            # gRPC cancels an RPC whose deadline passed, so either counter may take it
            wait_for(lambda: stats.dropped_cancelled + stats.dropped_deadline == 2)
            assert model.texts_computed == 1  # only the blocker ran
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="ctxembed.v1.WordEmbedder")
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            assert len(stub.Embed(small).results) == 1
    finally:
        model.gate.set()
        server.stop()


def test_health_transitions_reflection_and_close() -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    model = FakeModel()
    server = ThreadServer(model)
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {"ctxembed.v1.WordEmbedder", "grpc.health.v1.Health"} <= services
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "ctxembed.v1.WordEmbedder"):
            status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service="ctxembed.v1.WordEmbedder"))
        seen = [next(watch).status]
        stopper = threading.Thread(target=server.stop, args=(2.0,))
        stopper.start()
        seen.append(next(watch).status)
        stopper.join()
    assert seen == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]
    assert not model.closed  # a model passed in belongs to the caller


def _certificate(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server = ThreadServer(FakeModel(), tls_cert=cert, tls_key=key)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with Client(server.address, credentials=credentials) as client:
            assert client.embed(["river bank"])[0].vectors.shape == (2, DIM)
        with Client(server.address, timeout=2) as plain, pytest.raises(grpc.RpcError):
            plain.info()  # plaintext is refused
    finally:
        server.stop()


def test_tls_needs_both_files(tmp_path: Path) -> None:
    from ctxembed.service.settings import ServeError, ServerSettings

    with pytest.raises(ServeError, match="both --tls-cert and --tls-key"):
        ServerSettings(tls_cert=tmp_path / "cert.pem")


def test_port_in_use_is_refused_not_shared(server: ThreadServer) -> None:
    from ctxembed.service.settings import ServeError

    port = server.running.port
    with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}"):
        ThreadServer(FakeModel(), port=port)


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from ctxembed.service import event_loop

    assert event_loop.resolve("asyncio") == "asyncio" and event_loop.resolve("uvloop") == "uvloop"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as if not installed
    assert event_loop.resolve("asyncio") == "asyncio"
    with pytest.raises(event_loop.EventLoopUnavailable, match="uvloop is not installed"):
        event_loop.resolve("uvloop")


THIN = """
import sys
import ctxembed.client
from ctxembed.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"onnxruntime", "tokenizers"})
print("heavy:", heavy, "code:", code)
"""


@pytest.mark.parametrize("command", [["embed", "river bank", "--word", "bank"], ["info"]])
def test_client_and_cli_stay_thin(server: ThreadServer, command: list[str]) -> None:
    """A service that only calls the server never loads the engine."""
    proc = subprocess.run(
        [sys.executable, "-c", THIN, *command, "--server", server.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("heavy: [] code: 0"), proc.stdout


def test_cli_info_prints_the_typed_info(
    server: ThreadServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from ctxembed.cli import main

    assert main(["info", "--server", server.address]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "fake" and info["dimension"] == DIM and info["model_type"] == "fake"
    assert info["limits"]["max_inputs_per_request"] == 256


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--parallel-runs", "0", "argument --parallel-runs: must be at least 1, got 0"),
        ("--spin-after-run-us", "-5", "argument --spin-after-run-us: must be at least 0, got -5"),
        ("--port", "70000", "argument --port: must be between 0 and 65535, got 70000"),
        ("--max-wait-ms", "-1", "argument --max-wait-ms: must be at least 0, got -1"),
        ("--max-padding", "-0.5", "argument --max-padding: must be at least 0, got -0.5"),
        ("--threads", "two", "argument --threads: expected an integer, got 'two'"),
        ("--tls-cert", "cert.pem", "--tls-cert and --tls-key go together"),
        ("--tls-key", "key.pem", "--tls-cert and --tls-key go together"),
        ("--log-level", "loud", "argument --log-level: invalid choice: 'LOUD'"),
    ],
)
def test_serve_rejects_bad_flags(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ctxembed.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--model-dir", "unused", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_embed_rejects_bad_layers(capsys: pytest.CaptureFixture[str]) -> None:
    from ctxembed.cli import main

    with pytest.raises(SystemExit) as info:
        main(["embed", "text", "--layers", "abc"])
    assert info.value.code == 2
    assert "argument --layers: expected comma-separated integers" in capsys.readouterr().err


def test_cancelled_calls_leave_the_queue_at_once() -> None:
    """Dead clients' queued work must not refuse live clients."""
    model = FakeModel()
    server = _blocked_server(model, batcher=BatcherSettings(max_queue=2))
    request = pb.EmbedRequest(inputs=[pb.TextInput(text="bank")])
    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.WordEmbedderStub(channel)
            running = stub.Embed.future(request)
            assert model.entered.wait(10)
            doomed = [stub.Embed.future(request) for _ in range(2)]
            wait_for(lambda: server.running.batcher.queued == 2, what="two queued calls")
            for call in doomed:
                call.cancel()
            wait_for(lambda: server.running.batcher.queued == 0, what="the queue to empty")
            live = stub.Embed.future(request)  # accepted: the queue has room again
            model.gate.set()
            assert len(live.result().results) == len(running.result().results) == 1
        assert server.running.batcher.stats.rejected_overload == 0
    finally:
        model.gate.set()
        server.stop()


def test_work_stops_between_runs_once_the_caller_is_gone() -> None:
    model = FakeModel(seconds_per_text=0.05)
    server = ThreadServer(model)
    request = pb.EmbedRequest(inputs=[pb.TextInput(text=f"text {i}") for i in range(40)])
    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.WordEmbedderStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Embed(request, timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            stats = server.running.batcher.stats
            wait_for(lambda: stats.abandoned_batches == 1, what="the batch to be abandoned")
            assert model.texts_computed < 20  # 2 s of work stopped soon after 0.3 s
            assert len(stub.Embed(pb.EmbedRequest(inputs=[pb.TextInput(text="ok")])).results) == 1
    finally:
        server.stop()


def test_shutdown_under_load_answers_unavailable_never_cancelled() -> None:
    """grpc's stop() kills calls still queued unmatched (CANCELLED, not retried by default
    policies); the drain answers them UNAVAILABLE first, while calls in progress finish."""
    import asyncio

    from testkit.clients import run_clients

    request = pb.EmbedRequest(inputs=[pb.TextInput(text="river bank")])
    codes: Counter[str] = Counter()
    for _ in range(4):
        server = ThreadServer(FakeModel(seconds_per_text=0.002))
        stopper = threading.Timer(0.4, server.stop, (5.0,))
        stopper.start()
        codes += asyncio.run(
            run_clients(server.address, 32, 5.0, lambda _: request, stop_on_unavailable=True)
        )
        stopper.join()
    assert codes["OK"] > 0 and codes["UNAVAILABLE"] > 0
    assert set(codes) == {"OK", "UNAVAILABLE"}, codes
