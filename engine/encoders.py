"""Running ONNX models: tokenizers feed ONNX Runtime sessions, in batches sorted by length to cut padding."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from engine.models import ModelConfig, ModelError, read_config, resolve


def onnx_session(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("onnxruntime is not installed: python3 -m pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batches(session, sequences: Sequence[tuple[Sequence[int], Sequence[int] | None]], batch_size: int,
                bucketing: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The one pad-and-run loop every model shares: sequences of (token ids, type ids or None) are padded per batch
    and fed to the session (only the inputs it has); yields (the batch's sequence numbers, its first output, its
    attention mask). bucketing: longest first, so that a batch holds similar lengths (little padding) and the
    first batch shows the peak memory."""
    inputs = {i.name for i in session.get_inputs()}
    lengths = np.fromiter((len(ids) for ids, _ in sequences), dtype=np.int64, count=len(sequences))
    order = np.argsort(-lengths, kind="stable") if bucketing else np.arange(len(sequences))
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        width = max(int(lengths[chosen].max()), 1)
        ids = np.zeros((len(chosen), width), dtype=np.int64)
        types = np.zeros((len(chosen), width), dtype=np.int64)
        mask = np.zeros((len(chosen), width), dtype=np.int64)
        for row, i in enumerate(chosen.tolist()):
            token_ids, type_ids = sequences[i]
            ids[row, : len(token_ids)] = token_ids
            if type_ids is not None:
                types[row, : len(token_ids)] = type_ids
            mask[row, : len(token_ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        yield chosen, session.run(None, {k: v for k, v in feeds.items() if k in inputs})[0], mask


def _tokenizer(path: Path, max_length: int):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


class BiEncoder:
    """Texts -> vectors with a bi-encoder model directory (mean or CLS pooling, optionally unit length).

    Vectors do not depend on the batch size (padding is masked out), within float rounding."""

    def __init__(self, model: str | os.PathLike, threads: int | None = None) -> None:
        self.directory = resolve(str(model))
        self.config: ModelConfig = read_config(self.directory)
        if self.config.kind != "bi-encoder":
            raise ModelError(f"model {self.config.name!r} is a {self.config.kind}, not a bi-encoder")
        self.session = onnx_session(self.directory / "model.onnx", threads)
        self.tokenizer = _tokenizer(self.directory / "tokenizer.json", self.config.max_length)

    @property
    def name(self) -> str:
        return self.config.name

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        query: bool = False,
        on_progress: Callable[[int], None] | None = None,
        unit_length: bool | None = None,
    ) -> np.ndarray:
        """float32 [len(texts), dimension]; query=True adds the model's query prefix, else its passage prefix.
        unit_length overrides the model's normalization (the magnitude before it is a quality signal)."""
        prefix = self.config.query_prefix if query else self.config.passage_prefix
        encodings = self.tokenizer.encode_batch([prefix + t for t in texts] if prefix else list(texts))
        vectors: np.ndarray | None = None
        sequences = [(e.ids, e.type_ids) for e in encodings]
        for chosen, hidden, mask in run_batches(self.session, sequences, batch_size):
            pooled = self._pool(hidden, mask, self.config.normalize if unit_length is None else unit_length)
            if vectors is None:
                vectors = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            vectors[chosen] = pooled
            if on_progress:
                on_progress(len(chosen))
        if vectors is None:
            return np.zeros((0, 0), dtype=np.float32)
        return vectors

    def _pool(self, hidden: np.ndarray, mask: np.ndarray, unit_length: bool) -> np.ndarray:
        if hidden.ndim == 2:  # the model pools itself
            pooled = hidden.astype(np.float32)
        elif self.config.pooling == "cls":
            pooled = hidden[:, 0].astype(np.float32)
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if unit_length:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)


class SpladeEncoder:
    """Texts -> learned sparse term weights with a SPLADE model directory: per vocabulary entry, the maximum over the
    text's tokens of log(1 + relu(masked-LM logit)); only positive weights are kept."""

    def __init__(self, model: str | os.PathLike, threads: int | None = None) -> None:
        self.directory = resolve(str(model))
        self.config: ModelConfig = read_config(self.directory)
        if self.config.kind != "splade":
            raise ModelError(f"model {self.config.name!r} is a {self.config.kind}, not a SPLADE model")
        self.session = onnx_session(self.directory / "model.onnx", threads)
        self.tokenizer = _tokenizer(self.directory / "tokenizer.json", self.config.max_length)

    def encode(self, texts: Sequence[str], batch_size: int = 8) -> list[dict[str, float]]:
        """One {token: weight} per text, tokens as the tokenizer's vocabulary spells them."""
        return [
            {self.tokenizer.id_to_token(int(t)): float(w) for t, w in zip(ids, weights)}
            for ids, weights in self.encode_ids(texts, batch_size)
        ]

    def encode_ids(
        self, texts: Sequence[str], batch_size: int = 8, on_progress: Callable[[int], None] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text: its vocabulary ids with a positive weight (ascending, int32) and those weights (float32).

        log(1 + relu(x)) is increasing, so the maximum over tokens is taken on the logits first and the logarithm
        on one row per text: the logits of a batch (tokens x vocabulary) are the bulk of the work otherwise."""
        encodings = self.tokenizer.encode_batch(list(texts))
        empty = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))
        found: list[tuple[np.ndarray, np.ndarray]] = [empty] * len(texts)
        for chosen, logits, mask in run_batches(self.session, [(e.ids, None) for e in encodings], batch_size):
            logits[mask == 0] = -np.inf
            weights = np.log1p(np.maximum(logits.max(axis=1), 0)).astype(np.float32)
            for row, i in enumerate(chosen.tolist()):
                terms = np.flatnonzero(weights[row] > 0).astype(np.int32)
                found[i] = (terms, weights[row, terms])
            if on_progress:
                on_progress(len(chosen))
        return found
