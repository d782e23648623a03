"""Where every benchmark's figures go: benchmarks/results/<stem>.{json,md}, printed too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save_results(stem: str, result: dict[str, Any], md: str, **json_options: Any) -> None:
    """Write ``result`` as JSON and ``md`` beside it, then print ``md``. ``json_options`` go to
    ``json.dumps`` (``ensure_ascii=False`` keeps texts readable, ``default=str`` odd values)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1, **json_options) + "\n")
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
