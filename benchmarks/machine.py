"""Machine facts printed with every run: CPU, flags, cores, versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from ctxembed.runtime.cpu import kernel_flags

PACKAGES = (
    "ctxembed",
    "onnxruntime",
    "tokenizers",
    "numpy",
    "grpcio",
    "protobuf",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "flair",
)


def machine_facts() -> dict[str, Any]:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                    break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": model,
        "cpu_flags": kernel_flags(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }
