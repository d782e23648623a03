"""Triton's own clients against ``ctxembed serve``, unchanged: ``tritonclient`` (from a virtual
environment of its own, as its users run it) and ``perf_analyzer``.

Slow tier: installs ``tritonclient[grpc]==2.45.0`` into ``.venv-triton`` (testkit/triton.py).
Skips, saying why, where the install or perf_analyzer's libraries are not available.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ctxembed.client import Client
from ctxembed.runtime import TextInput
from testkit.servers import ProcessServer
from testkit.triton import TritonTools, Unavailable, check_perf_analyzer, ensure

pytestmark = pytest.mark.slow
TEXTS = ["I live near the bank of America", "We sat by the river bank.", "naïve café 東京"]

# What docs/open-inference.md shows, run as a user would run it.
CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient

address, model, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = grpcclient.InferenceServerClient(address)
assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
meta = client.get_model_metadata(model, as_json=True)
config = client.get_model_config(model, as_json=True)["config"]

text = grpcclient.InferInput("TEXT", [len(texts)], "BYTES")
text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
result = client.infer(model, [text], parameters={"pooling": "mean", "normalize": False})
vectors = result.as_numpy("VECTORS")          # [n_words, dim] over the whole batch
words = result.as_numpy("WORDS")              # the words, bytes
offsets = result.as_numpy("OFFSETS")          # [n_words, 2], code points
text_index = result.as_numpy("TEXT_INDEX")    # which input each word came from

first = client.infer(model, [text], parameters={"pooling": "first", "select_words": '["bank"]'})
stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
print(json.dumps({
    "inputs": [i["name"] for i in meta["inputs"]],
    "max_batch_size": config.get("max_batch_size", 0),
    "vectors": vectors.tolist(),
    "words": [w.decode() for w in words],
    "offsets": offsets.tolist(),
    "text_index": text_index.tolist(),
    "first_words": [w.decode() for w in first.as_numpy("WORDS")],
    "first_vectors": first.as_numpy("VECTORS").tolist(),
    "inference_count": int(stats["inference_count"]),
}))
"""


@pytest.fixture(scope="module")
def tools() -> TritonTools:
    try:
        return ensure()
    except Unavailable as exc:
        pytest.skip(f"tritonclient unavailable: {exc}")


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ProcessServer]:
    running = ProcessServer(model_dir)
    yield running
    running.proc.terminate()
    running.finish()


def test_tritonclient_works_unchanged(tools: TritonTools, server: ProcessServer) -> None:
    with Client(server.address) as client:
        name = client.info().name
        expected = client.embed(TEXTS)
        bank = [TextInput(text=t, select_words=["bank"]) for t in TEXTS]
        selected = client.embed(bank, pooling="first")
    proc = subprocess.run(
        [str(tools.python), "-c", CLIENT, server.address, name, json.dumps(TEXTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["inputs"] == ["TEXT", "WORDS", "WORDS_TEXT_INDEX"] and got["max_batch_size"] == 0
    words = [w for r in expected for w in r.words]
    assert got["words"] == [w.text for w in words]
    assert got["offsets"] == [[w.start, w.end] for w in words]
    assert got["text_index"] == [i for i, r in enumerate(expected) for _ in r.words]
    np.testing.assert_array_equal(
        np.asarray(got["vectors"], np.float32), np.concatenate([r.vectors for r in expected])
    )
    assert got["first_words"] == ["bank", "bank"]
    np.testing.assert_array_equal(
        np.asarray(got["first_vectors"], np.float32),
        np.concatenate([r.vectors for r in selected]),
    )
    assert got["inference_count"] >= 2 * len(TEXTS)


def test_perf_analyzer_measures_the_server(
    tools: TritonTools, server: ProcessServer, tmp_path: Path
) -> None:
    try:
        check_perf_analyzer(tools)
    except Unavailable as exc:
        pytest.skip(str(exc))
    with Client(server.address) as client:
        name = client.info().name
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"data": [{"TEXT": {"content": [t], "shape": [1]}} for t in TEXTS]}))
    csv = tmp_path / "out.csv"
    args = ["-i", "grpc", "-u", server.address, "-m", name, "--input-data", str(data)]
    args += ["--concurrency-range", "2", "--measurement-interval", "1000", "-f", str(csv)]
    proc = subprocess.run(
        [str(tools.perf_analyzer), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=tools.perf_analyzer_env(),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    header, row = csv.read_text().splitlines()[:2]
    figures = dict(zip(header.split(","), row.split(","), strict=True))
    assert float(figures["Inferences/Second"]) > 0 and int(figures["p50 latency"]) > 0
