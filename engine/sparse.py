"""Sparse first stages: a numba kernel per segment, the pure-numpy reference it is tested against, and the BM25
searcher that plans queries over one reader and chooses the kernel.

The kernels score BM25, or with ``linear=True`` impacts (a learned sparse model's quantized term weights, stored
as the postings' tf): a posting then adds query weight * impact, and lengths play no part.

BM25 scores follow Lucene 9's BM25Similarity to the float: idf = ln(1 + (N - df + 0.5) / (df + 0.5)) in float32,
document lengths quantized to one byte (SmallFloat.intToByte4) unless ``length_norm="exact"``, and
``weight - weight / (1 + tf * norm_inverse)`` in float32. Top-k ties break by internal passage id, ascending.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from engine.analysis import Analyzer
from engine.codec import BLOCK, decode_block
from engine.format import Segment, gather_strings
from engine.reader import IndexReader, Results, rank_documents

DEFAULT_K1 = 0.9
DEFAULT_B = 0.4
LENGTH_NORMS = ("lucene", "exact")
NO_MASK = np.zeros(0, dtype=np.uint8)  # a kernel's mask when every passage may be returned
NO_KEYS = np.zeros(0, dtype=np.int64)  # a kernel's tie keys when exact ties go by passage number


@dataclass(frozen=True)
class BM25Params:
    k1: float = DEFAULT_K1
    b: float = DEFAULT_B
    length_norm: str = "lucene"  # "lucene": one-byte quantized lengths as Lucene stores them; "exact"

    def __post_init__(self) -> None:
        if not (self.k1 >= 0 and math.isfinite(self.k1)):
            raise ValueError(f"BM25 k1 must be a finite number >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"BM25 b must be between 0 and 1, got {self.b}")
        if self.length_norm not in LENGTH_NORMS:
            raise ValueError(f"length_norm must be one of {LENGTH_NORMS}, got {self.length_norm!r}")


# --- Lucene's one-byte length encoding (SmallFloat.intToByte4 / byte4ToInt) ---------------------------------------


def _long_to_int4(i: int) -> int:
    bits = i.bit_length()
    if bits < 4:
        return i
    shift = bits - 4
    return ((i >> shift) & 0x07) | ((shift + 1) << 3)


def _int4_to_long(i: int) -> int:
    bits, shift = i & 0x07, (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


_FREE_VALUES = 255 - _long_to_int4(2**31 - 1)
LUCENE_LENGTH_TABLE = np.array(
    [b if b < _FREE_VALUES else _FREE_VALUES + _int4_to_long(b - _FREE_VALUES) for b in range(256)], dtype=np.int64
)


def lucene_norm_bytes(lengths: np.ndarray) -> np.ndarray:
    """intToByte4: the largest representable length not above the true one."""
    return (np.searchsorted(LUCENE_LENGTH_TABLE, np.asarray(lengths, dtype=np.int64), side="right") - 1).astype(
        np.uint8
    )


_segment_norm_bytes: weakref.WeakKeyDictionary[Segment, np.ndarray] = weakref.WeakKeyDictionary()


def segment_norm_bytes(segment: Segment) -> np.ndarray:
    """A segment's Lucene norm bytes, computed once per open segment (they depend on its lengths only) and shared
    by every reader's searcher: a refresh after a small commit does not touch every passage again."""
    found = _segment_norm_bytes.get(segment)
    if found is None:
        found = _segment_norm_bytes[segment] = lucene_norm_bytes(segment.lengths)
    return found


def norm_inverse_table(params: BM25Params, avgdl: float, max_index: int) -> np.ndarray:
    """1 / (k1 * (1 - b + b * length / avgdl)) for every value a passage's norm index can take, in float32."""
    if params.length_norm == "lucene":
        lengths = LUCENE_LENGTH_TABLE.astype(np.float32)
    else:
        lengths = np.arange(max_index + 1, dtype=np.float32)
    k1, b, avg = np.float32(params.k1), np.float32(params.b), np.float32(avgdl or 1)  # 0: nothing left to score
    with np.errstate(divide="ignore", over="ignore"):  # k1 -> 0: an infinite inverse, the score tends to idf
        return (np.float32(1) / (k1 * ((np.float32(1) - b) + b * lengths / avg))).astype(np.float32)


def idf(df: np.ndarray, n: int) -> np.ndarray:
    df = np.asarray(df, dtype=np.float64)
    return np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)


# --- the numba kernels ---------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True, inline="always")
def _bm25(weight, tf, norm_inverse, linear):
    """Lucene's per-term score: weight - weight / (1 + tf * norm_inverse), all in float32 (monotone in tf and norm
    after rounding, which is what makes block bounds safe); or, linear, weight * tf (an impact)."""
    if linear:
        return weight * np.float32(tf)
    return weight - weight / (np.float32(1) + np.float32(tf) * norm_inverse)


@numba.njit(nogil=True, cache=True)
def _sift_down(heap_scores, heap_docs, heap_keys, size, i):
    # min-heap on (score, -key): the root is the current worst of the top-k
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        child = left
        right = left + 1
        if right < size and (
            heap_scores[right] < heap_scores[left]
            or (heap_scores[right] == heap_scores[left] and heap_keys[right] > heap_keys[left])
        ):
            child = right
        if heap_scores[child] < heap_scores[i] or (
            heap_scores[child] == heap_scores[i] and heap_keys[child] > heap_keys[i]
        ):
            heap_scores[i], heap_scores[child] = heap_scores[child], heap_scores[i]
            heap_docs[i], heap_docs[child] = heap_docs[child], heap_docs[i]
            heap_keys[i], heap_keys[child] = heap_keys[child], heap_keys[i]
            i = child
        else:
            return


@numba.njit(nogil=True, cache=True, inline="always")
def _key(keys, d):
    return keys[d] if len(keys) > 0 else np.int64(d)


@numba.njit(nogil=True, cache=True)
def _sorted_heap(heap_scores, heap_docs, heap_keys, size):
    """Sorts a full min-heap in place into best first, and returns its first `size` entries."""
    for end in range(size - 1, 0, -1):
        heap_scores[0], heap_scores[end] = heap_scores[end], heap_scores[0]
        heap_docs[0], heap_docs[end] = heap_docs[end], heap_docs[0]
        heap_keys[0], heap_keys[end] = heap_keys[end], heap_keys[0]
        _sift_down(heap_scores, heap_docs, heap_keys, end, 0)
    return heap_docs[:size].copy(), heap_scores[:size].copy()


# top_k first narrows the candidates by a histogram of their scores when k is large: the heap then sees about k of
# them instead of all. Measured per query on real queries' touched passages with the accumulator just written, as
# in the kernels (Debian, 400 queries, 2026-12-01): at k=1000 the heap alone took 195 us a query and the histogram
# first 123 us (2x less from 4 to 32 candidates per result); at k=300, 2x less from 4 to 32 per result and even
# beyond 64; at k=100 the heap alone was faster (31 vs 42 us). A partition and sort (the former way) took 213 us.
HISTOGRAM_MIN_K = 200
HISTOGRAM_MAX_CANDIDATES_PER_RESULT = 64
HISTOGRAM_BUCKETS = 2048


