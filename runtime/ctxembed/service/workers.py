"""``ctxembed serve --workers N``: every core of a big machine, the grpc Python examples' way.

One Python process serves from one interpreter: protobuf conversion, pooling and the event loop
hold its GIL. The supervisor reserves the port the grpc examples' way, a bound ``SO_REUSEPORT``
socket held for its whole life (a port another server listens on is refused; one in TIME_WAIT
after a restart is not; ``--port 0`` cannot race), then forks N workers before any gRPC server
or channel exists; each binds the same port with ``grpc.so_reuseport`` and owns its model
session, with the cores split between them. The kernel spreads *connections*, not calls: one
client channel stays on one worker. SIGTERM/SIGINT reach every worker, which drain as a lone
server does; SIGHUP too (token reload); a worker that dies is logged and restarted after a
backoff (0.1 s doubling to 10 s), and if every worker keeps crashing for a minute the supervisor
exits non-zero so that the orchestrator sees it. With ``--metrics-port`` the workers write
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
from ctxembed.service.settings import ServeError, ServerSettings, host_port

if TYPE_CHECKING:
    from ctxembed.service.metrics import WorkerMetrics

log = logging.getLogger("ctxembed.service")
READY_TIMEOUT_S = 120.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 10.0  # a crashing worker's restart delay doubles
STABLE_S = 10.0  # a worker up this long has recovered: its backoff starts over
CRASH_LOOP_S = 60.0  # every worker crashing this long: the supervisor gives up, exit 1


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to the port the workers will share (0: one is picked), to hold open while
    they run, with ``SO_REUSEPORT`` so that the workers bind it too. A probe bound first with
    ``SO_REUSEADDR`` alone refuses a port any server listens on (with or without reuseport) but
    not one left in TIME_WAIT; it stays bound until the reservation is, so nothing races."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.bind((bare, port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((bare, probe.getsockname()[1]))
        except OSError as exc:
            sock.close()
            raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


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
        self.reservation = reserve_port(settings.host, settings.port)
        self.port = int(self.reservation.getsockname()[1])
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
        self.started_at: list[float] = []  # when each worker was last started
        self.delay = [BACKOFF_FIRST_S] * workers  # each worker's next restart delay
        self.restart_at: list[float | None] = [None] * workers  # a dead worker's restart time
        self.failing_since: list[float | None] = [None] * workers  # crashing since, if it is

    def _start(self, index: int) -> ForkProcess:
        proc = self.context.Process(
            target=_worker,
            args=(self.settings, self.loop_choice, index, self.ready),
            name=f"ctxembed-worker-{index}",
        )
        proc.start()
        if index < len(self.started_at):
            self.started_at[index] = time.monotonic()
        else:
            self.started_at.append(time.monotonic())
        return proc

    def _watch(self, index: int, now: float) -> None:
        """Restart a dead worker after its backoff; a worker up for STABLE_S has recovered."""
        proc = self.procs[index]
        if proc.is_alive():
            if now - self.started_at[index] >= STABLE_S:
                self.failing_since[index] = None
                self.delay[index] = BACKOFF_FIRST_S
            return
        restart_at = self.restart_at[index]
        if restart_at is None:  # just found dead
            delay = self.delay[index]
            log.warning(
                "worker %d (pid %s) exited with code %s; restarting it in %.1f s",
                index,
                proc.pid,
                proc.exitcode,
                delay,
            )
            if self.metrics is not None and proc.pid is not None:
                self.metrics.worker_exited(proc.pid)
            self.restart_at[index] = now + delay
            self.delay[index] = min(delay * 2, BACKOFF_MAX_S)
            if self.failing_since[index] is None:
                self.failing_since[index] = now
        elif now >= restart_at:
            self.restart_at[index] = None
            self.restarts += 1
            self.procs[index] = self._start(index)

    def _crash_looping(self, now: float) -> bool:
        """Every worker has been crashing for CRASH_LOOP_S: restarting will not help."""
        since = self.failing_since
        return all(t is not None and now - t >= CRASH_LOOP_S for t in since)

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
            "ctxembed serving with %d workers (%d threads, %d parallel runs each) on %s,"
            " ready in %.2f s%s",
            self.workers,
            engine.threads,
            engine.parallel_runs,
            host_port(self.settings.host, self.port),
            time.perf_counter() - started,
            extras,
        )
        while not self.stopping:
            now = time.monotonic()
            for index in range(self.workers):
                if not self.stopping:
                    self._watch(index, now)
            if self._crash_looping(now):
                log.error(
                    "every worker has kept crashing for %.0f s; stopping (exit code 1)",
                    CRASH_LOOP_S,
                )
                self._forward(signal.SIGTERM, None)
                self._join()
                return 1
            # Never block here: a SIGTERM must be able to stop a worker still starting.
            with contextlib.suppress(queue.Empty):
                log.info("worker %d ready again", self.ready.get_nowait())
            time.sleep(0.05)
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
        self.reservation.close()
        if self.metrics is not None:
            self.metrics.close()
        log.info("ctxembed stopped: %d workers exited with %s", self.workers, codes)
        return 0 if all(code == 0 for code in codes) else 1
