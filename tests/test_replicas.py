"""Client-side load balancing over three real servers, surviving one killed with SIGKILL."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from test_metrics import scrape

from ctxembed.client import Client
from testkit.servers import ProcessServer

pytestmark = pytest.mark.model


def _serve(model_dir: Path, port: int = 0) -> tuple[ProcessServer, int]:
    server = ProcessServer(
        model_dir, "--port", str(port), "--parallel-runs", "1", "--threads", "1",
        "--metrics-port", "0",
    )  # fmt: skip
    metrics = next(line for line in server.lines if "metrics on" in line)
    return server, int(metrics.split("metrics on http://127.0.0.1:")[1].split("/")[0])


def _served(metrics_port: int) -> float:
    samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    return sum(  # over the models (one here)
        value
        for (name, labels), value in samples.items()
        if name == "ctxembed_requests_total"
        and {("code", "OK"), ("method", "Embed")} <= set(labels)
    )


def _load(target: str, seconds: float, outcome: Counter[str], threads: int = 6) -> None:
    def work() -> None:
        with Client(target, timeout=30) as client:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    client.embed(["I live near the bank of America"])
                    outcome["ok"] += 1
                except Exception as exc:  # counted: the test requires none
                    outcome[type(exc).__name__] += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_round_robin_over_replicas_survives_a_killed_one(model_dir: Path) -> None:
    servers = [_serve(model_dir) for _ in range(3)]
    ports = [int(s.address.rsplit(":", 1)[1]) for s, _ in servers]
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    try:
        outcome: Counter[str] = Counter()
        _load(target, 1.0, outcome)
        assert outcome["ok"] > 30 and set(outcome) == {"ok"}
        spread = [_served(m) for _, m in servers]
        assert all(count > 0 for count in spread), spread  # every replica got calls
        # kill one mid-load: no client call fails, the others carry on
        victim, _ = servers[1]
        killer = threading.Timer(0.5, victim.proc.send_signal, (signal.SIGKILL,))
        killer.start()
        outcome = Counter()
        _load(target, 1.5, outcome)
        killer.join()
        assert victim.proc.wait(10) == -signal.SIGKILL
        assert outcome["ok"] > 30 and set(outcome) == {"ok"}, outcome
        # back on its port, it gets traffic again
        servers[1] = _serve(model_dir, ports[1])
        deadline = time.monotonic() + 20
        while _served(servers[1][1]) == 0:
            assert time.monotonic() < deadline, "the restarted replica got no call"
            _load(target, 1.0, Counter())
    finally:
        for server, _ in servers:
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
                server.finish()
