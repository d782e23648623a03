"""The CUDA path: fp16 on the GPU against fp32 on the CPU, and CUDA graphs against plain runs.

Skipped only where onnxruntime has no CUDA provider. CTXEMBED_CUDA_MODEL_DIR names a folder
exported with ``--target cuda`` elsewhere (GPU machines without the export extra); otherwise the
embedded model is exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ctxembed.runtime import WordEmbedder
from ctxembed.runtime.settings import DEFAULT_GRAPH_LENGTHS
from testkit.corpus import load_corpus

pytestmark = pytest.mark.gpu

BANK = "I live near the bank of America"
TEXTS = [BANK, *load_corpus(20), "a text " * 80]  # the last one outgrows every graph length


@pytest.fixture(scope="module")
def cuda_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here")
    folder = os.environ.get("CTXEMBED_CUDA_MODEL_DIR")
    if folder is not None:
        return Path(folder)
    from ctxembed.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("cuda") / "model"
    return export_model(ExportOptions(out=out, target="cuda")).out


def _worst_cosine(a: WordEmbedder, b: WordEmbedder) -> float:
    worst = 1.0
    for x, y in zip(a.embed(TEXTS), b.embed(TEXTS), strict=True):
        assert x.words == y.words
        den = np.linalg.norm(x.vectors, axis=1) * np.linalg.norm(y.vectors, axis=1)
        worst = min(worst, float(((x.vectors * y.vectors).sum(1) / den).min()))
    return worst


def test_cuda_fp16_matches_cpu_fp32(cuda_folder: Path) -> None:
    gpu = WordEmbedder.load(cuda_folder, provider="cuda")
    assert gpu.session.provider == "CUDAExecutionProvider"
    assert gpu.session.variant.precision == "fp16"
    assert gpu.run_batch_tokens == 8192  # the GPU's default
    cpu = WordEmbedder.load(cuda_folder, provider="cpu", variant="fp32")
    assert _worst_cosine(gpu, cpu) >= 0.995


def test_cuda_graphs_match_plain_cuda_runs(cuda_folder: Path) -> None:
    plain = WordEmbedder.load(cuda_folder, provider="cuda")
    graphs = WordEmbedder.load(
        cuda_folder, provider="cuda", cuda_graph_lengths=DEFAULT_GRAPH_LENGTHS
    )
    assert graphs.session.graph_lengths == DEFAULT_GRAPH_LENGTHS, "graphs were refused (see log)"
    assert _worst_cosine(graphs, plain) >= 0.9999
    # Replays reuse the buffers: a second, different text must not see the first one's states.
    [a1] = graphs.embed([BANK])
    graphs.embed(["something else entirely, and longer than the bank sentence"])
    [a2] = graphs.embed([BANK])
    np.testing.assert_array_equal(a1.vectors, a2.vectors)
