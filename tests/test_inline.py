"""A lone short request on an idle batcher runs on the event loop (no executor thread hop);
concurrency, long requests, several models and ``inline_max_tokens=0`` keep the executor."""

from __future__ import annotations

import argparse
import asyncio
import threading

import numpy as np
import pytest
from fake_model import POISON, FakeModel, word_vector

from ctxembed.cli.serve import add_serve, settings_from
from ctxembed.runtime.errors import InvalidInput
from ctxembed.runtime.types import Limits, TextInput
from ctxembed.service.batcher import PROBE_EVERY, QUIET_BATCHES, MicroBatcher
from ctxembed.service.server import _load_models
from ctxembed.service.settings import BatcherSettings, ServerSettings
from ctxembed.service.status import DeadlineExpired
from ctxembed.v1.wire import DecodedRequest

LONE = DecodedRequest([TextInput(text="river bank")])


def _loop_thread() -> str:
    return threading.current_thread().name


async def _lone_calls(batcher: MicroBatcher, n: int) -> None:
    for _ in range(n):
        [res] = await batcher.submit(LONE, None)
        np.testing.assert_array_equal(res.vectors[1], word_vector("bank", 1, 2))


def test_lone_requests_run_inline_after_quiet_batches_with_periodic_probes() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher = MicroBatcher(model)
        batcher.start()
        try:
            await _lone_calls(batcher, QUIET_BATCHES + 2 * PROBE_EVERY)
        finally:
            await batcher.close()
        loop_thread = _loop_thread()
        inline = [name == loop_thread for name in model.forward_threads]
        # the first batches take the executor; then all but every PROBE_EVERY-th run inline
        assert inline[:QUIET_BATCHES] == [False] * QUIET_BATCHES
        tail = inline[QUIET_BATCHES:]
        assert tail == [(i + 1) % PROBE_EVERY != 0 for i in range(len(tail))]
        stats = batcher.stats
        assert stats.inline_runs == sum(inline) == 2 * (PROBE_EVERY - 1)
        assert stats.requests_done == len(inline) and stats.requests_failed == 0
        assert stats.batches == len(inline) and stats.texts == len(inline)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("settings", "request_"),
    [
        (BatcherSettings(inline_max_tokens=0), LONE),
        # about 300 estimated tokens: over the default cap of 128
        (BatcherSettings(), DecodedRequest([TextInput(text="word " * 200)])),
    ],
    ids=["turned-off", "long-request"],
)
def test_off_or_long_requests_keep_the_executor(
    settings: BatcherSettings, request_: DecodedRequest
) -> None:
    async def scenario() -> None:
        model = FakeModel(limits=Limits(max_tokens_per_request=100_000))
        batcher = MicroBatcher(model, settings)
        batcher.start()
        try:
            for _ in range(QUIET_BATCHES + PROBE_EVERY):
                await batcher.submit(request_, None)
        finally:
            await batcher.close()
        assert _loop_thread() not in model.forward_threads
        assert batcher.stats.inline_runs == 0

    asyncio.run(scenario())


def test_concurrency_seen_by_a_probe_stops_inline_runs() -> None:
    """While the probe computes on the executor, other requests queue: they form a batch, and
    no request runs inline until the batches have been quiet again."""

    async def scenario() -> None:
        model = FakeModel()
        batcher = MicroBatcher(model)
        batcher.start()
        try:
            await _lone_calls(batcher, QUIET_BATCHES + PROBE_EVERY - 1)  # the next is a probe
            model.gate.clear()
            probe = asyncio.ensure_future(batcher.submit(LONE, None))
            while len(model.forward_threads) < QUIET_BATCHES + PROBE_EVERY:
                await asyncio.sleep(0.005)
            company = [asyncio.ensure_future(batcher.submit(LONE, None)) for _ in range(3)]
            await asyncio.sleep(0.05)
            assert batcher.queued == 3  # queued behind the probe, not run inline
            model.gate.set()
            await asyncio.gather(probe, *company)
            before = batcher.stats.inline_runs
            await _lone_calls(batcher, QUIET_BATCHES)  # the executor again, until quiet
            assert batcher.stats.inline_runs == before
            await _lone_calls(batcher, 1)
            assert batcher.stats.inline_runs == before + 1
        finally:
            model.gate.set()
            await batcher.close()
        assert 3 in batcher.stats.batch_sizes

    asyncio.run(scenario())


@pytest.mark.parametrize("stage", ["prepare", "forward", "finish"])
def test_an_inline_request_fails_alone_and_the_batcher_goes_on(stage: str) -> None:
    async def scenario() -> None:
        model = FakeModel(fail_stage=stage)
        batcher = MicroBatcher(model)
        batcher.start()
        try:
            await _lone_calls(batcher, QUIET_BATCHES)
            with pytest.raises(RuntimeError, match=f"{stage} failed on purpose"):
                await batcher.submit(DecodedRequest([TextInput(text=f"a {POISON}")]), None)
            with pytest.raises(InvalidInput) as info:  # a bad input names its field
                await batcher.submit(DecodedRequest([TextInput(text="")]), None)
            assert info.value.field.startswith("inputs[0]")
            await _lone_calls(batcher, 2)
        finally:
            await batcher.close()
        assert batcher.stats.inline_runs == 4
        assert batcher.stats.requests_failed == 2
        assert batcher.stats.requests_done == QUIET_BATCHES + 2

    asyncio.run(scenario())


def test_several_models_run_nothing_inline_unless_a_model_setting_says() -> None:
    """One event loop serves them all: one model's inline run would hold the others' calls."""
    parser = argparse.ArgumentParser()
    add_serve(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model-setting", "b.inline-max-tokens=64"])
    settings, _ = settings_from(args)
    served = _load_models(settings, {"a": FakeModel(), "b": FakeModel()})
    assert [s.batcher.inline_max_tokens for s in served] == [0, 64]
    [alone] = _load_models(ServerSettings(), FakeModel())
    assert alone.batcher.inline_max_tokens == BatcherSettings().inline_max_tokens == 128


def test_a_request_past_its_deadline_is_not_computed_inline() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher = MicroBatcher(model)
        batcher.start()
        try:
            await _lone_calls(batcher, QUIET_BATCHES)
            with pytest.raises(DeadlineExpired):
                await batcher.submit(LONE, timeout=0.0)
        finally:
            await batcher.close()
        assert batcher.stats.inline_runs == 0 and batcher.stats.dropped_deadline == 1
        assert model.texts_computed == QUIET_BATCHES

    asyncio.run(scenario())
