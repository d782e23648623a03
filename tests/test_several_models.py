"""Several models in one server: MiniLM and a tiny BERT side by side, over both protocols,
under concurrent load, with results equal to two single-model servers'."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from test_metrics import scrape

from ctxembed.cli import main
from ctxembed.client import Client
from ctxembed.inference import grpc_service_pb2 as v2
from ctxembed.inference import grpc_service_pb2_grpc as v2_grpc
from ctxembed.inference.wire import encode_bytes
from ctxembed.runtime import InvalidInput, WordEmbedder
from ctxembed.runtime.cpu import cpu_budget
from testkit.corpus import load_corpus
from testkit.servers import ProcessServer, ThreadServer

TEXTS = load_corpus(24)


@pytest.fixture(scope="module")
def tiny_dir(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("several") / "tiny"
    args = ["export", "--model", str(tiny_source), "--out", str(out), "--quantize", "none"]
    assert main(args) == 0
    return out


def _load(folder: Path) -> WordEmbedder:
    return WordEmbedder.load(folder, provider="cpu", parallel_runs=1, threads=1)


@pytest.fixture(scope="module")
def both(model_dir: Path, tiny_dir: Path) -> Iterator[ThreadServer]:
    server = ThreadServer({"minilm": _load(model_dir), "tiny": _load(tiny_dir)}, metrics_port=0)
    yield server
    server.stop()


def test_results_equal_single_model_servers_under_concurrent_load(
    both: ThreadServer, model_dir: Path, tiny_dir: Path
) -> None:
    expected = {}
    for name, folder in (("minilm", model_dir), ("tiny", tiny_dir)):
        alone = ThreadServer(_load(folder))
        try:
            with Client(alone.address) as client:
                expected[name] = [client.embed([t])[0] for t in TEXTS]
        finally:
            alone.stop()

    def call(job: tuple[str, int]) -> tuple[str, int, np.ndarray]:
        name, i = job
        with Client(both.address, model=name) as client:
            return name, i, client.embed([TEXTS[i]])[0].vectors

    jobs = [(name, i) for i in range(len(TEXTS)) for name in ("minilm", "tiny")] * 2
    with ThreadPoolExecutor(16) as pool:
        for name, i, vectors in pool.map(call, jobs):
            np.testing.assert_array_equal(vectors, expected[name][i].vectors)
    assert {n: both.running.registry.get(n).batcher.stats.texts for n in ("minilm", "tiny")} == {
        "minilm": 2 * len(TEXTS),
        "tiny": 2 * len(TEXTS),
    }


def test_models_are_listed_and_routed_by_name(both: ThreadServer) -> None:
    with Client(both.address) as client:
        models = client.list_models()
        assert [(m.name, m.dimension) for m in models] == [("minilm", 384), ("tiny", 64)]
        default = client.info()
        assert default.dimension == 384  # the first model is the default
        assert client.embed(["river bank"])[0].vectors.shape == (2, 384)
    with Client(both.address, model="tiny") as client:
        assert client.info().dimension == 64
        assert client.embed(["river bank"])[0].vectors.shape == (2, 64)
        for service in ("", "ctxembed.v1.WordEmbedder", "ctxembed.v1.WordEmbedder/tiny"):
            assert client.health(service) == "SERVING"
    with Client(both.address, model="nope") as client:
        for call in (lambda: client.embed(["bank"]), client.info):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "minilm, tiny" in (info.value.details() or "")


def test_the_open_inference_protocol_serves_each_model(both: ThreadServer) -> None:
    with grpc.insecure_channel(both.address) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        for name, dim in (("minilm", 384), ("tiny", 64)):
            assert stub.ModelReady(v2.ModelReadyRequest(name=name)).ready
            request = v2.ModelInferRequest(model_name=name)
            request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
            request.raw_input_contents.append(encode_bytes([b"river bank"]))
            response = stub.ModelInfer(request)
            assert response.model_name == name and list(response.outputs[0].shape) == [2, dim]
        stats = stub.ModelStatistics(v2.ModelStatisticsRequest())
        assert [s.name for s in stats.model_stats] == ["minilm", "tiny"]


def test_metrics_carry_the_model_label(both: ThreadServer) -> None:
    with Client(both.address, model="tiny") as client:
        client.embed(["a b c"])
    m = scrape(f"http://127.0.0.1:{both.running.metrics_port}/metrics")
    tiny = [k for k in m if k[0] == "ctxembed_words_total" and ("model", "tiny") in k[1]]
    assert tiny and m[tiny[0]] >= 3
    models = {dict(k[1])["model"] for k in m if k[0] == "ctxembed_model_info"}
    assert models == {"minilm", "tiny"}


def test_serve_command_with_two_models_and_a_per_model_limit(
    model_dir: Path, tiny_dir: Path
) -> None:
    server = ProcessServer(
        None,  # --model instead of --model-dir
        "--model", f"minilm={model_dir}", "--model", f"tiny={tiny_dir}",
        "--model-setting", "tiny.max_inputs_per_request=2",
    )  # fmt: skip
    try:
        ready = next(line for line in server.lines if "ctxembed serving" in line)
        assert re.search(r"serving minilm \(int8.* and tiny \(fp32", ready), ready
        share = max(1, cpu_budget().cores // 2)  # the cores split between the two
        with Client(server.address, model="tiny") as client:
            assert client.info().threads == share
            with pytest.raises(InvalidInput) as info:
                client.embed(["a", "b", "c"])
            assert info.value.field == "inputs" and "the limit is 2" in str(info.value)
        with Client(server.address, model="minilm") as client:
            assert len(client.embed(["a", "b", "c"])) == 3  # its own limit
    finally:
        server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0, log
