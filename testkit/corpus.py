"""The corpus that benchmarks and tests share: benchmarks/data/sentences-5k.txt (see its README)."""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "sentences-5k.txt"


def load_corpus(limit: int | None = None, start: int = 0) -> list[str]:
    """Non-empty lines of the corpus, from ``start``, at most ``limit`` of them."""
    lines = [ln.strip() for ln in CORPUS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines[start : start + limit] if limit else lines[start:]
