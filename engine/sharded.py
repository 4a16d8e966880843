"""A sharded index: documents split by a stable hash of their id into shards, each an ordinary index (built apart by
indexers/sharded.py, possibly on many machines), searched as one.

Layout: INDEX_DIR/sharded.json names the shards (INDEX_DIR/shards/NNN/ for the first build; a rebuild over an
existing sharded index writes shards.G/NNN and commits by replacing sharded.json, so a failed build leaves the
former one). BM25 over the shards scores exactly as one index over all their documents: every shard's searcher
takes N, the average length and each query term's document frequency from the whole collection (Collection, asked
of every shard at the query's first lookup of a term, then cached with the term), and exact score ties across
shards go by document id as they do across one index's segments.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from engine.errors import SiftError
from engine.format import IndexFormatError, parse_meta
from engine.index import Index
from engine.query import query_terms, snippet
from engine.reader import ADAPTIVE_CANDIDATES, DocumentNotFoundError, Results, adaptive_k
from engine.sparse import BM25Params

SHARDED_MANIFEST = "sharded.json"
SHARDED_FORMAT = "sift-sharded"
SHARDED_VERSION = 1


def shard_of(doc_id: str, shards: int) -> int:
    """The shard a document belongs to: a hash of its id that every process and machine computes alike (Python's
    hash() is salted per process)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def is_sharded(path: str | os.PathLike) -> bool:
    return (Path(path) / SHARDED_MANIFEST).is_file()


def read_sharded_manifest(path: str | os.PathLike) -> dict:
    file = Path(path) / SHARDED_MANIFEST
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: holds no sharded Sift index (no {SHARDED_MANIFEST})") from None
    manifest = parse_meta(file, raw)
    if manifest.get("format") != SHARDED_FORMAT:
        raise IndexFormatError(f"{file}: not a sharded Sift index manifest")
    if manifest.get("format_version") != SHARDED_VERSION:
        raise IndexFormatError(f"{file}: format version {manifest.get('format_version')} is not supported (this "
                               f"Sift reads version {SHARDED_VERSION}); rebuild the index")  # fmt: skip
    return manifest


class Collection:
    """BM25's statistics over every shard of a sharded index: what each shard's searcher scores with."""

    def __init__(self) -> None:
        self.shards: list[Index] = []  # filled once every shard is open

    @cached_property
    def scored_passages(self) -> int:
        return sum(shard.scored_passages for shard in self.shards)

    @cached_property
    def avgdl(self) -> float:
        tokens = sum(shard.tokens for shard in self.shards)
        return float(np.float32(tokens / max(self.scored_passages, 1)))

    def document_frequencies(self, terms: list[str]) -> np.ndarray:
        return np.sum([shard.bm25.document_frequencies(terms) for shard in self.shards], axis=0)


