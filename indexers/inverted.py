"""Building the inverted index: stream passages, flush segments at a memory budget, merge, commit atomically."""

from __future__ import annotations

import gc
import shutil
import time
from array import array
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
from numba import njit

from engine.analysis import Analyzer, AnalyzerConfig, TermBytes
from engine.fields import ColumnsWriter
from engine.format import (
    COMPOUND_BYTES,
    POSTINGS_FORMATS,
    DocStoreWriter,
    FolderWriter,
    Segment,
    failpoint,
    finish_segment,
    merge_segments,
    write_postings,
    write_strings,
)
from engine.sparse import BM25Params
from indexers.corpus import Document, Passage, split_passages

# A pending posting holds three 32-bit integers (term id, passage, tf); flushing it adds a concatenated copy, an int64
# term rank and the regrouped passage and tf arrays. The budget counts the flush's peak, not only what is pending:
# at 12 bytes a 1 GB budget peaked at 3.7 GB resident while indexing 10M passages.
_BYTES_PER_POSTING = 40
_BATCH_PASSAGES = 2048  # passages analyzed before their terms are counted together


@dataclass
class BuildOptions:
    analyzer: AnalyzerConfig = field(default_factory=AnalyzerConfig)
    bm25: BM25Params = field(default_factory=BM25Params)
    passage_window: int = 0  # tokens per passage; 0 keeps documents whole
    passage_stride: int = 0  # tokens between passage starts; 0 means window (no overlap)
    memory_mb: int = 512  # pending postings and vocabulary before a segment is flushed
    merge: bool = True  # merge flushed segments into one; False commits them as they are
    # "packed" (block codec) or "raw" uint32 arrays. Packed is the default: on 1M synthetic passages its postings
    # are 0.17 of raw and the whole index 0.49 (no larger than Lucene's), for 9% fewer top-10 QPS with MaxScore
    # (bench/results/compression-synthetic-1000000.md); raw stays available where the last 10% of speed matters.
    postings: str = "packed"
    overwrite: bool = False
    fields: dict = field(default_factory=dict)  # metadata fields stored as columns: name -> type (engine/fields.py)
    positions: bool = False  # store each term's positions in each passage (phrase and proximity queries)

    def __post_init__(self) -> None:
        if self.passage_window < 0 or self.passage_stride < 0:
            raise ValueError("passage window and stride must be >= 0")
        if self.passage_stride > self.passage_window > 0:
            raise ValueError("passage stride must not exceed the window (passages would skip text)")
        if self.memory_mb < 1:
            raise ValueError("the memory budget must be at least 1 MB")
        if self.postings not in POSTINGS_FORMATS:
            raise ValueError(f"postings must be one of {', '.join(POSTINGS_FORMATS)}, got {self.postings!r}")


@njit(nogil=True, cache=True)
def count_terms(term_ids, lengths, first_passage, last_seen):
    """Postings (term, passage, tf) of consecutive passages whose term ids are concatenated in term_ids; a passage's
    terms come in order of first occurrence. last_seen (one slot per term, all -1) is scratch and left all -1."""
    terms = np.empty(len(term_ids), dtype=np.uint32)
    passages = np.empty(len(term_ids), dtype=np.uint32)
    tfs = np.zeros(len(term_ids), dtype=np.uint32)
    found = 0
    position = 0
    for p in range(len(lengths)):
        passage_start = found
        for j in range(position, position + lengths[p]):
            term = term_ids[j]
            slot = last_seen[term]
            if slot < passage_start:
                slot = found
                last_seen[term] = slot
                terms[slot] = term
                passages[slot] = first_passage + p
                found += 1
            tfs[slot] += 1
        position += lengths[p]
    for slot in range(found):
        last_seen[terms[slot]] = -1
    return terms[:found], passages[:found], tfs[:found]


def count_terms_reference(term_ids: np.ndarray, lengths: np.ndarray, first_passage: int):
    """count_terms in numpy, for the tests."""
    passage = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    keys = passage * (int(term_ids.max(initial=0)) + 1) + term_ids
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    return (
        term_ids[first[order]].astype(np.uint32),
        (passage[first[order]] + first_passage).astype(np.uint32),
        counts[order].astype(np.uint32),
    )


@njit(nogil=True, cache=True)
def group_by_term(terms, offsets, passages, tfs):
    """Counting sort of postings by term; stable, so each term's passages stay in the order they were added."""
    next_slot = offsets[:-1].copy()
    grouped_passages = np.empty_like(passages)
    grouped_tfs = np.empty_like(tfs)
    for i in range(len(terms)):
        slot = next_slot[terms[i]]
        grouped_passages[slot] = passages[i]
        grouped_tfs[slot] = tfs[i]
        next_slot[terms[i]] = slot + 1
    return grouped_passages, grouped_tfs


