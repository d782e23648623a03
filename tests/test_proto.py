"""The committed protobuf code is what the .proto generates today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "proto/generate.py", str(tmp_path)], cwd=ROOT, check=True)
    for name in ("embedder_pb2.py", "embedder_pb2.pyi", "embedder_pb2_grpc.py"):
        fresh = (tmp_path / "ctxembed" / "v1" / name).read_text()
        committed = (ROOT / "runtime" / "ctxembed" / "v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto` and commit"
