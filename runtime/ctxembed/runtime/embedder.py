"""``WordEmbedder``: texts → one contextual vector per word.

The work is three stages that can be tested and timed alone, and that the gRPC micro-batcher
drives separately so that one ONNX run serves many requests:

    prepare  (validate, tokenize, select units, plan windows)  → Prepared
    forward  (pad per length bucket, run the session)          → token states per text
    finish   (combine layers, pool, normalize, build results)  → WordEmbeddings
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ctxembed.runtime.errors import InvalidInput, ModelLoadError
from ctxembed.runtime.manifest import Manifest, load_manifest
from ctxembed.runtime.pooling import combine_layers, l2_normalize, pool
from ctxembed.runtime.selection import Units, all_words, select_spans, select_words
from ctxembed.runtime.session import ModelSession, SessionConfig
from ctxembed.runtime.tokenization import TextTokenizer, TokenizedText
from ctxembed.runtime.types import (
    DEFAULT_MAX_PADDING,
    DEFAULT_SPIN_AFTER_RUN_US,
    EmbedOptions,
    InputLike,
    Limits,
    TextInput,
    Token,
    Word,
    WordEmbeddings,
)
from ctxembed.runtime.validation import check_input, check_options, coerce_input
from ctxembed.runtime.windows import WindowPlan, plan_windows


# NamedTuples rather than dataclasses: built on every request, and cheaper to build.
class PreparedText(NamedTuple):
    tokens: TokenizedText
    units: Units
    plan: WindowPlan


class Prepared(NamedTuple):
    """A validated, tokenized call, ready for :meth:`WordEmbedder.forward`."""

    texts: tuple[PreparedText, ...]
    options: EmbedOptions
    layer_ids: tuple[int, ...]  # absolute hidden-state indices


class WordEmbedder:
    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        session: ModelSession,
        tokenizer: TextTokenizer,
        limits: Limits,
        stride: int | None,
        run_batch_tokens: int = 256,
        isolate_rows: bool | None = None,
        max_padding: float = DEFAULT_MAX_PADDING,
    ) -> None:
        self.model_dir = model_dir
        self.manifest = manifest
        self.session = session
        self.tokenizer = tokenizer
        self.limits = limits
        self.capacity = manifest.max_tokens - tokenizer.num_special
        self.stride = stride or max(1, self.capacity // 2)
        if not 1 <= self.stride <= self.capacity:
            raise ValueError(f"stride must be between 1 and {self.capacity}, got {self.stride}")
        self.run_batch_tokens = run_batch_tokens
        if max_padding < 0:
            raise ValueError(f"max_padding must be >= 0, got {max_padding}")
        self.max_padding = max_padding
        # Dynamic int8 graphs quantize activations per tensor, over the whole batch: a text's
        # vectors would then depend on its batch neighbours. Running each window alone keeps
        # results reproducible, for about 20% of int8 throughput (measured here). Calibrated
        # int8 (the export default) has fixed scales and batches like fp32.
        if isolate_rows is None:
            isolate_rows = session.variant.dynamic_activation_scales
        self.isolate_rows = isolate_rows
        self._pad_id = manifest.tokenizer.pad_token_id
        self._layers_available = tuple(manifest.layers_available)
        self._prefix = np.asarray(tokenizer.prefix_ids, dtype=np.int64)
        self._suffix = np.asarray(tokenizer.suffix_ids, dtype=np.int64)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        provider: str = "auto",
        *,
        variant: str | None = None,
        threads: int | None = None,
        spinning: bool = True,
        spin_after_run_us: int = DEFAULT_SPIN_AFTER_RUN_US,
        parallel_runs: int = 1,
        stride: int | None = None,
        limits: Limits | None = None,
        run_batch_tokens: int = 256,
        isolate_rows: bool | None = None,
        max_padding: float = DEFAULT_MAX_PADDING,
    ) -> WordEmbedder:
        """Load a folder written by ``ctxembed export`` and warm its session up.

        ``run_batch_tokens`` caps the padded tokens of one ONNX run: small batches of similar
        length were fastest on this project's CPUs (cache-bound); ``max_padding`` caps a run's
        padding as a fraction of its real tokens (0.1: at most 10% more). ``isolate_rows``
        (default: on for int8 with dynamic activation scales) runs every window alone so that
        results never depend on batch neighbours.
        ``parallel_runs`` > 1 (CPU only) runs a call's rows that many at a time, one thread
        each, on a second session (+54% bulk words/s here, ~60 MB; see ``ModelSession``).
        """
        path = Path(model_dir)
        manifest = load_manifest(path)
        tokenizer = TextTokenizer.from_file(path / manifest.tokenizer.file)
        if manifest.max_tokens <= tokenizer.num_special:
            raise ModelLoadError(f"{path}: max_tokens {manifest.max_tokens} is too small")
        config = SessionConfig(
            provider, variant, threads, spinning, spin_after_run_us, parallel_runs
        )
        session = ModelSession(path, manifest, config)
        embedder = cls(
            path,
            manifest,
            session,
            tokenizer,
            limits or Limits(),
            stride,
            run_batch_tokens,
            isolate_rows,
            max_padding,
        )
        session.warm_up(
            [*tokenizer.prefix_ids, *tokenizer.suffix_ids],
            manifest.layer_outputs[manifest.num_layers],
        )
        return embedder

    def close(self) -> None:
        """Stop the threads of ``parallel_runs`` (if any); the embedder stays usable."""
        self.session.close()

    def __enter__(self) -> WordEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- facts -------------------------------------------------------------------------------
    @property
    def dimension(self) -> int:
        return self.manifest.hidden_size

    @property
    def name(self) -> str:
        return self.manifest.name

    # -- the one-call API --------------------------------------------------------------------
    def embed(
        self,
        inputs: Sequence[InputLike],
        *,
        pooling: str = "mean",
        layers: Sequence[int] = (-1,),
        layer_combine: str = "mean",
        normalize: bool = False,
        dtype: str = "float32",
        include_tokens: bool = False,
    ) -> list[WordEmbeddings]:
        """Embed many inputs at once; results come back in input order."""
        prepared = self.prepare(
            inputs,
            pooling=pooling,
            layers=layers,
            layer_combine=layer_combine,
            normalize=normalize,
            dtype=dtype,
            include_tokens=include_tokens,
        )
        states = self.forward(prepared.texts, prepared.layer_ids)
        return self.finish(prepared, states, prepared.layer_ids)

    # -- stage 1 -----------------------------------------------------------------------------
    def prepare(
        self,
        inputs: Sequence[InputLike],
        *,
        pooling: str = "mean",
        layers: Sequence[int] = (-1,),
        layer_combine: str = "mean",
        normalize: bool = False,
        dtype: str = "float32",
        include_tokens: bool = False,
    ) -> Prepared:
        if isinstance(inputs, (str, TextInput)):
            raise InvalidInput("inputs", "expected a list of inputs, got a single input")
        for name, value in (
            ("pooling", pooling),
            ("layer_combine", layer_combine),
            ("dtype", dtype),
        ):
            if not isinstance(value, str):
                raise InvalidInput(name, f"expected a string, got {value!r}")
        try:
            layers = tuple(layers)
            hash(layers)
        except TypeError:
            raise InvalidInput("layers", "expected a list of integers") from None
        options, layer_ids = check_options(
            pooling,
            layers,
            layer_combine,
            dtype,
            normalize,
            include_tokens,
            self.manifest.num_layers,
            self._layers_available,
        )
        coerced = [coerce_input(value, f"inputs[{i}]") for i, value in enumerate(inputs)]
        for i, inp in enumerate(coerced):
            check_input(inp, f"inputs[{i}]", self.limits)
        tokenized = self._tokenize(coerced)
        texts = tuple(
            self._prepare_text(inp, tok, f"inputs[{i}]")
            for i, (inp, tok) in enumerate(zip(coerced, tokenized))
        )
        return Prepared(texts, options, layer_ids)

    def _tokenize(self, inputs: Sequence[TextInput]) -> list[TokenizedText]:
        if all(inp.text is not None for inp in inputs):  # the usual call: no pre-split words
            return self.tokenizer.tokenize_texts([inp.text or "" for inp in inputs])
        raw = [i for i, inp in enumerate(inputs) if inp.text is not None]
        split = [i for i, inp in enumerate(inputs) if inp.text is None]
        out: list[TokenizedText | None] = [None] * len(inputs)
        if raw:
            for i, tok in zip(
                raw,
                self.tokenizer.tokenize_texts([inputs[i].text or "" for i in raw]),
            ):
                out[i] = tok
        if split:
            lists = [list(inputs[i].words or ()) for i in split]
            for i, tok in zip(split, self.tokenizer.tokenize_words(lists)):
                out[i] = tok
        return [t for t in out if t is not None]

    def _prepare_text(self, inp: TextInput, tok: TokenizedText, field: str) -> PreparedText:
        if inp.words is not None and tok.word_index.shape[0] != len(inp.words):
            missing = sorted(set(range(len(inp.words))) - set(tok.word_index.tolist()))[0]
            raise InvalidInput(
                f"{field}.words[{missing}]", "produces no token (only characters the model ignores)"
            )
        if inp.select_spans:
            units = select_spans(tok, inp.select_spans, field)
        elif inp.select_words:
            units = select_words(tok, inp.select_words, self.tokenizer.normalize)
        else:
            units = all_words(tok)
        plan = plan_windows(tok.num_tokens, tok.word_tokens, self.capacity, self.stride)
        return PreparedText(tok, units, plan)

    # -- stage 2 -----------------------------------------------------------------------------
    def forward(self, texts: Sequence[PreparedText], layer_ids: Sequence[int]) -> list[np.ndarray]:
        """Token states per text, shape (len(layer_ids), tokens, dim), float32.

        Windows of all texts are sorted by length and padded per batch of similar lengths
        (dynamic-int8 windows run alone, see ``isolate_rows``), so a text's vectors do not
        depend on what it is batched with.
        """
        outputs = [self.manifest.layer_outputs[i] for i in layer_ids]
        if len(texts) == 1 and texts[0].plan.count == 1 and texts[0].units.tokens.shape[0]:
            return [self._forward_alone(texts[0], outputs)]
        n_prefix, n_special = len(self.tokenizer.prefix_ids), self.tokenizer.num_special
        rows: list[tuple[int, int, int, int]] = []  # (text, window, start, end) per model row
        states = []
        for t, text in enumerate(texts):
            n = text.tokens.num_tokens if text.units.tokens.shape[0] else 0
            states.append(np.empty((len(outputs), n, self.dimension), np.float32))
            if n:
                rows.extend((t, w, s, e) for w, (s, e) in enumerate(text.plan.windows.tolist()))
        lengths = [e - s + n_special for _, _, s, e in rows]
        order = sorted(range(len(rows)), key=lengths.__getitem__)
        batches = self._buckets(order, lengths)
        feeds = []
        for batch in batches:
            width = lengths[batch[-1]]
            ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            ids[:, :n_prefix] = self._prefix
            for r, row in enumerate(batch):
                t, _, s, e = rows[row]
                end = n_prefix + e - s
                ids[r, n_prefix:end] = texts[t].tokens.ids[s:e]
                ids[r, end : end + len(self._suffix)] = self._suffix
                mask[r, : end + len(self._suffix)] = 1
            feeds.append((ids, mask))
        # Several runs go out in parallel (see ModelSession.run_many); scatter as they return.
        for batch, result in zip(batches, self.session.run_many(feeds, outputs)):
            for r, row in enumerate(batch):
                t, w, s, _ = rows[row]
                self._scatter(texts[t], w, s, [out[r] for out in result], states[t], n_prefix)
        return states

    def _forward_alone(self, text: PreparedText, outputs: list[str]) -> np.ndarray:
        """One text in one window (most requests): no bucketing, and no copy of the states,
        which are views into the session's output."""
        ids = text.tokens.framed_ids[None, :]
        result = self.session.run(ids, _ones(ids.shape[1]), outputs)
        lo, hi = len(self._prefix), len(self._prefix) + text.tokens.num_tokens
        if len(result) == 1:
            return result[0][:, lo:hi]
        return np.stack([out[0, lo:hi] for out in result])

    def _buckets(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Consecutive runs of the length-sorted rows within the token budget, and spread over
        the session's parallel runs (16 rows → two runs of 8 when it has two)."""
        per_run = -(-len(order) // self.session.parallel_runs)
        # Padded tokens cost as much as real ones: 32% padding in server-sized calls of 10
        # random corpus texts; capping it at 10% raised their throughput by 20-40% here.
        allowed = 1.0 + self.max_padding
        batches: list[list[int]] = []
        current: list[int] = []
        real = 0
        for row in order:
            padded = (len(current) + 1) * lengths[row]
            if current and (
                self.isolate_rows
                or len(current) >= per_run
                or padded > self.run_batch_tokens
                or padded > allowed * (real + lengths[row])
            ):
                batches.append(current)
                current, real = [], 0
            current.append(row)
            real += lengths[row]
        if current:
            batches.append(current)
        return batches

    @staticmethod
    def _scatter(
        text: PreparedText,
        window: int,
        start: int,
        row_states: list[np.ndarray],
        target: np.ndarray,
        offset: int,
    ) -> None:
        """Copy one model row's token states into the text's (layers, tokens, dim) array."""
        if text.plan.count == 1:
            n = text.tokens.num_tokens
            for k, layer in enumerate(row_states):
                target[k] = layer[offset : offset + n]
            return
        idx = np.flatnonzero(text.plan.token_window == window)
        for k, layer in enumerate(row_states):
            target[k, idx] = layer[offset + idx - start]

    # -- stage 3 -----------------------------------------------------------------------------
    def finish(
        self, prepared: Prepared, states: Sequence[np.ndarray], state_layers: Sequence[int]
    ) -> list[WordEmbeddings]:
        """Pool each text; ``state_layers`` says which layer each row of ``states`` holds."""
        if tuple(state_layers) != prepared.layer_ids:
            pick = [list(state_layers).index(i) for i in prepared.layer_ids]
            states = [st[pick] for st in states]
        return [
            self._finish_text(text, st, prepared.options)
            for text, st in zip(prepared.texts, states)
        ]

    def _finish_text(
        self, text: PreparedText, states: np.ndarray, options: EmbedOptions
    ) -> WordEmbeddings:
        units = text.units
        hidden = combine_layers(states, options.layer_combine)
        vectors = pool(hidden, units.tokens, options.pooling)
        if options.normalize:
            vectors = l2_normalize(vectors)
        if options.dtype == "float16":
            vectors = vectors.astype(np.float16)
        tok = text.tokens
        source = tok.text
        spans = zip(units.chars.tolist(), units.index.tolist())
        if options.include_tokens:
            tokens = _tokens(tok, units.tokens.tolist())
            words = tuple(
                Word(source[cs:ce], cs, ce, i, t) for ((cs, ce), i), t in zip(spans, tokens)
            )
        else:
            words = tuple(Word(source[cs:ce], cs, ce, i) for (cs, ce), i in spans)
        passes = text.plan.count if tok.num_tokens and units.tokens.shape[0] else 0  # skipped
        return WordEmbeddings(words, vectors, tok.num_tokens, passes)


def _tokens(tok: TokenizedText, ranges: list[list[int]]) -> list[tuple[Token, ...]]:
    """The tokens of each unit, for ``include_tokens``."""
    pieces, ids, offsets = tok.pieces, tok.ids.tolist(), tok.offsets.tolist()
    return [
        tuple(Token(pieces[k], ids[k], offsets[k][0], offsets[k][1]) for k in range(s, e))
        for s, e in ranges
    ]


@functools.lru_cache(maxsize=1024)
def _ones(width: int) -> np.ndarray:
    """The attention mask of one unpadded row, shared (read-only) by every row that long."""
    mask = np.ones((1, width), dtype=np.int64)
    mask.flags.writeable = False
    return mask
