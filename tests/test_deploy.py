"""deploy/: the Kubernetes manifests validate offline against the API schemas (the
kubernetes-validate package's bundled ones; no cluster here) and keep the choices the README
explains; the image builds and serves where Docker is available (make test-slow)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import numpy as np
import pytest
import yaml

from ctxembed.client import Client
from ctxembed.runtime import WordEmbedder

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30"
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")


def _manifests() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_manifests_validate_against_the_api_schemas() -> None:
    docs = _manifests()
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_manifests_keep_the_documented_choices() -> None:
    docs = _manifests()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    grace = int(re.search(r'"--grace", "(\d+)"', dockerfile).group(1))  # type: ignore[union-attr]
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > grace + pre_stop  # in-flight calls finish
    assert container["readinessProbe"]["grpc"]["service"] == "ctxembed.v1.WordEmbedder"
    assert "grpc" in container["livenessProbe"]
    assert pod["securityContext"]["runAsNonRoot"] and "USER 10001" in dockerfile
    assert docs["Service"]["spec"]["clusterIP"] == "None"  # headless: clients balance calls
    assert docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1
    # runtime only: nothing installs torch, and the build checks it is absent
    assert not re.search(r"pip install[^\n]*(torch|\[export\])", dockerfile)
    assert "find_spec('torch') is None" in dockerfile


def _docker() -> str:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (apt-get install docker.io; see README, Deploying)")
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if probe.returncode != 0 and shutil.which("dockerd"):
        subprocess.Popen(["dockerd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(60):
            if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
                break
            time.sleep(1)
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("the Docker daemon does not start here")
    return "docker"


def _start(
    docker: str, *options: str, image: str = "ctxembed:latest", wait_s: float = 60
) -> tuple[str, str]:
    """Run the image detached; its container id and loopback address once it serves."""
    run = subprocess.run(
        [docker, "run", "-d", "--rm", "-p", "127.0.0.1::50051", *options, image],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    container = run.stdout.strip()
    port = (
        subprocess.run(
            [docker, "port", container, "50051"], capture_output=True, text=True, check=True
        )
        .stdout.split(":")[-1]
        .strip()
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with Client(address, timeout=2) as client:
                assert client.health() == "SERVING"
            return container, address
        except Exception:
            assert time.monotonic() < deadline, "the container did not serve"
            time.sleep(1)


def _stop(docker: str, container: str) -> str:
    subprocess.run([docker, "kill", "--signal", str(int(signal.SIGTERM)), container])
    waited = subprocess.run([docker, "wait", container], capture_output=True, text=True)
    return waited.stdout.strip()


@pytest.mark.slow
def test_image_builds_serves_and_stops_cleanly() -> None:
    docker = _docker()
    subprocess.run(["make", "image"], cwd=ROOT, check=True, timeout=1800)
    container, address = _start(docker)
    try:
        with Client(address, timeout=10) as client:
            assert client.embed(["river bank"])[0].vectors.shape == (2, 384)
    finally:
        code = _stop(docker, container)
    assert code in ("0", ""), code  # --rm may remove it first


@pytest.mark.slow
def test_image_under_a_cpu_quota_serves_with_one_thread() -> None:
    """`docker run --cpus 1` on a machine with more cores: the cgroup quota sets the threads."""
    docker = _docker()
    subprocess.run(["make", "image"], cwd=ROOT, check=True, timeout=1800)
    container, address = _start(docker, "--cpus", "1")
    try:
        with Client(address, timeout=10) as client:
            info = client.info()
        logs = subprocess.run([docker, "logs", container], capture_output=True, text=True)
    finally:
        _stop(docker, container)
    assert (info.threads, info.parallel_runs) == (1, 1), info
    assert "1 cores by cgroup CPU quota (1 CPUs)" in logs.stdout + logs.stderr


def _arm64_emulation() -> None:
    """Skips, saying why, where the arm64 root cannot be made (deploy/arm64/rootfs.sh)."""
    if os.geteuid() != 0:
        pytest.skip("the arm64 root needs root (chroot, binfmt_misc)")
    if shutil.which("debootstrap") is None or not QEMU_CONF.is_file():
        pytest.skip("needs debootstrap and qemu-user-static (apt-get install both)")


@pytest.mark.slow
def test_make_test_arm64(model_dir: Path) -> None:
    """The runtime's tests and this export's vectors on emulated arm64 (deploy/arm64/test.sh)."""
    _arm64_emulation()
    run = subprocess.run(
        ["make", "test-arm64", f"MODEL_DIR={model_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "test-arm64: passed" in run.stdout


@pytest.mark.slow
def test_arm64_image_serves_and_matches_x86() -> None:
    """`make image-arm64`: the same image for linux/arm64, run under emulation; its int8 vectors
    within the export's thresholds against PyTorch, its words and offsets those of x86's image,
    and ctxembed's fused kernels running there where the cross compiler built them."""
    from ctxembed.export.source import embedded_model_dir
    from testkit.fidelity import references

    docker = _docker()
    _arm64_emulation()
    subprocess.run(["make", "image", "image-arm64"], cwd=ROOT, check=True, timeout=3600)
    texts = ["I live near the bank of America", "naïve café — 東京 tower", "v2.0 (beta): ok!"]
    results = {}
    # Under qemu, onnxruntime's cpuinfo reads the x86 host's CPU lists in /sys and crashes
    # (a real arm64 host has its own): a tmpfs hides them, and it warns and runs.
    emulated = ("--platform", "linux/arm64", "--tmpfs", "/sys/devices/system/cpu")
    for image, options in (("ctxembed:latest", ()), ("ctxembed:arm64", emulated)):
        container, address = _start(docker, *options, image=image, wait_s=300)
        try:
            with Client(address, timeout=120) as client:
                results[image] = (client.info(), client.embed(texts))
        finally:
            code = _stop(docker, container)
        assert code in ("0", ""), (image, code)
    (info, arm), (_, x86) = results["ctxembed:arm64"], results["ctxembed:latest"]
    # deploy/arm64/wheel.sh compiles the fused kernels for arm64 where the cross compiler is
    assert info.fused_kernels == (shutil.which("aarch64-linux-gnu-gcc") is not None)
    assert [[(w.text, w.start, w.end) for w in r.words] for r in arm] == [
        [(w.text, w.start, w.end) for w in r.words] for r in x86
    ]
    with WordEmbedder.load(ROOT / "models" / "all-MiniLM-L6-v2-int8", provider="cpu") as local:
        refs = references(embedded_model_dir(), local, texts)
    cos = np.concatenate([
        (a.vectors * r).sum(1) / np.linalg.norm(a.vectors, axis=1) / np.linalg.norm(r, axis=1)
        for a, r in zip(arm, refs, strict=True)
    ])  # fmt: skip
    assert cos.mean() >= 0.995 and cos.min() >= 0.98, (info.precision, cos.min())
