"""Ray Data for corpora bigger than one machine: an actor for ``Dataset.map_batches``.

``pip install 'ctxembed[ray]'``. Ray runs the actors (one model each, loaded once from an
exported folder that every node can read) and moves the data; this class only turns a batch of
texts into rows of words, laid out as ``ctxembed embed-file`` writes them::

    import ray
    from ctxembed.ray_data import WordEmbeddingActor

    ds = ray.data.read_json("corpus.jsonl")           # columns "id" and "text"
    words = ds.map_batches(
        WordEmbeddingActor,
        fn_constructor_kwargs={"model_dir": "models/all-MiniLM-L6-v2"},
        concurrency=4,                                 # actors, each with its model
        num_cpus=2,                                    # cores per actor: its ONNX threads
        batch_size=256,
        batch_format="pyarrow",
    )
    words.write_parquet("words/")

Each output row is one word: the input's other columns (``id`` above: what joins a word back
to its text), then ``word``, ``start``, ``end`` (code points) and ``vector``. Empty texts give
no rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctxembed.bulk import CALL_TEXTS, word_columns
from ctxembed.runtime.types import Provider, TextInput


def _assigned_cpus() -> int:
    """The cores Ray gave this actor (map_batches' num_cpus), so that its ONNX threads do not
    oversubscribe the node; 1 outside Ray."""
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    except Exception:  # not inside a Ray worker
        return 1
    return max(1, int(cpus))


class WordEmbeddingActor:
    """A callable class for ``map_batches``: one WordEmbedder per actor."""

    def __init__(
        self,
        model_dir: str,
        text_column: str = "text",
        *,
        select_words: Sequence[str] = (),
        provider: Provider = "auto",
        threads: int | None = None,
    ) -> None:
        from ctxembed.runtime import WordEmbedder

        self.text_column = text_column
        self.select_words = list(select_words)
        self.embedder = WordEmbedder.load(model_dir, provider, threads=threads or _assigned_cpus())
        self.dimension = self.embedder.dimension

    def __call__(self, batch: Any) -> Any:
        """A pyarrow Table (or anything ``pyarrow.table`` takes) in, a pyarrow Table out."""
        import numpy as np
        import pyarrow as pa

        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        if self.text_column not in table.column_names:
            raise KeyError(
                f"no column {self.text_column!r} in the batch (it has {table.column_names});"
                " pass text_column= in fn_constructor_kwargs"
            )
        clash = set(table.column_names) & {"word", "start", "end", "vector"}
        if clash:
            raise KeyError(f"input columns {sorted(clash)} would clash with the word columns")
        texts = table.column(self.text_column).to_pylist()
        present = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        results = []
        for k in range(0, len(present), CALL_TEXTS):
            inputs = [
                TextInput(text=texts[i], select_words=self.select_words)
                for i in present[k : k + CALL_TEXTS]
            ]
            results.extend(self.embedder.embed(inputs))
        counts = [len(r.words) for r in results]
        rows = np.repeat(np.asarray(present, dtype=np.int64), counts)
        carried = table.drop_columns([self.text_column]).take(pa.array(rows, pa.int64()))
        columns = word_columns(pa, results, self.dimension)
        for name, column in columns.items():
            carried = carried.append_column(name, column)
        return carried