@njit(nogil=True, cache=True)
def _hash(data, start, end):
    h = np.uint64(14695981039346656037)  # FNV-1a
    for i in range(start, end):
        h = (h ^ np.uint64(data[i])) * np.uint64(1099511628211)
    return h


@njit(nogil=True, cache=True)
def _intern(data, starts, ends, slots, bounds, arena, count, used):
    """Term ids of the byte strings data[starts[i]:ends[i]]; a new one is appended to arena as term `count`.
    slots (open addressing, a power of two, -1 free) must have room for every term it could add."""
    mask = np.uint64(len(slots) - 1)
    ids = np.empty(len(starts), dtype=np.int64)
    for i in range(len(starts)):
        start, end = starts[i], ends[i]
        size = end - start
        slot = _hash(data, start, end) & mask
        while True:
            term = slots[slot]
            if term < 0:
                arena[used : used + size] = data[start:end]
                used += size
                bounds[count + 1] = used
                slots[slot] = count
                term = count
                count += 1
                break
            known = bounds[term]
            if bounds[term + 1] - known == size:
                same = True
                for j in range(size):
                    if arena[known + j] != data[start + j]:
                        same = False
                        break
                if same:
                    break
            slot = (slot + np.uint64(1)) & mask
        ids[i] = term
    return ids, count, used


@njit(nogil=True, cache=True)
def _rehash(slots, bounds, arena, count):
    mask = np.uint64(len(slots) - 1)
    for term in range(count):
        slot = _hash(arena, bounds[term], bounds[term + 1]) & mask
        while slots[slot] >= 0:
            slot = (slot + np.uint64(1)) & mask
        slots[slot] = term


class TermTable:
    """The builder's vocabulary: UTF-8 terms -> ids in order of first appearance, hashed in compiled code (a
    Python dict costs a str object and a hash per token; this costs neither)."""

    def __init__(self) -> None:
        self._slots = np.full(1 << 12, -1, dtype=np.int64)
        self._bounds = np.zeros(1 << 11, dtype=np.int64)
        self._arena = np.zeros(1 << 16, dtype=np.uint8)
        self._count = 0
        self._used = 0

    def __len__(self) -> int:
        return self._count

    def ids(self, terms: TermBytes) -> np.ndarray:
        most = self._count + len(terms.starts)  # if every term were new
        if 2 * most > len(self._slots):
            self._slots = np.full(1 << int(2 * most).bit_length(), -1, dtype=np.int64)
            _rehash(self._slots, self._bounds, self._arena, self._count)
        if most + 1 > len(self._bounds):
            self._bounds = np.resize(self._bounds, 2 * (most + 1))
        if self._used + len(terms.data) > len(self._arena):
            self._arena = np.resize(self._arena, 2 * (self._used + len(terms.data)))
        ids, self._count, self._used = _intern(
            terms.data, terms.starts, terms.ends, self._slots, self._bounds, self._arena, self._count, self._used
        )
        return ids

    def terms(self) -> list[str]:
        """Every term, by id."""
        raw = self._arena[: self._used].tobytes()
        bounds = self._bounds[: self._count + 1].tolist()
        return [raw[bounds[i] : bounds[i + 1]].decode("utf-8") for i in range(self._count)]

    @property
    def memory_bytes(self) -> int:
        return self._slots.nbytes + self._bounds.nbytes + self._arena.nbytes


