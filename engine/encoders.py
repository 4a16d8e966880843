"""Running ONNX models: tokenizers feed ONNX Runtime sessions, in batches sorted by length to cut padding."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
        self._inputs = {i.name for i in self.session.get_inputs()}

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
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")  # longest first: the first batch shows the peak memory
        vectors: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            width = int(lengths[chosen].max())
            ids = np.zeros((len(chosen), width), dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            types = np.zeros((len(chosen), width), dtype=np.int64)
            for row, i in enumerate(chosen.tolist()):
                encoding = encodings[i]
                n = len(encoding.ids)
                ids[row, :n] = encoding.ids
                mask[row, :n] = 1
                types[row, :n] = encoding.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
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
        self._inputs = {i.name for i in self.session.get_inputs()}

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
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")
        empty = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))
        found: list[tuple[np.ndarray, np.ndarray]] = [empty] * len(texts)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            width = max(int(lengths[chosen].max()), 1)
            ids = np.zeros((len(chosen), width), dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            for row, i in enumerate(chosen.tolist()):
                ids[row, : lengths[i]] = encodings[i].ids
                mask[row, : lengths[i]] = 1
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            logits = self.session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
            logits[mask == 0] = -np.inf
            weights = np.log1p(np.maximum(logits.max(axis=1), 0)).astype(np.float32)
            for row, i in enumerate(chosen.tolist()):
                terms = np.flatnonzero(weights[row] > 0).astype(np.int32)
                found[i] = (terms, weights[row, terms])
            if on_progress:
                on_progress(len(chosen))
        return found
