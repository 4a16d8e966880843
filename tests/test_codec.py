"""The postings block codec: lossless round trips and identical BM25 scores over compressed postings."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.codec import BLOCK, decode_block, encode, packed_postings, raw_postings
from engine.format import compute_blocks
from engine.sparse import (
    NO_MASK,
    BM25Params,
    bm25_exhaustive,
    bm25_exhaustive_packed,
    exhaustive_scratch,
    lucene_norm_bytes,
    norm_inverse_table,
)


@st.composite
def postings(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_docs = draw(st.sampled_from([1, 50, 1000, 2**31]))
    dfs = draw(st.lists(st.integers(0, 400), min_size=1, max_size=5))
    docs = [np.sort(rng.choice(min(n_docs, 10**6), size=min(df, n_docs), replace=False)) for df in dfs]
    if n_docs == 2**31:  # huge gaps: 31-bit deltas
        docs = [np.sort(rng.choice(2**31 - 1, size=len(d), replace=False)) for d in docs]
    tf_cap = draw(st.sampled_from([2, 100, 2**20]))
    tfs = [rng.integers(1, tf_cap, size=len(d)) for d in docs]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return np.concatenate(docs).astype(np.uint32), np.concatenate(tfs).astype(np.uint32), offsets


@settings(max_examples=200, deadline=None)
@given(postings())
def test_round_trip(data):
    docs, tfs, offsets = data
    words, block_word, doc_width, tf_width = encode(docs, tfs, offsets)
    out_docs, out_tfs = np.empty(BLOCK, dtype=np.int64), np.empty(BLOCK, dtype=np.int64)
    block = 0
    for t in range(len(offsets) - 1):
        previous = -1
        for start in range(offsets[t], offsets[t + 1], BLOCK):
            n = min(BLOCK, offsets[t + 1] - start)
            decode_block(words, block_word, doc_width, tf_width, block, n, previous, out_docs, out_tfs)
            assert out_docs[:n].tolist() == docs[start : start + n].tolist()
            assert out_tfs[:n].tolist() == tfs[start : start + n].tolist()
            previous = int(docs[start + n - 1])
            block += 1
    assert block == len(doc_width)


def test_compressed_scores_equal_raw():
    rng = np.random.default_rng(1)
    n_docs = 5000
    dfs = [3000, 800, 40, 1]
    docs = np.concatenate([np.sort(rng.choice(n_docs, size=df, replace=False)) for df in dfs]).astype(np.uint32)
    tfs = rng.zipf(2.0, size=len(docs)).clip(1, 500).astype(np.uint32)
    offsets = np.concatenate([[0], np.cumsum(dfs)]).astype(np.int64)
    lengths = rng.integers(1, 300, size=n_docs).astype(np.uint32)
    blocks = compute_blocks(docs, tfs, offsets, lengths)
    words, block_word, doc_width, tf_width = encode(docs, tfs, offsets)
    assert words.nbytes < (docs.nbytes + tfs.nbytes) / 2
    norm_index = lucene_norm_bytes(lengths)
    table = norm_inverse_table(BM25Params(), float(lengths.mean()), 255)
    query = np.arange(len(dfs))
    weights = np.array([0.3, 1.2, 3.1, 6.0], dtype=np.float32)
    deleted = (np.random.default_rng(1).random(n_docs) < 0.3).astype(np.uint8) ^ 1
    for k, mask in ((1, NO_MASK), (10, NO_MASK), (1000, NO_MASK), (10, deleted), (1000, deleted)):
        accumulator, touched = exhaustive_scratch(n_docs)
        raw = bm25_exhaustive(docs, tfs, offsets[query], offsets[query + 1], weights, norm_index, table, k,
                              accumulator, touched, False, mask)  # fmt: skip
        for postings in (packed_postings(words, block_word, doc_width, tf_width), raw_postings(docs, tfs)):
            found = bm25_exhaustive_packed(
                postings, offsets[query], offsets[query + 1], blocks.offsets[query], blocks.last_doc, weights,
                norm_index, table, k, accumulator, touched, False, mask,
            )  # fmt: skip
            assert raw[0].tolist() == found[0].tolist() and raw[1].tolist() == found[1].tolist()
