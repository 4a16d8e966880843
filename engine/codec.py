"""A postings block codec decodable inside numba: per 128-posting block, delta-coded passage ids and tf - 1, each
bit-packed at the width its largest value needs (the "binary packing" of Lemire & Boytsov, without SIMD).

Measured against raw uint32 arrays by bench/compression.py; see bench/results/compression.md for the choice.
"""

from __future__ import annotations

import numba
import numpy as np

BLOCK = 128


def raw_postings(docs: np.ndarray, tfs: np.ndarray) -> tuple:
    """The kernels' postings argument for plain arrays: (packed, docs, tfs, words, block_word, widths...)."""
    return (
        False,
        docs,
        tfs,
        np.zeros(0, np.uint32),
        np.zeros(0, np.int64),
        np.zeros(0, np.uint8),
        np.zeros(0, np.uint8),
    )


def packed_postings(words: np.ndarray, block_word: np.ndarray, doc_width: np.ndarray, tf_width: np.ndarray) -> tuple:
    """The kernels' postings argument for bit-packed blocks (encode's output)."""
    return (True, np.zeros(0, np.uint32), np.zeros(0, np.uint32), words, block_word, doc_width, tf_width)


@numba.njit(nogil=True, cache=True)
def _width(value):
    bits = 0
    while value > 0:
        bits += 1
        value >>= 1
    return bits


@numba.njit(nogil=True, cache=True)
def _pack(values, n, width, out, word):
    """Writes n values of `width` bits into out from position word; returns the next free word."""
    if width == 0:
        return word
    buffer = np.uint64(0)
    filled = 0
    for i in range(n):
        buffer |= np.uint64(values[i]) << np.uint64(filled)
        filled += width
        if filled >= 32:
            out[word] = np.uint32(buffer & np.uint64(0xFFFFFFFF))
            word += 1
            buffer >>= np.uint64(32)
            filled -= 32
    if filled > 0:
        out[word] = np.uint32(buffer & np.uint64(0xFFFFFFFF))
        word += 1
    return word


@numba.njit(nogil=True, cache=True)
def encode(docs, tfs, offsets):
    """Postings (per term, sorted passage ids) -> (packed words, per-block word offset, doc width, tf width).

    A term's blocks are those of compute_blocks: term t's postings offsets[t]:offsets[t+1] in blocks of BLOCK.
    """
    n_terms = len(offsets) - 1
    n_blocks = 0
    for t in range(n_terms):
        n_blocks += (offsets[t + 1] - offsets[t] + BLOCK - 1) // BLOCK
    words = np.empty(len(docs) * 2 + n_blocks + 1, dtype=np.uint32)
    block_word = np.empty(n_blocks + 1, dtype=np.int64)
    doc_width = np.empty(n_blocks, dtype=np.uint8)
    tf_width = np.empty(n_blocks, dtype=np.uint8)
    deltas = np.empty(BLOCK, dtype=np.uint32)
    counts = np.empty(BLOCK, dtype=np.uint32)
    word = 0
    b = 0
    for t in range(n_terms):
        previous = -1
        for start in range(offsets[t], offsets[t + 1], BLOCK):
            n = min(BLOCK, offsets[t + 1] - start)
            widest_doc = 0
            widest_tf = 0
            for i in range(n):
                d = np.int64(docs[start + i])
                deltas[i] = d - previous - 1
                previous = d
                counts[i] = tfs[start + i] - 1
                widest_doc = max(widest_doc, np.int64(deltas[i]))
                widest_tf = max(widest_tf, np.int64(counts[i]))
            block_word[b] = word
            doc_width[b] = _width(widest_doc)
            tf_width[b] = _width(widest_tf)
            word = _pack(deltas, n, doc_width[b], words, word)
            word = _pack(counts, n, tf_width[b], words, word)
            b += 1
    block_word[n_blocks] = word
    return words[:word].copy(), block_word, doc_width, tf_width


@numba.njit(nogil=True, cache=True)
def decode_block(words, block_word, doc_width, tf_width, block, n, previous_doc, docs_out, tfs_out):
    """Decodes one block of n postings; previous_doc is the last passage id of the term's previous block, or -1.
    Passage ids and tfs are unpacked in one loop: each is a chain of shifts on its own bit buffer, and two
    independent chains run side by side (1.9 ns a posting on the Debian queries' lists, against 2.6 for one
    stream after the other)."""
    doc_bits = np.int64(doc_width[block])
    tf_bits = np.int64(tf_width[block])
    doc_word = block_word[block]
    tf_word = doc_word + (n * doc_bits + 31) // 32
    doc_mask = np.uint64((1 << doc_bits) - 1)
    tf_mask = np.uint64((1 << tf_bits) - 1)
    doc_buffer = np.uint64(0)
    tf_buffer = np.uint64(0)
    doc_filled = 0
    tf_filled = 0
    running = previous_doc
    for i in range(n):
        if doc_filled < doc_bits:
            doc_buffer |= np.uint64(words[doc_word]) << np.uint64(doc_filled)
            doc_word += 1
            doc_filled += 32
        if tf_filled < tf_bits:
            tf_buffer |= np.uint64(words[tf_word]) << np.uint64(tf_filled)
            tf_word += 1
            tf_filled += 32
        running += np.int64(doc_buffer & doc_mask) + 1
        docs_out[i] = running
        tfs_out[i] = np.int64(tf_buffer & tf_mask) + 1
        doc_buffer >>= np.uint64(doc_bits)
        tf_buffer >>= np.uint64(tf_bits)
        doc_filled -= doc_bits
        tf_filled -= tf_bits


def decode_all(postings: tuple, offsets: np.ndarray, block_last_doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every posting of a packed segment as plain (docs, tfs) arrays."""
    _, _, _, words, block_word, doc_width, tf_width = postings
    return _decode_all(words, block_word, doc_width, tf_width, offsets, block_last_doc)


@numba.njit(nogil=True, cache=True)
def _decode_all(words, block_word, doc_width, tf_width, offsets, block_last_doc):
    docs = np.empty(offsets[-1], dtype=np.uint32)
    tfs = np.empty(offsets[-1], dtype=np.uint32)
    block_docs = np.empty(BLOCK, dtype=np.int64)
    block_tfs = np.empty(BLOCK, dtype=np.int64)
    block = 0
    for t in range(len(offsets) - 1):
        previous = np.int64(-1)
        for start in range(offsets[t], offsets[t + 1], BLOCK):
            n = min(BLOCK, offsets[t + 1] - start)
            decode_block(words, block_word, doc_width, tf_width, block, n, previous, block_docs, block_tfs)
            docs[start : start + n] = block_docs[:n]
            tfs[start : start + n] = block_tfs[:n]
            previous = np.int64(block_last_doc[block])
            block += 1
    return docs, tfs
