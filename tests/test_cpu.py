"""How many cores the server keeps busy: physical cores, affinity and the cgroup's CPU quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctxembed.runtime.cpu import budget_from, cgroup_quota


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_along_the_path(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    _write(proc / "self" / "cgroup", "0::/kubepods/pod1/ctr\n")
    _write(root / "kubepods" / "cpu.max", "max 100000\n")
    _write(root / "kubepods" / "pod1" / "cpu.max", "250000 100000\n")  # 2.5 CPUs for the pod
    _write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "max 100000\n")
    assert cgroup_quota(root, proc) == 2.5
    # inside a container's cgroup namespace the path is "/" and the root holds the limit
    _write(proc / "self" / "cgroup", "0::/\n")
    _write(root / "cpu.max", "150000 100000\n")
    assert cgroup_quota(root, proc) == 1.5


def test_cgroup_v1_quota_and_no_limit(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    _write(proc / "self" / "cgroup", "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "100000\n")
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_quota(root, proc) == 1.0
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_quota(root, proc) is None
    assert cgroup_quota(tmp_path / "none", tmp_path / "none") is None  # no cgroup files at all


@pytest.mark.parametrize(
    ("affinity", "physical", "quota", "cores", "source"),
    [
        (64, 32, 2.0, 2, "cgroup CPU quota (2 CPUs)"),
        (64, 32, 0.5, 1, "cgroup CPU quota (0.5 CPUs)"),  # at least one
        (64, 32, 3.9, 3, "cgroup CPU quota (3.9 CPUs)"),  # rounds down
        (4, 32, None, 4, "CPU affinity"),
        (64, 32, None, 32, "physical cores"),
        (2, 2, 2.0, 2, "cgroup CPU quota (2 CPUs)"),  # a tie names the most specific
        (8, 0, None, 8, "CPU affinity"),  # /proc/cpuinfo without core ids
    ],
)
def test_the_smallest_figure_wins(
    affinity: int, physical: int, quota: float | None, cores: int, source: str
) -> None:
    budget = budget_from(affinity, physical, quota)
    assert (budget.cores, budget.source) == (cores, source)


def test_this_machine_reads_without_error() -> None:
    from ctxembed.runtime.cpu import cpu_budget

    budget = cpu_budget()
    assert budget.cores >= 1 and budget.source
