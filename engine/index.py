"""Opening an index and searching it with BM25: the Python API behind the CLI.

`open_index(path)` gives an Index: the reader of the newest commit (engine/reader.py) with BM25 search over it
(engine/sparse.py). Dense and impact searchers (engine/neural.py) and pipelines (engine/pipeline.py) take it too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from engine.format import read_manifest
from engine.reader import Hit, IndexReader, Results, indexed_text
from engine.sparse import BM25Params, BM25Searcher

__all__ = ["Hit", "Index", "Results", "indexed_text", "open_index"]


class Index(IndexReader):
    """One commit of an index, with BM25 search. Safe to search from many threads."""

    @cached_property
    def bm25(self) -> BM25Searcher:
        return BM25Searcher(self)

    @property
    def default_params(self) -> BM25Params:
        return self.bm25.default_params

    def search(self, query: str | Sequence[str], k: int = 10, params: BM25Params | None = None,
               documents: bool = False, algorithm: str = "auto", filter: str | None = None) -> Results:  # fmt: skip
        """BM25 top-k. documents=True ranks documents by their best passage (the default for split indexes).
        filter: e.g. "year >= 2019 AND journal IN [Nature, Science]" over fields declared at index time."""
        return self.bm25.search(query, k, params, documents, algorithm, filter)

    def batch_search(self, queries: Sequence[str | Sequence[str]], k: int = 10, params: BM25Params | None = None,
                     documents: bool = False, threads: int | None = None, algorithm: str = "auto",
                     filter: str | None = None) -> list[Results]:  # fmt: skip
        """Many queries at once, in order, scored on a pool of threads; results equal single searches."""
        return self.bm25.batch_search(queries, k, params, documents, threads, algorithm, filter)

    def refresh(self) -> Index:
        """The newest commit: self when nothing newer was committed, else a new Index sharing this one's memory maps
        of the segments both commits hold. This one keeps answering from its own commit until it is dropped."""
        if read_manifest(self.path)["generation"] == self.manifest["generation"]:
            return self
        return type(self)(self.path, reuse=self.segments)

    def search_passages(self, query: str | Sequence[str], k: int = 10, params: BM25Params | None = None,
                        algorithm: str = "auto", filter: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k internal passage numbers and float32 scores, best first."""
        return self.bm25.search_passages(query, k, params, algorithm, filter)


def open_index(path: str | os.PathLike) -> Index:
    return Index(path)
