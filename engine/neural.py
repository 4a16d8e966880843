"""Neural first stages: a query's vector against a faiss index of passage vectors (dense), and a query's learned
sparse weights against an impact index, scored by the BM25 kernels in linear mode (SPLADE)."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import numpy as np

from engine.encoders import BiEncoder, SpladeEncoder
from engine.errors import SiftError
from engine.format import IndexFormatError, PostingLists, verify_files
from engine.reader import IndexReader, Results, rank_documents
from engine.sparse import ALGORITHMS, term_ranges, top_postings


class NeuralSearchError(SiftError):
    pass


def _choose_model(index: IndexReader, kind: str, model: str | None, build_flag: str) -> tuple[str, dict]:
    """The manifest entry of kind's index of model (the first one if model is None), or an error saying what to do."""
    built = index.manifest.get(kind, {})
    if not built:
        raise NeuralSearchError(f"{index.path}: no {kind} index; build one with: sift index ... {build_flag}")
    if model is None:
        model = next(iter(built))
    if model not in built:
        raise NeuralSearchError(f"{index.path}: no {kind} index for {model!r}; it has: {', '.join(built)}")
    return model, built[model]


class DenseSearcher:
    """One model's dense index inside a Sift index; scores are inner products (cosine for unit vectors)."""

    def __init__(self, index: IndexReader, model: str | None = None, threads: int | None = None) -> None:
        import faiss

        model, entry = _choose_model(index, "dense", model, "--dense")
        self.index = index
        self.model = model
        folder = index.path / entry["folder"]
        try:
            listed = json.loads((folder / "dense.json").read_text(encoding="utf-8")).get("files")
        except (OSError, ValueError) as e:
            raise IndexFormatError(f"{folder / 'dense.json'}: missing or damaged ({e})") from None
        verify_files(folder, listed)
        flags = faiss.IO_FLAG_MMAP if entry["faiss"] == "flat" else 0
        self.faiss = faiss.read_index(str(folder / "faiss.index"), flags)
        self.encoder = BiEncoder(model, threads=threads)

    def search_many(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        """Top-k passages per query (documents: a split document counts by its best passage); with a filter, the
        top k of the matching passages (faiss searches only the ids a selector admits)."""
        import faiss

        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vectors = np.ascontiguousarray(self.encoder.encode(list(queries), query=True))
        options = {}
        total = self.faiss.ntotal
        mask = global_mask(self.index, filter)
        if mask is not None:
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(np.packbits(mask, bitorder="little")))
            kind = type(faiss.downcast_index(self.faiss)).__name__
            parameters = (faiss.SearchParametersHNSW if "HNSW" in kind else faiss.SearchParametersIVF
                          if "IVF" in kind else faiss.SearchParameters)()  # fmt: skip
            parameters.sel = selector
            options = {"params": parameters}
            total = int(mask.sum())
            if not total:
                return [Results([], [], np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]

        def top(rows: np.ndarray, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
            scores, passages = self.faiss.search(vectors[rows], depth, **options)
            return [(p[p >= 0].astype(np.int64), s[p >= 0]) for s, p in zip(scores, passages)]

        return rank_documents(self.index, top, len(vectors), k, total)

    def search(self, query: str, k: int = 10, filter: str | None = None) -> Results:
        return self.search_many([query], k, filter)[0]


class ImpactSearcher:
    """One learned sparse model's impact index inside a Sift index. A passage's score is the sum over the query's
    terms of the query weight times the passage's impact, divided by the quantization scale: the model's dot
    product, up to the quantization of passage weights. Exact: MaxScore and the exhaustive kernel agree."""

    def __init__(self, index: IndexReader, model: str | None = None, threads: int | None = None) -> None:
        model, entry = _choose_model(index, "impact", model, "--splade")
        self.index = index
        self.model = model
        self.lists = PostingLists(index.path / entry["folder"])
        self.scale = float(entry["scale"])
        self.encoder = SpladeEncoder(model, threads=threads)
        self._no_norms = np.zeros(index.passages, dtype=np.uint8)
        self._local = threading.local()

    def plan(self, weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A query's {token: weight} -> the posting ranges, weights (float32, divided by the scale) and first
        blocks of the tokens the index holds."""
        tokens = list(weights)
        starts, ends, blocks, found, _ = term_ranges(
            self.lists.terms.find_many(tokens), self.lists.offsets, self.lists.blocks.offsets
        )
        values = np.array([weights[t] for t in tokens], dtype=np.float64)[found] / self.scale
        return starts, ends, values.astype(np.float32), blocks

    def search_weights(
        self, weights: dict[str, float], k: int = 10, algorithm: str = "auto", mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k passage numbers and float32 scores for a query already encoded."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        starts, ends, values, blocks = self.plan(weights)
        if not len(starts):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return top_postings(
            self.lists, starts, ends, values, blocks, self._no_norms, np.ones(1, dtype=np.float32),
            np.zeros(1, dtype=np.int64), k, algorithm, self._scratch, linear=True, mask=mask,
        )  # fmt: skip

    def _scratch(self) -> tuple[np.ndarray, np.ndarray]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            n = self.index.passages
            buffers = self._local.buffers = (np.zeros(n, dtype=np.float32), np.empty(n, dtype=np.int64))
        return buffers

    def search_many(self, queries: Sequence[str], k: int = 10, algorithm: str = "auto",
                    filter: str | None = None) -> list[Results]:  # fmt: skip
        """Top-k passages per query (documents: a split document counts by its best passage); with a filter, the
        top k of the matching passages."""
        encoded = self.encoder.encode(list(queries))
        mask = global_mask(self.index, filter)

        def top(rows: np.ndarray, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
            return [self.search_weights(encoded[row], depth, algorithm, mask) for row in rows.tolist()]

        return rank_documents(self.index, top, len(encoded), k, self.index.passages)

    def search(self, query: str, k: int = 10, filter: str | None = None) -> Results:
        return self.search_many([query], k, filter=filter)[0]


def global_mask(index: IndexReader, filter: str | None) -> np.ndarray | None:
    """uint8 per global passage number: live and matching the filter; None when every passage qualifies."""
    masks = index.filter_masks(filter)
    if all(m is None for m in masks):
        return None
    return np.concatenate([np.ones(s.passages, np.uint8) if m is None else m for m, s in zip(masks, index.segments)])
