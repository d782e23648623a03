"""A client in another language: Node's @grpc/grpc-js loads the published contract from proto/
alone (with @grpc/proto-loader) and reads vectors and offsets from Embed and EmbedStream.

Slow tier: installs the two packages from the npm registry into a temporary folder. Skips, saying
why, where node or npm is missing (Debian: apt-get install nodejs npm) or the install fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ctxembed.runtime import WordEmbedder
from testkit.servers import ThreadServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["I live near the bank of America", "We sat by the river bank."]

CLIENT = r"""
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");
const [address, protoRoot, textsJson] = process.argv.slice(2);
const texts = JSON.parse(textsJson);
const definition = loader.loadSync("ctxembed/v1/embedder.proto", {
  includeDirs: [protoRoot], keepCase: true, longs: Number, enums: String, defaults: true,
});
const v1 = grpc.loadPackageDefinition(definition).ctxembed.v1;
const client = new v1.WordEmbedder(address, grpc.credentials.createInsecure());

function decode(result) {  // vectors: float32 little-endian, shape [words, dim]
  const data = result.vectors.data;  // a Buffer that may not be 4-byte aligned: read, not view
  const vectors = [];
  for (let i = 0; i < data.length; i += 4) vectors.push(data.readFloatLE(i));
  return {
    words: result.words.map((w) => [w.text, w.start, w.end]),
    shape: result.vectors.shape,
    vectors,
  };
}

const request = { inputs: texts.map((text) => ({ text })) };
client.Embed(request, (err, response) => {
  if (err) { console.error(err); process.exit(1); }
  const unary = response.results.map(decode);
  const stream = client.EmbedStream();
  const streamed = [];
  stream.on("data", (r) => {
    if (r.error) { console.error(r.error); process.exit(1); }
    streamed.push(decode(r.results[0]));
  });
  stream.on("error", (e) => { console.error(e); process.exit(1); });
  stream.on("end", () => {
    console.log(JSON.stringify({ unary, streamed }));
    client.close();
  });
  for (const text of texts) stream.write({ inputs: [{ text }] });
  stream.end();
});
"""


@pytest.fixture(scope="module")
def node_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (Debian: apt-get install nodejs npm)")
    folder = tmp_path_factory.mktemp("node-client")
    install = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "@grpc/grpc-js@1", "@grpc/proto-loader@0"],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if install.returncode != 0:
        pytest.skip(f"npm could not install @grpc/grpc-js: {install.stderr.strip()[-300:]}")
    (folder / "client.js").write_text(CLIENT)
    return folder


@pytest.fixture(scope="module")
def served(embedder: WordEmbedder) -> Iterator[ThreadServer]:
    server = ThreadServer(embedder)
    yield server
    server.stop()


def test_node_client_reads_vectors_and_offsets(
    node_packages: Path, served: ThreadServer, embedder: WordEmbedder
) -> None:
    run = subprocess.run(
        ["node", "client.js", served.address, str(ROOT / "proto"), json.dumps(TEXTS)],
        cwd=node_packages, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    expected = embedder.embed(TEXTS)
    for answers in (got["unary"], got["streamed"]):
        assert len(answers) == len(expected)
        for answer, result in zip(answers, expected, strict=True):
            assert answer["words"] == [[w.text, w.start, w.end] for w in result.words]
            assert answer["shape"] == list(result.vectors.shape)
            vectors = np.asarray(answer["vectors"], dtype=np.float32).reshape(answer["shape"])
            np.testing.assert_array_equal(vectors, result.vectors)
