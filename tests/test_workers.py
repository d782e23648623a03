"""`ctxembed serve --workers 2`: one port, two processes; drains on SIGTERM, restarts a dead one."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from benchmarks.harness import ProcessServer
from ctxembed.client import Client

pytestmark = pytest.mark.model


def _worker_pids(server: ProcessServer) -> set[int]:
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    return {int(pid) for pid in children.split()}


def _ready_line(server: ProcessServer) -> str:
    """The supervisor's line once both workers serve."""
    deadline = time.monotonic() + 60
    while not any("serving with 2 workers" in line for line in server.lines):
        assert time.monotonic() < deadline, "".join(server.lines)
        time.sleep(0.05)
    return next(line for line in server.lines if "serving with 2 workers" in line)


def test_two_workers_share_the_port_drain_and_restart(model_dir: Path) -> None:
    server = ProcessServer(model_dir, "--workers", "2")
    try:
        ready = _ready_line(server)
        assert re.search(r"\(1 threads, 1 parallel runs each\)", ready), ready  # 2 cores split
        port = int(server.address.rsplit(":", 1)[1])
        assert f":{port}," in ready
        served = set()
        for _ in range(12):  # the kernel spreads connections: a new client each time
            with Client(server.address) as client:
                served.add(client.embed(["river bank"])[0].vectors.shape)
        assert served == {(2, 384)}
        workers = _worker_pids(server)
        assert len(workers) == 2
        # the port stays taken for a lone server
        with socket.socket() as probe, pytest.raises(OSError):
            probe.bind(("127.0.0.1", port))
        # a worker that dies is restarted
        os.kill(min(workers), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(_worker_pids(server) - {min(workers)}) < 2:
            assert time.monotonic() < deadline, "".join(server.lines)
            time.sleep(0.1)
        assert any("restarting it" in line for line in server.lines)
        while not any("ready again" in line for line in server.lines):
            assert time.monotonic() < deadline, "".join(server.lines)
            time.sleep(0.1)
        with Client(server.address) as client:
            assert client.embed(["bank"])[0].words[0].text == "bank"
    finally:
        server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish(timeout=60)
    assert code == 0, log
    assert "2 workers exited with [0, 0]" in log and "Traceback" not in log


def test_workers_share_one_metrics_endpoint(model_dir: Path) -> None:
    from test_metrics import scrape

    server = ProcessServer(model_dir, "--workers", "2", "--metrics-port", "0")
    try:
        ready = _ready_line(server)
        found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", ready)
        assert found, ready
        files = next(line for line in server.lines if "multiprocess files in" in line)
        folder = Path(files.rsplit(" in ", 1)[1].strip())
        calls = 16
        for _ in range(calls):  # a connection each: the kernel spreads them over both workers
            with Client(server.address) as client:
                client.embed(["river bank", "bank"])
        m = scrape(found.group(1))
        ok = (("code", "OK"), ("method", "Embed"))
        assert m[("ctxembed_requests_total", ok)] == calls
        assert m[("ctxembed_texts_total", ())] == 2 * calls
        assert m[("ctxembed_words_total", ())] == 3 * calls
        info = [k for k in m if k[0] == "ctxembed_model_info"]
        assert len(info) == 1 and m[info[0]] == 1
        pids = {f.stem.rsplit("_", 1)[1] for f in folder.glob("counter_*.db")}
        assert pids == {str(pid) for pid in _worker_pids(server)}, "both workers counted"
    finally:
        server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish(timeout=60)
    assert code == 0, log
    assert not folder.exists(), "the supervisor removes the metrics folder"