@numba.njit(nogil=True, cache=True)
def top_k(candidates, scores, k, keys=NO_KEYS):
    """The k best candidates by (score desc, tie key asc), sorted; candidates are passage ids, scores indexed by id.
    keys (int64 per passage) orders exact score ties, by document id so that results do not depend on how passages
    are numbered across segments; empty: by passage id."""
    if k >= HISTOGRAM_MIN_K and k < len(candidates) <= HISTOGRAM_MAX_CANDIDATES_PER_RESULT * k:
        return top_k_by_heap(narrowed_by_histogram(candidates, scores, k), scores, k, keys)
    return top_k_by_heap(candidates, scores, k, keys)


@numba.njit(nogil=True, cache=True, inline="always")
def _bucket(score, scale):
    return min(max(np.int64(score * scale), 0), HISTOGRAM_BUCKETS)


@numba.njit(nogil=True, cache=True)
def narrowed_by_histogram(candidates, scores, k):
    """The candidates whose score falls in the bucket of the k-th best or above (at least k; the best k among them
    are the best k of all): buckets of equal width up to the best score, so a higher bucket means a higher score
    (scores of 0 or less all fall in the lowest)."""
    top = np.float32(0)
    for j in range(len(candidates)):
        top = max(top, scores[candidates[j]])
    if top <= 0:
        return candidates
    scale = np.float32(HISTOGRAM_BUCKETS) / top
    if not np.isfinite(scale):  # a best score too small to divide by
        return candidates
    counts = np.zeros(HISTOGRAM_BUCKETS + 1, dtype=np.int64)
    for j in range(len(candidates)):
        counts[_bucket(scores[candidates[j]], scale)] += 1
    lowest = HISTOGRAM_BUCKETS
    kept = counts[lowest]
    while kept < k and lowest > 0:
        lowest -= 1
        kept += counts[lowest]
    narrowed = np.empty(kept, dtype=np.int64)
    i = 0
    for j in range(len(candidates)):
        if i < kept and _bucket(scores[candidates[j]], scale) >= lowest:
            narrowed[i] = candidates[j]
            i += 1
    return narrowed[:i]