class _PendingSegment:
    """Postings of the passages added since the last flush, in compact arrays, plus their stored text and fields."""

    def __init__(self, directory: Path, fields: dict | None = None, positions: bool = False) -> None:
        self.directory = directory
        self.with_positions = positions
        self.tokens_seen: list[tuple[np.ndarray, np.ndarray]] = []  # (term ids, positions) per batch, if kept
        directory.mkdir(parents=True)
        self.vocabulary = TermTable()
        self._last_seen = np.full(1024, -1, dtype=np.int64)
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (term ids, passages, tfs)
        self.postings = 0
        self.lengths = array("I")
        self.title_ends = array("I")  # with positions: where each passage's text starts, and its title's length
        self.title_lengths = array("I")
        self.passage_doc = array("I")
        self.passage_part = array("I")
        self.doc_ids: list[str] = []
        self.tokens = 0
        self.scored = 0
        self.store = DocStoreWriter(directory)
        self.fields = fields or {}
        self.columns = ColumnsWriter(self.fields)

    @property
    def passages(self) -> int:
        return len(self.lengths)

    @property
    def memory_bytes(self) -> int:
        tokens = sum(len(positions) for _, positions in self.tokens_seen)
        return self.postings * _BYTES_PER_POSTING + tokens * 12 + self.vocabulary.memory_bytes

    def add_documents(self, documents: list[list[Passage]], analyzer: Analyzer) -> None:
        """A batch of documents, each as its passages: analysis per passage, counting for the batch at once."""
        first_passage = self.passages
        passages = [p for parts in documents for p in parts]
        for parts in documents:
            self.passage_doc.extend([len(self.doc_ids)] * len(parts))
            self.doc_ids.append(parts[0].doc_id)
            if self.fields:
                self.columns.add(parts[0].fields)
        analyzed = analyzer.analyze_batch([p.indexed_text for p in passages])
        lengths = analyzed.counts
        tokens = len(analyzed.starts)
        term_ids = self.vocabulary.ids(analyzed)
        if len(self.vocabulary) > len(self._last_seen):
            self._last_seen = np.full(2 * len(self.vocabulary), -1, dtype=np.int64)
        if self.with_positions:
            positions = [analyzer.positions(p.indexed_text) for p in passages]
            if [len(found) for found in positions] != lengths.tolist():
                raise AssertionError("the analyzer's positions disagree with its terms")
            joined = np.fromiter(chain.from_iterable(positions), dtype=np.uint32, count=int(lengths.sum()))
            self.tokens_seen.append((np.asarray(term_ids, dtype=np.int64), joined))
            titles = {}  # a split document's passages share its title
            for p in passages:
                if p.title not in titles:
                    titles[p.title] = analyzer.extent(p.title)
                end, length = titles[p.title]
                self.title_ends.append(end)
                self.title_lengths.append(length)
        chunk = count_terms(term_ids, lengths, first_passage, self._last_seen)
        self.chunks.append(chunk)
        self.postings += len(chunk[0])
        self.lengths.extend(lengths.tolist())
        self.passage_part.extend(p.part for p in passages)
        self.tokens += tokens
        self.scored += int(np.count_nonzero(lengths))
        self.store.add_many([[p.doc_id, p.part, p.title, p.text] for p in passages])

    def flush(self, packed: bool) -> Path:
        """Writes the pending passages as a finished segment folder, its postings packed or raw."""
        small = self.postings * _BYTES_PER_POSTING + self.store.bytes <= COMPOUND_BYTES
        out = FolderWriter(self.directory, in_memory=small)  # a compound file at the end: skip the member files
        self.store.close(out)
        by_id = self.vocabulary.terms()
        order = sorted(range(len(by_id)), key=lambda i: by_id[i].encode("utf-8"))
        terms = [by_id[i] for i in order]
        rank = np.empty(len(terms), dtype=np.int64)
        rank[order] = np.arange(len(terms))
        term_ids, passages, tfs = (np.concatenate(parts) for parts in zip(*self.chunks)) if self.chunks else (
            np.zeros(0, dtype=np.uint32) for _ in range(3)
        )
        self.chunks = []
        term_of_posting = rank[term_ids]
        offsets = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term_of_posting, minlength=len(terms)), out=offsets[1:])
        passages, tfs = group_by_term(term_of_posting, offsets, passages, tfs)
        if self.with_positions:
            self._write_positions(out, rank, tfs)
            out.array("title.ends.npy", np.frombuffer(self.title_ends, dtype=np.uint32))
            out.array("title.lengths.npy", np.frombuffer(self.title_lengths, dtype=np.uint32))
        lengths = np.frombuffer(self.lengths, dtype=np.uint32)
        out.array("lengths.npy", lengths)
        out.array("passages.doc.npy", np.frombuffer(self.passage_doc, dtype=np.uint32))
        out.array("passages.part.npy", np.frombuffer(self.passage_part, dtype=np.uint32))
        write_strings(out, "docids", self.doc_ids, findable=True)
        postings = write_postings(out, terms, offsets, passages, tfs, lengths, packed)
        if self.fields:
            self.columns.write(out)
        finish_segment(out, {**self.meta(len(terms), int(offsets[-1])), **postings})
        return self.directory

    def _write_positions(self, out: FolderWriter, rank: np.ndarray, grouped_tfs: np.ndarray) -> None:
        """Every token's position, grouped as the postings are (by term, then passage) and ascending within each:
        positions.npy, and per posting (grouped_tfs: the postings' tfs in that order) where its run starts
        (positions.offsets.npy)."""
        term_ids, positions = (np.concatenate(parts) for parts in zip(*self.tokens_seen))
        passage = np.repeat(np.arange(len(self.lengths), dtype=np.int64), np.frombuffer(self.lengths, np.uint32))
        order = np.lexsort((passage, rank[term_ids]))  # stable: positions stay ascending within a passage
        run_starts = np.zeros(len(grouped_tfs) + 1, dtype=np.int64)
        np.cumsum(grouped_tfs, out=run_starts[1:])
        out.array("positions.npy", positions[order])
        out.array("positions.offsets.npy", run_starts)
        self.tokens_seen = []

    def meta(self, terms: int, postings: int) -> dict:
        return {
            "passages": self.passages,
            "documents": len(self.doc_ids),
            "tokens": self.tokens,
            "scored_passages": self.scored,
            "terms": terms,
            "postings": postings,
            **({"fields": self.fields} if self.fields else {}),
            **({"positions": True, "title_field": True} if self.with_positions else {}),
        }


