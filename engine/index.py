"""Opening an index and searching it with BM25: the Python API behind the CLI.

`open_index(path)` gives an Index: the reader of the newest commit (engine/reader.py) with BM25 search over it
(engine/sparse.py). Dense and impact searchers (engine/neural.py) and pipelines (engine/pipeline.py) take it too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import SiftError
from engine.format import read_manifest
from engine.query import SHOULD, Group, Term, TreeSearcher, parse_fields, parse_query, query_terms, snippet
from engine.reader import ADAPTIVE_CANDIDATES, Hit, IndexReader, Results, adaptive_k, indexed_text, rank_documents
from engine.sparse import BM25Params, BM25Searcher
from engine.typos import correct

if TYPE_CHECKING:
    from engine.sharded import ShardedIndex

SYNTAXES = ("plain", "lucene")

__all__ = ["Hit", "Index", "Results", "indexed_text", "open_index"]


class Index(IndexReader):
    """One commit of an index, with BM25 search. Safe to search from many threads."""

    @cached_property
    def bm25(self) -> BM25Searcher:
        return BM25Searcher(self)

    @cached_property
    def tree_searcher(self) -> TreeSearcher:
        return TreeSearcher(self.bm25)

    @property
    def default_params(self) -> BM25Params:
        return self.bm25.default_params

    def search(self, query: str | Sequence[str], k: int | str = 10, params: BM25Params | None = None,
               documents: bool = False, algorithm: str = "auto", filter: str | None = None, syntax: str = "plain",
               offset: int = 0, typos: str = "off",
               fields: str | dict[str, float] | None = None) -> Results:  # fmt: skip
        """BM25 top-k. documents=True ranks documents by their best passage (the default for split indexes).
        filter: e.g. "year >= 2019 AND journal IN [Nature, Science]" over fields declared at index time.
        syntax: "plain" (every character is text) or "lucene" (engine/query.py: +, -, AND, OR, NOT, (), ^).
        offset: skip that many hits (pagination: ranks k+1... of the same ranking). k="auto": Adaptive-k, cut at
        the largest score gap among the best ADAPTIVE_CANDIDATES (engine/reader.adaptive_k). typos="auto": a query
        term the index does not hold is replaced by its most frequent neighbour within one or two edits
        (engine/typos.py; plain syntax; in the lucene syntax, write term~1). fields: where words without field: are
        searched, e.g. "title^2,text" or {"title": 2.0, "text": 1.0} (each field its own BM25, the scores summed);
        default: title and text together (contents), as Lucene's parity index; a positional index for the others."""
        if syntax == "plain" and typos == "off" and fields is None and not offset and type(k) is int:
            return self.bm25.search(query, k, params, documents, algorithm, filter)  # the usual query, in few steps
        if typos not in ("off", "auto"):
            raise ValueError(f'typos must be "off" or "auto", got {typos!r}')
        if typos == "auto":
            if syntax != "plain":
                raise ValueError('typos="auto" corrects plain queries; in the lucene syntax write fuzzy terms, term~1')
            if not isinstance(query, str):
                raise ValueError('typos="auto" corrects a query\'s text, not terms already analyzed')
            query = correct(self.bm25.analyzer, self.segments, query)
        if k == "auto":
            ranked = self.search(query, ADAPTIVE_CANDIDATES, params, documents, algorithm, filter, syntax,
                                 fields=fields)  # fmt: skip
            return ranked.head(adaptive_k(ranked.scores)).page(offset)
        if not isinstance(k, int) or isinstance(k, bool):
            raise ValueError(f'k must be a whole number or "auto", got {k!r}')
        if syntax not in SYNTAXES:
            raise ValueError(f"unknown query syntax {syntax!r}; choose one of {', '.join(SYNTAXES)}")
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, got {offset}")
        fields = parse_fields(fields) if isinstance(fields, str) else fields
        fields = None if fields == {"contents": 1.0} else fields  # the default: the kernels' plain search
        if syntax == "plain" and (not fields or not self.bm25.analyzer.analyze(query)):  # nothing to search: none
            return self.bm25.search(query, k + offset, params, documents, algorithm, filter).page(offset)
        if not isinstance(query, str):
            raise ValueError("a query in the lucene syntax, or over fields, is text, not terms")
        if syntax == "plain":  # each word a term, in the fields asked for
            tree = Group(tuple((SHOULD, Term(word)) for word in self.bm25.analyzer.tokenize(query)))
        else:
            tree = parse_query(query)
        masks = self.filter_masks(filter)

        def top(rows: np.ndarray, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
            return [self.tree_searcher.search_passages(tree, depth, params, masks, fields) for _ in rows]

        if documents and self.split_passages:
            return rank_documents(self, top, 1, k + offset, self.passages)[0].page(offset)
        return self.hits(*top(np.zeros(1), k + offset)[0], as_documents=False).page(offset)

    def batch_search(self, queries: Sequence[str | Sequence[str]], k: int = 10, params: BM25Params | None = None,
                     documents: bool = False, threads: int | None = None, algorithm: str = "auto",
                     filter: str | None = None) -> list[Results]:  # fmt: skip
        """Many queries at once, in order, scored on a pool of threads; results equal single searches."""
        return self.bm25.batch_search(queries, k, params, documents, threads, algorithm, filter)

    def snippets(self, hits: Results, query: str, syntax: str = "plain", length: int = 200) -> list[str]:
        """Per hit, the fragment of its passage (title and text) that best matches the query, its words marked."""
        terms, memo = query_terms(query, self.bm25.analyzer, syntax), {}
        return [snippet(text, terms, self.bm25.analyzer, length, memo=memo) for text in self.texts(hits.passages)]

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


def open_index(path: str | os.PathLike, ray: str | None = None, **sharded) -> Index | ShardedIndex:
    """The newest commit of the index at path: an Index, or for a sharded index (built with --shards) an
    engine.sharded.ShardedIndex, which searches, fetches and evaluates alike. ray ("auto" or a cluster's address)
    serves a sharded index's shards from Ray actors; sharded: ShardedIndex's replicas, timeout, allow_partial."""
    from engine.sharded import ShardedIndex, is_sharded  # engine.sharded builds on this module

    if is_sharded(path):
        return ShardedIndex(path, ray, **sharded)
    if ray is not None or sharded:
        raise SiftError(f"{path}: ray= and its options serve the shards of a sharded index; this is one index")
    return Index(path)
