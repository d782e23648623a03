"""The README's quick start, run for real: what it quotes is what the current default prints.

int8 vectors differ slightly between CPUs with and without VNNI, so numbers are compared within
a tolerance; the rest of each line must match exactly.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.servers import ProcessServer

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
QUICK_START = README[README.index("## Quick start") : README.index("## The in-process API")]
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _block(language: str, containing: str) -> str:
    """The quick start's fenced block of ``language`` that contains ``containing``."""
    fence: str | None = None
    lines: list[str] = []
    for line in QUICK_START.splitlines():
        if not line.startswith("```"):
            lines.append(line)
        elif fence is None:
            fence, lines = line[3:].strip(), []
        else:
            text = "\n".join(lines)
            if fence == language and containing in text:
                return text
            fence = None
    raise AssertionError(f"no ```{language} block with {containing!r} in the quick start")


def _same_shape(quoted: str, printed: str) -> tuple[list[float], list[float]]:
    """Both lines with numbers taken out must be equal; returns both lists of numbers."""
    assert NUMBER.sub("#", quoted) == NUMBER.sub("#", printed), (quoted, printed)
    return [float(x) for x in NUMBER.findall(quoted)], [float(x) for x in NUMBER.findall(printed)]


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[ProcessServer]:
    server = ProcessServer(model_dir)
    yield server
    server.proc.send_signal(signal.SIGTERM)
    server.finish()


def test_ready_lines(served: ProcessServer) -> None:
    quoted = [ln for ln in _block("", "ctxembed serving").splitlines() if ln.strip()]
    port = served.address.rsplit(":", 1)[1]
    deadline = time.monotonic() + 10  # the try line follows the ready line
    while not any(" INFO try: " in line for line in served.lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    printed = [
        line.split(" INFO ", 1)[1].strip().replace(f":{port}", ":50051")
        for line in served.lines
        if " INFO ctxembed serving " in line or " INFO try: " in line
    ]
    assert len(printed) == len(quoted) == 2
    # which limit sets the cores (physical cores, affinity, cgroup quota) depends on the machine
    source = re.compile(r"cores by .*$")
    for q, p in zip(quoted, printed):
        _same_shape(source.sub("cores by", q), source.sub("cores by", p))


def test_cli_embed_output(served: ProcessServer, capsys: pytest.CaptureFixture[str]) -> None:
    from ctxembed.cli import main

    console = _block("console", "$ ctxembed embed").splitlines()
    command = console[0]
    assert command == '$ ctxembed embed "I live near the bank of America" --word bank'
    args = ["embed", "I live near the bank of America", "--word", "bank"]
    assert main([*args, "--server", served.address]) == 0
    quoted, printed = _same_shape(console[1], capsys.readouterr().out.strip())
    # [16:20] index dim exactly; the norm within 2%; the first values within 0.1
    assert quoted[:4] == printed[:4]
    assert printed[4] == pytest.approx(quoted[4], rel=0.02)
    assert printed[5:] == pytest.approx(quoted[5:], abs=0.1)


def test_python_snippet_output(served: ProcessServer) -> None:
    snippet = _block("python", "from ctxembed.client import Client")
    [comment] = [ln for ln in snippet.splitlines() if ln.startswith("# money/money")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet.replace("127.0.0.1:50051", served.address), {})  # the README's own code
    quoted, printed = _same_shape(comment[2:].split("(")[0].strip(), out.getvalue().strip())
    assert printed == pytest.approx(quoted, abs=0.02)
    assert printed[0] > printed[1]  # the two money senses are closer than money and river
