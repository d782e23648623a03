"""The runtime must work where torch, transformers and optimum cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import BLOCK_HEAVY


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_HEAVY + code], capture_output=True, text=True, timeout=180
    )


def test_runtime_and_service_import_and_embed_without_torch(model_dir: Path) -> None:
    proc = _run(f"""
import sys
import ctxembed.runtime, ctxembed.cli, ctxembed.service.server, ctxembed.client
from ctxembed.runtime import WordEmbedder
[res] = WordEmbedder.load({str(model_dir)!r}, provider="cpu").embed(["river bank"])
assert res.vectors.shape == (2, 384), res.vectors.shape
heavy = [m for m in ("torch", "transformers", "optimum") if m in sys.modules]
assert not heavy, heavy
print("ok")
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_export_without_extra_names_the_extra() -> None:
    proc = _run("import sys; from ctxembed.cli import main; sys.exit(main(['export']))")
    assert proc.returncode == 2
    assert "pip install" in proc.stderr and "ctxembed[export]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runtime_only_install_serves_the_model(model_dir: Path, tmp_path: Path) -> None:
    """A real base install (no extras) into a fresh virtual environment embeds the model, also
    without the packages the image removes."""
    root = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    # Without a pip of its own, installed into by this one (--python), uncompiled: 5 s, not 15.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    install = subprocess.run(
        [*pip, "install", "-q", "--no-compile", "-c", str(root / "constraints.txt"), str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    # What the image removes (deploy/runtime-unneeded.txt): the runtime must not need it.
    listed = (root / "deploy" / "runtime-unneeded.txt").read_text().split("\n")
    unneeded = [p.strip() for p in listed if p.strip() and not p.startswith("#")]
    removal = [*pip, "uninstall", "-q", "-y", *unneeded]
    assert subprocess.run(removal, capture_output=True, timeout=120).returncode == 0
    check = subprocess.run(
        [
            str(python),
            "-c",
            f"""
import importlib.util
assert all(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "optimum"))
assert importlib.util.find_spec("huggingface_hub") is None
from ctxembed.runtime import TextInput, WordEmbedder
[res] = WordEmbedder.load({str(model_dir)!r}, provider="cpu").embed(
    [TextInput(text="I sat by the river bank", select_words=["bank"])])
print(res.words[0].text, res.vectors.shape)
""",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "bank (1, 384)"


def test_the_client_is_only_a_client() -> None:
    """The client shares the wire conversions (ctxembed.v1.wire), never the server's package,
    nor the engine's onnxruntime and tokenizers."""
    proc = _run("""
import sys
import ctxembed.client
loaded = sorted(m for m in sys.modules if m.startswith("ctxembed.service")
                or m.split(".")[0] in ("onnxruntime", "tokenizers"))
assert not loaded, loaded
print("ok")
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
