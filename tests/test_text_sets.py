"""The int8 text sets (benchmarks/data/sample_texts.py) keep their promises: large, disjoint
from each other and from the corpus the schemes were designed on, a third non-ASCII, and every
kind of text that breaks int8 present in numbers."""

from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"


def _lines(name: str) -> list[str]:
    return (DATA / name).read_text(encoding="utf-8").splitlines()


def test_sets_are_large_disjoint_and_stratified() -> None:
    selection, held_out = _lines("int8-selection.txt"), _lines("int8-heldout.txt")
    design = set(_lines("sentences-5k.txt"))
    assert len(selection) >= 300 and len(held_out) >= 1000
    assert len(set(held_out)) == len(held_out) and len(set(selection)) == len(selection)
    assert not set(held_out) & set(selection) and not (set(held_out) | set(selection)) & design
    assert sum(not t.isascii() for t in held_out) >= 300
    assert sum(bool(re.search(r"https?://|www\.", t)) for t in held_out) >= 50
    code = re.compile(r"\w+_\w+|[a-z][A-Z]\w*|\w\.\w+\(|`|\(\)")  # snake, camel, calls
    assert sum(bool(code.search(t)) for t in held_out) >= 100
    assert sum(bool(re.search(r"\d", t)) for t in held_out) >= 100
