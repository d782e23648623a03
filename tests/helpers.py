"""Helpers shared by tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable

# Blocks the heavy packages the way a runtime-only install lacks them.
BLOCK_HEAVY = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "optimum"}:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _Block())
"""


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until it is true; fail after ``timeout`` seconds (never a fixed sleep:
    a slow machine waits longer, a fast one goes on at once)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.01)
