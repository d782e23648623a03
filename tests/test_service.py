"""The gRPC service over real calls to a real server on an ephemeral port."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.corpus import load_corpus
from benchmarks.harness import ProcessServer, ThreadServer
from ctxembed.client import CHANNEL_OPTIONS, Client, WordNotFound
from ctxembed.runtime import CharSpan, InvalidInput, TextInput, WordEmbedder
from ctxembed.service.status import field_violations
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc

BANK = "I live near the bank of America"


@pytest.fixture(scope="module")
def fp32_server(fp32_embedder: WordEmbedder) -> Iterator[ThreadServer]:
    server = ThreadServer(fp32_embedder)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def int8_server(model_dir: Path) -> Iterator[ThreadServer]:
    # As `ctxembed serve` runs it: parallel single-threaded runs, two batches in flight.
    server = ThreadServer(WordEmbedder.load(model_dir, provider="cpu", parallel_runs=2))
    yield server
    server.stop()


@pytest.fixture()
def stub(fp32_server: ThreadServer) -> Iterator[pb_grpc.WordEmbedderStub]:
    with grpc.insecure_channel(fp32_server.address) as channel:
        yield pb_grpc.WordEmbedderStub(channel)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_embed_equals_in_process(fp32_server: ThreadServer, fp32_embedder: WordEmbedder) -> None:
    inputs: list[str | list[str] | TextInput] = [
        BANK,
        ["New", "York", "bankers"],
        TextInput(text="The Bank and the bank", select_words=["bank"]),
        TextInput(text=BANK, select_spans=[CharSpan(16, 31)]),
    ]
    with Client(fp32_server.address) as client:
        remote = client.embed(inputs, pooling="max", normalize=True, include_tokens=True)
    local = fp32_embedder.embed(inputs, pooling="max", normalize=True, include_tokens=True)
    for r, loc in zip(remote, local, strict=True):
        assert r.words == loc.words
        assert (r.num_tokens, r.num_windows) == (loc.num_tokens, loc.num_windows)
        np.testing.assert_allclose(r.vectors, loc.vectors, rtol=1e-5, atol=1e-6)
    with Client(fp32_server.address) as client:
        [half] = client.embed([BANK], dtype="float16")
    assert half.vectors.dtype == np.float16 and half.vectors.shape == (7, 384)


def test_embed_stream_in_order(fp32_server: ThreadServer) -> None:
    batches = [[f"sentence number {i} about a bank"] for i in range(40)]
    with Client(fp32_server.address) as client:
        results = list(client.embed_stream(batches))
    assert len(results) == 40
    for i, [res] in enumerate(results):
        assert res.words[2].text == str(i)


def test_stream_error_names_request(stub: pb_grpc.WordEmbedderStub) -> None:
    requests = [
        pb.EmbedRequest(inputs=[pb.TextInput(text="fine")]),
        pb.EmbedRequest(inputs=[pb.TextInput(text="")]),
    ]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.EmbedStream(iter(requests)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream request 1" in str(info.value.details())
    assert field_violations(info.value) == [("inputs[0].text", "must not be empty")]


def test_model_info(fp32_server: ThreadServer) -> None:
    with Client(fp32_server.address) as client:
        info = client.info()
    assert info.model_name and info.dimension == 384 and info.num_layers == 6
    assert list(info.layers_available) == list(range(7))
    assert info.max_tokens_per_window == 512 and info.precision == "fp32"
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.onnxruntime_version and info.server_version and info.lowercase
    assert info.limits.max_inputs_per_request == 256


def test_embed_word(int8_server: ThreadServer) -> None:
    with Client(int8_server.address) as client:
        cash = client.embed_word("She withdrew cash from the bank", "bank")
        rates = client.embed_word("The bank raised its interest rates", "bank")
        river = client.embed_word("We had a picnic on the bank of the river", "bank")
        second = client.embed_word("bank to bank", "bank", occurrence=1)
        assert second.shape == (384,)
        with pytest.raises(WordNotFound, match="occurrence 2"):
            client.embed_word("bank to bank", "bank", occurrence=2)
        [none] = client.embed([TextInput(text="no such word", select_words=["zebra"])])
    assert none.words == () and none.vectors.shape == (0, 384)
    # the README's example: money senses 0.89 apart, money and river 0.76
    assert _cos(cash, rates) > _cos(cash, river) + 0.05


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


def test_client_raises_invalid_input(fp32_server: ThreadServer) -> None:
    with Client(fp32_server.address) as client, pytest.raises(InvalidInput) as info:
        client.embed(["ok", "x" * 100_001])
    assert info.value.field == "inputs[1].text" and "100000" in info.value.description


def test_concurrent_clients_get_the_same_vectors(
    fp32_server: ThreadServer, fp32_embedder: WordEmbedder
) -> None:
    texts = load_corpus(64)
    alone = [fp32_embedder.embed([t])[0] for t in texts]
    before = fp32_server.running.batcher.stats.batches

    def work(i: int) -> list[float]:
        with Client(fp32_server.address) as client:
            cosines = []
            for j in range(i, len(texts), 32):
                [res] = client.embed([texts[j]])
                assert [w.text for w in res.words] == [w.text for w in alone[j].words]
                cosines.extend(_cos(res.vectors, alone[j].vectors).tolist())
            return cosines

    with ThreadPoolExecutor(32) as pool:
        cosines = [c for part in pool.map(work, range(32)) for c in part]
    assert min(cosines) >= 0.9999
    stats = fp32_server.running.batcher.stats
    assert stats.batches - before < 64, "concurrent requests were micro-batched"


def test_int8_results_do_not_depend_on_batch(
    int8_server: ThreadServer, embedder: WordEmbedder
) -> None:
    # Calibrated int8 has fixed activation ranges: requests are batched together and every
    # text still gets exactly the vectors it gets alone, in process.
    assert not embedder.isolate_rows and int8_server.running.batcher.max_inflight == 2
    stats = int8_server.running.batcher.stats
    before = stats.batches
    texts = load_corpus(64, start=100)
    with ThreadPoolExecutor(16) as pool, Client(int8_server.address) as client:
        remote = list(pool.map(lambda t: client.embed([t])[0], texts))
    for text, res in zip(texts, remote):
        np.testing.assert_array_equal(res.vectors, embedder.embed([text])[0].vectors)
    assert stats.batches - before < len(texts), "concurrent requests were micro-batched"


def test_overload_is_resource_exhausted(fp32_embedder: WordEmbedder) -> None:
    server = ThreadServer(fp32_embedder, max_queue=1)
    heavy = pb.EmbedRequest(inputs=[pb.TextInput(text="long text " * 300)] * 4)
    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.WordEmbedderStub(channel)
            calls = [stub.Embed.future(heavy) for _ in range(8)]
            codes = []
            for call in calls:
                try:
                    call.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
                    assert "overloaded" in str(error.details())
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert server.running.batcher.stats.rejected_overload >= 1
    finally:
        server.stop()


def test_deadline_and_cancel_are_not_computed(fp32_embedder: WordEmbedder) -> None:
    server = ThreadServer(fp32_embedder)
    heavy = pb.EmbedRequest(inputs=[pb.TextInput(text="long text " * 400)] * 6)
    small = pb.EmbedRequest(inputs=[pb.TextInput(text=BANK)])
    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.WordEmbedderStub(channel)
            # one blocker per batch the server computes at once: the next calls queue behind
            blockers = [
                stub.Embed.future(heavy) for _ in range(server.running.batcher.max_inflight)
            ]
            time.sleep(0.05)
            cancelled = stub.Embed.future(small)
            late = stub.Embed.future(small, timeout=0.02)
            time.sleep(0.01)
            cancelled.cancel()
            with pytest.raises(grpc.RpcError) as info:
                late.result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for blocker in blockers:
                blocker.result()
            time.sleep(0.2)
            stats = server.running.batcher.stats
            # gRPC cancels an RPC whose deadline passed, so either counter may take it
            assert stats.dropped_cancelled + stats.dropped_deadline == 2
            assert stats.requests_done == len(blockers)  # only the blockers ran
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="ctxembed.v1.WordEmbedder")
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            assert len(stub.Embed(small).results) == 1
    finally:
        server.stop()


def test_health_transitions_and_reflection(fp32_embedder: WordEmbedder) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    server = ThreadServer(fp32_embedder)
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


def test_sigterm_during_load_finishes_in_flight(model_dir: Path) -> None:
    server = ProcessServer(model_dir, "--grace", "20")
    assert server.ready_s < 2.0
    heavy = pb.EmbedRequest(inputs=[pb.TextInput(text="long text " * 300)] * 4)
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.WordEmbedderStub(channel)
        in_flight = [stub.Embed.future(heavy, timeout=60) for _ in range(6)]
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        for call in in_flight:
            assert len(call.result().results) == 4  # completed, not cut off
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(heavy, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    code, log = server.finish()
    assert code == 0, log
    assert "stopping" in log and "stopped" in log and "Traceback" not in log


def test_serve_command_prints_ready_line_and_try_command(model_dir: Path) -> None:
    server = ProcessServer(model_dir)
    try:
        with Client(server.address) as client:
            assert client.info().dimension == 384
    finally:
        server.proc.send_signal(signal.SIGINT)
    code, log = server.finish()
    assert code == 0
    assert 'try: ctxembed embed "I live near the bank of America" --word bank' in log
    assert "2 parallel runs, asyncio)" in log
    assert sum("INFO" in line for line in log.splitlines()) <= 5  # no per-request logging


def test_serve_on_uvloop(model_dir: Path) -> None:
    server = ProcessServer(model_dir, "--event-loop", "uvloop")
    try:
        with Client(server.address) as client:
            assert client.embed([BANK])[0].vectors.shape == (7, 384)
    finally:
        server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0 and "parallel runs, uvloop)" in log, log


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from ctxembed.service import event_loop

    assert event_loop.resolve("asyncio") == "asyncio" and event_loop.resolve("uvloop") == "uvloop"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as if not installed
    assert event_loop.resolve("asyncio") == "asyncio"
    with pytest.raises(event_loop.EventLoopUnavailable, match="uvloop is not installed"):
        event_loop.resolve("uvloop")


def test_tls(fp32_embedder: WordEmbedder, tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    server = ThreadServer(fp32_embedder, tls_cert=cert, tls_key=key)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with Client(server.address, credentials=credentials) as client:
            assert client.embed([BANK])[0].vectors.shape == (7, 384)
        with Client(server.address, timeout=2) as plain, pytest.raises(grpc.RpcError):
            plain.info()  # plaintext is refused
    finally:
        server.stop()


def test_port_in_use_is_refused_not_shared(
    fp32_server: ThreadServer, fp32_embedder: WordEmbedder
) -> None:
    from ctxembed.service.server import ServeError

    port = fp32_server.running.port
    with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}"):
        ThreadServer(fp32_embedder, port=port)


def test_cli_embed_and_info(fp32_server: ThreadServer, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from ctxembed.cli import main

    server = ["--server", fp32_server.address]
    assert main(["embed", BANK, "--word", "bank", *server]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("'bank' [16:20] index=4 dim=384 norm=")
    assert main(["embed", BANK, "--word", "bank", "--json", *server]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert (entry["word"], entry["start"], entry["end"]) == ("bank", 16, 20)
    assert len(entry["vector"]) == 384
    assert main(["embed", BANK, "--word", "zebra", *server]) == 1
    assert "'zebra' does not occur" in capsys.readouterr().err
    assert main(["embed", "", *server]) == 1
    assert "inputs[0].text" in capsys.readouterr().err
    assert main(["info", *server]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dimension"] == 384 and info["precision"] == "fp32"
    assert main(["info", "--server", "127.0.0.1:1", "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ("UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--parallel-runs", "0", "argument --parallel-runs: must be at least 1, got 0"),
        ("--spin-after-run-us", "-5", "argument --spin-after-run-us: must be at least 0, got -5"),
        ("--port", "70000", "argument --port: must be between 0 and 65535, got 70000"),
        ("--max-wait-ms", "-1", "argument --max-wait-ms: must be at least 0, got -1"),
        ("--max-padding", "-0.5", "argument --max-padding: must be at least 0, got -0.5"),
        ("--threads", "two", "argument --threads: expected an integer, got 'two'"),
    ],
)
def test_serve_rejects_out_of_range_flags(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ctxembed.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--model-dir", "unused", flag, value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
