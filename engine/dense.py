"""Dense first stage: a query's vector against a faiss index of passage vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.encoders import BiEncoder
from engine.errors import SiftError
from engine.index import Index, Results


class DenseSearchError(SiftError):
    pass


class DenseSearcher:
    """One model's dense index inside a Sift index; scores are inner products (cosine for unit vectors)."""

    def __init__(self, index: Index, model: str | None = None, threads: int | None = None) -> None:
        import faiss

        dense = index.manifest.get("dense", {})
        if not dense:
            raise DenseSearchError(f"{index.path}: no dense index; build one with: sift index ... --dense")
        if model is None:
            model = next(iter(dense))
        if model not in dense:
            raise DenseSearchError(f"{index.path}: no dense index for {model!r}; it has: {', '.join(dense)}")
        self.index = index
        self.model = model
        folder = index.path / dense[model]["folder"]
        flags = faiss.IO_FLAG_MMAP if dense[model]["faiss"] == "flat" else 0
        self.faiss = faiss.read_index(str(folder / "faiss.index"), flags)
        self.encoder = BiEncoder(model, threads=threads)

    def search_many(self, queries: Sequence[str], k: int = 10) -> list[Results]:
        """Top-k passages per query (documents: a split document counts by its best passage)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vectors = self.encoder.encode(list(queries), query=True)
        depth = min(k * (4 if self.index.split_passages else 1), self.faiss.ntotal)
        scores, passages = self.faiss.search(np.ascontiguousarray(vectors), depth)
        found = []
        for row_scores, row_passages in zip(scores, passages):
            keep = row_passages >= 0
            found.append(self.index.rank(row_passages[keep].astype(np.int64), row_scores[keep], k))
        return found

    def search(self, query: str, k: int = 10) -> Results:
        return self.search_many([query], k)[0]
