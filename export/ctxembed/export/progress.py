"""Console progress for the export: numbered steps with durations, then a summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Steps:
    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()
        self.durations: dict[str, float] = {}

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        print(f"[{self.done}/{self.total}] {title} ...", file=self.stream, flush=True)
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.durations[title] = round(elapsed, 3)
        print(f"      done in {elapsed:.1f} s", file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
