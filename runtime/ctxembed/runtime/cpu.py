"""What this CPU can do, read once from /proc/cpuinfo (the export and the runtime both ask)."""

from __future__ import annotations

import functools
import os
import platform


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The first processor's feature flags; empty where /proc/cpuinfo is unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64")


def has_vnni() -> bool:
    """AVX-512 VNNI (or AVX-VNNI): x86 int8 dot products without u8×s8 saturation."""
    return bool({"avx512_vnni", "avx512vnni", "avx_vnni"} & cpu_flags())


def physical_cores() -> int:
    """Physical cores (hyper-threads share the matrix units that dominate transformer cost)."""
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            phys = core = ""
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                    cores.add((phys, core))
    except OSError:
        pass
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(len(cores) or available, available))
