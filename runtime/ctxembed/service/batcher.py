"""Dynamic micro-batching: many concurrent requests share one schedule of ONNX runs.

Requests queue on the event loop; one task drains the queue into a batch until the token budget
is reached, or the batch is as large as the previous one, or ``max_wait`` passes, then runs
prepare → forward → finish for the whole batch in an executor thread, up to ``max_inflight``
batches at once (ONNX Runtime has its own threads; see ``ModelSession``). A lone client never
waits: the wait applies only while the previous batch showed concurrency, and a short request
that finds the batcher idle runs on the event loop at once, without the executor thread's round
trip (``inline_max_tokens``). Cancelled requests
and requests whose deadline passed are dropped before they run, and free their inputs and their
place in the queue at once; a batch whose every caller has gone stops between ONNX runs; a full
queue (by requests or by estimated tokens) refuses new requests instead of growing; a request
whose response could not be sent is refused before it is computed. Requests fail alone: an error
in one request's prepare or finish fails that request, and a failed batched run is retried with
each request alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ctxembed.runtime.errors import Abandoned, InvalidInput
from ctxembed.runtime.stages import PreparedInputs, WordEmbeddingModel
from ctxembed.runtime.types import WordEmbeddings
from ctxembed.service.metrics import ModelMetrics
from ctxembed.service.settings import BatcherSettings
from ctxembed.service.status import Cancelled, DeadlineExpired, Overloaded
from ctxembed.v1.wire import DecodedRequest

log = logging.getLogger("ctxembed.service")

# Rough tokens per character, only for the flush decision (forward() buckets by real tokens).
TOKENS_PER_CHAR = 0.3
# Inline runs start after this many executor batches in a row had no company (4 still let 8% of
# requests run inline under 2 closed-loop clients, where they cost ~5% throughput), and every
# PROBE_EVERY-th lone request still takes the executor: while it computes the loop is free, so
# clients that arrive meanwhile show (an inline run hides them: the loop is busy).
QUIET_BATCHES = 8
PROBE_EVERY = 8


@dataclass
class BatcherStats:
    """Counters and cumulative stage times (seconds), for tests, benchmarks and ops."""

    batches: int = 0
    requests_done: int = 0
    requests_failed: int = 0
    dropped_cancelled: int = 0
    dropped_deadline: int = 0
    rejected_overload: int = 0
    abandoned_batches: int = 0  # stopped between ONNX runs: every caller had gone
    inline_runs: int = 0  # lone requests computed on the event loop (inline_max_tokens)
    texts: int = 0
    queue_s: float = 0.0
    prepare_s: float = 0.0
    run_s: float = 0.0
    pool_s: float = 0.0
    serialize_s: float = 0.0
    last_done_unix_ms: int = 0  # when a request last completed (Triton's last_inference)
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))  # recent only

    def snapshot(self) -> dict[str, float | int]:
        return {k: v for k, v in vars(self).items() if not isinstance(v, deque)}


@dataclass
class _QueuedRequest:
    call: DecodedRequest | None  # None once its caller has gone: the inputs are freed at once
    future: asyncio.Future[list[WordEmbeddings]]
    deadline: float | None  # time.monotonic() by which the client stops waiting
    enqueued: float
    est_tokens: int
    queued: bool = True  # counted in MicroBatcher.queued until dequeued or cancelled

    def gone(self, now: float) -> bool:
        """The caller no longer waits (cancelled, or its deadline passed). Read from the
        executor thread too: a stale answer only delays the stop to the next ONNX run."""
        return self.future.done() or self.expired(now)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def gone_error(self) -> Exception:
        """What a caller that has gone is told, should it still be listening."""
        return DeadlineExpired() if self.expired(time.monotonic()) else Cancelled()


class MicroBatcher:
    def __init__(self, model: WordEmbeddingModel, settings: BatcherSettings | None = None) -> None:
        settings = settings or BatcherSettings()
        self.model = model
        self.max_batch_tokens = settings.max_batch_tokens
        self.max_wait = settings.max_wait_ms / 1000.0
        self.max_queue = settings.max_queue
        self.max_queued_tokens = settings.max_queued_tokens
        self.max_response_bytes = settings.max_response_bytes
        self.inline_max_tokens = settings.inline_max_tokens
        self._dimension = model.info().dimension
        # Batches computed at once: one batch's tokenize and pool (Python, holding the GIL)
        # overlap another's ONNX runs, instead of leaving the cores idle between runs.
        self.max_inflight = settings.max_inflight or model.parallel_runs
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_QueuedRequest] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(self.max_inflight, thread_name_prefix="ctxembed-run")
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._last_batch = 1
        self._pending = 0  # queued jobs whose caller still waits
        self._pending_tokens = 0  # their estimated tokens (what max_queued_tokens limits)
        self._computing = 0  # batches on the executor now
        self._quiet = 0  # executor batches in a row that ran alone (see _alone)
        self._lone = 0  # lone requests since the executor batches went quiet
        self.metrics: ModelMetrics | None = None  # set by the server when --metrics-port is on

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(asyncio.CancelledError())
        self._executor.shutdown(wait=True)

    @property
    def queued(self) -> int:
        """Queued requests whose callers still wait (what ``max_queue`` limits)."""
        return self._pending

    @property
    def jobs_in_queue(self) -> int:
        """Jobs in the queue, with those whose callers have gone until the batcher reaches them."""
        return self._queue.qsize()

    @property
    def queued_tokens(self) -> int:
        """Estimated tokens of those requests (what ``max_queued_tokens`` limits)."""
        return self._pending_tokens

    def _unqueue(self, job: _QueuedRequest) -> None:
        if job.queued:
            job.queued = False
            self._pending -= 1
            self._pending_tokens -= job.est_tokens

    def _release(self, job: _QueuedRequest) -> None:
        """The caller has its answer or has gone: leave the count, drop the inputs."""
        self._unqueue(job)
        job.call = None

    async def submit(self, call: DecodedRequest, timeout: float | None) -> list[WordEmbeddings]:
        """Queue a request and wait for its results; raises Overloaded when the queue is full."""
        est_tokens = int(call.num_chars * TOKENS_PER_CHAR) + 2 * len(call.inputs)
        if self._pending >= self.max_queue:
            self.stats.rejected_overload += 1
            raise Overloaded(f"{self.max_queue} requests already queued")
        # A lone request larger than the budget still runs (its own limits then apply).
        if self._pending and self._pending_tokens + est_tokens > self.max_queued_tokens:
            self.stats.rejected_overload += 1
            raise Overloaded(
                f"about {self._pending_tokens} tokens already queued, the limit is"
                f" {self.max_queued_tokens}"
            )
        # (a request whose deadline has passed takes the queue, which answers it at once)
        live = timeout is None or timeout > 0
        if est_tokens <= self.inline_max_tokens and live and self._alone():
            return self._run_inline(call, est_tokens)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        job = _QueuedRequest(
            call, loop.create_future(), None if timeout is None else now + timeout, now, est_tokens
        )
        # A cancelled RPC cancels the future: the job leaves the count and frees its inputs at
        # once, and is skipped when the batcher reaches it.
        job.future.add_done_callback(lambda _: self._release(job))
        self._pending += 1
        self._pending_tokens += est_tokens
        self._queue.put_nowait(job)
        return await job.future

    def _alone(self) -> bool:
        """Whether a request may run inline: nothing queued or computing, the recent executor
        batches ran alone, and this is not the periodic probe (see QUIET_BATCHES)."""
        if self._pending or self._computing or self._quiet < QUIET_BATCHES:
            return False
        self._lone += 1
        return self._lone % PROBE_EVERY != 0

    def _run_inline(self, call: DecodedRequest, est_tokens: int) -> list[WordEmbeddings]:
        """Compute a lone, short request here, on the event loop (BatcherSettings says why).
        It cannot be abandoned part-way: it is one short run."""
        future: asyncio.Future[list[WordEmbeddings]] = asyncio.get_running_loop().create_future()
        job = _QueuedRequest(call, future, None, time.monotonic(), est_tokens, queued=False)
        self.stats.inline_runs += 1
        if self.metrics is not None:
            self.metrics.record_stage("queue", 0.0)
        try:
            [outcome] = self._account([job], *self._compute([job]))
        except Exception:
            log.exception("batch failed")
            self.stats.requests_failed += 1
            raise
        self._count(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _count(self, outcome: list[WordEmbeddings] | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.stats.requests_failed += 1
        else:
            self.stats.requests_done += 1
            self.stats.last_done_unix_ms = int(time.time() * 1000)

    async def _collect(self) -> list[_QueuedRequest]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        tokens = batch[0].est_tokens
        flush_at = loop.time() + self.max_wait
        while tokens < self.max_batch_tokens:
            if not self._queue.empty():
                job = self._queue.get_nowait()
            elif len(batch) >= self._last_batch or loop.time() >= flush_at:
                break
            else:
                try:
                    job = await asyncio.wait_for(self._queue.get(), flush_at - loop.time())
                except TimeoutError:
                    break
            batch.append(job)
            tokens += job.est_tokens
        return batch

    async def _run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.max_inflight)
        while True:
            await slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                slots.release()
                raise
            now = time.monotonic()
            live = []
            for job in batch:
                self._unqueue(job)
                if job.future.done():  # cancelled by the client
                    self.stats.dropped_cancelled += 1
                elif job.deadline is not None and now >= job.deadline:
                    self.stats.dropped_deadline += 1
                    job.future.set_exception(DeadlineExpired())
                else:
                    live.append(job)
                    self.stats.queue_s += now - job.enqueued
                    if self.metrics is not None:
                        self.metrics.record_stage("queue", now - job.enqueued)
            self._last_batch = max(1, len(batch))
            if not live:
                slots.release()
                continue
            task = loop.create_task(self._deliver(live))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _deliver(self, live: Sequence[_QueuedRequest]) -> None:
        outcomes = await self._execute(live)
        company = len(live) > 1 or self._pending or self._computing
        self._quiet, self._lone = (0, 0) if company else (self._quiet + 1, self._lone)
        for job, outcome in zip(live, outcomes):
            if job.future.done():
                continue
            self._count(outcome)
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    async def _execute(
        self, jobs: Sequence[_QueuedRequest]
    ) -> list[list[WordEmbeddings] | Exception]:
        loop = asyncio.get_running_loop()
        self._computing += 1
        try:
            computed = await loop.run_in_executor(self._executor, self._compute, jobs)
        except Abandoned:  # every caller left while it ran: tell any still listening why
            self.stats.abandoned_batches += 1
            return [job.gone_error() for job in jobs]
        except Exception as exc:  # a bug outside the per-request steps: keep serving
            log.exception("batch failed")
            return [exc] * len(jobs)
        finally:
            self._computing -= 1
        return self._account(jobs, *computed)

    def _account(
        self,
        jobs: Sequence[_QueuedRequest],
        outcomes: list[list[WordEmbeddings] | Exception],
        times: tuple[float, float, float, int],
    ) -> list[list[WordEmbeddings] | Exception]:
        """Count a computed batch in the stats and metrics; its outcomes, unchanged. Counted on
        the loop: batches in flight at once would race in their threads."""
        prepare_s, run_s, pool_s, texts = times
        self.stats.prepare_s += prepare_s
        self.stats.run_s += run_s
        self.stats.pool_s += pool_s
        self.stats.texts += texts
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(jobs))
        if self.metrics is not None:
            tokens = sum(r.num_tokens for out in outcomes if isinstance(out, list) for r in out)
            stages = {"tokenize": prepare_s, "inference": run_s, "pool": pool_s}
            self.metrics.record_batch(len(jobs), tokens, stages)
        return outcomes

    def _compute(
        self, jobs: Sequence[_QueuedRequest]
    ) -> tuple[list[list[WordEmbeddings] | Exception], tuple[float, float, float, int]]:
        """prepare each request, one forward for all of them, finish each (executor thread);
        also the seconds each stage took, and the texts. Each request fails alone."""
        emb = self.model
        t0 = time.perf_counter()
        outcomes: list[list[WordEmbeddings] | Exception] = [[] for _ in jobs]
        prepared: list[tuple[int, PreparedInputs]] = []
        for i, job in enumerate(jobs):
            call = job.call  # read once: the loop frees it when the caller goes
            if call is None:
                outcomes[i] = job.gone_error()
                continue
            try:
                ready = emb.prepare(call.inputs, call.options)
                self._check_request_size(ready)
            except Exception as exc:  # InvalidInput, or a bug that fails this request only
                outcomes[i] = exc
            else:
                prepared.append((i, ready))
        t1 = time.perf_counter()
        try:
            states = self._forward(prepared, jobs)
        except Abandoned:
            raise
        except Exception as exc:
            if len(prepared) == 1:
                outcomes[prepared[0][0]] = exc
                states = {}
            else:  # one request may have broken the run: give each its own
                log.warning(
                    "a batched run of %d requests failed (%s: %s); running each alone",
                    len(prepared),
                    type(exc).__name__,
                    exc,
                )
                states = self._forward_each(prepared, jobs, outcomes)
        t2 = time.perf_counter()
        for i, p in prepared:
            if i in states:
                try:
                    outcomes[i] = emb.finish(p, *states[i])
                except Exception as exc:
                    outcomes[i] = exc
        t3 = time.perf_counter()
        return outcomes, (t1 - t0, t2 - t1, t3 - t2, sum(len(p.texts) for _, p in prepared))

    def _forward(
        self, prepared: Sequence[tuple[int, PreparedInputs]], jobs: Sequence[_QueuedRequest]
    ) -> dict[int, tuple[list[np.ndarray], list[int]]]:
        """One forward for these requests: each one's token states and the layers they hold.
        Raises ``Abandoned`` once every one of their callers has gone."""
        layers = sorted({layer for _, p in prepared for layer in p.layer_ids})
        texts = [t for _, p in prepared for t in p.texts]
        live = [jobs[i] for i, _ in prepared]

        def everyone_gone() -> bool:
            now = time.monotonic()
            return all(job.gone(now) for job in live)

        states = self.model.forward(texts, layers, should_stop=everyone_gone) if texts else []
        out, start = {}, 0
        for i, p in prepared:
            out[i] = (states[start : start + len(p.texts)], layers)
            start += len(p.texts)
        return out

    def _forward_each(
        self,
        prepared: Sequence[tuple[int, PreparedInputs]],
        jobs: Sequence[_QueuedRequest],
        outcomes: list[list[WordEmbeddings] | Exception],
    ) -> dict[int, tuple[list[np.ndarray], list[int]]]:
        states: dict[int, tuple[list[np.ndarray], list[int]]] = {}
        for item in prepared:
            try:
                states.update(self._forward([item], jobs))
            except Abandoned:
                outcomes[item[0]] = jobs[item[0]].gone_error()
            except Exception as exc:
                outcomes[item[0]] = exc
        return states

    def _check_request_size(self, call: PreparedInputs) -> None:
        """Refuse before computing a request over the token limit, or whose response would be
        larger than the server may send."""
        limit = self.model.limits.max_tokens_per_request
        if call.num_tokens > limit:
            raise InvalidInput(
                "inputs",
                f"have {call.num_tokens} tokens in all; the limit is {limit} per request:"
                " split them over several requests",
                limit,
            )
        size = call.response_bytes(self._dimension)
        if size > self.max_response_bytes:
            mib = 1024 * 1024
            raise InvalidInput(
                "inputs",
                f"the response would take {size / mib:.0f} MiB; the limit is"
                f" {self.max_response_bytes / mib:.0f} MiB: send fewer inputs per request",
                self.max_response_bytes,
            )