@numba.njit(nogil=True, cache=True)
def top_k_by_heap(candidates, scores, k, keys=NO_KEYS):
    """top_k with a min-heap of the k best so far: a candidate below its root costs one comparison."""
    size = min(k, len(candidates))
    heap_scores = np.empty(size, dtype=np.float32)
    heap_docs = np.empty(size, dtype=np.int64)
    heap_keys = np.empty(size, dtype=np.int64)
    for j in range(size):
        heap_scores[j] = scores[candidates[j]]
        heap_docs[j] = candidates[j]
        heap_keys[j] = _key(keys, candidates[j])
    for i in range(size // 2 - 1, -1, -1):
        _sift_down(heap_scores, heap_docs, heap_keys, size, i)
    for j in range(size, len(candidates)):
        d = candidates[j]
        s = scores[d]
        if s < heap_scores[0]:
            continue
        key = _key(keys, d)  # read only for a possible entrant: keys are a random access per passage
        if s > heap_scores[0] or key < heap_keys[0]:
            heap_scores[0] = s
            heap_docs[0] = d
            heap_keys[0] = key
            _sift_down(heap_scores, heap_docs, heap_keys, size, 0)
    return _sorted_heap(heap_scores, heap_docs, heap_keys, size)


@numba.njit(nogil=True, cache=True)
def top_k_scan(scores, k, keys=NO_KEYS):
    """top_k over every passage with a positive score, found by scanning all of them in passage order: no list of
    candidates to keep while scoring, which costs more than this scan once a query touches a fair share of them."""
    heap_scores = np.empty(k, dtype=np.float32)
    heap_docs = np.empty(k, dtype=np.int64)
    heap_keys = np.empty(k, dtype=np.int64)
    size = 0
    for d in range(len(scores)):
        s = scores[d]
        if s <= 0:
            continue
        if size < k:
            heap_scores[size] = s
            heap_docs[size] = d
            heap_keys[size] = _key(keys, d)
            size += 1
            if size == k:
                for i in range(k // 2 - 1, -1, -1):
                    _sift_down(heap_scores, heap_docs, heap_keys, k, i)
            continue
        if s >= heap_scores[0]:
            key = _key(keys, d)
            if s > heap_scores[0] or key < heap_keys[0]:
                heap_scores[0] = s
                heap_docs[0] = d
                heap_keys[0] = key
                _sift_down(heap_scores, heap_docs, heap_keys, k, 0)
    if size < k:
        for i in range(size // 2 - 1, -1, -1):
            _sift_down(heap_scores, heap_docs, heap_keys, size, i)
    return _sorted_heap(heap_scores, heap_docs, heap_keys, size)


# An exhaustive query whose postings reach this share of the segment's passages scans them all for its top k
# instead of listing the passages it touches (see top_k_scan). Measured per query (bench/results/kernels-*.json,
# 2026-12-01): the scan wins from about 0.85 of the passages; at 0.75, 200k synthetic passages take 0.73x the time of
# listing alone at k=10 (0.81x at k=1000) and the Debian passages, whose queries reach at most 0.47, are unchanged;
# at 0.25 Debian's larger queries paid 7% for scans.
DENSE_SCAN_SHARE = 0.75


@numba.njit(nogil=True, cache=True)
def _scans(starts, ends, passages, top):
    """Whether an exhaustive kernel scans for its top k: top -1 decides by the query's share of the passages; 0 and
    1 force listing touched passages or scanning (for measurements: bench/kernels.py)."""
    if top >= 0:
        return top == 1
    total = 0
    for q in range(len(starts)):
        total += ends[q] - starts[q]
    return total >= DENSE_SCAN_SHARE * passages


@numba.njit(nogil=True, cache=True)
def top_k_and_reset(accumulator, touched, n_touched, scanned, k, keys):
    """The top k of an exhaustive kernel's accumulator, which is left all zero again."""
    if scanned:
        best_docs, best_scores = top_k_scan(accumulator, k, keys)
        accumulator[:] = 0
        return best_docs, best_scores
    best_docs, best_scores = top_k(touched[:n_touched], accumulator, k, keys)
    for j in range(n_touched):
        accumulator[touched[j]] = 0
    return best_docs, best_scores


def exhaustive_scratch(passages: int) -> tuple[np.ndarray, np.ndarray]:
    """The exhaustive kernels' scratch space for a segment of this many passages: (accumulator, touched)."""
    return np.zeros(passages, dtype=np.float32), np.empty(passages + 1, dtype=np.int64)


@numba.njit(nogil=True, cache=True)
def bm25_exhaustive(docs, tfs, starts, ends, weights, norm_index, norm_inverse, k, accumulator, touched, linear=False,
                    mask=NO_MASK, keys=NO_KEYS, top=-1):  # fmt: skip
    """Scores every posting of the query terms, then keeps the top k.

    accumulator (float32, one per passage, all zero) and touched (int64, one more than passages) are scratch space
    owned by the caller's thread (exhaustive_scratch); the accumulator is left all zero again. Terms of weight <= 0
    contribute nothing, so every candidate has a positive score. mask (uint8, one per passage) names the passages
    that may be returned: deletions and filters; empty means all. keys: top_k's tie keys. top: how the top k is found
    (_scans).
    """
    masked = len(mask) > 0
    scanned = _scans(starts, ends, len(accumulator), top)
    n_touched = 0
    for q in range(len(starts)):
        w = weights[q]
        if w <= 0:
            continue
        for p in range(starts[q], ends[q]):
            d = docs[p]
            if masked and mask[d] == 0:
                continue
            a = accumulator[d]
            touched[n_touched] = d  # kept only if d is new: see bm25_exhaustive_packed
            n_touched += not scanned and a == 0
            accumulator[d] = a + _bm25(w, tfs[p], norm_inverse[norm_index[d]], linear)
    return top_k_and_reset(accumulator, touched, n_touched, scanned, k, keys)


# --- the pure-numpy reference --------------------------------------------------------------------------------------


def bm25_reference(docs, tfs, starts, ends, weights, norm_index, norm_inverse, k, linear=False, mask=None, keys=None):
    """Same contract as bm25_exhaustive, in plain numpy: the definition the kernel is tested against."""
    scores = np.zeros(len(norm_index), dtype=np.float32)
    for start, end, w in zip(starts, ends, weights, strict=True):
        d = np.asarray(docs[start:end], dtype=np.int64)
        tf = np.asarray(tfs[start:end], dtype=np.float32)
        w = np.float32(w)
        if w > 0 and linear:
            scores[d] += w * tf
        elif w > 0:
            with np.errstate(over="ignore"):  # tf * an infinite inverse norm (k1 -> 0): the score tends to w
                scores[d] += w - w / (np.float32(1) + tf * norm_inverse[np.asarray(norm_index)[d]])
    if mask is not None and len(mask):
        scores[np.asarray(mask) == 0] = 0
    candidates = np.flatnonzero(scores > 0)
    ties = candidates if keys is None or not len(keys) else np.asarray(keys)[candidates]
    order = np.lexsort((ties, -scores[candidates]))[:k]
    return candidates[order], scores[candidates[order]]


# --- safe dynamic pruning ------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _block_bounds(weights, block_first, block_count, block_max_tf, block_min_length, norm_lengths, norm_inverse,
                  linear):  # fmt: skip
    """Per query term, the score bound of each of its blocks (max tf at min length), and the term's maximum.

    Computed with the scoring formula in float32, so a bound is never below a score it bounds: Lucene's formula is
    monotone in tf and norm even after rounding.
    """
    m = len(weights)
    offsets = np.zeros(m + 1, dtype=np.int64)
    for q in range(m):
        offsets[q + 1] = offsets[q] + block_count[q]
    bounds = np.zeros(offsets[m], dtype=np.float32)
    term_bound = np.zeros(m, dtype=np.float32)
    for q in range(m):
        w = weights[q]
        for j in range(block_count[q]):
            b = block_first[q] + j
            norm = np.searchsorted(norm_lengths, block_min_length[b], side="right") - 1
            s = _bm25(w, block_max_tf[b], norm_inverse[norm], linear)
            bounds[offsets[q] + j] = s
            if s > term_bound[q]:
                term_bound[q] = s
    return offsets, bounds, term_bound


@numba.njit(nogil=True, cache=True)
def _load_block(postings, block_last_doc, first_block, block, start, n, out_docs, out_tfs):
    """Fills out_docs/out_tfs[:n] with one block of postings: decodes packed ones, copies raw ones (the kernels then
    read one kind of buffer, which MaxScore's loop measured faster than choosing per posting)."""
    packed, docs, tfs, words, block_word, doc_width, tf_width = postings
    if packed:
        previous = np.int64(block_last_doc[block - 1]) if block > first_block else np.int64(-1)
        decode_block(words, block_word, doc_width, tf_width, block, n, previous, out_docs, out_tfs)
    else:
        for i in range(n):
            out_docs[i] = docs[start + i]
            out_tfs[i] = tfs[start + i]


@numba.njit(nogil=True, cache=True)
def bm25_exhaustive_packed(postings, starts, ends, block_first, block_last_doc, weights, norm_index, norm_inverse,
                           k, accumulator, touched, linear=False, mask=NO_MASK, keys=NO_KEYS, top=-1):  # fmt: skip
    """bm25_exhaustive over postings read block by block (bit-packed ones are decoded): the same results."""
    masked = len(mask) > 0
    scanned = _scans(starts, ends, len(accumulator), top)
    docs = np.empty(BLOCK, dtype=np.int64)
    tfs = np.empty(BLOCK, dtype=np.int64)
    n_touched = 0
    for q in range(len(starts)):
        w = weights[q]
        if w <= 0:
            continue
        block = block_first[q]
        for start in range(starts[q], ends[q], BLOCK):
            n = min(BLOCK, ends[q] - start)
            _load_block(postings, block_last_doc, block_first[q], block, start, n, docs, tfs)
            # A passage seen for the first time joins touched without a branch: it is always written at the end
            # of the list, which only grows if it was new (touched has one spare entry past the last passage for
            # that write). Whether a passage is new is unpredictable once a second list is scored: the branch cost
            # 11% of the Debian queries' kernel time and 15% on 1M synthetic passages (2026-12-01, interleaved).
            # One loop each way, written out here: the same loops in a shared helper measured 8-13% slower.
            if masked:
                for i in range(n):
                    d = docs[i]
                    if mask[d] != 0:
                        a = accumulator[d]
                        touched[n_touched] = d
                        n_touched += not scanned and a == 0
                        accumulator[d] = a + _bm25(w, tfs[i], norm_inverse[norm_index[d]], linear)
            elif scanned:
                for i in range(n):
                    d = docs[i]
                    accumulator[d] += _bm25(w, tfs[i], norm_inverse[norm_index[d]], linear)
            else:
                for i in range(n):
                    d = docs[i]
                    a = accumulator[d]
                    touched[n_touched] = d
                    n_touched += a == 0
                    accumulator[d] = a + _bm25(w, tfs[i], norm_inverse[norm_index[d]], linear)
            block += 1
    return top_k_and_reset(accumulator, touched, n_touched, scanned, k, keys)


# MaxScore reads its essential terms a window of passages at a time (a multiple of 64). Against the former
# document-at-a-time merge, one thread, kernels taking turns query by query (2026-12-01): Debian k=10 -9% (hard
# queries -17%), 1M synthetic passages k=1000 -10%, k=10 +2%. Windows of 1,024 to 16,384 passages were within 3%
# of each other on the Debian queries.
MAXSCORE_WINDOW = 4096
_DE_BRUIJN_MULTIPLIER = np.uint64(0x03F79D71B4CB0A89)  # the position of a word's lowest set bit, by table lookup
_DE_BRUIJN = np.zeros(64, dtype=np.int64)
for _bit in range(64):
    _DE_BRUIJN[((1 << _bit) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58] = _bit


@numba.njit(nogil=True, cache=True)
def bm25_maxscore(
    postings,
    starts,
    ends,
    weights,
    norm_index,
    norm_inverse,
    norm_lengths,
    block_first,
    block_max_tf,
    block_min_length,
    block_last_doc,
    k,
    linear=False,
    mask=NO_MASK,
    keys=NO_KEYS,
):
    """Block-max MaxScore: exactly bm25_exhaustive's top k, usually scoring far fewer postings.

    Terms are ordered by their score bound; the lowest ones whose bounds together cannot lift a document above the
    current k-th score are "non-essential" and only probed for documents the others produce, and a probe stops as
    soon as the block maxima say the document cannot make it (skipped blocks are never decoded). While two or more
    terms are essential, passages are taken a window at a time (MAXSCORE_WINDOW): the essential terms' postings
    there are scored term at a time, and each term is bounded by its blocks in the window. Once one is left, its
    postings are read one by one, skipping blocks that cannot make the top k. A document's
    score is summed in query-term order, as the exhaustive kernel sums it, so both return the same floats. Bounds
    are compared with a margin that covers float32 rounding of the sums. Masked-out passages (deletions, filters)
    move the cursors like any other but are never scored or returned; block maxima stay safe bounds.
    """
    masked = len(mask) > 0
    m = len(starts)
    block_count = np.empty(m, dtype=np.int64)
    for q in range(m):
        block_count[q] = (ends[q] - starts[q] + BLOCK - 1) // BLOCK
    bound_offsets, bounds, term_bound = _block_bounds(
        weights, block_first, block_count, block_max_tf, block_min_length, norm_lengths, norm_inverse, linear
    )
    live = 0
    for q in range(m):
        if weights[q] > 0 and ends[q] > starts[q]:
            live += 1
    order = np.empty(live, dtype=np.int64)
    j = 0
    for q in np.argsort(term_bound, kind="mergesort"):
        if weights[q] > 0 and ends[q] > starts[q]:
            order[j] = q
            j += 1
    prefix = np.zeros(live, dtype=np.float64)  # prefix[i]: the bounds of order[0..i] together
    running = 0.0
    for i in range(live):
        running += term_bound[order[i]]
        prefix[i] = running
    by_bound = order.copy()  # order and prefix by the terms' own bounds; a window orders them by its own
    bound_prefix = prefix.copy()
    window_bound = np.zeros(m, dtype=np.float64)
    words = MAXSCORE_WINDOW // 64
    word_bound = np.zeros(words, dtype=np.float64)  # per 64 passages of a window: the non-essential terms' bounds
    term_word_bound = np.zeros(words, dtype=np.float64)
    margin = 1.0 + (m + 2) * 2.5e-7
    n_docs = len(norm_index)

    # per term: the block under the cursor (relative), the block held decoded in its buffer, the position in it
    block = np.zeros(m, dtype=np.int64)
    loaded = np.full(m, -1, dtype=np.int64)
    offset = np.zeros(m, dtype=np.int64)
    buffer_docs = np.empty((m, BLOCK), dtype=np.int64)
    buffer_tfs = np.empty((m, BLOCK), dtype=np.int64)
    contribution = np.zeros(m, dtype=np.float32)
    heap_scores = np.empty(k, dtype=np.float32)
    heap_docs = np.empty(k, dtype=np.int64)
    heap_keys = np.empty(k, dtype=np.int64)
    size = 0
    threshold = -1.0
    first_essential = 0

    # The essential lists, while two or more, are read a window of passages at a time, term at a time: each
    # posting's score goes to the window's slot for its passage, and the window's passages are then taken in order
    # as candidates. This replaced a document-at-a-time merge that cost ~20 ns a visited passage.
    window_partial = np.zeros(MAXSCORE_WINDOW, dtype=np.float32)  # the essential lists' scores of a passage, summed
    window_scores = np.zeros((m, MAXSCORE_WINDOW), dtype=np.float32)  # each essential list's own, for the exact sum
    window_bits = np.zeros(MAXSCORE_WINDOW // 64, dtype=np.uint64)  # which passages of the window the lists hold
    survivor_slot = np.empty(MAXSCORE_WINDOW, dtype=np.int64)  # the window's passages that may make the top k
    survivor_partial = np.empty(MAXSCORE_WINDOW, dtype=np.float64)  # their scores so far
    survivors = 0
    emitted = 0
    in_window = False
    window_base = 0
    block_len = np.zeros(m, dtype=np.int64)  # postings in the block held in a term's buffer
    for i in range(live):
        q = order[i]
        block_len[q] = min(BLOCK, ends[q] - starts[q])
        _load_block(postings, block_last_doc, block_first[q], block_first[q], starts[q], block_len[q],
                    buffer_docs[q], buffer_tfs[q])  # fmt: skip
        loaded[q] = 0
    current = n_docs
    windowed = live >= 2
    global_first = 0  # first_essential by the terms' own bounds, while windowed
    window_end = 0
    while True:
        if not windowed:
            if first_essential >= live:
                break
            # One essential list left, the usual end: the next of its postings that may make the top k, with no
            # lists to merge. A block is skipped undecoded when its bound and those of every other list cannot
            # reach the k-th score, a posting when its own score and those bounds cannot. Interleaved, same queries
            # (2026-12-01): 1M synthetic passages, k=10: 22% less time (p95 6.2 ms against 10.7); Debian within 4%.
            e = order[live - 1]
            others = prefix[live - 2] if live >= 2 else 0.0
            current = n_docs
            while block[e] < block_count[e] and current == n_docs:
                if loaded[e] != block[e]:
                    if size == k and (bounds[bound_offsets[e] + block[e]] + others) * margin <= threshold:
                        block[e] += 1
                        continue
                    start = starts[e] + block[e] * BLOCK
                    block_len[e] = min(BLOCK, ends[e] - start)
                    _load_block(postings, block_last_doc, block_first[e], block_first[e] + block[e], start,
                                block_len[e], buffer_docs[e], buffer_tfs[e])  # fmt: skip
                    loaded[e] = block[e]
                    while offset[e] < block_len[e] and buffer_docs[e, offset[e]] < window_end:
                        offset[e] += 1  # passages before the last window's end were decided there
                while offset[e] < block_len[e]:
                    doc = buffer_docs[e, offset[e]]
                    offset[e] += 1
                    if masked and mask[doc] == 0:
                        continue
                    own = _bm25(weights[e], buffer_tfs[e, offset[e] - 1], norm_inverse[norm_index[doc]], linear)
                    if (own + others) * margin > threshold:
                        current = doc
                        contribution[e] = own
                        partial = np.float64(own)
                        break
                if offset[e] == block_len[e]:
                    block[e] += 1
                    offset[e] = 0
            if current == n_docs:
                break
        else:
            if not in_window:
                if size == k:
                    while global_first < live and bound_prefix[global_first] * margin <= threshold:
                        global_first += 1
                if global_first >= live - 1:
                    windowed = False
                    order[:] = by_bound
                    prefix[:] = bound_prefix
                    first_essential = global_first
                    e = order[live - 1]
                    while block[e] < block_count[e] and block_last_doc[block_first[e] + block[e]] < window_end:
                        block[e] += 1
                        offset[e] = 0
                    if block[e] < block_count[e] and loaded[e] == block[e]:
                        while buffer_docs[e, offset[e]] < window_end:
                            offset[e] += 1
                    continue
                # The next window starts at the first passage a term essential by its own bound still holds:
                # a passage none of them holds cannot reach the k-th score.
                window_base = n_docs
                for i in range(global_first, live):
                    q = by_bound[i]
                    if block[q] == block_count[q]:
                        continue
                    if loaded[q] == block[q]:
                        window_base = min(window_base, buffer_docs[q, offset[q]])
                    elif block[q] > 0:
                        window_base = min(window_base, block_last_doc[block_first[q] + block[q] - 1] + 1)
                    else:
                        window_base = 0
                window_base = max(window_base, window_end)
                if window_base >= n_docs:
                    break
                window_end = window_base + MAXSCORE_WINDOW
                # Within the window each term is bounded by its blocks there, which are usually far below its own
                # bound: more terms are non-essential, probed only for the passages the others bring.
                for i in range(live):
                    q = order[i]
                    first = block_first[q]
                    while block[q] < block_count[q] and block_last_doc[first + block[q]] < window_base:
                        block[q] += 1
                        offset[q] = 0
                    best = 0.0
                    j = block[q]
                    while j < block_count[q] and (j == block[q] or block_last_doc[first + j - 1] < window_end):
                        best = max(best, bounds[bound_offsets[q] + j])
                        j += 1
                    window_bound[q] = best
                    if block[q] < block_count[q] and loaded[q] == block[q]:
                        while buffer_docs[q, offset[q]] < window_base:
                            offset[q] += 1
                for i in range(1, live):  # insertion sort by the window's bounds: a handful of terms
                    q = order[i]
                    j = i - 1
                    while j >= 0 and window_bound[order[j]] > window_bound[q]:
                        order[j + 1] = order[j]
                        j -= 1
                    order[j + 1] = q
                running = 0.0
                first_essential = 0
                for i in range(live):
                    running += window_bound[order[i]]
                    prefix[i] = running
                    if size == k and running * margin <= threshold:
                        first_essential = i + 1
                if first_essential == live:
                    continue
                # The non-essential terms' bounds per 64 passages, from their blocks there: a passage the essential
                # terms bring is dropped with one comparison unless those blocks leave it a chance.
                word_bound[:] = 0.0
                for i in range(first_essential):
                    q = order[i]
                    first = block_first[q]
                    j = block[q]
                    low = block_last_doc[first + j - 1] + 1 if j > 0 else 0
                    while j < block_count[q] and low < window_end:
                        high = min(np.int64(block_last_doc[first + j]), window_end - 1)
                        bound = bounds[bound_offsets[q] + j]
                        for word in range(max(low - window_base, 0) >> 6, ((high - window_base) >> 6) + 1):
                            term_word_bound[word] = max(term_word_bound[word], bound)
                        low = high + 1
                        j += 1
                    for word in range(words):
                        word_bound[word] += term_word_bound[word]
                        term_word_bound[word] = 0.0
                for i in range(first_essential, live):
                    q = order[i]
                    w = weights[q]
                    while block[q] < block_count[q]:
                        if loaded[q] != block[q]:
                            start = starts[q] + block[q] * BLOCK
                            block_len[q] = min(BLOCK, ends[q] - start)
                            _load_block(postings, block_last_doc, block_first[q], block_first[q] + block[q], start,
                                        block_len[q], buffer_docs[q], buffer_tfs[q])  # fmt: skip
                            loaded[q] = block[q]
                            while buffer_docs[q, offset[q]] < window_base:  # its block began before the window
                                offset[q] += 1
                        at = offset[q]
                        n = block_len[q]
                        while at < n:
                            doc = buffer_docs[q, at]
                            if doc >= window_end:
                                break
                            at += 1
                            if masked and mask[doc] == 0:
                                continue
                            slot = doc - window_base
                            s = _bm25(w, buffer_tfs[q, at - 1], norm_inverse[norm_index[doc]], linear)
                            window_scores[q, slot] = s
                            window_partial[slot] += s
                            window_bits[slot >> 6] |= np.uint64(1) << np.uint64(slot & 63)
                        offset[q] = at
                        if at < n:
                            break
                        block[q] += 1
                        offset[q] = 0
                # The window's passages in order, kept while their essential scores and the other terms' bounds
                # may reach the k-th score; then each non-essential term, the highest bound first, is probed for
                # all of them, one merge over its postings, and its score added.
                survivors = 0
                for word in range(words):
                    word_bits = window_bits[word]
                    window_bits[word] = 0
                    while word_bits != 0:
                        lowest = word_bits & (~word_bits + np.uint64(1))
                        word_bits ^= lowest
                        slot = word * 64 + _DE_BRUIJN[(lowest * _DE_BRUIJN_MULTIPLIER) >> np.uint64(58)]
                        reach = window_partial[slot] + word_bound[word]
                        if reach * margin > threshold:
                            survivor_slot[survivors] = slot
                            survivor_partial[survivors] = window_partial[slot]
                            survivors += 1
                        else:
                            for i in range(first_essential, live):
                                window_scores[order[i], slot] = 0
                        window_partial[slot] = 0
                for i in range(first_essential - 1, -1, -1):
                    q = order[i]
                    first = block_first[q]
                    rest = prefix[i - 1] if i > 0 else 0.0
                    kept = 0
                    for c in range(survivors):
                        slot = survivor_slot[c]
                        reach = survivor_partial[c]
                        alive = (reach + prefix[i]) * margin > threshold
                        if alive:
                            doc = window_base + slot
                            while block[q] < block_count[q] and block_last_doc[first + block[q]] < doc:
                                block[q] += 1
                                offset[q] = 0
                            if block[q] < block_count[q]:
                                if (reach + bounds[bound_offsets[q] + block[q]] + rest) * margin <= threshold:
                                    alive = False
                                else:
                                    if loaded[q] != block[q]:
                                        start = starts[q] + block[q] * BLOCK
                                        block_len[q] = min(BLOCK, ends[q] - start)
                                        _load_block(postings, block_last_doc, first, first + block[q], start,
                                                    block_len[q], buffer_docs[q], buffer_tfs[q])  # fmt: skip
                                        loaded[q] = block[q]
                                    while buffer_docs[q, offset[q]] < doc:
                                        offset[q] += 1
                                    if buffer_docs[q, offset[q]] == doc:
                                        own = _bm25(weights[q], buffer_tfs[q, offset[q]], norm_inverse[norm_index[doc]],
                                                    linear)  # fmt: skip
                                        window_scores[q, slot] = own
                                        reach += own
                        if alive and (i > 0 or reach * margin > threshold):
                            survivor_slot[kept] = slot
                            survivor_partial[kept] = reach
                            kept += 1
                        else:
                            for j in range(i, live):
                                window_scores[order[j], slot] = 0
                    survivors = kept
                in_window = True
                emitted = 0
            if emitted == survivors:
                in_window = False
                continue
            slot = survivor_slot[emitted]
            emitted += 1
            current = window_base + slot
            partial = survivor_partial[emitted - 1]
            for q in range(m):
                contribution[q] = window_scores[q, slot]
                window_scores[q, slot] = 0
        candidate = True
        for i in range(-1 if windowed else first_essential - 1, -1, -1):
            if (partial + prefix[i]) * margin <= threshold:
                candidate = False
                break
            q = order[i]
            first = block_first[q]
            while block[q] < block_count[q] and block_last_doc[first + block[q]] < current:
                block[q] += 1
                offset[q] = 0
            if block[q] == block_count[q]:
                continue
            rest = prefix[i - 1] if i > 0 else 0.0
            if (partial + bounds[bound_offsets[q] + block[q]] + rest) * margin <= threshold:
                candidate = False
                break
            start = starts[q] + block[q] * BLOCK
            if loaded[q] != block[q]:
                block_len[q] = min(BLOCK, ends[q] - start)
                _load_block(postings, block_last_doc, first, first + block[q], start, block_len[q], buffer_docs[q],
                            buffer_tfs[q])  # fmt: skip
                loaded[q] = block[q]
            while buffer_docs[q, offset[q]] < current:
                offset[q] += 1
            if buffer_docs[q, offset[q]] == current:
                tf = buffer_tfs[q, offset[q]]
                contribution[q] = _bm25(weights[q], tf, norm_inverse[norm_index[current]], linear)
                partial += contribution[q]
        if candidate and partial * margin <= threshold:  # the exact sum cannot reach the k-th score either
            candidate = False
        if candidate:
            score = np.float32(0)
            for q in range(m):
                score += contribution[q]
            if size < k:
                heap_scores[size] = score
                heap_docs[size] = current
                heap_keys[size] = _key(keys, current)
                size += 1
                if size == k:
                    for i in range(k // 2 - 1, -1, -1):
                        _sift_down(heap_scores, heap_docs, heap_keys, k, i)
                    threshold = heap_scores[0]
            elif score > heap_scores[0] or (score == heap_scores[0] and _key(keys, current) < heap_keys[0]):
                # a bound equal to the threshold is never pruned (the margin makes bounds strictly larger), so
                # a later passage tied with the k-th score still gets here and wins by its key
                heap_scores[0] = score
                heap_docs[0] = current
                heap_keys[0] = _key(keys, current)
                _sift_down(heap_scores, heap_docs, heap_keys, k, 0)
                threshold = heap_scores[0]
            if size == k and not in_window:
                while first_essential < live and prefix[first_essential] * margin <= threshold:
                    first_essential += 1
        for q in range(m):
            contribution[q] = 0
    if size < k:
        for i in range(size // 2 - 1, -1, -1):
            _sift_down(heap_scores, heap_docs, heap_keys, size, i)
    return _sorted_heap(heap_scores, heap_docs, heap_keys, size)


# --- the BM25 searcher: query planning, caches and the choice of kernel over one reader's segments ----------------

ALGORITHMS = ("auto", "maxscore", "exhaustive")  # safe: all return exactly the same top k
# "auto" prunes when a query's postings are many for its k. Measured (one thread, 2026-11-26): on SciFact's short
# lists the exhaustive kernel is 1.2-1.5x faster than MaxScore at k = 10, 100, 1000; on 200k synthetic passages
# MaxScore is 2.7x faster at k=10, 1.3x at k=100 and 0.8x at k=1000; "auto" matches the faster one within 5%.
# By query size (k=10): on the Debian glosses the exhaustive kernel wins below 100k postings (queries of several
# mid-frequency terms of similar weight leave MaxScore few lists to skip), on 200k synthetic passages MaxScore wins
# from 20k (1.3x at 20-100k, 3.2x above); 100k costs synthetic queries 2% and saves Debian ones 13%.
# Remeasured (2026-12-01, after the branchless exhaustive kernel and MaxScore's one-list loop), the other Debian
# passages' 1,169 queries at k=10, the total over all queries by threshold, with warm caches and with caches flushed
# before each query (as between a service's queries, or engines taking turns): 100k 79 / 162 ms, 50k 80 / 151,
# 20k 85 / 148; 200k synthetic passages: 100k 257 / 297, 50k 252 / 291. Yet the first-stage benchmark (engines
# taking turns, caches partly warm) with 50k gave Debian's hard queries at k=10 a p95 of 1.22 ms against 0.81 with
# 100k (0.82x PISA-BMW against 0.93x), so 100k stays. Again with the windowed MaxScore (same day, later): with
# caches flushed MaxScore was 12% faster at 50-100k postings and 24% slower at 20-50k; in the benchmark 50k gave
# k=10 0.79x PISA-BMW against 0.78x and the hard queries' p95 0.71 ms against 0.65.
_PRUNE_MIN_POSTINGS = 100_000
_PRUNE_POSTINGS_PER_RESULT = 1000
# Long queries (a learned sparse query's expansions, pasted text) go to the exhaustive kernel: on the Debian
# passages, queries of random terms at k=10 (2026-12-01) took with MaxScore / exhaustively 1.1 / 0.63 ms at 16
# terms and 117k postings, 3.0 / 1.4 at 32 terms, 12.6 / 1.2 at 150 terms and 147k postings with weights as skewed
# as a learned model's (Pareto); MaxScore's windows do work per term and window.
_PRUNE_MAX_TERMS = 16
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


KERNEL_CODES = {"auto": -1, "exhaustive": 0, "maxscore": 1}  # search_segment's algorithm argument


@njit(nogil=True, cache=True)
def chosen_kernel(code, postings, k, terms):
    """0 for the exhaustive kernel, 1 for MaxScore: code -1 ("auto") decides by the total length of the query's
    posting lists in the segment, k and the number of its terms the segment holds."""
    if code >= 0:
        return code
    if terms > _PRUNE_MAX_TERMS:
        return 0
    return 1 if postings >= max(_PRUNE_MIN_POSTINGS, _PRUNE_POSTINGS_PER_RESULT * k) else 0


def choose_algorithm(algorithm: str, postings: int, k: int, terms: int) -> str:
    """The kernel a query gets in one segment, by name."""
    return ("exhaustive", "maxscore")[chosen_kernel(KERNEL_CODES[algorithm], postings, k, terms)]


@njit(nogil=True, cache=True)
def search_segment(postings, offsets, blocks, term_ids, weights, norms, k, algorithm, scratch, linear=False,
                   mask=NO_MASK, keys=NO_KEYS):  # fmt: skip
    """One segment's top k for a query given as term numbers there (-1: absent) and a weight per term: the posting
    ranges looked up and the kernel chosen (algorithm: a KERNEL_CODES value) in one compiled call. From Python,
    every call and every numpy operation costs ~10 us once the caches are cold (as between a service's queries),
    which is most of a short query. blocks: PostingLists.block_arrays; norms: (norm index per passage, the table
    it indexes, the length each entry stands for); scratch: the exhaustive kernels' (accumulator, touched)."""
    block_offsets, max_tf, min_length, last_doc = blocks
    starts, ends, first, found, _ = term_ranges(term_ids, offsets, block_offsets)
    present = weights[found]
    norm_index, norm_inverse, norm_lengths = norms
    total = 0
    for q in range(len(starts)):
        total += ends[q] - starts[q]
    if chosen_kernel(algorithm, total, k, len(starts)) == 1:
        return bm25_maxscore(postings, starts, ends, present, norm_index, norm_inverse, norm_lengths, first, max_tf,
                             min_length, last_doc, k, linear, mask, keys)  # fmt: skip
    accumulator, touched = scratch
    if postings[0]:
        return bm25_exhaustive_packed(postings, starts, ends, first, last_doc, present, norm_index, norm_inverse, k,
                                      accumulator, touched, linear, mask, keys)  # fmt: skip
    return bm25_exhaustive(postings[1], postings[2], starts, ends, present, norm_index, norm_inverse, k, accumulator,
                           touched, linear, mask, keys)  # fmt: skip


@njit(nogil=True, cache=True)
def search_segment_ids(postings, offsets, blocks, term_ids, weights, norms, k, algorithm, scratch, mask, keys,
                       strings, string_offsets, passage_doc):  # fmt: skip
    """search_segment, and the ids of the passages found (StringTable.split reads them): an index of one segment
    answers a query in one compiled call."""
    docs, scores = search_segment(postings, offsets, blocks, term_ids, weights, norms, k, algorithm, scratch, False,
                                  mask, keys)  # fmt: skip
    return docs, scores, gather_strings(strings, string_offsets, docs, passage_doc)


class QueryPlan(NamedTuple):
    """A query analyzed against this index: each term's number in each segment and its weight."""

    term_ids: np.ndarray  # int64 [segments, terms]: -1 where a segment lacks the term
    weights: np.ndarray  # float32 [terms]: idf times the term's count in the query
    postings: tuple[int, ...]  # per segment, the total length of the query's posting lists (what "auto" decides by)


class Norms(NamedTuple):
    """Length normalization for one (k1, b, length_norm): norm index per passage, and a table indexed by it."""

    per_segment: list[np.ndarray]  # a passage's index into inverse and lengths
    inverse: np.ndarray  # float32 1 / (k1 * (1 - b + b * length / avgdl))
    lengths: np.ndarray  # int64, ascending: the length each index stands for
    for_kernels: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per segment: (its norm index, inverse, lengths)


class BM25Searcher:
    """BM25 over one IndexReader (one commit). Caches term lookups and length norms per parameter set; safe to use
    from many threads (the kernels release the GIL)."""

    def __init__(self, reader: IndexReader, term_cache_size: int = _TERM_CACHE_SIZE) -> None:
        self.reader = reader
        self.segments = reader.segments
        self.default_params = BM25Params(**reader.manifest.get("bm25", {}))
        self._local = threading.local()
        self._norm_cache: dict[tuple, Norms] = {}
        self._term_cache: dict[str, tuple] = {}
        self._term_cache_size = term_cache_size
        self._pool: ThreadPoolExecutor | None = None

    @property
    def analyzer(self) -> Analyzer:
        """Per thread: the analyzer's stemmer is not thread-safe."""
        analyzer = getattr(self._local, "analyzer", None)
        if analyzer is None:
            analyzer = self._local.analyzer = Analyzer(self.reader.analyzer_config)
        return analyzer

    # -- query processing

    def plan(self, query: str | Sequence[str]) -> QueryPlan:
        """query: text to analyze, or terms already analyzed. Kept to a few lines and two numpy calls for the usual
        query (terms cached, none repeated, one segment): with cold caches, as between a service's queries, every
        Python and numpy operation costs microseconds, and planning cost as much as scoring."""
        terms = self.analyzer.analyze(query) if isinstance(query, str) else query
        get = self._term_cache.get
        entries = [get(term) for term in terms]
        if None in entries or len(set(terms)) < len(terms):  # a term to look up, or a repeated one
            counts = Counter(terms)
            entries = self._entries(list(counts))
            # a term repeated in the query counts once per occurrence, as in Anserini; idf and count are float32
            # values, so their product in double precision rounds to the float32 product
            weights = [idf * count for (idf, _, _), count in zip(entries, counts.values())]
        else:
            weights = [idf for idf, _, _ in entries]
        if len(self.segments) == 1:
            term_ids = np.array([[ids[0] for _, ids, _ in entries]], dtype=np.int64)
            postings: tuple[int, ...] = (sum([lengths[0] for _, _, lengths in entries]),)
        else:
            segments = range(len(self.segments))
            term_ids = np.array([[ids[i] for _, ids, _ in entries] for i in segments], dtype=np.int64)
            term_ids = term_ids.reshape(len(segments), len(entries))
            postings = tuple(sum(lengths[i] for _, _, lengths in entries) for i in segments)
        return QueryPlan(term_ids, np.array(weights, dtype=np.float32), postings)

    def ranges(self, plan: QueryPlan, segment: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The posting ranges a plan scores in one segment: (starts, ends, weights, first blocks) of the terms the
        segment holds, for calling the kernels one by one (benchmarks)."""
        lists = self.segments[segment]
        starts, ends, first, found, _ = term_ranges(plan.term_ids[segment], lists.offsets, lists.blocks.offsets)
        return starts, ends, plan.weights[found], first

    def _entries(self, terms: list[str]) -> list[tuple]:
        """Per term: its idf (float32, from the global document frequency) and, per segment, its number there (-1
        if absent) and its posting count. Query terms repeat, so lookups are cached (a cached plan costs a third of
        a fresh one); a full cache starts afresh, and what a query needs is taken from its own lookups, never from
        the cache after the fact (another thread may clear it at any time)."""
        cache = self._term_cache
        found = {term: entry for term in terms if (entry := cache.get(term)) is not None}
        missing = [term for term in terms if term not in found]
        if missing:
            looked_up = self._look_up(missing)
            if len(cache) + len(looked_up) > self._term_cache_size:
                cache.clear()
            cache.update(looked_up)
            found.update(looked_up)
        return [found[term] for term in terms]

    def _look_up(self, terms: list[str]) -> dict[str, tuple]:
        term_ids, lengths, df = self._local_lookup(terms)
        collection = self.reader.collection
        if collection is None:
            idfs = idf(df, self.reader.scored_passages).tolist()
        else:  # one shard of several: the idf of the whole collection, so that scores equal one index's
            idfs = idf(collection.document_frequencies(terms), collection.scored_passages).tolist()
        ids_by_term = list(zip(*(ids.tolist() for ids in term_ids))) or [()] * len(terms)
        lengths_by_term = list(zip(*(n.tolist() for n in lengths))) or [()] * len(terms)
        return {term: (idfs[j], ids_by_term[j], lengths_by_term[j]) for j, term in enumerate(terms)}

    def _local_lookup(self, terms: list[str]) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Per segment, the terms' numbers and posting counts there; and their df over this index's live passages."""
        term_ids = [segment.terms.find_many(terms) for segment in self.segments]
        lengths = [term_ranges(ids, segment.offsets, segment.blocks.offsets)[4]
                   for ids, segment in zip(term_ids, self.segments)]  # fmt: skip
        df = np.sum(lengths, axis=0) if lengths else np.zeros(len(terms), dtype=np.int64)
        for ids, deletions in zip(term_ids, self.reader.deletions):
            if len(deletions.passages):
                df = df - deletions.df_taken(ids)
        return term_ids, lengths, df

    def document_frequencies(self, terms: list[str]) -> np.ndarray:
        """int64 per term (analyzed): the live passages of this index that hold it."""
        return self._local_lookup(terms)[2]

    def norms(self, params: BM25Params) -> Norms:
        """Cached per parameter set: computing norm indexes touches every passage."""
        key = (params.k1, params.b, params.length_norm)
        if key not in self._norm_cache:
            if params.length_norm == "lucene":
                indexes = [segment_norm_bytes(s) for s in self.segments]
                lengths = LUCENE_LENGTH_TABLE
            else:
                indexes = [np.asarray(s.lengths) for s in self.segments]
                lengths = np.arange(max((int(s.lengths.max()) for s in self.segments if s.passages), default=0) + 1)
            avgdl = (self.reader.collection or self.reader).avgdl
            inverse = norm_inverse_table(params, avgdl, len(lengths) - 1)
            lengths = lengths.astype(np.int64)
            self._norm_cache[key] = Norms(indexes, inverse, lengths, [(i, inverse, lengths) for i in indexes])
        return self._norm_cache[key]

    def _scratch(self, segment: int) -> tuple[np.ndarray, np.ndarray]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        if segment not in buffers:
            buffers[segment] = exhaustive_scratch(self.segments[segment].passages)
        return buffers[segment]

    def search_passages(
        self,
        query: str | Sequence[str],
        k: int = 10,
        params: BM25Params | None = None,
        algorithm: str = "auto",
        filter: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k internal passage numbers and float32 scores, best first. Every algorithm returns the same."""
        _check(k, algorithm)
        masks = self.reader.filter_masks(filter)
        return self._top_passages(self.plan(query), k, params or self.default_params, algorithm, masks)

    def _top_passages(self, plan: QueryPlan, k: int, params: BM25Params, algorithm: str, masks: list):
        """The kernels for one planned query; they release the GIL, so threads run this in parallel. masks: per
        segment, the passages that may be returned (deletions and a filter), None for all."""
        norms = self.norms(params).for_kernels
        code = KERNEL_CODES[algorithm]
        found_docs, found_scores = [], []
        for i, segment in enumerate(self.segments):
            if not plan.postings[i]:
                continue
            mask = masks[i]
            docs, scores = search_segment(
                segment.postings, segment.offsets, segment.block_arrays, plan.term_ids[i], plan.weights, norms[i],
                k, code, self._scratch(i), False, NO_MASK if mask is None else mask, segment.tie_keys,
            )  # fmt: skip
            found_docs.append(docs + self.reader.bases[i] if i else docs)
            found_scores.append(scores)
        return self.reader.merge_tops(found_docs, found_scores, k)

    def search(
        self,
        query: str | Sequence[str],
        k: int = 10,
        params: BM25Params | None = None,
        documents: bool = False,
        algorithm: str = "auto",
        filter: str | None = None,
    ) -> Results:
        """BM25 top-k. documents=True ranks documents by their best passage (the default for split indexes).
        filter: an expression over the index's fields (engine/fields.py); the result is exactly the top k of the
        passages it matches."""
        _check(k, algorithm)
        masks = self.reader.filter_masks(filter)
        if len(self.segments) == 1 and not self.reader.split_passages:
            return self._one_segment(self.plan(query), k, params or self.default_params, algorithm, masks[0])
        return self._results([self.plan(query)], k, params or self.default_params, documents, 1, algorithm,
                             masks)[0]  # fmt: skip

    def _one_segment(self, plan: QueryPlan, k: int, params: BM25Params, algorithm: str, mask) -> Results:
        """search on an index of one segment whose passages are documents: the kernel and the hits' ids in one
        compiled call (each call from Python costs tens of microseconds when the caches are cold)."""
        segment = self.segments[0]
        ids = segment.doc_ids
        docs, scores, joined = search_segment_ids(
            segment.postings, segment.offsets, segment.block_arrays, plan.term_ids[0], plan.weights,
            self.norms(params).for_kernels[0], k, KERNEL_CODES[algorithm], self._scratch(0),
            NO_MASK if mask is None else mask, segment.tie_keys, *ids.arrays, segment.passage_doc,
        )  # fmt: skip
        names = ids.split(joined, docs, segment.passage_doc)
        return Results(names, names, scores, docs)

    def batch_search(
        self,
        queries: Sequence[str | Sequence[str]],
        k: int = 10,
        params: BM25Params | None = None,
        documents: bool = False,
        threads: int | None = None,
        algorithm: str = "auto",
        filter: str | None = None,
    ) -> list[Results]:
        """Many queries at once, in order. Queries are planned on the calling thread and scored on a pool of
        threads: the kernels release the GIL, so scoring uses every core. Results equal single searches."""
        _check(k, algorithm)
        masks = self.reader.filter_masks(filter)
        plans = [self.plan(q) for q in queries]
        return self._results(plans, k, params or self.default_params, documents, threads or os.cpu_count() or 1,
                             algorithm, masks)  # fmt: skip

    def _results(self, plans: list[QueryPlan], k: int, params: BM25Params, documents: bool, threads: int,
                 algorithm: str, masks: list) -> list[Results]:  # fmt: skip
        if documents and self.reader.split_passages:
            def top(rows: np.ndarray, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
                return self._map(threads, lambda row: self._top_passages(plans[row], depth, params, algorithm, masks),
                                 rows.tolist())  # fmt: skip

            return rank_documents(self.reader, top, len(plans), k, self.reader.passages)
        tops = self._map(threads, lambda plan: self._top_passages(plan, k, params, algorithm, masks), plans)
        return [self.reader.hits(docs, scores, as_documents=False) for docs, scores in tops]

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

