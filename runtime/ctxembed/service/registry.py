"""The models one server serves, by name: each with its own engine, batcher and metrics.

Both protocols route through it: an empty name means the default model (the first given), an
unknown one is ``UnknownModel`` (NOT_FOUND) naming the served ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ctxembed.runtime.stages import WordEmbeddingModel
from ctxembed.service.batcher import MicroBatcher
from ctxembed.service.metrics import ModelMetrics
from ctxembed.service.status import UnknownModel


@dataclass
class ServedModel:
    name: str
    model: WordEmbeddingModel
    batcher: MicroBatcher
    metrics: ModelMetrics | None = None
    owned: bool = False  # loaded by the server, so closed by it


class ModelRegistry:
    def __init__(self, models: list[ServedModel]) -> None:
        if not models:
            raise ValueError("a server needs at least one model")
        self._models = {m.name: m for m in models}
        if len(self._models) != len(models):
            raise ValueError(f"model names must differ: {[m.name for m in models]}")
        self.default = models[0]

    def get(self, name: str = "") -> ServedModel:
        if not name:
            return self.default
        served = self._models.get(name)
        if served is None:
            known = ", ".join(self._models)
            raise UnknownModel(f"model {name!r} is not served here; the models are {known}")
        return served

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)
