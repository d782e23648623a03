"""The C++ servers under benchmarks/native/ (grpc++): what a native gRPC front would pay.

``benchmarks.serving_path`` times them beside the Python ones, to show whether a front outside
Python could meet the serving-path target where a Python one cannot:

- ``echo``: benchmarks/echo_server.py in C++ (the same method and requests);
- ``front``: the gRPC transport in C++ around the Python floor's own work (decode, ``embed``,
  encode: ``benchmarks.floor_server.bytes_handler``) in an embedded interpreter.

They need a C++ compiler, pkg-config and grpc++'s headers (Debian: ``apt-get install g++
libgrpc++-dev pkg-config``), and ``front`` a shared libpython; without them the benchmark says
why and goes on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from benchmarks.bench_grpc import port_process

SOURCES = Path(__file__).resolve().parent / "native"
CACHE = Path(__file__).resolve().parent / ".cache" / "native"
INSTALL_HINT = "Debian: apt-get install g++ libgrpc++-dev pkg-config"


def _python_flags() -> list[str] | str:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return "this Python has no shared libpython to embed"
    libdir = str(sysconfig.get_config_var("LIBDIR"))
    version = sysconfig.get_config_var("LDVERSION")
    include = str(sysconfig.get_paths()["include"])
    return [f"-I{include}", f"-L{libdir}", f"-lpython{version}", f"-Wl,-rpath,{libdir}"]


def build(name: str) -> Path | str:
    """benchmarks/native/NAME.cc built (again when the source is newer), or why it cannot be."""
    # front links this interpreter's libpython: one binary per Python version
    tag = f"-{sys.implementation.cache_tag}" if name == "front" else ""
    source, binary = SOURCES / f"{name}.cc", CACHE / f"{name}{tag}"
    newest = max(path.stat().st_mtime for path in (source, SOURCES / "unary.h"))
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    compiler = shutil.which("c++")
    if compiler is None or shutil.which("pkg-config") is None:
        return f"no C++ compiler or pkg-config ({INSTALL_HINT})"
    grpc = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True
    )
    if grpc.returncode != 0:
        return f"no grpc++ headers ({INSTALL_HINT})"
    flags = grpc.stdout.split()
    if name == "front":
        python = _python_flags()
        if isinstance(python, str):
            return python
        flags += python
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(binary.name + ".partial")
    command = [compiler, "-O2", "-std=c++17", str(source), "-o", str(partial), *flags]
    compiled = subprocess.run(command, capture_output=True, text=True)
    if compiled.returncode != 0:
        return f"{source.name} did not compile: {compiled.stderr.strip()[-500:]}"
    partial.replace(binary)
    return binary


@contextlib.contextmanager
def serve(binary: Path, *args: str) -> Iterator[int]:
    """A built server in a subprocess (an embedded interpreter sees this one's imports);
    yields its port."""
    paths = [str(SOURCES.parents[1]), *(p for p in sys.path if p)]  # the root: benchmarks.*
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    with port_process([str(binary), *args], env) as port:
        yield port
