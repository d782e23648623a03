"""``ctxembed embed-file``: a corpus in, one Parquet row per word out (``ctxembed[bulk]``).

The input (plain text, one text per line, or JSONL with ``--text-field``) is read in chunks of
``chunk_lines`` lines, so memory stays bounded whatever its size. Each chunk becomes one part file
in ``OUT.parquet.parts/``, written to a temporary name and renamed when complete; a run that is
interrupted and started again skips the parts already there, if it is the same run: the folder
records what made its parts (the input's path, size and modification time, the options and the
model) in ``run.json``, and a run that differs in any of them is refused (saying how to start
over) instead of mixing stale rows in. When every part exists they are assembled, streaming,
into ``OUT.parquet`` and the parts folder is removed.

Rows: ``text_index`` (the line's position in the input, 0-based, empty lines counted, so rows
join back to the input), ``word``, ``start``, ``end`` (code points) and ``vector``
(fixed-size list of float32).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ctxembed.runtime.errors import CtxembedError
from ctxembed.runtime.types import TextInput, WordEmbeddings

Embed = Callable[[Sequence[TextInput]], list[WordEmbeddings]]
RUN_FILE = "run.json"  # in the parts folder: what made its parts
CALL_TEXTS = 32  # texts per embed call: what the engine batches best
# float32 vectors barely compress: snappy on the parts cost more time (written, then read back
# for the assembly) than the embedding saved; zstd makes the final file ~10% smaller for little.
PART_COMPRESSION = "none"
OUT_COMPRESSION = "zstd"


class BulkError(CtxembedError):
    """The input cannot be read as asked (bad JSON line, missing field)."""


@dataclass(frozen=True)
class BulkSummary:
    lines: int
    texts: int
    empty_lines: int
    words: int
    parts_reused: int
    seconds: float


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise BulkError(
            "embed-file writes Parquet with pyarrow: pip install 'ctxembed[bulk]'"
        ) from None
    return pyarrow


def read_chunks(
    path: Path, text_field: str | None, chunk_lines: int
) -> Iterator[list[tuple[int, str | None]]]:
    """(line index, text or None for an empty line) in chunks of ``chunk_lines`` lines."""
    chunk: list[tuple[int, str | None]] = []
    with path.open(encoding="utf-8") as f:
        for index, line in enumerate(f):
            line = line.rstrip("\n")
            text: str | None = line if line.strip() else None
            if text is not None and text_field is not None:
                try:
                    value = json.loads(line)[text_field]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise BulkError(
                        f"{path} line {index + 1}: not a JSON object with a {text_field!r}"
                        f" field ({exc})"
                    ) from None
                text = value if isinstance(value, str) and value.strip() else None
            chunk.append((index, text))
            if len(chunk) == chunk_lines:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def word_columns(pa: Any, results: Sequence[WordEmbeddings], dimension: int) -> dict[str, Any]:
    """``word``, ``start``, ``end`` and ``vector`` (fixed-size list of float32) of every word
    of ``results``, in order: the row layout shared by embed-file and the Ray adapter."""
    import numpy as np

    words, starts, ends, vectors = [], [], [], []
    for result in results:
        for word in result.words:
            words.append(word.text)
            starts.append(word.start)
            ends.append(word.end)
        vectors.append(np.asarray(result.vectors, dtype=np.float32).reshape(-1, dimension))
    flat = np.concatenate(vectors).reshape(-1) if vectors else np.zeros(0, np.float32)
    return {
        "word": pa.array(words, pa.string()),
        "start": pa.array(starts, pa.int32()),
        "end": pa.array(ends, pa.int32()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dimension),
    }


def _table(pa: Any, rows: list[tuple[int, WordEmbeddings]], dimension: int) -> Any:
    indices = [index for index, result in rows for _ in result.words]
    columns = word_columns(pa, [result for _, result in rows], dimension)
    return pa.table({"text_index": pa.array(indices, pa.int64()), **columns})


def embed_file(
    source: Path,
    out: Path,
    embed: Embed,
    dimension: int,
    *,
    text_field: str | None = None,
    select_words: Sequence[str] = (),
    chunk_lines: int = 4096,
    progress: TextIO | None = sys.stderr,
    model: str = "",
) -> BulkSummary:
    """``model`` names what embeds (a folder, a server and its model): part of the run's
    identity, so a rerun with another model does not reuse this one's parts."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    started = time.perf_counter()
    parts = out.with_name(out.name + ".parts")
    stat = source.stat()
    run = {
        "input": str(source.resolve()),
        "input_bytes": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "text_field": text_field,
        "select_words": list(select_words),
        "chunk_lines": chunk_lines,
        "dimension": dimension,
        "model": model,
    }
    _claim(parts, run)
    lines = texts = empty = words = reused = 0
    names = []
    for number, chunk in enumerate(read_chunks(source, text_field, chunk_lines)):
        part = parts / f"part-{number:06d}.parquet"
        names.append(part)
        lines += len(chunk)
        present = [(i, t) for i, t in chunk if t is not None]
        empty += len(chunk) - len(present)
        texts += len(present)
        if part.is_file():  # written by an earlier, interrupted run
            reused += 1
            words += pq.read_metadata(part).num_rows
            continue
        rows: list[tuple[int, WordEmbeddings]] = []
        for k in range(0, len(present), CALL_TEXTS):
            batch = present[k : k + CALL_TEXTS]
            inputs = [TextInput(text=t, select_words=list(select_words)) for _, t in batch]
            rows.extend(zip((i for i, _ in batch), embed(inputs)))
        table = _table(pa, rows, dimension)
        words += table.num_rows
        tmp = part.with_suffix(".tmp")
        pq.write_table(table, tmp, compression=PART_COMPRESSION)
        tmp.rename(part)
        if progress is not None:
            rate = texts / max(time.perf_counter() - started, 1e-9)
            print(f"\r{lines} lines, {words} words, {rate:.0f} texts/s", end="", file=progress)
    if progress is not None:
        print(file=progress)
    _assemble(pa, pq, names, out, dimension)
    shutil.rmtree(parts)
    return BulkSummary(lines, texts, empty, words, reused, time.perf_counter() - started)


def _claim(parts: Path, run: dict[str, Any]) -> None:
    """Make ``parts`` this run's folder, or refuse one that holds another run's parts."""
    record = parts / RUN_FILE
    if parts.is_dir() and any(parts.iterdir()):
        try:
            earlier = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
        if earlier != run:
            if isinstance(earlier, dict):
                changed = [
                    f"{k} {earlier.get(k)!r} -> {v!r}"
                    for k, v in run.items()
                    if earlier.get(k) != v
                ]
                why = "it was made " + ("with other " + ", ".join(changed))
            else:
                why = f"it has no readable {RUN_FILE} (made by another version?)"
            raise BulkError(
                f"{parts} holds parts of another run, so they cannot be resumed: {why}."
                f" To start over, delete it: rm -r '{parts}'"
            )
        return
    parts.mkdir(parents=True, exist_ok=True)
    tmp = parts / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    tmp.rename(record)


def _assemble(pa: Any, pq: Any, parts: list[Path], out: Path, dimension: int) -> None:
    """The parts, in order, into one file (one part in memory at a time)."""
    tmp = out.with_name(f".{out.name}.tmp")
    writer = None
    try:
        for part in parts:
            table = pq.read_table(part, memory_map=True)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression=OUT_COMPRESSION)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # an empty input: an empty file with the schema
        pq.write_table(_table(pa, [], dimension), tmp, compression=OUT_COMPRESSION)
    tmp.rename(out)
