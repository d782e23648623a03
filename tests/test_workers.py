"""`ctxembed serve --workers 2`: one port, two processes; drains on SIGTERM, restarts a dead one."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from ctxembed.client import Client
from ctxembed.runtime.cpu import physical_cores
from testkit.servers import ProcessServer

pytestmark = pytest.mark.model


def _worker_pids(server: ProcessServer) -> set[int]:
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    return {int(pid) for pid in children.split()}


def _requests_per_worker(folder: Path) -> dict[str, float]:
    """ctxembed_requests_total in each worker's multiprocess file, by pid."""
    from prometheus_client.mmap_dict import MmapedDict

    counts = {}
    for path in folder.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        counts[path.stem.rsplit("_", 1)[1]] = sum(
            value for key, value, *_ in values if '"ctxembed_requests_total"' in key
        )
    return counts


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
        share = max(1, physical_cores() // 2)  # the cores split between the two workers
        assert f"({share} threads, {share} parallel runs each)" in ready, ready
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
                name = client.info().name
        m = scrape(found.group(1))
        model = (("model", name),)
        ok = (("code", "OK"), ("method", "Embed"), *model)
        assert m[("ctxembed_requests_total", ok)] == calls
        assert m[("ctxembed_texts_total", model)] == 2 * calls
        assert m[("ctxembed_words_total", model)] == 3 * calls
        info = [k for k in m if k[0] == "ctxembed_model_info"]
        assert len(info) == 1 and m[info[0]] == 1
        # each worker's own file counts calls it served (a file alone proves nothing:
        # prometheus-client creates it when the metric is built)
        served = _requests_per_worker(folder)
        assert set(served) == {str(pid) for pid in _worker_pids(server)}
        assert all(count > 0 for count in served.values()), served
    finally:
        server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish(timeout=60)
    assert code == 0, log
    assert not folder.exists(), "the supervisor removes the metrics folder"


def test_port_in_time_wait_is_reserved_and_a_listening_one_refused() -> None:
    """The supervisor's reservation: a port left in TIME_WAIT by a restart is taken (a lone
    server takes it too), one another server listens on is refused; IPv6 hosts work."""
    from ctxembed.service.settings import ServeError, host_port
    from ctxembed.service.workers import reserve_port

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}"):
        reserve_port("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its port goes to TIME_WAIT
    listener.close()
    client.close()
    held = reserve_port("127.0.0.1", port)
    try:
        assert held.getsockname()[1] == port
        # another supervisor's workers listen with SO_REUSEPORT: still refused, never shared
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind(("127.0.0.1", 0))
            other.listen()
            with pytest.raises(ServeError):
                reserve_port("127.0.0.1", other.getsockname()[1])
        # workers bind the reserved port beside the held socket (grpc sets SO_REUSEPORT)
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
    finally:
        held.close()
    v6 = reserve_port("[::]", 0)
    try:
        assert host_port("::", v6.getsockname()[1]).startswith("[::]:")
    finally:
        v6.close()


def _crashing_worker(settings: object, loop_choice: str, index: int, ready: object) -> None:
    ready.put(index)  # type: ignore[attr-defined]
    time.sleep(0.05)
    os._exit(3)


def test_workers_that_keep_crashing_stop_the_supervisor(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarts back off (0.1 s doubling); when every worker keeps crashing past the limit
    the supervisor exits non-zero instead of restarting forever."""
    from ctxembed.service import workers
    from ctxembed.service.settings import ServerSettings

    monkeypatch.setattr(workers, "_worker", _crashing_worker)
    monkeypatch.setattr(workers, "CRASH_LOOP_S", 1.5)
    supervisor = workers.Supervisor(ServerSettings(port=0, grace_s=0.5), 2, "asyncio")
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="ctxembed.service"):
        code = supervisor.run()
    assert code == 1
    assert 1.5 <= time.monotonic() - started < 15
    delays = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"restarting it in ([0-9.]+) s", r.getMessage()))
    ]
    assert {0.1, 0.2, 0.4} <= set(delays), delays  # each worker's delay doubles
    assert any("kept crashing" in r.getMessage() for r in caplog.records)
    # restarts were spaced: far fewer than a restart every poll would make
    assert supervisor.restarts < 20
