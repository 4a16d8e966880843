"""Opening an index and searching it: the Python API behind the CLI."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from engine.analysis import Analyzer, AnalyzerConfig
from engine.format import PostingLists, Segment, read_manifest
from engine.sparse import (
    LUCENE_LENGTH_TABLE,
    BM25Params,
    bm25_exhaustive,
    bm25_exhaustive_packed,
    bm25_maxscore,
    idf,
    lucene_norm_bytes,
    norm_inverse_table,
)

ALGORITHMS = ("auto", "maxscore", "exhaustive")  # safe: all return exactly the same top k
# "auto" prunes when a query's postings are many for its k. Measured (one thread, 2026-11-26): on SciFact's short
# lists the exhaustive kernel is 1.2-1.5x faster than MaxScore at k = 10, 100, 1000; on 200k synthetic passages
# MaxScore is 2.7x faster at k=10, 1.3x at k=100 and 0.8x at k=1000; "auto" matches the faster one within 5%.
# By query size (k=10): on the Debian glosses the exhaustive kernel wins below 100k postings (queries of several
# mid-frequency terms of similar weight leave MaxScore few lists to skip), on 200k synthetic passages MaxScore wins
# from 20k (1.3x at 20-100k, 3.2x above); 100k costs synthetic queries 2% and saves Debian ones 13%.
_PRUNE_MIN_POSTINGS = 100_000
_PRUNE_POSTINGS_PER_RESULT = 1000
_TERM_CACHE_SIZE = 200_000  # terms whose lookups are kept (about 200 bytes each)


@njit(nogil=True, cache=True)
def term_ranges(term_ids, offsets, block_offsets):
    """Per query term found in a segment: its posting range and first block (as int64, whatever the stored type),
    which terms were found, and every term's document frequency there (0 if absent). One call per segment: a
    handful of small numpy operations here cost more than scoring a rare term."""
    found = term_ids >= 0
    present = term_ids[found]
    starts = np.empty(len(present), dtype=np.int64)
    ends = np.empty(len(present), dtype=np.int64)
    blocks = np.empty(len(present), dtype=np.int64)
    for i, term in enumerate(present):
        starts[i] = offsets[term]
        ends[i] = offsets[term + 1]
        blocks[i] = block_offsets[term]
    df = np.zeros(len(term_ids), dtype=np.int64)
    j = 0
    for i in range(len(term_ids)):
        if found[i]:
            df[i] = ends[j] - starts[j]
            j += 1
    return starts, ends, blocks, found, df


def _check(k: int, algorithm: str) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


def _choose(algorithm: str, starts: np.ndarray, ends: np.ndarray, k: int) -> str:
    if algorithm != "auto":
        return algorithm
    postings = int((ends - starts).sum())
    return "maxscore" if postings >= max(_PRUNE_MIN_POSTINGS, _PRUNE_POSTINGS_PER_RESULT * k) else "exhaustive"


class Hit(NamedTuple):
    """One search result: a passage, or a document scored by its best passage. (A tuple: cheap to make by the
    thousand.)"""

    id: str  # external id: the document's, or "docid#n" for passage n of a split document
    doc_id: str
    score: float
    rank: int
    passage: int  # internal passage number (global across segments)

    def to_dict(self) -> dict:
        return {"id": self.id, "doc_id": self.doc_id, "score": self.score, "rank": self.rank}


class Results(Sequence[Hit]):
    """One query's hits, held as columns (ids, doc_ids, scores, passages); a Hit is made only when one is asked for.
    Compares equal to another Results or a list holding the same hits."""

    __slots__ = ("doc_ids", "ids", "passages", "scores", "timings")

    def __init__(self, ids: list[str], doc_ids: list[str], scores: np.ndarray, passages: np.ndarray) -> None:
        self.ids, self.doc_ids, self.scores, self.passages = ids, doc_ids, scores, passages
        self.timings: dict[str, float] = {}  # seconds per pipeline stage, for this query (set by pipelines)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.hits()[i]
        i = range(len(self))[i]
        return Hit(self.ids[i], self.doc_ids[i], float(self.scores[i]), i + 1, int(self.passages[i]))

    def __iter__(self):
        return iter(self.hits())

    def __eq__(self, other) -> bool:
        return isinstance(other, Results | list) and self.hits() == list(other)

    def __repr__(self) -> str:
        return f"Results({self.hits()!r})"

    def pairs(self) -> list[tuple[str, float]]:
        """(id, score) per hit: what most callers want, without making Hits."""
        return list(zip(self.ids, self.scores.tolist()))

    def hits(self) -> list[Hit]:
        # tuple.__new__ builds the named tuples in C; Hit(...) would run a Python-level __new__ per hit (4x slower)
        fields = zip(self.ids, self.doc_ids, self.scores.tolist(), range(1, len(self) + 1), self.passages.tolist())
        return list(map(tuple.__new__, repeat(Hit, len(self)), fields))


def top_postings(
    lists: PostingLists,
    starts: np.ndarray,
    ends: np.ndarray,
    weights: np.ndarray,
    block_first: np.ndarray,
    norm_index: np.ndarray,
    norm_inverse: np.ndarray,
    norm_lengths: np.ndarray,
    k: int,
    algorithm: str,
    scratch,
    linear: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The top k of one set of posting lists for the query terms' ranges, by the kernel the algorithm picks; every
    kernel returns the same. scratch() gives the exhaustive kernels their (accumulator, touched) buffers."""
    if _choose(algorithm, starts, ends, k) == "maxscore":
        blocks = lists.blocks
        return bm25_maxscore(
            lists.postings, starts, ends, weights, norm_index, norm_inverse, norm_lengths, block_first,
            blocks.max_tf, blocks.min_length, blocks.last_doc, k, linear,
        )  # fmt: skip
    accumulator, touched = scratch()
    if lists.packed:
        return bm25_exhaustive_packed(
            lists.postings, starts, ends, block_first, lists.blocks.last_doc, weights, norm_index, norm_inverse, k,
            accumulator, touched, linear,
        )  # fmt: skip
    return bm25_exhaustive(
        lists.docs, lists.tfs, starts, ends, weights, norm_index, norm_inverse, k, accumulator, touched, linear
    )


