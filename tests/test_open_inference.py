"""The open inference protocol (``inference.GRPCInferenceService``) beside ctxembed.v1: real
calls through the project's own stubs to a real server with the real model (and transport
checks against the fake model)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fake_model import FakeModel

from ctxembed.client import Client
from ctxembed.inference import grpc_service_pb2 as pb
from ctxembed.inference import grpc_service_pb2_grpc as pb_grpc
from ctxembed.inference.wire import decode_bytes, encode_bytes
from ctxembed.runtime import TextInput, WordEmbedder
from ctxembed.v1.wire import field_violations
from testkit.servers import ThreadServer

BANK = "I live near the bank of America"
TEXTS = [BANK, "The river bank, after the storm.", "naïve café — 東京 tower"]


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ThreadServer]:
    running = ThreadServer(WordEmbedder.load(model_dir, provider="cpu", parallel_runs=2))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(server: ThreadServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def name(server: ThreadServer) -> str:
    return server.running.model.info().name


def text_request(name: str, texts: list[str], raw: bool = True, **params: Any) -> Any:
    request = pb.ModelInferRequest(model_name=name, id="req-1")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[len(texts)])
    if raw:
        request.raw_input_contents.append(encode_bytes(t.encode() for t in texts))
    else:
        tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    for key, value in params.items():
        param = request.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        else:
            param.string_param = value if isinstance(value, str) else json.dumps(value)
    return request


def outputs(response: Any) -> dict[str, Any]:
    """Every output by name, decoded from raw_output_contents (as tritonclient does): arrays,
    and lists of str for BYTES."""
    assert len(response.raw_output_contents) == len(response.outputs)
    found: dict[str, Any] = {}
    types = {"FP32": "<f4", "FP16": "<f2", "INT32": "<i4"}
    for out, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if out.datatype == "BYTES":
            found[out.name] = [b.decode() for b in decode_bytes(raw, out.name)]
            assert len(found[out.name]) == out.shape[0]
        else:
            found[out.name] = np.frombuffer(raw, types[out.datatype]).reshape(tuple(out.shape))
    return found


def test_probes_and_metadata(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=name, version="1")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="other")).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "ctxembed" and list(meta.extensions) == [
        "model_configuration",
        "statistics",
    ]
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
    assert model.name == name and list(model.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("TEXT", "BYTES", [-1]),
        ("WORDS", "BYTES", [-1]),
        ("WORDS_TEXT_INDEX", "INT32", [-1]),
    ]
    assert [(t.name, list(t.shape)) for t in model.outputs] == [
        ("VECTORS", [-1, 384]),
        ("OFFSETS", [-1, 2]),
        ("WORDS", [-1]),
        ("TEXT_INDEX", [-1]),
    ]
    config = stub.ModelConfig(pb.ModelConfigRequest(name=name)).config
    assert config.max_batch_size == 0 and config.input[0].name == "TEXT"
    assert list(config.input[0].dims) == [-1] and config.input[1].optional


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "contents"])
def test_vectors_and_offsets_equal_ctxembed_v1(
    stub: pb_grpc.GRPCInferenceServiceStub, server: ThreadServer, name: str, raw: bool
) -> None:
    response = stub.ModelInfer(text_request(name, TEXTS, raw=raw))
    assert response.model_name == name and response.id == "req-1"
    got = outputs(response)
    with Client(server.address) as client:
        expected = client.embed(TEXTS)
    words = [w for r in expected for w in r.words]
    np.testing.assert_array_equal(got["VECTORS"], np.concatenate([r.vectors for r in expected]))
    assert got["WORDS"] == [w.text for w in words]
    np.testing.assert_array_equal(got["OFFSETS"], [(w.start, w.end) for w in words])
    np.testing.assert_array_equal(
        got["TEXT_INDEX"], [i for i, r in enumerate(expected) for _ in r.words]
    )
    assert "東" in got["WORDS"] and "café" in got["WORDS"]


def test_options_travel_as_parameters(
    stub: pb_grpc.GRPCInferenceServiceStub, server: ThreadServer, name: str
) -> None:
    request = text_request(
        name,
        TEXTS[:2],
        pooling="first",
        layers=[-1, -2],
        layer_combine="concat",
        normalize=True,
        dtype="float16",
        select_words=["bank"],
        tokens=True,
    )
    response = stub.ModelInfer(request)
    got = outputs(response)
    assert response.outputs[0].datatype == "FP16" and got["VECTORS"].shape == (2, 768)
    with Client(server.address) as client:
        expected = client.embed(
            [TextInput(text=t, select_words=["bank"]) for t in TEXTS[:2]],
            pooling="first",
            layers=[-1, -2],
            layer_combine="concat",
            normalize=True,
            dtype="float16",
            include_tokens=True,
        )
    np.testing.assert_array_equal(got["VECTORS"], np.concatenate([r.vectors for r in expected]))
    assert got["WORDS"] == ["bank", "bank"]
    tokens = [t for r in expected for w in r.words for t in w.tokens]
    assert got["TOKENS"] == [t.piece for t in tokens]
    np.testing.assert_array_equal(got["TOKEN_IDS"], [t.id for t in tokens])
    np.testing.assert_array_equal(got["TOKEN_WORD_INDEX"], [0, 1])
    # only the outputs asked for
    request.outputs.add(name="VECTORS")
    assert [o.name for o in stub.ModelInfer(request).outputs] == ["VECTORS"]


def test_pre_split_words(
    stub: pb_grpc.GRPCInferenceServiceStub, server: ThreadServer, name: str
) -> None:
    words = [["I", "sat", "by", "the", "river", "bank"], ["bank", "robbers"]]
    request = pb.ModelInferRequest(model_name=name)
    flat = [w for ws in words for w in ws]
    request.inputs.add(name="WORDS", datatype="BYTES", shape=[len(flat)])
    request.inputs.add(name="WORDS_TEXT_INDEX", datatype="INT32", shape=[len(flat)])
    request.raw_input_contents.append(encode_bytes(w.encode() for w in flat))
    index = [i for i, ws in enumerate(words) for _ in ws]
    request.raw_input_contents.append(struct.pack(f"<{len(index)}i", *index))
    got = outputs(stub.ModelInfer(request))
    with Client(server.address) as client:
        expected = client.embed(words)
    np.testing.assert_array_equal(got["VECTORS"], np.concatenate([r.vectors for r in expected]))
    assert got["WORDS"] == flat


def _invalid(stub: pb_grpc.GRPCInferenceServiceStub, request: Any) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    violations = field_violations(info.value)
    assert len(violations) == 1
    return violations[0]


def test_bad_requests_name_the_field(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> None:
    def with_input(tensor_name: str, datatype: str, shape: list[int], raw: bytes) -> Any:
        request = pb.ModelInferRequest(model_name=name)
        request.inputs.add(name=tensor_name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
        return request

    text = encode_bytes([b"bank"])
    cases = [
        (with_input("TEXTS", "BYTES", [1], text), "inputs[TEXTS]"),
        (with_input("TEXT", "FP32", [1], text), "inputs[TEXT].datatype"),
        (with_input("TEXT", "BYTES", [2], text), "inputs[TEXT]"),
        (with_input("TEXT", "BYTES", [1, 1], text), "inputs[TEXT].shape"),
        (with_input("TEXT", "BYTES", [1], text[:-1]), "raw_input_contents[0]"),
        (with_input("TEXT", "BYTES", [1], encode_bytes([b"\xff"])), "inputs[TEXT]"),
        (with_input("TEXT", "BYTES", [0], b""), "inputs"),
        (text_request(name, ["bank"], pooling="median"), "parameters.pooling"),
        (text_request(name, ["bank"], layers="[-1, "), "parameters.layers"),
        (text_request(name, ["bank"], layers=[99]), "layers[0]"),
        (text_request(name, ["bank"], normalize="yes"), "parameters.normalize"),
        (text_request(name, ["bank"], temperature="hot"), "parameters.temperature"),
        (text_request(name, ["x" * 200_000]), "inputs[0].text"),
        (text_request(name, ["bank"] * 10_000), "inputs"),
    ]
    for request, field in cases:
        got, description = _invalid(stub, request)
        assert got == field, (field, got, description)
    assert _invalid(stub, text_request("", ["bank"]))[0] == "model_name"
    asked = text_request(name, ["bank"])
    asked.outputs.add(name="LOGITS")
    assert _invalid(stub, asked)[0] == "outputs[LOGITS]"
    # Triton's own scheduling parameters are accepted and ignored
    ignored = text_request(name, ["bank"], priority=1, triton_enable_empty_final_response=True)
    assert outputs(stub.ModelInfer(ignored))["WORDS"] == ["bank"]


def test_unknown_model_is_not_found_naming_the_served_ones(
    stub: pb_grpc.GRPCInferenceServiceStub, name: str
) -> None:
    for call in (
        lambda: stub.ModelInfer(text_request("nope", ["bank"])),
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")),
        lambda: stub.ModelConfig(pb.ModelConfigRequest(name="nope")),
        lambda: stub.ModelInfer(pb.ModelInferRequest(model_name=name, model_version="7")),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert name in (info.value.details() or "")


def test_statistics_count_the_requests(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> None:
    before = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name)).model_stats[0]
    stub.ModelInfer(text_request(name, TEXTS))
    after = stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats[0]
    assert after.name == name and after.version == "1"
    assert after.inference_count == before.inference_count + len(TEXTS)
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.last_inference >= before.last_inference > 0


def test_malformed_bytes_are_invalid_argument(server: ThreadServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", lambda b: b, lambda b: b
        )
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_auth_guards_inference_not_the_probes(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token-123\n")
    server = ThreadServer(FakeModel(), auth_token_file=tokens)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            name = server.running.model.info().name
            assert stub.ServerLive(pb.ServerLiveRequest()).live
            assert stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
            assert stub.ModelMetadata(pb.ModelMetadataRequest(name=name)).name == name
            for call in (
                lambda: stub.ModelInfer(text_request(name, ["bank"])),
                lambda: stub.ModelStatistics(pb.ModelStatisticsRequest()),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            token = (("authorization", "Bearer secret-token-123"),)
            response = stub.ModelInfer(text_request(name, ["bank river"]), metadata=token)
            assert outputs(response)["WORDS"] == ["bank", "river"]
    finally:
        server.stop()


def test_draining_server_is_not_ready_and_refuses_inference() -> None:
    server = ThreadServer(FakeModel())
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            name = server.running.model.info().name
            assert server.running.drain is not None
            server.running.drain.closed = True
            assert stub.ServerLive(pb.ServerLiveRequest()).live
            assert not stub.ServerReady(pb.ServerReadyRequest()).ready
            assert not stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(text_request(name, ["bank"]))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            server.running.drain.closed = False
    finally:
        server.stop()
