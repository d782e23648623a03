"""Compile ctxembed's fused kernels (``fused_ops.c``) into the library onnxruntime loads.

    python -m ctxembed.kernels.build [--cc CC] [--out DIR]

The install runs this (``hatch_build.py``) where it finds a C compiler; without the library the
same graphs run on onnxruntime's standard operators, with the same results. Standard library
only: the build hook loads this file by path, before ctxembed is installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fused_ops.c"
FLAGS = (
    "-O3",  # the portable C form (arm64 and older x86) leans on the vectorizer
    "-std=gnu11",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    # No fused multiply-adds: each product and sum rounds as onnxruntime's own ops round it,
    # which is what keeps the kernels' results the standard graph's, bit for bit.
    "-ffp-contract=off",
    "-fno-fast-math",
    "-Wall",
    "-Wextra",
)


class BuildError(RuntimeError):
    """The compiler is missing or refused the source."""


def library_name() -> str:
    return "libctxembed_kernels.dylib" if sys.platform == "darwin" else "libctxembed_kernels.so"


def compiler() -> str | None:
    """``$CC``, else the first of cc, gcc and clang on PATH."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    return next((found for name in names if (found := shutil.which(name))), None)


# The 64-bit targets a cross build is recognised for, by the names compilers and hosts use.
CROSS_ARCHES = {"aarch64": "aarch64", "arm64": "aarch64", "x86_64": "x86_64", "amd64": "x86_64"}


def cross_platform(cc: str) -> str | None:
    """The wheel platform tag of what ``cc`` compiles for (``linux_aarch64``) where that is not
    this machine (a cross compiler: ``CC=aarch64-linux-gnu-gcc``); None for a native one, and for
    targets other than 64-bit ARM and x86, where triples and hosts name one machine differently
    (``arm-linux-gnueabihf`` on ``armv7l``): those builds stay native."""
    done = subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True, check=False)
    target = done.stdout.strip().split("-") if done.returncode == 0 else []
    arch = CROSS_ARCHES.get(target[0]) if len(target) > 1 else None
    if arch is None or arch == CROSS_ARCHES.get(platform.machine().lower(), platform.machine()):
        return None
    if "linux" not in target:
        raise BuildError(f"{cc} compiles for {done.stdout.strip()}: only Linux cross builds")
    return f"linux_{arch}"


def build(out_dir: Path = HERE, cc: str | None = None) -> Path:
    """Compile the library into ``out_dir`` (written beside, then renamed into place)."""
    cc = cc or compiler()
    if cc is None:
        raise BuildError("no C compiler found (set CC, or install gcc or clang)")
    if sys.platform == "win32":
        raise BuildError("the kernels build with gcc or clang on Linux and macOS only")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / library_name()
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=target.suffix, dir=out_dir)
    os.close(fd)
    command = [cc, *FLAGS, "-I", str(HERE / "include"), str(SOURCE), "-o", tmp, "-lm", "-pthread"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BuildError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o755 & ~mask)  # as the linker makes it, not mkstemp's owner-only mode
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cc", help="C compiler (default: $CC, cc, gcc or clang)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the library")
    args = parser.parse_args(argv)
    try:
        print(build(args.out, args.cc))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
