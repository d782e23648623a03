"""Run a real ctxembed server: in a background thread (stats visible) or as `ctxembed serve`.

Shared by the tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ctxembed.service.server import Models, RunningServer, start_server
from ctxembed.service.settings import ServerSettings

T = TypeVar("T")
READY = re.compile(r"serving .* on (\S+):(\d+), ready in ([0-9.]+) s")


class ThreadServer:
    """A server for ``model`` (or several, by name) on an ephemeral port, on its own event loop
    in a daemon thread; ``overrides`` replace fields of ``ServerSettings``."""

    def __init__(self, model: Models, **overrides: Any) -> None:
        settings = replace(ServerSettings(port=0), **overrides)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self.running: RunningServer = self.call(start_server(settings, model))
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise
        self.address = self.running.address

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        self.call(self.running.shutdown(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class ProcessServer:
    """``ctxembed serve`` in a subprocess, as users and `make serve` run it."""

    def __init__(self, model_dir: Path | None, *extra: str) -> None:
        """``model_dir`` None: ``extra`` names the models (``--model NAME=DIR``)."""
        folder = [] if model_dir is None else ["--model-dir", str(model_dir)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ctxembed.cli", "serve", *folder, "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        # One thread reads the output to the end: mixing readline() with communicate() would
        # lose what readline() had buffered.
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60) or not hasattr(self, "address"):
            self.proc.kill()
            raise RuntimeError("server not ready:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = READY.search(line)
            if match and not self._ready.is_set():
                self.address = f"{match.group(1)}:{match.group(2)}"
                self.ready_s = float(match.group(3))
                self._ready.set()
        self._ready.set()  # exited: unblock the constructor

    @property
    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MB."""
        with open(f"/proc/{self.proc.pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        return code, "".join(self.lines)
