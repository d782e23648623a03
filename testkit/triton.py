"""Triton's client tools in a virtual environment of their own: ``tritonclient`` and the
``perf_analyzer`` binary its wheel ships.

They cannot share ctxembed's environment: ``tritonclient`` 2.45 needs protobuf < 5 (ctxembed
pins a newer one). Version 2.45.0 is the newest whose ``perf_analyzer`` runs on Debian 12
(glibc 2.36); it links ``libb64.so.0d`` (Debian's ``libb64-0d``, fetched with ``apt-get
download`` and unpacked here, no root needed) and ``libcudart.so.12`` (the
``nvidia-cuda-runtime-cu12`` wheel; no GPU is used). Shared by the slow tests and ``make bench``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT / ".venv-triton"
PACKAGES = ("tritonclient[grpc]==2.45.0", "nvidia-cuda-runtime-cu12==12.9.79")


class Unavailable(Exception):
    """The tools cannot be installed or run here (the message says why)."""


@dataclass(frozen=True)
class TritonTools:
    python: Path
    perf_analyzer: Path
    library_path: str  # LD_LIBRARY_PATH for perf_analyzer

    def perf_analyzer_env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": self.library_path}


def _run(args: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Unavailable(f"{' '.join(args[:4])} failed: {(proc.stderr or proc.stdout)[-400:]}")


def ensure(folder: Path = DEFAULT_FOLDER) -> TritonTools:
    """Install (once) and return the tools; raises Unavailable saying why not. Whether
    perf_analyzer can start is ``check_perf_analyzer``'s question (libb64 may be missing)."""
    python = folder / "bin" / "python"
    stamp = folder / ".ctxembed-triton-installed"
    libb64 = folder / "libb64"
    if not stamp.is_file():
        if not python.is_file():
            _run([sys.executable, "-m", "venv", str(folder)])
        _run([str(python), "-m", "pip", "install", "-q", *PACKAGES])
        stamp.write_text(" ".join(PACKAGES) + "\n")
    if not list(libb64.rglob("libb64.so.0d")):
        try:
            _fetch_libb64(folder, libb64)
        except (Unavailable, OSError) as exc:  # perf_analyzer alone needs it
            (folder / "libb64-missing.txt").write_text(f"{exc}\n")
    found = list(libb64.rglob("libb64.so.0d")) + list(folder.rglob("libcudart.so.12"))
    return TritonTools(
        python, folder / "bin" / "perf_analyzer", ":".join(sorted({str(p.parent) for p in found}))
    )


def _fetch_libb64(folder: Path, into: Path) -> None:
    _run(["apt-get", "download", "libb64-0d"], cwd=folder)
    debs = sorted(glob.glob(str(folder / "libb64-0d_*.deb")))
    if not debs:
        raise Unavailable("apt-get download libb64-0d wrote no .deb")
    _run(["dpkg-deb", "-x", debs[-1], str(into)])
    for deb in debs:
        os.unlink(deb)


def check_perf_analyzer(tools: TritonTools) -> None:
    """Raises Unavailable, saying why, where the binary cannot start here."""
    if not tools.perf_analyzer.is_file():
        raise Unavailable(f"{tools.perf_analyzer} is missing (tritonclient wheel without it)")
    check = subprocess.run(
        [str(tools.perf_analyzer), "--version"],
        capture_output=True,
        text=True,
        env=tools.perf_analyzer_env(),
    )
    if "error while loading shared libraries" in check.stderr or check.returncode < 0:
        missing = tools.python.parent.parent / "libb64-missing.txt"
        why = missing.read_text().strip() if missing.is_file() else ""
        raise Unavailable(f"perf_analyzer cannot start: {check.stderr.strip()[-300:]} {why}")
