"""Sample the int8 text sets from PyPI package summaries, deterministically (committed output).

    python benchmarks/data/sample_texts.py [PYPI_TSV]

PYPI_TSV is the workplace's list of ~745k package summaries (name, version, month, rank,
summary; default: ``../.library/env/packages/pypi.tsv`` from the repository root). Writes two
disjoint sets beside this script, neither sharing a line with ``sentences-5k.txt`` (where the
int8 schemes were designed):

- ``int8-heldout.txt``: 1,200 texts used only to report fidelity, never to choose or design
  (sampled first, so that resizing the selection never changes it);
- ``int8-selection.txt``: 3,000 texts on which the export's default int8 scheme is chosen. Large
  on purpose: the words per-tensor int8 breaks are rare (MPNet's smooth-blockwise-ffn failed on
  2 of 3,000 corpus lines and on none of 1,600 others), so a small set lets a scheme through.

Each set is stratified so that the rare texts that break int8 are there in numbers: 30%
non-ASCII, and URLs, code names (``snake_case``, ``CamelCase``, ``a.b()``), numbers and
punctuation-heavy lines; the rest is plain. Order: sha256 of the package name, so the sample is
the same on every machine and does not depend on the file's order.
"""

from __future__ import annotations

import csv
import hashlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_TSV = ROOT.parent / ".library" / "env" / "packages" / "pypi.tsv"
SIZES = {"int8-heldout.txt": 1200, "int8-selection.txt": 3000}
# share of each set per kind; a text counts for the first kind it matches
KINDS: list[tuple[str, float, Callable[[str], bool]]] = [
    ("non-ascii", 0.30, lambda t: not t.isascii()),
    ("url", 0.08, lambda t: bool(re.search(r"https?://|www\.", t))),
    ("code", 0.12, lambda t: bool(re.search(r"\w+_\w+|[a-z][A-Z]\w*|\w\.\w+\(|`|\(\)", t))),
    ("numbers", 0.10, lambda t: bool(re.search(r"\d", t))),
    ("punctuation", 0.10, lambda t: sum(not c.isalnum() and not c.isspace() for c in t) >= 6),
    ("plain", 0.30, lambda t: True),
]


def summaries(tsv: Path) -> Iterator[tuple[str, str]]:
    """(package name, one-line summary) of every usable row."""
    csv.field_size_limit(1 << 20)
    with tsv.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            text = " ".join((row.get("summary") or "").split())
            if 20 <= len(text) <= 300:
                yield row["name"], text


def kind_of(text: str) -> str:
    return next(name for name, _, test in KINDS if test(text))


def main(argv: list[str]) -> int:
    tsv = Path(argv[0]) if argv else DEFAULT_TSV
    if not tsv.is_file():
        print(f"error: {tsv} not found (pass the pypi.tsv path)", file=sys.stderr)
        return 1
    seen = set((HERE / "sentences-5k.txt").read_text(encoding="utf-8").splitlines())
    ordered = sorted(summaries(tsv), key=lambda r: hashlib.sha256(r[0].encode()).hexdigest())
    pools: dict[str, list[str]] = {name: [] for name, _, _ in KINDS}
    for _, text in ordered:
        if text not in seen:
            seen.add(text)  # no duplicates across or within the sets
            pools[kind_of(text)].append(text)
    for file, size in SIZES.items():
        chosen = []
        for name, share, _ in KINDS:
            count = round(size * share)
            chosen += pools[name][:count]
            pools[name] = pools[name][count:]
        (HERE / file).write_text("\n".join(chosen) + "\n", encoding="utf-8")
        counts = {name: sum(kind_of(t) == name for t in chosen) for name, _, _ in KINDS}
        print(f"{file}: {len(chosen)} texts {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
