"""``ctxembed serve --workers N``: every core of a big machine, the grpc Python examples' way.

One Python process serves from one interpreter: protobuf conversion, pooling and the event loop
hold its GIL. The supervisor checks that the port is free (so a second server on a taken port
still fails), then forks N workers before any gRPC server or channel exists; each binds the
same port with ``grpc.so_reuseport`` and owns its model session, with the cores split between
them. The kernel spreads *connections*, not calls: one client channel stays on one worker.
SIGTERM/SIGINT reach every worker, which drain as a lone server does; SIGHUP too (token
reload); a worker that dies is logged and restarted. With ``--metrics-port`` the workers write
prometheus-client's multiprocess files and the supervisor serves one /metrics for all of them.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import socket
import time
from dataclasses import replace
from multiprocessing.context import ForkProcess
from typing import TYPE_CHECKING, Any

from ctxembed.runtime.cpu import physical_cores  # not session: no onnxruntime before the fork
from ctxembed.service.settings import ServeError, ServerSettings

if TYPE_CHECKING:
    from ctxembed.service.metrics import WorkerMetrics

log = logging.getLogger("ctxembed.service")
READY_TIMEOUT_S = 120.0


def reserve_port(host: str, port: int) -> int:
    """The port the workers will share: checked free (0: one is picked)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
        return int(probe.getsockname()[1])


def worker_settings(settings: ServerSettings, workers: int, port: int) -> ServerSettings:
    """Each worker: the shared port, and its share of the cores unless threads are given."""
    share = max(1, physical_cores() // workers)
    engine = settings.engine
    engine = replace(
        engine,
        threads=engine.threads or share,
        parallel_runs=engine.parallel_runs or share,
    )
    shared = settings.metrics_port is not None
    return replace(
        settings,
        port=port,
        reuse_port=True,
        engine=engine,
        metrics_port=None,  # the supervisor serves /metrics
        metrics_shared=shared,
    )


def _worker(settings: ServerSettings, loop_choice: str, index: int, ready: Any) -> None:
    from ctxembed.service import event_loop
    from ctxembed.service.server import serve

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # the worker's own loop takes them over
    if settings.metrics_shared:
        from ctxembed.service.metrics import use_multiprocess_files

        use_multiprocess_files()
    code = event_loop.run(serve(settings, on_ready=lambda _: ready.put(index)), loop_choice)
    raise SystemExit(code)


class Supervisor:
    def __init__(self, settings: ServerSettings, workers: int, loop_choice: str) -> None:
        if workers < 2:
            raise ValueError("a supervisor runs at least two workers")
        self.port = reserve_port(settings.host, settings.port)
        self.settings = worker_settings(settings, workers, self.port)
        self.metrics_host, self.metrics_port = settings.metrics_host, settings.metrics_port
        self.metrics: WorkerMetrics | None = None
        if settings.metrics_port is not None:
            from ctxembed.service.metrics import WorkerMetrics

            self.metrics = WorkerMetrics()  # before the fork: the workers inherit its folder
        self.workers = workers
        self.loop_choice = loop_choice
        self.context = multiprocessing.get_context("fork")  # before any gRPC object exists
        self.ready = self.context.Queue()
        self.procs: list[ForkProcess] = []
        self.stopping = False
        self.restarts = 0

    def _start(self, index: int) -> ForkProcess:
        proc = self.context.Process(
            target=_worker,
            args=(self.settings, self.loop_choice, index, self.ready),
            name=f"ctxembed-worker-{index}",
        )
        proc.start()
        return proc

    def _forward(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for proc in self.procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    def run(self) -> int:
        started = time.perf_counter()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        self.procs = [self._start(i) for i in range(self.workers)]
        for _ in range(self.workers):
            try:
                self.ready.get(timeout=READY_TIMEOUT_S)
            except queue.Empty:  # a worker failed to start
                self._forward(signal.SIGTERM, None)
                self._join()
                raise ServeError("a worker did not start; see the log above") from None
        extras = ""
        if self.metrics is not None:
            try:
                port = self.metrics.serve(self.metrics_host, self.metrics_port or 0)
            except OSError as exc:
                self._forward(signal.SIGTERM, None)
                self._join()
                where = f"{self.metrics_host}:{self.metrics_port}"
                raise ServeError(f"cannot serve metrics on {where}: {exc}") from None
            extras = f", metrics on http://{self.metrics_host}:{port}/metrics"
            log.info("workers' prometheus multiprocess files in %s", self.metrics.path)
        engine = self.settings.engine
        log.info(
            "ctxembed serving with %d workers (%d threads, %d parallel runs each) on %s:%d,"
            " ready in %.2f s%s",
            self.workers,
            engine.threads,
            engine.parallel_runs,
            self.settings.host,
            self.port,
            time.perf_counter() - started,
            extras,
        )
        while not self.stopping:
            for index, proc in enumerate(self.procs):
                if not proc.is_alive() and not self.stopping:
                    log.warning(
                        "worker %d (pid %s) exited with code %s; restarting it",
                        index,
                        proc.pid,
                        proc.exitcode,
                    )
                    self.restarts += 1
                    if self.metrics is not None and proc.pid is not None:
                        self.metrics.worker_exited(proc.pid)
                    self.procs[index] = self._start(index)
            # Never block here: a SIGTERM must be able to stop a worker still starting.
            with contextlib.suppress(queue.Empty):
                log.info("worker %d ready again", self.ready.get_nowait())
            time.sleep(0.1)
        return self._join()

    def _join(self) -> int:
        deadline = time.monotonic() + self.settings.grace_s + 10
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker pid %s did not stop within the grace; killing it", proc.pid)
                proc.kill()
                proc.join()
        codes = [proc.exitcode for proc in self.procs]
        if self.metrics is not None:
            self.metrics.close()
        log.info("ctxembed stopped: %d workers exited with %s", self.workers, codes)
        return 0 if all(code == 0 for code in codes) else 1
