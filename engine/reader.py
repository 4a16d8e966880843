"""Reading one commit of an index: its manifest, global statistics, ids, stored fields and result lists.

An IndexReader is bound to the commit it opened: it memory-maps that generation's segments and never sees a later
one. The searchers (engine/sparse.py, engine/neural.py) take a reader; engine/index.py puts them together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.analysis import AnalyzerConfig
from engine.errors import SiftError
from engine.format import (
    NO_DELETIONS,
    Deletions,
    IndexFormatError,
    Segment,
    open_segment,
    read_deletions,
    read_manifest,
)


class DocumentNotFoundError(SiftError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def indexed_text(title: str, text: str) -> str:
    """A passage as BM25 indexed it and as models read it: title and text. The one place this rule lives."""
    return f"{title} {text}" if title else text


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

    __slots__ = ("doc_ids", "first_rank", "ids", "missing", "passages", "scores", "timings")

    def __init__(self, ids: list[str], doc_ids: list[str], scores: np.ndarray, passages: np.ndarray,
                 first_rank: int = 1) -> None:  # fmt: skip
        self.ids, self.doc_ids, self.scores, self.passages = ids, doc_ids, scores, passages
        self.first_rank = first_rank  # a later page's first hit has the rank it has in the whole ranking
        self.timings: dict[str, float] = {}  # seconds per pipeline stage, for this query (set by pipelines)
        self.missing: list[int] = []  # shards of a sharded index left out (allow_partial): then not the exact top k

    def head(self, k: int) -> Results:
        """The first k hits."""
        head = Results(self.ids[:k], self.doc_ids[:k], self.scores[:k], self.passages[:k], self.first_rank)
        head.timings, head.missing = self.timings, self.missing
        return head

    def page(self, offset: int) -> Results:
        """The hits after the first `offset`, keeping their ranks: page 2 continues page 1 exactly."""
        if not offset:
            return self
        page = Results(self.ids[offset:], self.doc_ids[offset:], self.scores[offset:], self.passages[offset:],
                       self.first_rank + offset)  # fmt: skip
        page.timings, page.missing = self.timings, self.missing
        return page

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.hits()[i]
        i = range(len(self))[i]
        return Hit(self.ids[i], self.doc_ids[i], float(self.scores[i]), i + self.first_rank, int(self.passages[i]))

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
        ranks = range(self.first_rank, self.first_rank + len(self))
        fields = zip(self.ids, self.doc_ids, self.scores.tolist(), ranks, self.passages.tolist())
        return list(map(tuple.__new__, repeat(Hit, len(self)), fields))


ADAPTIVE_CANDIDATES = 100  # k="auto" looks for the largest score gap among this many best candidates


def adaptive_k(scores: np.ndarray) -> int:
    """Adaptive-k (Taguchi et al., 2025): how many of a ranking's best candidates to keep, cut where the score
    distribution shows its largest gap between consecutive scores. Any scores (BM25, dense, reranked)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) < 2:
        return len(scores)
    return int(np.argmax(scores[:-1] - scores[1:])) + 1


