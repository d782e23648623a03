"""The committed protobuf code is what the .proto generates today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "proto/generate.py", str(tmp_path)], cwd=ROOT, check=True)
    generated = sorted(tmp_path.rglob("*_pb2*.py*"))
    assert len(generated) == 3 * 3  # ctxembed.v1 and the two inference files
    for fresh in generated:
        name = fresh.relative_to(tmp_path)
        committed = ROOT / "runtime" / name
        assert committed.is_file(), f"{name} is not committed: run `make proto`"
        assert fresh.read_text() == committed.read_text(), f"{name} is stale: run `make proto`"


def test_every_import_ships_under_proto() -> None:
    """Clients in other languages load proto/ alone: every import ships there, the protobuf
    well-known types it needs included (not every toolkit bundles them)."""
    import re

    proto_root = ROOT / "proto"
    for path in proto_root.rglob("*.proto"):
        for name in re.findall(r'^import\s+"([^"]+)";', path.read_text(), flags=re.M):
            assert (proto_root / name).is_file(), (
                f"{path.relative_to(ROOT)} imports {name}, which proto/ does not ship"
            )
