"""Prometheus metrics and logs: exact counts after a known set of real calls, some failing."""

from __future__ import annotations

import json
import logging
import re
import signal
import urllib.request
from pathlib import Path

import pytest
from fake_model import FakeModel
from prometheus_client.parser import text_string_to_metric_families

from ctxembed.client import Client
from ctxembed.runtime import InvalidInput, TextInput
from ctxembed.service.logs import JsonFormatter
from testkit.servers import ProcessServer, ThreadServer


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=10) as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_every_call_exactly(caplog: pytest.LogCaptureFixture) -> None:
    server = ThreadServer(FakeModel(), metrics_port=0, access_log=True)
    url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
    try:
        with caplog.at_level("INFO", logger="ctxembed.access"), Client(server.address) as client:
            client.embed(["river bank"])  # 1 text, 2 words
            client.embed(["one two three", "four"])  # 2 texts, 4 words
            client.embed([TextInput(text="a bank by the bank", select_words=["bank"])])  # 1, 2
            for bad in ([""], ["x" * 100_001]):
                with pytest.raises(InvalidInput):
                    client.embed(bad)
            client.info()
            streamed = list(client.embed_stream([["alpha beta"], [""], ["gamma"]], errors="return"))
            assert isinstance(streamed[1], InvalidInput)
        m = scrape(url)
    finally:
        server.stop()

    def value(name: str, **labels: str) -> float:
        """A series of the fake model (every series carries the model's name)."""
        labels.setdefault("model", "fake")
        return m[(name, tuple(sorted(labels.items())))]

    assert value("ctxembed_requests_total", method="Embed", code="OK") == 3
    assert value("ctxembed_requests_total", method="Embed", code="INVALID_ARGUMENT") == 2
    assert value("ctxembed_requests_total", method="EmbedStream", code="OK") == 2
    assert value("ctxembed_requests_total", method="EmbedStream", code="INVALID_ARGUMENT") == 1
    assert value("ctxembed_requests_total", method="GetModelInfo", code="OK") == 1
    assert value("ctxembed_request_duration_seconds_count", method="Embed") == 5
    assert value("ctxembed_texts_total") == 1 + 2 + 1 + 2  # successful calls only
    assert value("ctxembed_words_total") == 2 + 4 + 2 + 3
    # the fake model counts a text's selected words as its tokens
    assert value("ctxembed_tokens_total") == 2 + 4 + 2 + 3
    assert value("ctxembed_queue_depth") == 0
    assert value("ctxembed_batch_size_count") >= 1
    for stage in ("queue", "tokenize", "inference", "pool", "serialize"):
        assert value(f"ctxembed_{stage}_duration_seconds_count") >= 1
    version = value_of_version(m)
    info = {"model": "fake", "precision": "fp32", "provider": "none", "version": version}
    assert value("ctxembed_model_info", **info) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "ctxembed.access"]
    assert len(lines) == 5 + 3 + 1
    assert sum("code=OK" in line for line in lines) == 6
    assert all(
        re.match(r"\w+ peer=\S+ code=\w+ ms=[0-9.]+ texts=\d+ tokens=\d+$", ln) for ln in lines
    )
    assert not any("river" in line or "gamma" in line for line in lines)  # never the texts


def value_of_version(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    [labels] = [dict(k[1]) for k in samples if k[0] == "ctxembed_model_info"]
    return labels["version"]


def test_json_log_lines_carry_the_access_fields() -> None:
    record = logging.LogRecord("ctxembed.access", logging.INFO, __file__, 1, "Embed ...", (), None)
    record.method, record.code, record.ms, record.texts = "Embed", "OK", 1.5, 2
    data = json.loads(JsonFormatter().format(record))
    assert data["level"] == "INFO" and data["logger"] == "ctxembed.access"
    assert (data["method"], data["code"], data["ms"], data["texts"]) == ("Embed", "OK", 1.5, 2)


def test_serve_command_metrics_and_json_logs(model_dir: Path) -> None:
    server = ProcessServer(model_dir, "--metrics-port", "0", "--log-format", "json", "--access-log")
    try:
        ready = next(line for line in server.lines if "ctxembed serving" in line)
        port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", ready)
        assert port, ready
        with Client(server.address) as client:
            name = client.info().name
            client.embed(["I live near the bank of America"])
            with pytest.raises(InvalidInput):
                client.embed([["a", " "]])
        m = scrape(f"http://127.0.0.1:{port.group(1)}/metrics")
        ok = (("code", "OK"), ("method", "Embed"), ("model", name))
        assert m[("ctxembed_requests_total", ok)] == 1
        invalid = (("code", "INVALID_ARGUMENT"), ("method", "Embed"), ("model", name))
        assert m[("ctxembed_requests_total", invalid)] == 1
        assert m[("ctxembed_words_total", (("model", name),))] == 7
    finally:
        server.proc.send_signal(signal.SIGTERM)
    code, log = server.finish()
    assert code == 0
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r.get("method") == "Embed" and r.get("code") == "OK" for r in records)