class ShardedIndex:
    """One commit of a sharded index, with the search, batch_search, fetch and texts of an Index (engine/index.py).
    Passage numbers are global: shard s's passage p is bases[s] + p. Safe to search from many threads."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = read_sharded_manifest(self.path)
        self.collection = Collection()
        self.shards = [Index(self.path / folder, collection=self.collection) for folder in self.manifest["shards"]]
        self.collection.shards = self.shards
        generations = [shard.manifest["generation"] for shard in self.shards]
        if generations != self.manifest["generations"]:
            raise IndexFormatError(f"{self.path}: its shards were changed apart from {SHARDED_MANIFEST} (generations "
                                   f"{generations}, expected {self.manifest['generations']}); the index is damaged")
        self.bases = np.cumsum([0] + [shard.passages for shard in self.shards])
        self.split_passages = self.shards[0].split_passages

    @property
    def default_params(self) -> BM25Params:
        return self.shards[0].default_params

    @property
    def fields(self) -> dict[str, str]:
        return self.shards[0].fields

    @property
    def passages(self) -> int:
        return int(self.bases[-1])

    # -- search

    def search(self, query: str | Sequence[str], k: int | str = 10, params: BM25Params | None = None,
               documents: bool = False, algorithm: str = "auto", filter: str | None = None, syntax: str = "plain",
               offset: int = 0, typos: str = "off",
               fields: str | dict[str, float] | None = None) -> Results:  # fmt: skip
        """As Index.search, over every shard; the lucene syntax, fields and typos are not supported yet."""
        if syntax != "plain" or fields is not None or typos != "off":
            option = "fields" if fields is not None else "typos" if typos != "off" else f"syntax {syntax}"
            raise SiftError(f"{self.path}: {option} is not supported on a sharded index yet (plain BM25 queries, "
                            "filters, k, offset and documents are)")  # fmt: skip
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, got {offset}")
        if k == "auto":
            ranked = self.search(query, ADAPTIVE_CANDIDATES, params, documents, algorithm, filter)
            return ranked.head(adaptive_k(ranked.scores)).page(offset)
        if not isinstance(k, int) or isinstance(k, bool):
            raise ValueError(f'k must be a whole number or "auto", got {k!r}')
        depth = k + offset
        found = [shard.search(query, depth, params, documents, algorithm, filter) for shard in self.shards]
        return self._merge(found, depth).page(offset)

    def batch_search(self, queries: Sequence[str | Sequence[str]], k: int = 10, params: BM25Params | None = None,
                     documents: bool = False, threads: int | None = None, algorithm: str = "auto",
                     filter: str | None = None) -> list[Results]:  # fmt: skip
        """Many queries at once, in order; each shard scores them on its pool of threads."""
        per_shard = [shard.batch_search(queries, k, params, documents, threads, algorithm, filter)
                     for shard in self.shards]  # fmt: skip
        return [self._merge([found[i] for found in per_shard], k) for i in range(len(queries))]

    def _merge(self, found: list[Results], k: int) -> Results:
        """The best k of the shards' own top k: by score, exact ties by (document id, part) as within one index."""
        keys = []
        for shard, results in enumerate(found):
            parts = [int(i.rpartition("#")[2]) if i != doc else 0 for i, doc in zip(results.ids, results.doc_ids)]
            for j, (score, doc_id, part) in enumerate(zip(results.scores.tolist(), results.doc_ids, parts)):
                keys.append((-score, doc_id.encode("utf-8"), part, shard, j))
        keys.sort()
        best = keys[:k]
        ids = [found[shard].ids[j] for *_, shard, j in best]
        doc_ids = [found[shard].doc_ids[j] for *_, shard, j in best]
        scores = np.array([found[shard].scores[j] for *_, shard, j in best], dtype=np.float32)
        passages = np.array([found[shard].passages[j] + self.bases[shard] for *_, shard, j in best], dtype=np.int64)
        return Results(ids, doc_ids, scores, passages)

    # -- stored passages

    def _locate(self, passages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        passages = np.asarray(passages, dtype=np.int64)
        if len(passages) and (passages.min() < 0 or passages.max() >= self.passages):
            raise IndexError(f"passage numbers must be in [0, {self.passages})")
        shards = np.searchsorted(self.bases, passages, side="right") - 1
        return shards, passages - self.bases[shards]

    def passage_number(self, passage_id: str) -> int:
        """The global number of a document id (its first passage) or of "docid#n"."""
        doc_id, _, part = passage_id.rpartition("#")
        candidates = [passage_id] + ([doc_id] if doc_id and part.isdigit() else [])
        for name in candidates:
            shard = shard_of(name, len(self.shards))
            try:
                return int(self.shards[shard].passage_number(passage_id)) + int(self.bases[shard])
            except DocumentNotFoundError:
                continue
        raise DocumentNotFoundError(f"{self.path}: no document or passage {passage_id!r}")

    def document_passages(self, doc_id: str) -> np.ndarray:
        shard = shard_of(doc_id, len(self.shards))
        return self.shards[shard].document_passages(doc_id) + self.bases[shard]

    def fetch(self, passage: int | str) -> dict:
        number = self.passage_number(passage) if isinstance(passage, str) else passage
        shards, local = self._locate(np.array([number]))
        return self.shards[int(shards[0])].fetch(int(local[0]))

    def texts(self, passages: np.ndarray) -> list[str]:
        shards, local = self._locate(passages)
        texts = [""] * len(local)
        for shard in np.unique(shards).tolist():
            where = np.flatnonzero(shards == shard)
            for i, text in zip(where.tolist(), self.shards[shard].texts(local[where])):
                texts[i] = text
        return texts

    def snippets(self, hits: Results, query: str, syntax: str = "plain", length: int = 200) -> list[str]:
        analyzer = self.shards[0].bm25.analyzer
        terms, memo = query_terms(query, analyzer, syntax), {}
        return [snippet(text, terms, analyzer, length, memo=memo) for text in self.texts(hits.passages)]

    # -- the commit

    def stats(self) -> dict:
        shards = [shard.stats() for shard in self.shards]
        return {
            "passages": sum(s["passages"] for s in shards),
            "documents": sum(s["documents"] for s in shards),
            "deleted_passages": sum(s["deleted_passages"] for s in shards),
            "deleted_documents": sum(s["deleted_documents"] for s in shards),
            "avgdl": self.collection.avgdl,
            "shards": len(self.shards),
            "shard_sizes": [
                {"folder": folder, "passages": s["passages"], "documents": s["documents"]}
                for folder, s in zip(self.manifest["shards"], shards)
            ],
            "generation": self.manifest["generation"],
        }

    def refresh(self) -> ShardedIndex:
        """The newest commit: self when nothing newer was committed."""
        if read_sharded_manifest(self.path)["generation"] == self.manifest["generation"]:
            return self
        return ShardedIndex(self.path)