@dataclass(frozen=True)
class QueryPlan:
    """A query analyzed against this index: per segment, the posting ranges to score and their weights."""

    per_segment: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]  # starts, ends, weights, blocks


class Norms(NamedTuple):
    """Length normalization for one (k1, b, length_norm): norm index per passage, and a table indexed by it."""

    per_segment: list[np.ndarray]  # a passage's index into inverse and lengths
    inverse: np.ndarray  # float32 1 / (k1 * (1 - b + b * length / avgdl))
    lengths: np.ndarray  # int64, ascending: the length each index stands for


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
        self._norm_cache: dict[tuple, Norms] = {}
        self._term_cache: dict[str, tuple] = {}
        self._pool: ThreadPoolExecutor | None = None

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

    def plan(self, query: str | Sequence[str]) -> QueryPlan:
        """query: text to analyze, or terms already analyzed."""
        terms = self.analyzer.analyze(query) if isinstance(query, str) else list(query)
        boosts = Counter(terms)  # a repeated query term counts once per occurrence, as in Anserini
        cache = self._term_cache
        missing = [term for term in boosts if term not in cache]
        if missing:
            self._look_up(missing)
        entries = [cache[term] for term in boosts]
        weights = np.array([e[0] for e in entries], dtype=np.float32) * np.array(
            list(boosts.values()), dtype=np.float32
        )
        per_segment = []
        for i in range(len(self.segments)):
            found = [j for j, e in enumerate(entries) if e[1][i] is not None]
            ranges = np.array([entries[j][1][i] for j in found], dtype=np.int64).reshape(-1, 3)
            per_segment.append((ranges[:, 0].copy(), ranges[:, 1].copy(), weights[found], ranges[:, 2].copy()))
        return QueryPlan(tuple(per_segment))

    def _look_up(self, terms: list[str]) -> None:
        """Caches, per term: its idf (float32, from the global document frequency) and, per segment, its posting
        range and first block, or None. Query terms repeat: a cached plan costs a third of a fresh one."""
        if len(self._term_cache) > _TERM_CACHE_SIZE:
            self._term_cache.clear()
        ranges = [term_ranges(segment.terms.find_many(terms), segment.offsets, segment.blocks.offsets)
                  for segment in self.segments]  # fmt: skip
        df = ranges[0][4] if len(ranges) == 1 else np.sum([r[4] for r in ranges], axis=0)
        idfs = idf(df, self.scored_passages).tolist()
        per_segment = []
        for starts, ends, blocks, found, _ in ranges:
            located = iter(zip(starts.tolist(), ends.tolist(), blocks.tolist()))
            per_segment.append([next(located) if present else None for present in found.tolist()])
        for j, term in enumerate(terms):
            self._term_cache[term] = (idfs[j], tuple(segment[j] for segment in per_segment))

    def norms(self, params: BM25Params) -> Norms:
        """Cached per parameter set: computing norm indexes touches every passage."""
        key = (params.k1, params.b, params.length_norm)
        if key not in self._norm_cache:
            if params.length_norm == "lucene":
                indexes = [lucene_norm_bytes(s.lengths) for s in self.segments]
                lengths = LUCENE_LENGTH_TABLE
            else:
                indexes = [np.asarray(s.lengths) for s in self.segments]
                lengths = np.arange(max((int(s.lengths.max()) for s in self.segments if s.passages), default=0) + 1)
            inverse = norm_inverse_table(params, self.avgdl, len(lengths) - 1)
            self._norm_cache[key] = Norms(indexes, inverse, lengths.astype(np.int64))
        return self._norm_cache[key]

    def _scratch(self, segment: int) -> tuple[np.ndarray, np.ndarray]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        if segment not in buffers:
            n = self.segments[segment].passages
            buffers[segment] = (np.zeros(n, dtype=np.float32), np.empty(n, dtype=np.int64))
        return buffers[segment]

    def search_passages(
        self,
        query: str | Sequence[str],
        k: int = 10,
        params: BM25Params | None = None,
        algorithm: str = "auto",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k internal passage numbers and float32 scores, best first. Every algorithm returns the same."""
        _check(k, algorithm)
        return self._top_passages(self.plan(query), k, params or self.default_params, algorithm)

    def _top_passages(self, plan: QueryPlan, k: int, params: BM25Params, algorithm: str):
        """The kernels for one planned query; they release the GIL, so threads run this in parallel."""
        norms = self.norms(params)
        found_docs, found_scores = [], []
        for i, (segment, (starts, ends, weights, block_first)) in enumerate(zip(self.segments, plan.per_segment)):
            if not len(starts):
                continue
            docs, scores = top_postings(
                segment, starts, ends, weights, block_first, norms.per_segment[i], norms.inverse, norms.lengths, k,
                algorithm, partial(self._scratch, i),
            )  # fmt: skip
            found_docs.append(docs + self.bases[i])
            found_scores.append(scores)
        if not found_docs:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if len(found_docs) == 1:
            return found_docs[0], found_scores[0]
        docs, scores = np.concatenate(found_docs), np.concatenate(found_scores)
        order = np.lexsort((docs, -scores))[:k]
        return docs[order], scores[order]

    def search(
        self,
        query: str | Sequence[str],
        k: int = 10,
        params: BM25Params | None = None,
        documents: bool = False,
        algorithm: str = "auto",
    ) -> Results:
        """BM25 top-k. documents=True ranks documents by their best passage (the default for split indexes)."""
        if not documents or not self.split_passages:
            docs, scores = self.search_passages(query, k, params, algorithm)
            return self._hits(docs, scores, as_documents=False)
        depth = k
        while True:
            docs, scores = self.search_passages(query, depth, params, algorithm)
            keys = self._document_keys(docs)
            _, first = np.unique(keys, return_index=True)  # a document's first passage is its best
            if len(first) >= k or len(docs) < depth:
                break
            depth *= 4
        best = np.sort(first)[:k]
        return self._hits(docs[best], scores[best], as_documents=True)

    def rank(self, passages: np.ndarray, scores: np.ndarray, k: int, documents: bool = True) -> Results:
        """Results of any first stage from passages ranked best first; in a split index, documents=True ranks
        documents by their best passage."""
        if not documents or not self.split_passages:
            return self._hits(passages[:k], scores[:k], as_documents=False)
        _, first = np.unique(self._document_keys(passages), return_index=True)
        best = np.sort(first)[:k]
        return self._hits(passages[best], scores[best], as_documents=True)

    def batch_search(
        self,
        queries: Sequence[str | Sequence[str]],
        k: int = 10,
        params: BM25Params | None = None,
        documents: bool = False,
        threads: int | None = None,
        algorithm: str = "auto",
    ) -> list[Results]:
        """Many queries at once, in order. Queries are planned on the calling thread and scored on a pool of
        threads: the kernels release the GIL, so scoring uses every core. Results equal single searches."""
        _check(k, algorithm)
        threads = threads or os.cpu_count() or 1
        params = params or self.default_params
        if documents and self.split_passages:
            return self._map(threads, lambda q: self.search(q, k, params, True, algorithm), queries)
        plans = [self.plan(q) for q in queries]
        found = self._map(threads, lambda plan: self._top_passages(plan, k, params, algorithm), plans)
        return [self._hits(docs, scores, as_documents=False) for docs, scores in found]

    def _map(self, threads: int, function, items: Sequence) -> list:
        """function over items on a persistent pool, one contiguous chunk per thread (a future per item costs
        more than a small query)."""
        if threads == 1 or len(items) < 2:
            return [function(item) for item in items]
        if self._pool is None or self._pool._max_workers != threads:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sift-search")
        size = -(-len(items) // threads)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        done = self._pool.map(lambda chunk: [function(item) for item in chunk], chunks)
        return [result for chunk in done for result in chunk]

    # -- fetching

    def _locate(self, passages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment number, passage number within it) of global passage numbers."""
        passages = np.asarray(passages, dtype=np.int64)
        if len(passages) and (passages.min() < 0 or passages.max() >= self.passages):
            raise IndexError(f"passage numbers must be in [0, {self.passages})")
        segments = np.searchsorted(self.bases, passages, side="right") - 1
        return segments, passages - self.bases[segments]

    def _document_keys(self, passages: np.ndarray) -> np.ndarray:
        """A number per document, equal for passages of the same document."""
        segments, local = self._locate(passages)
        keys = np.empty(len(passages), dtype=np.int64)
        for i in np.unique(segments):
            mask = segments == i
            keys[mask] = self.segments[i].passage_doc[local[mask]].astype(np.int64) + (i << 40)
        return keys

    def ids(self, passages: np.ndarray) -> tuple[list[str], list[str]]:
        """External (passage ids, document ids) of global passage numbers."""
        segments, local = self._locate(passages)
        return self._ids(segments, local)

    def _ids(self, segments: np.ndarray | None, local: np.ndarray) -> tuple[list[str], list[str]]:
        """segments None: one segment, local numbers known to be in range (the kernels' results)."""
        if segments is None or len(self.segments) == 1:
            segment = self.segments[0]
            doc_ids = segment.doc_ids.take(segment.passage_doc[local])
            parts = segment.passage_part[local].tolist() if self.split_passages else None
        else:
            doc_ids = [""] * len(local)
            parts = [0] * len(local)
            for i in np.unique(segments):
                segment = self.segments[i]
                where = np.flatnonzero(segments == i)
                chosen = local[where]
                for j, doc, part in zip(
                    where.tolist(),
                    segment.doc_ids.take(segment.passage_doc[chosen]),
                    segment.passage_part[chosen].tolist(),
                ):
                    doc_ids[j], parts[j] = doc, part
        if not self.split_passages:
            return doc_ids, doc_ids
        return [f"{doc}#{part}" for doc, part in zip(doc_ids, parts)], doc_ids

    def fetch(self, passage: int) -> dict:
        """The stored record of a passage (id, part, title, text), O(1) from the compressed store."""
        segments, local = self._locate(np.array([passage]))
        return self.segments[int(segments[0])].store[int(local[0])]

    def texts(self, passages: np.ndarray) -> list[str]:
        """What the models read of each passage: its title and text, as BM25 indexed them."""
        segments, local = self._locate(np.asarray(passages, dtype=np.int64))
        rows = [self.segments[s].store.row(n) for s, n in zip(segments.tolist(), local.tolist())]
        return [indexed_text(row[2], row[3]) for row in rows]

    def _hits(self, passages: np.ndarray, scores: np.ndarray, as_documents: bool) -> Results:
        if len(self.segments) == 1:
            passage_ids, doc_ids = self._ids(None, passages)
        else:
            passage_ids, doc_ids = self.ids(passages)
        return Results(doc_ids if as_documents else passage_ids, doc_ids, scores, passages)


def indexed_text(title: str, text: str) -> str:
    """A passage as models read it: title and text, as BM25 indexed them."""
    return f"{title} {text}" if title else text


def open_index(path: str | os.PathLike) -> Index:
    return Index(path)
