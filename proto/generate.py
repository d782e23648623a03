"""Generate the Python code of ctxembed.v1 and of the open inference protocol (Triton's superset
of KServe v2, package ``inference``, vendored under proto/ctxembed/inference/), committed under
runtime/; tests check it is current.

    python proto/generate.py [OUT]      (default: runtime; `make proto`)

Every .proto that ctxembed.v1 imports ships under proto/ (google/rpc/status.proto, the in-band
error of stream responses, copied from googleapis, and the google/protobuf/any.proto it
imports), so clients in any language compile the contract from this folder alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]


PROTOS = (
    "ctxembed/v1/embedder.proto",
    "ctxembed/inference/model_config.proto",
    "ctxembed/inference/grpc_service.proto",
)


def generate(out: Path) -> None:
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",  # google/protobuf/*.proto
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(ROOT / "proto" / name) for name in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runtime")
