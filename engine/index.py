"""Opening an index and searching it: the Python API behind the CLI."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from engine.analysis import Analyzer, AnalyzerConfig
from engine.format import Segment, read_manifest
from engine.sparse import BM25Params, bm25_exhaustive, idf, lucene_norm_bytes, norm_inverse_table


@dataclass(frozen=True)
class Hit:
    """One search result: a passage, or a document scored by its best passage."""

    id: str  # external id: the document's, or "docid#n" for passage n of a split document
    doc_id: str
    score: float
    rank: int
    passage: int  # internal passage number (global across segments)

    def to_dict(self) -> dict:
        return {"id": self.id, "doc_id": self.doc_id, "score": self.score, "rank": self.rank}


@dataclass(frozen=True)
class QueryPlan:
    """A query analyzed against this index: per segment, the posting ranges to score and their weights."""

    terms: tuple[str, ...]
    per_segment: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # (starts, ends, weights)


class Index:
    """A committed generation of an index, memory-mapped. Safe to search from many threads."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.analyzer_config = AnalyzerConfig.from_dict(self.manifest["analyzer"])
        self.default_params = BM25Params(**self.manifest.get("bm25", {}))
        self.segments = [Segment(self.path / s["name"]) for s in self.manifest["segments"]]
        self.bases = np.cumsum([0] + [s.passages for s in self.segments])
        self.split_passages = bool(self.manifest.get("passages", {}).get("window"))
        self._local = threading.local()

    # -- statistics, global across segments so scores do not depend on segmentation

    @property
    def passages(self) -> int:
        return int(self.bases[-1])

    @cached_property
    def scored_passages(self) -> int:
        """Lucene's docCount: passages with at least one term."""
        return int(sum(s.meta["scored_passages"] for s in self.segments))

    @cached_property
    def avgdl(self) -> float:
        tokens = sum(s.total_tokens for s in self.segments)
        return float(np.float32(tokens / max(self.scored_passages, 1)))

    @cached_property
    def documents(self) -> int:
        return int(sum(len(s.doc_ids) for s in self.segments))

    def stats(self) -> dict:
        return {
            "passages": self.passages,
            "documents": self.documents,
            "terms_per_segment": [int(s.meta["terms"]) for s in self.segments],
            "avgdl": self.avgdl,
            "segments": len(self.segments),
            "generation": self.manifest["generation"],
        }

    @property
    def analyzer(self) -> Analyzer:
        """Per thread: the analyzer's stemmer is not thread-safe."""
        analyzer = getattr(self._local, "analyzer", None)
        if analyzer is None:
            analyzer = self._local.analyzer = Analyzer(self.analyzer_config)
        return analyzer

    # -- query processing

    def plan(self, query: str | Sequence[str], params: BM25Params) -> QueryPlan:
        """query: text to analyze, or terms already analyzed."""
        terms = self.analyzer.analyze(query) if isinstance(query, str) else list(query)
        boosts = Counter(terms)  # a repeated query term counts once per occurrence, as in Anserini
        unique = list(boosts)
        ids = [[s.term_id(t) for t in unique] for s in self.segments]
        df = np.array([sum(s.df(i[j]) for s, i in zip(self.segments, ids) if i[j] >= 0) for j in range(len(unique))])
        weights = idf(df, self.scored_passages) * np.array([boosts[t] for t in unique], dtype=np.float32)
        per_segment = []
        for segment, term_ids in zip(self.segments, ids):
            found = [j for j, t in enumerate(term_ids) if t >= 0]
            tids = np.array([term_ids[j] for j in found], dtype=np.int64)
            per_segment.append(
                (
                    np.asarray(segment.offsets[tids], dtype=np.int64),
                    np.asarray(segment.offsets[tids + 1], dtype=np.int64),
                    weights[found].astype(np.float32),
                )
            )
        return QueryPlan(tuple(unique), tuple(per_segment))

    def _norms(self, params: BM25Params) -> tuple[list[np.ndarray], np.ndarray]:
        """Per-segment norm indexes and the shared inverse-norm table for these parameters (cached)."""
        cache = self.__dict__.setdefault("_norm_cache", {})
        key = (params.k1, params.b, params.length_norm)
        if key not in cache:
            if params.length_norm == "lucene":
                indexes = [lucene_norm_bytes(s.lengths) for s in self.segments]
                table = norm_inverse_table(params, self.avgdl, 255)
            else:
                indexes = [np.asarray(s.lengths) for s in self.segments]
                longest = max((int(s.lengths.max()) for s in self.segments if s.passages), default=0)
                table = norm_inverse_table(params, self.avgdl, longest)
            cache[key] = (indexes, table)
        return cache[key]

    def _scratch(self, segment: int) -> tuple[np.ndarray, np.ndarray]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        if segment not in buffers:
            n = self.segments[segment].passages
            buffers[segment] = (np.zeros(n, dtype=np.float32), np.empty(n, dtype=np.int64))
        return buffers[segment]

    def search_passages(self, query: str | Sequence[str], k: int = 10, params: BM25Params | None = None):
        """Top-k internal passage numbers and float32 scores, best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        params = params or self.default_params
        plan = self.plan(query, params)
        norm_indexes, table = self._norms(params)
        found_docs, found_scores = [], []
        for i, (segment, (starts, ends, weights)) in enumerate(zip(self.segments, plan.per_segment)):
            if not len(starts):
                continue
            accumulator, touched = self._scratch(i)
            docs, scores = bm25_exhaustive(
                segment.docs, segment.tfs, starts, ends, weights, norm_indexes[i], table, k, accumulator, touched
            )
            found_docs.append(docs + self.bases[i])
            found_scores.append(scores)
        if not found_docs:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        docs, scores = np.concatenate(found_docs), np.concatenate(found_scores)
        order = np.lexsort((docs, -scores))[:k]
        return docs[order], scores[order]

    def search(
        self,
        query: str | Sequence[str],
        k: int = 10,
        params: BM25Params | None = None,
        documents: bool | None = None,
    ) -> list[Hit]:
        """BM25 top-k. documents=True ranks documents by their best passage (the default for split indexes)."""
        if documents is None:
            documents = False
        if not documents or not self.split_passages:
            docs, scores = self.search_passages(query, k, params)
            return [self._hit(int(d), float(s), r) for r, (d, s) in enumerate(zip(docs, scores), 1)]
        depth = k
        while True:
            docs, scores = self.search_passages(query, depth, params)
            best: dict[tuple[int, int], tuple[float, int]] = {}
            for d, s in zip(docs.tolist(), scores.tolist()):
                best.setdefault(self._document_of(d), (s, d))
            if len(best) >= k or len(docs) < depth:
                break
            depth *= 4
        ranked = sorted(best.values(), key=lambda sd: (-sd[0], sd[1]))[:k]
        return [self._hit(d, s, r, as_document=True) for r, (s, d) in enumerate(ranked, 1)]

    def batch_search(
        self,
        queries: Sequence[str | Sequence[str]],
        k: int = 10,
        params: BM25Params | None = None,
        documents: bool | None = None,
        threads: int | None = None,
    ) -> list[list[Hit]]:
        """Many queries at once; the kernels release the GIL, so threads run in parallel. Order is kept."""
        threads = threads or os.cpu_count() or 1
        if threads == 1 or len(queries) < 2:
            return [self.search(q, k, params, documents) for q in queries]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda q: self.search(q, k, params, documents), queries))

    # -- fetching

    def _locate(self, passage: int) -> tuple[Segment, int]:
        if not 0 <= passage < self.passages:
            raise IndexError(f"passage {passage} is out of range (the index holds {self.passages})")
        i = int(np.searchsorted(self.bases, passage, side="right")) - 1
        return self.segments[i], passage - int(self.bases[i])

    def _document_of(self, passage: int) -> tuple[int, int]:
        segment, local = self._locate(passage)
        return id(segment), int(segment.passage_doc[local])

    def doc_id(self, passage: int) -> str:
        segment, local = self._locate(passage)
        return segment.doc_ids[int(segment.passage_doc[local])]

    def passage_id(self, passage: int) -> str:
        segment, local = self._locate(passage)
        doc = segment.doc_ids[int(segment.passage_doc[local])]
        return f"{doc}#{int(segment.passage_part[local])}" if self.split_passages else doc

    def fetch(self, passage: int) -> dict:
        """The stored record of a passage (id, title, text), O(1) from the compressed store."""
        segment, local = self._locate(passage)
        return segment.store[local]

    def _hit(self, passage: int, score: float, rank: int, as_document: bool = False) -> Hit:
        doc = self.doc_id(passage)
        return Hit(doc if as_document else self.passage_id(passage), doc, score, rank, passage)


def open_index(path: str | os.PathLike) -> Index:
    return Index(path)