@dataclass
class BuildReport:
    index_dir: Path
    documents: int
    passages: int
    segments_flushed: int
    seconds: float
    generation: int

    def to_dict(self) -> dict:
        return {
            "index": str(self.index_dir),
            "documents": self.documents,
            "passages": self.passages,
            "segments_flushed": self.segments_flushed,
            "seconds": round(self.seconds, 3),
            "documents_per_second": round(self.documents / self.seconds, 1) if self.seconds else None,
            "generation": self.generation,
        }


@contextmanager
def _cyclic_gc_paused():
    """Indexing allocates millions of small lists and strings and frees them all by reference counting; pausing the
    cyclic collector stops it from rescanning the caller's heap on every few thousand allocations (up to a third
    of indexing time when the caller holds a tokenized corpus)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_segments(
    documents: Iterable[Document],
    staging: Path,
    options: BuildOptions,
    on_progress: Callable[[int], None] | None = None,
    pruned: Collection[str] = frozenset(),
) -> tuple[list[Path], BuildReport]:
    """Indexes documents into finished segment folders under staging (committing them is the writer's part).

    on_progress is called with the number of documents done after each batch of them. Passages whose key
    (doc_id#part) is in `pruned` are never indexed."""
    analyzer = Analyzer(options.analyzer)
    stride = options.passage_stride or options.passage_window

    def passages_of_each() -> Iterator[list[Passage]]:
        for doc in documents:
            parts = split_passages(doc, analyzer, options.passage_window, stride)
            yield [p for p in parts if p.key not in pruned] if pruned else parts

    return write_passages(passages_of_each(), staging, options, on_progress, analyzer)


def write_passages(
    documents: Iterable[list[Passage]],
    staging: Path,
    options: BuildOptions,
    on_progress: Callable[[int], None] | None = None,
    analyzer: Analyzer | None = None,
) -> tuple[list[Path], BuildReport]:
    """Segment folders of documents given as their passages, already cut (a merge rewrites stored passages so);
    a document with no passage is skipped."""
    started = time.perf_counter()
    analyzer = analyzer or Analyzer(options.analyzer)
    with _cyclic_gc_paused():
        flushed: list[Path] = []
        # postings are packed as they are written, except in segments a merge will read again (it packs its own)
        pack = options.postings == "packed"
        pending = _PendingSegment(staging / "part_0000", options.fields, options.positions)
        budget = options.memory_mb * 2**20
        count = passages = 0
        batch: list[list[Passage]] = []
        batch_passages = 0
        for count, parts in enumerate(documents, 1):
            if not parts:
                continue
            batch.append(parts)
            batch_passages += len(parts)
            if batch_passages >= _BATCH_PASSAGES:
                pending.add_documents(batch, analyzer)
                passages += batch_passages
                batch, batch_passages = [], 0
                if pending.memory_bytes >= budget:
                    flushed.append(pending.flush(pack and not options.merge))
                    failpoint("after-flush")
                    pending = _PendingSegment(staging / f"part_{len(flushed):04d}", options.fields, options.positions)
                if on_progress:
                    on_progress(count)
        if batch:
            pending.add_documents(batch, analyzer)
            passages += batch_passages
            if on_progress:
                on_progress(count)
        if pending.passages or not flushed:
            flushed.append(pending.flush(pack and (not options.merge or not flushed)))
        flushes = len(flushed)
        if options.merge and len(flushed) > 1:
            merged = staging / "merged"
            merge_segments([Segment(p) for p in flushed], merged, packed=pack)
            for folder in flushed:
                shutil.rmtree(folder)
            flushed = [merged]
    return flushed, BuildReport(staging, count, passages, flushes, time.perf_counter() - started, 0)
