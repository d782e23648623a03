"""Prometheus metrics (``--metrics-port``), named after TEI's ``te_*`` and Triton's
``nv_inference_*`` with the prefix ``ctxembed_``.

Each server gets its own registry (tests run several in one process); ``/metrics`` is served over
plain HTTP by prometheus-client's own server on ``--metrics-host`` (127.0.0.1 by default, no
authentication: put it on a private interface).

With ``--workers N`` each worker writes its values to prometheus-client's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``, a folder the supervisor makes) and the supervisor serves one
``/metrics`` that adds the workers up (``serve_workers``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)

from ctxembed.runtime.types import ModelInfo, WordEmbeddings

# Seconds: from a tenth of a millisecond (a warm stage) to a minute (a huge request).
TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
STAGES = ("queue", "tokenize", "inference", "pool", "serialize")


class Metrics:
    """The server's registry and metric families; every series carries a ``model`` label (one
    server may serve several models). ``for_model`` gives the recorder of one model."""

    def __init__(self, version: str, shared: bool = False) -> None:
        """``shared``: a worker's metrics, written to the multiprocess files."""
        self.version = version
        self.shared = shared
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ctxembed_requests", "Requests by method and status code (stream messages each count)",
            ["model", "method", "code"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "ctxembed_request_duration_seconds", "Time from receiving a request to its response",
            ["model", "method"], buckets=TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self.stages = {
            stage: Histogram(
                f"ctxembed_{stage}_duration_seconds",
                f"Time spent in the {stage} stage (queue and serialize per request, the others"
                " per batch)",
                ["model"],
                buckets=TIME_BUCKETS,
                registry=r,
            )
            for stage in STAGES
        }
        self.batch_size = Histogram(
            "ctxembed_batch_size", "Requests per micro-batch", ["model"], buckets=SIZE_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "ctxembed_batch_tokens", "Tokens per micro-batch", ["model"], buckets=TOKEN_BUCKETS,
            registry=r,
        )  # fmt: skip
        # A callback gauge cannot cross processes: workers set it at each batch and response.
        self.depth = Gauge(
            "ctxembed_queue_depth", "Requests waiting for a batch (all workers)", ["model"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.in_progress = Gauge(
            "ctxembed_requests_in_progress", "Requests received and not yet answered", ["model"],
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.texts = Counter("ctxembed_texts", "Texts embedded", ["model"], registry=r)
        self.words = Counter("ctxembed_words", "Word vectors returned", ["model"], registry=r)
        self.tokens = Counter(
            "ctxembed_tokens", "Tokens run through the model", ["model"], registry=r
        )
        self.model_info = Gauge(
            "ctxembed_model_info", "The models served (always 1)",
            ["model", "precision", "provider", "version"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self._server: Any = None

    def for_model(self, name: str, info: ModelInfo, queue_depth: Callable[[], int]) -> ModelMetrics:
        """The recorder of the model served as ``name``."""
        self.model_info.labels(name, info.precision, info.execution_provider, self.version).set(1)
        return ModelMetrics(self, name, queue_depth)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server; returns its port (0 picks a free one)."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class ModelMetrics:
    """What the servicers and one model's batcher record, labelled with the model's name."""

    def __init__(self, metrics: Metrics, model: str, queue_depth: Callable[[], int]) -> None:
        self.metrics = metrics
        self.model = model
        self.in_progress = metrics.in_progress.labels(model)
        self._depth = metrics.depth.labels(model)
        self._queue_depth = queue_depth if metrics.shared else None
        if not metrics.shared:
            self._depth.set_function(queue_depth)
        self._stages = {stage: h.labels(model) for stage, h in metrics.stages.items()}

    def _refresh_depth(self) -> None:
        if self._queue_depth is not None:
            self._depth.set(self._queue_depth())

    def record_request(self, method: str, code: str, seconds: float) -> None:
        self.metrics.requests.labels(self.model, method, code).inc()
        self.metrics.duration.labels(self.model, method).observe(seconds)
        self._refresh_depth()

    def record_results(self, results: list[WordEmbeddings]) -> None:
        self.metrics.texts.labels(self.model).inc(len(results))
        self.metrics.words.labels(self.model).inc(sum(len(r.words) for r in results))

    def record_batch(self, requests: int, tokens: int, stage_seconds: dict[str, float]) -> None:
        self.metrics.batch_size.labels(self.model).observe(requests)
        self.metrics.batch_tokens.labels(self.model).observe(tokens)
        self.metrics.tokens.labels(self.model).inc(tokens)
        for stage, seconds in stage_seconds.items():
            self._stages[stage].observe(seconds)
        self._refresh_depth()

    def record_stage(self, stage: str, seconds: float) -> None:
        self._stages[stage].observe(seconds)


class WorkerMetrics:
    """The supervisor's side of ``--workers`` with ``--metrics-port``: the multiprocess folder,
    shared by the workers it forks, and the one /metrics endpoint that adds them up."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="ctxembed-metrics-")
        # Read by prometheus-client in each worker (see use_multiprocess_files).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.path
        self._server: Any = None

    def serve(self, host: str, port: int) -> int:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.path)
        self._server, _ = start_http_server(port, addr=host, registry=registry)
        return int(self._server.server_port)

    def worker_exited(self, pid: int) -> None:
        """A dead worker's live gauges (its queue depth) leave the sums."""
        multiprocess.mark_process_dead(pid, path=self.path)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(self.path, ignore_errors=True)


def use_multiprocess_files() -> None:
    """In a forked worker: write values to PROMETHEUS_MULTIPROC_DIR. prometheus-client picks its
    value class when first imported, which may have been before the supervisor set the folder."""
    values.ValueClass = values.get_value_class()
