"""What this CPU can do, read once from /proc/cpuinfo (the export and the runtime both ask),
and how many cores this process may use (cores, affinity and the cgroup's CPU quota)."""

from __future__ import annotations

import functools
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path


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


# The instruction sets onnxruntime's kernels choose between: which paths a graph ran on.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd")


def kernel_flags() -> list[str]:
    """This CPU's ``KERNEL_FLAGS``, sorted."""
    return sorted(f for f in KERNEL_FLAGS if f in cpu_flags())


def is_arm() -> bool:
    return platform.machine().lower() in ("arm64", "aarch64")


def has_vnni() -> bool:
    """AVX-512 VNNI (or AVX-VNNI): x86 int8 dot products without u8×s8 saturation."""
    return bool({"avx512_vnni", "avx512vnni", "avx_vnni"} & cpu_flags())


@dataclass(frozen=True)
class CpuBudget:
    """Cores this process should keep busy, and where the figure came from."""

    cores: int
    source: str  # "physical cores", "CPU affinity" or "cgroup CPU quota (…)"


def _physical_core_count() -> int:
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
    return len(cores)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_quota(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc")) -> float | None:
    """CPUs allowed by the cgroup's quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``), the smallest along the process's cgroup path; None if unlimited."""
    paths: dict[str, str] = {}  # controller ("" for v2) -> cgroup path
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    limits: list[float] = []
    for folder in _ancestors(root, paths.get("", "/")):  # v2: one unified hierarchy
        fields = (_read(folder / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0] != "max" and float(fields[1]) > 0:
            limits.append(float(fields[0]) / float(fields[1]))
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for folder in _ancestors(root / mount, paths.get("cpu", "/")):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            valid = quota and period and quota.lstrip("-").isdigit() and period.isdigit()
            if valid and int(quota or 0) > 0 and int(period or 0) > 0:
                limits.append(int(quota or 0) / int(period or 0))
    return min(limits) if limits else None


def _ancestors(root: Path, path: str) -> list[Path]:
    """``root/path`` and each folder above it up to ``root`` (a limit anywhere above applies;
    inside a container's cgroup namespace the path is "/" and root holds the limit)."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    return [root.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


@functools.cache
def cpu_budget() -> CpuBudget:
    """The smallest of physical cores, the affinity mask and the cgroup quota (a fractional
    quota rounds down, at least 1): what onnxruntime, the tokenizer and BLAS may keep busy."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    return budget_from(affinity, _physical_core_count(), cgroup_quota())


def budget_from(affinity: int, physical: int, quota: float | None) -> CpuBudget:
    """The smallest figure wins; on a tie the more specific source is named."""
    options = [(affinity, "CPU affinity")]
    if physical:
        options.insert(0, (physical, "physical cores"))
    if quota is not None:
        options.append((max(1, math.floor(quota)), f"cgroup CPU quota ({quota:g} CPUs)"))
    cores, source = min(reversed(options), key=lambda o: o[0])
    return CpuBudget(max(1, cores), source)


def physical_cores() -> int:
    """Cores to use: physical cores, bounded by the affinity mask and the cgroup's quota."""
    return cpu_budget().cores


def limit_helper_threads(cores: int) -> None:
    """Bound the thread pools beside onnxruntime's: the tokenizer's Rust pool (read when it
    first starts) and numpy's BLAS (already loaded: set through threadpoolctl)."""
    os.environ.setdefault("RAYON_NUM_THREADS", str(cores))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(cores))
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # an optional helper: the env variables still reach later pools
        return
    threadpool_limits(cores)
