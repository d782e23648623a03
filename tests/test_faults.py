"""Server faults found by review, each pinned: requests fail alone, a caller that has gone is
told why (never INTERNAL), the queue's memory is bounded, and streams always end.

A fake model behind the stage interface (``fake_model.py``): no export, seconds to run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from fake_model import POISON, FakeModel, word_vector

from ctxembed.client import CHANNEL_OPTIONS
from ctxembed.runtime import TextInput
from ctxembed.service.batcher import MicroBatcher
from ctxembed.service.registry import ModelRegistry, ServedModel
from ctxembed.service.servicer import WordEmbedderServicer
from ctxembed.service.settings import BatcherSettings
from ctxembed.service.status import Cancelled, DeadlineExpired, status_for
from ctxembed.v1 import embedder_pb2 as pb
from ctxembed.v1 import embedder_pb2_grpc as pb_grpc
from ctxembed.v1.wire import DecodedRequest
from testkit.servers import ThreadServer


def _request(text: str) -> pb.EmbedRequest:
    return pb.EmbedRequest(inputs=[pb.TextInput(text=text)])


@pytest.mark.parametrize("stage", ["prepare", "forward", "finish"])
def test_one_bad_request_fails_alone(stage: str, caplog: pytest.LogCaptureFixture) -> None:
    """Requests batched with one that breaks a stage get their results; it gets INTERNAL."""
    model = FakeModel(fail_stage=stage)
    model.gate.clear()
    server = ThreadServer(model)
    try:
        with grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.WordEmbedderStub(channel)
            blocker = stub.Embed.future(_request("first"))
            assert model.entered.wait(10)
            # these three queue behind the blocker and run as one batch
            before = stub.Embed.future(_request("river bank"))
            bad = stub.Embed.future(_request(f"the {POISON} bank"))
            after = stub.Embed.future(_request("money bank"))
            deadline = time.monotonic() + 10
            while server.running.batcher.queued < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            model.gate.set()
            blocker.result(10)
            for call, text in ((before, "river bank"), (after, "money bank")):
                [res] = call.result(10).results
                np.testing.assert_array_equal(
                    np.frombuffer(res.vectors.data, dtype=np.float32).reshape(-1, 4)[1],
                    word_vector("bank", 1, 2),
                )
                assert [w.text for w in res.words] == text.split()
            with pytest.raises(grpc.RpcError) as info:
                bad.result(10)
            assert info.value.code() == grpc.StatusCode.INTERNAL
        assert server.running.batcher.stats.batches >= 2
    finally:
        model.gate.set()
        server.stop()
    if stage == "forward":  # the batched run failed, then each request ran alone
        assert any("running each alone" in r.message for r in caplog.records)


def test_abandoned_batch_tells_a_caller_still_listening_why() -> None:
    """A batch stopped between runs because its callers' deadlines passed answers
    DEADLINE_EXCEEDED (gRPC may not have cancelled the call yet), never INTERNAL."""

    async def scenario() -> None:
        model = FakeModel(seconds_per_text=0.05)
        batcher = MicroBatcher(model)
        batcher.start()
        try:
            call = DecodedRequest([TextInput(text=f"text {i}") for i in range(40)])
            with pytest.raises(DeadlineExpired) as info:
                await batcher.submit(call, timeout=0.2)
            assert batcher.stats.abandoned_batches == 1
            status = status_for(info.value)
            assert status is not None and status.code == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            await batcher.close()

    asyncio.run(scenario())
    status = status_for(Cancelled())
    assert status is not None and status.code == grpc.StatusCode.CANCELLED


def test_cancelled_jobs_free_their_inputs_and_tokens_bound_the_queue() -> None:
    async def scenario() -> None:
        model = FakeModel()
        model.gate.clear()
        batcher = MicroBatcher(model, BatcherSettings(max_queued_tokens=1000))
        batcher.start()
        try:
            running = asyncio.ensure_future(batcher.submit(DecodedRequest([TextInput("x")]), None))
            while not model.entered.is_set():
                await asyncio.sleep(0.01)
            big = DecodedRequest([TextInput(text="word " * 600)])  # about 900 tokens
            queued = asyncio.ensure_future(batcher.submit(big, None))
            await asyncio.sleep(0.05)
            assert batcher.queued == 1 and batcher.queued_tokens > 800
            with pytest.raises(Exception, match="tokens already queued, the limit is 1000"):
                await batcher.submit(DecodedRequest([TextInput(text="word " * 100)]), None)
            assert batcher.jobs_in_queue == 1
            [job] = list(batcher._queue._queue)  # type: ignore[attr-defined]
            queued.cancel()
            await asyncio.sleep(0)
            assert job.call is None  # the inputs are freed at once, not when dequeued
            assert batcher.queued == 0 and batcher.queued_tokens == 0
            small = asyncio.ensure_future(
                batcher.submit(DecodedRequest([TextInput(text="word " * 100)]), None)
            )
            await asyncio.sleep(0.05)
            model.gate.set()
            await running
            assert len((await small)[0].words) == 100
        finally:
            model.gate.set()
            await batcher.close()

    asyncio.run(scenario())


def test_stream_ends_when_its_reader_fails(caplog: pytest.LogCaptureFixture) -> None:
    """A request iterator that raises ends the stream with an error instead of hanging."""

    class Context:
        def time_remaining(self) -> float | None:
            return None

        def peer(self) -> str:
            return "test"

        async def abort_with_status(self, status: grpc.Status) -> None:
            raise RuntimeError(f"aborted: {status.code.name}")

    async def requests() -> AsyncIterator[pb.EmbedRequest]:
        yield _request("river bank")
        raise ConnectionResetError("the client's stream broke")

    async def scenario() -> list[pb.EmbedResponse]:
        model = FakeModel()
        batcher = MicroBatcher(model)
        batcher.start()
        servicer = WordEmbedderServicer(ModelRegistry([ServedModel("fake", model, batcher)]))
        got: list[pb.EmbedResponse] = []
        try:
            with pytest.raises(RuntimeError, match="aborted: INTERNAL"):
                async for response in servicer.EmbedStream(requests(), Context()):  # type: ignore[arg-type]
                    got.append(response)
        finally:
            await batcher.close()
        return got

    with caplog.at_level(logging.ERROR):
        got = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert len(got) == 1 and len(got[0].results) == 1  # what was read was answered


def test_clients_that_go_away_leave_no_error_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Streams cut mid-call (overloaded requests in flight among them) are normal traffic: no
    ERROR line, no "Task exception was never retrieved"."""
    import gc

    model = FakeModel(seconds_per_text=0.02)
    server = ThreadServer(model, batcher=BatcherSettings(max_queue=4))
    requests = [_request(f"river bank {i}") for i in range(40)]
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(5):
                channel = grpc.insecure_channel(server.address, options=CHANNEL_OPTIONS)
                stub = pb_grpc.WordEmbedderStub(channel)
                streams = [stub.EmbedStream(iter(requests)) for _ in range(10)]
                for stream in streams[:3]:
                    next(stream)
                channel.close()  # every stream is cut mid-call
            time.sleep(0.5)
            server.call(asyncio.sleep(0))
            server.loop.call_soon_threadsafe(gc.collect)
            time.sleep(0.2)
    finally:
        server.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert server.running.batcher.stats.rejected_overload > 0  # overloads were in flight


def test_streams_have_no_overall_deadline_and_send_as_they_go() -> None:
    """The client's per-call timeout does not cut a long bulk stream, and the async client
    sends each request as its batch is read (a batch may wait on an earlier result)."""
    from ctxembed.client import AsyncClient, Client

    server = ThreadServer(FakeModel(seconds_per_text=0.1))
    try:
        with Client(server.address, timeout=0.3) as client:  # the stream takes about 1 s
            got = list(client.embed_stream([[f"bank {i}"] for i in range(10)]))
        assert len(got) == 10

        async def lazy() -> list[str]:
            first_answered = asyncio.Event()

            async def batches() -> AsyncIterator[list[str]]:
                yield ["river bank"]
                await asyncio.wait_for(first_answered.wait(), 5)  # only after the first result
                yield ["money bank"]

            seen = []
            async with AsyncClient(server.address) as client:
                async for results in client.embed_stream(batches()):
                    assert isinstance(results, list)
                    seen.append(results[0].words[0].text)
                    first_answered.set()
            return seen

        assert asyncio.run(lazy()) == ["river", "money"]
    finally:
        server.stop()
