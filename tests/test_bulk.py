"""`ctxembed embed-file`: a file in, one Parquet row per word out; bounded chunks, resumable."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_model import DIM, FakeModel

from ctxembed.bulk import BulkError, embed_file
from ctxembed.cli import main
from ctxembed.runtime import TextInput, WordEmbedder, WordEmbeddings
from testkit.servers import ThreadServer


def _lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_rows_per_word_chunks_and_empty_lines(tmp_path: Path) -> None:
    model = FakeModel()
    source = _lines(tmp_path / "in.txt", ["river bank", "", "  ", "money in the bank", "x"] * 3)
    out = tmp_path / "out.parquet"
    summary = embed_file(source, out, model.embed_calls, DIM, chunk_lines=4, progress=None)
    assert (summary.lines, summary.texts, summary.empty_lines) == (15, 9, 6)
    table = pq.read_table(out)
    assert table.num_rows == summary.words == 3 * (2 + 4 + 1)
    rows = table.to_pylist()
    assert rows[0]["text_index"] == 0 and rows[0]["word"] == "river"
    assert {r["text_index"] for r in rows} == {0, 3, 4, 5, 8, 9, 10, 13, 14}  # input lines
    assert (rows[1]["start"], rows[1]["end"]) == (6, 10)
    assert len(rows[0]["vector"]) == DIM
    assert not (tmp_path / "out.parquet.parts").exists()


def _interrupted(tmp_path: Path, **options: Any) -> tuple[FakeModel, Path, Path, Path]:
    """A run of 10 lines in parts of 4, interrupted during its second part: the model, the
    input, the output and the parts folder."""
    model = FakeModel()
    source = _lines(tmp_path / "in.txt", [f"text number {i}" for i in range(10)])
    out = tmp_path / "out.parquet"
    calls = []

    def failing_embed(inputs: Sequence[TextInput]) -> list[WordEmbeddings]:
        calls.append(len(inputs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return model.embed_calls(inputs)

    with pytest.raises(KeyboardInterrupt):
        embed_file(source, out, failing_embed, DIM, chunk_lines=4, progress=None, **options)
    return model, source, out, tmp_path / "out.parquet.parts"


def test_resume_skips_parts_already_written(tmp_path: Path) -> None:
    model, source, out, parts = _interrupted(tmp_path)
    # no half part (run.json records what made the parts)
    assert sorted(p.name for p in parts.iterdir()) == ["part-000000.parquet", "run.json"]
    done = model.texts_computed
    summary = embed_file(source, out, model.embed_calls, DIM, chunk_lines=4, progress=None)
    assert summary.parts_reused == 1 and model.texts_computed - done == 6
    assert pq.read_table(out).num_rows == 30


def test_jsonl_field_and_errors(tmp_path: Path) -> None:
    model = FakeModel()
    good = _lines(tmp_path / "in.jsonl", [json.dumps({"text": "river bank", "id": 1}), ""])
    out = tmp_path / "out.parquet"
    embed_file(good, out, model.embed_calls, DIM, text_field="text", progress=None)
    assert pq.read_table(out).column("word").to_pylist() == ["river", "bank"]
    bad = _lines(tmp_path / "bad.jsonl", ['{"body": "no text field"}'])
    with pytest.raises(BulkError, match="line 1: not a JSON object with a 'text' field"):
        embed_file(bad, tmp_path / "bad.parquet", model.embed_calls, DIM, text_field="text")


def test_command_in_process_and_through_a_server_agree(model_dir: Path, tmp_path: Path) -> None:
    source = _lines(tmp_path / "in.txt", ["I live near the bank of America", "", "river bank"])
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    assert (
        main(["embed-file", str(source), "--out", str(local), "--model-dir", str(model_dir)]) == 0
    )
    server = ThreadServer(WordEmbedder.load(model_dir, provider="cpu"))
    try:
        args = ["embed-file", str(source), "--out", str(remote), "--server", server.address]
        assert main([*args, "--select-words", "bank"]) == 0
    finally:
        server.stop()
    a, b = pq.read_table(local).to_pylist(), pq.read_table(remote).to_pylist()
    assert len(a) == 9 and [r["word"] for r in b] == ["bank", "bank"]
    for row in b:
        [same] = [
            r for r in a if (r["text_index"], r["start"]) == (row["text_index"], row["start"])
        ]
        np.testing.assert_allclose(row["vector"], same["vector"], rtol=1e-5, atol=1e-5)


def test_resume_refuses_parts_of_another_run(tmp_path: Path) -> None:
    """A rerun with other options, another input or another model must not mix stale rows."""
    model, source, out, parts = _interrupted(tmp_path, model="a")
    for lines, model_name, expected in (
        (5, "a", "chunk_lines 4 -> 5"),
        (4, "b", "model 'a' -> 'b'"),
    ):
        with pytest.raises(BulkError, match=f"another run.*{expected}.*rm -r"):
            embed_file(
                source,
                out,
                model.embed_calls,
                DIM,
                chunk_lines=lines,
                progress=None,
                model=model_name,
            )
    _lines(source, [f"other text {i}" for i in range(12)])  # the input changed
    with pytest.raises(BulkError, match="input_bytes"):
        embed_file(source, out, model.embed_calls, DIM, chunk_lines=4, progress=None, model="a")
    shutil.rmtree(parts)  # as the message says: start over
    summary = embed_file(
        source, out, model.embed_calls, DIM, chunk_lines=4, progress=None, model="a"
    )
    assert summary.parts_reused == 0 and pq.read_table(out).num_rows == 36
