"""Helpers shared by tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

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