class IndexReader:
    """A committed generation of an index, memory-mapped. Safe to use from many threads."""

    def __init__(self, path: str | os.PathLike, reuse: Sequence[Segment] = (), collection=None,
                 manifest: dict | None = None) -> None:  # fmt: skip
        """reuse: segments already open (an older reader's); those this commit still names are not mapped again.
        collection: where BM25 takes N, the average length and document frequencies when this index is one shard
        of several searched as one (engine/sharded.Collection); None: from this index alone. manifest: open that
        commit rather than the newest (a sharded index's manifest names each shard's)."""
        self.path = Path(path)
        self.collection = collection
        if manifest is not None:
            self.manifest = manifest
            self._open(reuse)
        for _ in range(0 if manifest is not None else 100):
            self.manifest = read_manifest(self.path)
            try:
                self._open(reuse)
                break
            except (IndexFormatError, FileNotFoundError) as error:
                # a commit that replaced this one between reading the manifest and mapping its files may have
                # removed them (as Lucene's readers, retry on the newer commit); the same generation is real damage
                if read_manifest(self.path)["generation"] == self.manifest["generation"]:
                    if isinstance(error, FileNotFoundError):
                        raise IndexFormatError(f"{error.filename}: missing; the index is damaged") from None
                    raise
        self.bases = np.cumsum([0] + [s.passages for s in self.segments])
        self.split_passages = bool(self.manifest.get("passages", {}).get("window"))

    def _open(self, reuse: Sequence[Segment]) -> None:
        self.analyzer_config = AnalyzerConfig.from_dict(self.manifest["analyzer"])
        opened = {segment.directory.name: segment for segment in reuse}
        entries = self.manifest["segments"]
        self.segments = [opened.get(s["name"]) or open_segment(self.path / s["name"]) for s in entries]
        self.deletions: list[Deletions] = [read_deletions(self.path / s["deletions"]) if s.get("deletions")
                                           else NO_DELETIONS for s in entries]  # fmt: skip
        # per segment, the kernels' mask of live passages (None: nothing deleted there)
        self.live: list[np.ndarray | None] = [d.mask(s.passages) if len(d.passages) else None
                                              for s, d in zip(self.segments, self.deletions)]  # fmt: skip

    # Deleted passages count nowhere (Lucene keeps them in df until a merge): scores equal a fresh build's.

    @property
    def passages(self) -> int:
        """Passage numbers in use, deleted ones included (the range of global passage numbers)."""
        return int(self.bases[-1])

    @cached_property
    def live_passages(self) -> int:
        return self.passages - self.deleted_passages

    @cached_property
    def deleted_passages(self) -> int:
        return int(sum(len(d.passages) for d in self.deletions))

    @cached_property
    def scored_passages(self) -> int:
        """Lucene's docCount: live passages with at least one term."""
        scored = sum(s.meta["scored_passages"] - d.scored_passages for s, d in zip(self.segments, self.deletions))
        return int(scored)

    @cached_property
    def tokens(self) -> int:
        """Lucene's sumTotalTermFreq: the live passages' lengths summed."""
        return int(sum(s.total_tokens - d.tokens for s, d in zip(self.segments, self.deletions)))

    @cached_property
    def avgdl(self) -> float:
        return float(np.float32(self.tokens / max(self.scored_passages, 1)))

    @cached_property
    def documents(self) -> int:
        """Live documents."""
        return int(sum(len(s.doc_ids) - d.documents for s, d in zip(self.segments, self.deletions)))

    @cached_property
    def deleted_documents(self) -> int:
        return int(sum(d.documents for d in self.deletions))

    def stats(self) -> dict:
        return {
            "passages": self.live_passages,
            "documents": self.documents,
            "deleted_passages": self.deleted_passages,
            "deleted_documents": self.deleted_documents,
            "terms_per_segment": [int(s.meta["terms"]) for s in self.segments],
            "avgdl": self.avgdl,
            "segments": len(self.segments),
            "segment_sizes": [
                {"name": s.directory.name, "passages": s.passages, "deleted": len(d.passages)}
                for s, d in zip(self.segments, self.deletions)
            ],
            "generation": self.manifest["generation"],
        }

    def is_live(self, passages: np.ndarray) -> np.ndarray:
        """bool per global passage number: not deleted."""
        segments, local = self._locate(passages)
        live = np.ones(len(local), dtype=bool)
        for i in np.unique(segments).tolist():
            if self.live[i] is not None:
                where = segments == i
                live[where] = self.live[i][local[where]] == 1
        return live

    # -- ids

    def _locate(self, passages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment number, passage number within it) of global passage numbers."""
        return locate(self.bases, passages)

    def document_keys(self, passages: np.ndarray) -> np.ndarray:
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
            doc_ids = segment.doc_ids.take(local, via=segment.passage_doc)
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

    def document_passages(self, doc_id: str) -> np.ndarray:
        """Global numbers of a document's passages, in order (empty if the index does not hold it)."""
        for i, segment in enumerate(self.segments):
            local = segment.find_documents([doc_id])[0]
            if local >= 0:
                first, end = np.searchsorted(segment.passage_doc, [local, local + 1])
                if self.live[i] is None or self.live[i][first]:  # a document's passages are deleted together
                    return np.arange(first, end, dtype=np.int64) + self.bases[i]
        return np.zeros(0, dtype=np.int64)

    def passage_number(self, passage_id: str) -> int:
        """The global number of an external id: a document id (its first passage) or "docid#n" (passage n)."""
        found = self.document_passages(passage_id)
        if len(found):
            return int(found[0])
        doc_id, _, part = passage_id.rpartition("#")
        if doc_id and part.isdigit():
            found = self.document_passages(doc_id)
            segments, local = self._locate(found)
            for number, segment, at in zip(found.tolist(), segments.tolist(), local.tolist()):
                if int(self.segments[segment].passage_part[at]) == int(part):
                    return number
        raise DocumentNotFoundError(f"{self.path}: no document or passage {passage_id!r}")

    # -- stored fields

    def fetch(self, passage: int | str) -> dict:
        """A passage's stored record (id, part, title, text), O(1) from the compressed store; `passage` is its
        number, a document id (the document's first passage) or "docid#n"."""
        number = self.passage_number(passage) if isinstance(passage, str) else passage
        segments, local = self._locate(np.array([number]))
        segment = self.segments[int(segments[0])]
        record = segment.store[int(local[0])]
        if segment.columns is not None:
            record["fields"] = segment.columns.values(int(segment.passage_doc[int(local[0])]))
        return record

    def texts(self, passages: np.ndarray) -> list[str]:
        """What the models read of each passage: its title and text, as BM25 indexed them."""
        segments, local = self._locate(np.asarray(passages, dtype=np.int64))
        return [indexed_text(*self.segments[s].store.fields(n, "title", "text"))
                for s, n in zip(segments.tolist(), local.tolist())]  # fmt: skip

    # -- exact ties

    @property
    def tie_keys(self) -> list[np.ndarray]:
        """Per segment, an int64 per passage ordering it by (document id, part): exact score ties go by document
        id, so results do not depend on how segments number passages (a merge, an update or a fresh build of the
        same documents ranks them alike)."""
        return [segment.tie_keys for segment in self.segments]

    def merge_tops(self, passages: list[np.ndarray], scores: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best k of the segments' own top k lists (global passage numbers, scores best first), exact ties by
        document id (faiss returns its ties in no such order)."""
        if not passages:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if len(passages) == 1 and not (scores[0][1:] == scores[0][:-1]).any():
            return passages[0], scores[0]  # one list without ties (a kernel's list orders its ties already)
        joined, joined_scores = np.concatenate(passages), np.concatenate(scores)
        order = self.order_ties(joined, joined_scores, k)
        return joined[order], joined_scores[order]

    def order_ties(self, passages: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        """The best k of passages from several segments, as positions: by score, exact ties by (document id, part)
        as each segment's kernel ordered them. Only the ties that reach the top k look up their ids."""
        order = np.lexsort((passages, -scores))
        ranked = scores[order]
        if len(order) > k:  # everything scoring as the k-th best may still take one of the k places
            end = int(np.searchsorted(-ranked, -ranked[k - 1], side="right")) if k else 0
            order, ranked = order[:end], ranked[:end]
        tied = np.flatnonzero(np.r_[False, ranked[1:] == ranked[:-1]] | np.r_[ranked[:-1] == ranked[1:], False])
        if not len(tied):
            return order[:k]
        _, doc_ids = self.ids(passages[order[tied]])
        segments, local = self._locate(passages[order[tied]])
        parts = [int(self.segments[s].passage_part[n]) for s, n in zip(segments.tolist(), local.tolist())]
        keyed = sorted(range(len(tied)), key=lambda i: (-ranked[tied[i]], doc_ids[i].encode("utf-8"), parts[i]))
        order[tied] = order[tied[keyed]]
        return order[:k]

    # -- filters

    @property
    def fields(self) -> dict[str, str]:
        """The metadata fields declared at index time: name -> type."""
        return self.manifest.get("fields") or {}

    def filter_masks(self, expression: str | None) -> list[np.ndarray | None]:
        """Per segment, the kernels' mask of live passages where the filter holds (None: every passage of a segment
        without deletions, when there is no filter). Cached per expression: a service repeats its filters."""
        if not expression:
            return self.live
        cache = self.__dict__.setdefault("_filter_cache", {})
        if expression not in cache:
            from engine.fields import document_mask, parse_filter

            tree = parse_filter(expression)
            masks = []
            for segment, live in zip(self.segments, self.live):
                documents = document_mask(tree, segment.columns, self.fields, len(segment.doc_ids))
                mask = documents[np.asarray(segment.passage_doc)].astype(np.uint8)
                masks.append(mask & live if live is not None else mask)
            if len(cache) >= 64:
                cache.clear()
            cache[expression] = masks
        return cache[expression]

    def matching(self, expression: str | None) -> np.ndarray:
        """Global numbers of the live passages where the filter holds (for searchers that select by id)."""
        masks = self.filter_masks(expression)
        return np.concatenate([np.flatnonzero(m) + base if m is not None else np.arange(s.passages) + base
                               for m, s, base in zip(masks, self.segments, self.bases)] or [np.zeros(0, np.int64)])

    # -- results

    def rank(self, passages: np.ndarray, scores: np.ndarray, k: int, documents: bool = True) -> Results:
        """Results of any first stage from passages ranked best first; in a split index, documents=True ranks
        documents by their best passage."""
        if not documents or not self.split_passages:
            return self.hits(passages[:k], scores[:k], as_documents=False)
        _, first = np.unique(self.document_keys(passages), return_index=True)
        best = np.sort(first)[:k]
        return self.hits(passages[best], scores[best], as_documents=True)

    def distinct_documents(self, passages: np.ndarray) -> int:
        return len(np.unique(self.document_keys(passages))) if self.split_passages else len(passages)

    def hits(self, passages: np.ndarray, scores: np.ndarray, as_documents: bool) -> Results:
        if len(self.segments) == 1:
            passage_ids, doc_ids = self._ids(None, passages)
        else:
            passage_ids, doc_ids = self.ids(passages)
        return Results(doc_ids if as_documents else passage_ids, doc_ids, scores, passages)


def locate(bases: np.ndarray, passages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(part, number within it) of global passage numbers, parts (segments, shards) starting at bases."""
    passages = np.asarray(passages, dtype=np.int64)
    if len(passages) and (passages.min() < 0 or passages.max() >= bases[-1]):
        raise IndexError(f"passage numbers must be in [0, {int(bases[-1])})")
    parts = np.searchsorted(bases, passages, side="right") - 1
    return parts, passages - bases[parts]


def rank_documents(reader: IndexReader, top, queries: int, k: int, total: int) -> list[Results]:
    """k results per query whenever the index has them: top(rows, depth) gives the rows' best `depth` passages; in a
    split index, a query whose passages hold fewer than k documents is searched again four times deeper."""
    depth = min(k * (4 if reader.split_passages else 1), total)
    found: list = [None] * queries
    rows = np.arange(queries)
    while len(rows):
        short = []
        for row, (passages, scores) in zip(rows.tolist(), top(rows, depth)):
            found[row] = (passages, scores)
            if depth < total and len(passages) == depth and reader.distinct_documents(passages) < k:
                short.append(row)
        rows, depth = np.array(short, dtype=np.int64), min(depth * 4, total)
    return [reader.rank(passages, scores, k) for passages, scores in found]
