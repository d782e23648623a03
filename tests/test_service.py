"""The gRPC service over real calls to a real server on an ephemeral port."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import wait_for

from ctxembed.client import CHANNEL_OPTIONS, Client, WordNotFound
from ctxembed.kernels import library
from ctxembed.runtime import CharSpan, TextInput, WordEmbedder
from ctxembed.runtime.cpu import physical_cores
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc
from testkit.corpus import load_corpus
from testkit.servers import ProcessServer, ThreadServer

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


def test_model_info(fp32_server: ThreadServer) -> None:
    with Client(fp32_server.address) as client:
        info = client.info()
    assert info.name and info.dimension == 384 and info.num_layers == 6
    assert info.model_type == "bert" and info.architecture == "BertModel"
    assert info.layers_available == tuple(range(7))
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


def test_sigterm_during_load_finishes_in_flight(model_dir: Path) -> None:
    from test_metrics import scrape

    server = ProcessServer(model_dir, "--grace", "20", "--metrics-port", "0")
    [metrics] = re.findall(r"metrics on (http://\S+/metrics)", "".join(server.lines))
    heavy = pb.EmbedRequest(inputs=[pb.TextInput(text="long text " * 300)] * 4)
    with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.WordEmbedderStub(channel)
        in_flight = [stub.Embed.future(heavy, timeout=60) for _ in range(6)]
        name = pb_grpc.WordEmbedderStub(channel).GetModelInfo(pb.GetModelInfoRequest()).model_name
        received = ("ctxembed_requests_in_progress", (("model", name),))
        wait_for(lambda: scrape(metrics).get(received) == 6, what="all six calls received")
        server.proc.send_signal(signal.SIGTERM)
        for call in in_flight:
            assert len(call.result().results) == 4  # completed, not cut off
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
            info = client.info()
            assert info.dimension == 384
            assert info.fused_kernels == (library() is not None)  # GetModelInfo says so
    finally:
        server.proc.send_signal(signal.SIGINT)
    code, log = server.finish()
    assert code == 0
    assert 'try: ctxembed embed "I live near the bank of America" --word bank' in log
    kernels = ", fused kernels" if library() is not None else ""
    assert f"{physical_cores()} parallel runs{kernels}, asyncio)" in log
    assert sum("INFO" in line for line in log.splitlines()) <= 5  # no per-request logging


def test_serve_on_uvloop(model_dir: Path) -> None:
    server = ProcessServer(model_dir, "--event-loop", "uvloop")
    try:
        with Client(server.address) as client:
            assert client.embed([BANK])[0].vectors.shape == (7, 384)
    finally:
        server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0 and re.search(r"parallel runs(, fused kernels)?, uvloop\)", log), log


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
