"""Ray Data: map_batches over an actor pool on a single-node Ray gives the in-process vectors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctxembed.ray_data import WordEmbeddingActor
from ctxembed.runtime import WordEmbedder
from testkit.corpus import load_corpus

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024**2,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def test_actor_pool_rows_match_in_process(
    local_ray: Any, model_dir: Path, embedder: WordEmbedder
) -> None:
    texts = [*load_corpus(40), "", "   ", "river bank"]
    items = [{"id": 1000 + i, "text": t} for i, t in enumerate(texts)]
    ds = local_ray.data.from_items(items, override_num_blocks=4)
    out = ds.map_batches(
        WordEmbeddingActor,
        fn_constructor_kwargs={"model_dir": str(model_dir)},
        concurrency=2,
        num_cpus=1,
        batch_size=8,
        batch_format="pyarrow",
    )
    import pyarrow as pa

    table = pa.concat_tables(local_ray.get(out.to_arrow_refs()))
    assert table.column_names == ["id", "word", "start", "end", "vector"]
    by_id: dict[int, list[int]] = {}
    for r, text_id in enumerate(table.column("id").to_pylist()):
        by_id.setdefault(text_id, []).append(r)
    assert 1040 not in by_id and 1041 not in by_id, "empty texts give no rows"
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    words = table.column("word").to_pylist()
    starts = table.column("start").to_pylist()
    expected = embedder.embed([t for t in texts if t.strip()])
    present = [1000 + i for i, t in enumerate(texts) if t.strip()]
    assert sorted(by_id) == present
    for text_id, want in zip(present, expected, strict=True):
        got = by_id[text_id]
        assert [words[r] for r in got] == [w.text for w in want.words]
        assert [starts[r] for r in got] == [w.start for w in want.words]
        np.testing.assert_allclose(vectors[got], want.vectors, atol=1e-4)


def test_actor_names_a_missing_column(model_dir: Path) -> None:
    import pyarrow as pa

    actor = WordEmbeddingActor(str(model_dir), threads=1)
    with pytest.raises(KeyError, match="no column 'text'"):
        actor(pa.table({"body": ["a bank"]}))
    with pytest.raises(KeyError, match="clash"):
        actor(pa.table({"text": ["a bank"], "word": ["x"]}))
    one = actor({"text": ["a bank"], "id": [7]})
    assert one.column("id").to_pylist() == [7, 7] and one.column("word").to_pylist() == [
        "a",
        "bank",
    ]
