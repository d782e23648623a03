"""Wheel build hook: compile ctxembed's fused kernels where a C compiler exists.

The library (runtime/ctxembed/kernels) is optional: without it the graphs run the kernels'
functions as onnxruntime's standard operators, only slower, so a missing compiler warns and the
wheel stays pure Python. ``CTXEMBED_BUILD_KERNELS=0`` skips it. An editable install compiles it
in place, where the source tree is imported from. ``CC`` names the compiler; a cross compiler
(``CC=aarch64-linux-gnu-gcc``) makes a wheel for its platform (``py3-none-linux_aarch64``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

BUILD_SCRIPT = Path(__file__).parent / "runtime" / "ctxembed" / "kernels" / "build.py"


def _kernels_build() -> ModuleType:
    """ctxembed/kernels/build.py, loaded by path: ctxembed is not installed yet."""
    spec = importlib.util.spec_from_file_location("ctxembed_kernels_build", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class KernelsBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("CTXEMBED_BUILD_KERNELS", "1").lower() in {"0", "no", "off", "false"}:
            return
        build = _kernels_build()
        # an editable install imports the source tree, so its library goes there; a wheel's is
        # built in a folder of its own, removed after the build: a cross build
        # (CC=aarch64-linux-gnu-gcc) leaves the tree's library alone, and nothing is left behind
        out = build.HERE
        if version != "editable":
            self._scratch = tempfile.mkdtemp(prefix="ctxembed-kernels-")
            out = Path(self._scratch)
        try:
            cc = build.compiler()
            cross = build.cross_platform(cc) if cc else None
            library = build.build(out, cc)
        except build.BuildError as exc:
            self.app.display_warning(
                f"ctxembed: fused kernels not built ({exc}); the graphs will run"
                " onnxruntime's standard operators instead (slower)"
            )
            return
        self.app.display_info(f"ctxembed: fused kernels built: {library}")
        if version == "editable":  # imported from the source tree, where it now is
            return
        build_data["force_include"][str(library)] = f"ctxembed/kernels/{library.name}"
        build_data["pure_python"] = False
        if cross:  # no Python code is compiled: any Python 3, the compiler's platform
            build_data["tag"] = f"py3-none-{cross}"
        else:
            build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch:  # the wheel holds its copy of the library now
            shutil.rmtree(scratch, ignore_errors=True)
