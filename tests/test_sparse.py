"""The BM25 kernel against its numpy reference, and whole indexes against brute force over the raw text."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_documents, write_jsonl
from engine.analysis import Analyzer
from engine.codec import encode, packed_postings, raw_postings
from engine.format import compute_blocks
from engine.index import open_index
from engine.sparse import (
    LUCENE_LENGTH_TABLE,
    MAXSCORE_WINDOW,
    NO_KEYS,
    NO_MASK,
    BM25Params,
    bm25_exhaustive,
    bm25_exhaustive_packed,
    bm25_maxscore,
    bm25_reference,
    choose_algorithm,
    exhaustive_scratch,
    lucene_norm_bytes,
    narrowed_by_histogram,
    norm_inverse_table,
    top_k,
    top_k_and_reset,
    top_k_by_heap,
)
from indexers.corpus import CorpusReader, open_source
from indexers.inverted import BuildOptions
from indexers.writer import build_index


def test_lucene_length_table_matches_smallfloat():
    # SmallFloat.byte4ToInt: exact up to 39, then four significant bits
    assert LUCENE_LENGTH_TABLE[:40].tolist() == list(range(40))
    assert LUCENE_LENGTH_TABLE[40:44].tolist() == [40, 42, 44, 46]
    assert LUCENE_LENGTH_TABLE[255] == 2013265944
    assert np.all(np.diff(LUCENE_LENGTH_TABLE) > 0)


@given(st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=50))
def test_norm_bytes_round_down_to_representable_lengths(lengths):
    encoded = lucene_norm_bytes(np.array(lengths))
    decoded = LUCENE_LENGTH_TABLE[encoded]
    assert np.all(decoded <= lengths)
    assert np.all((encoded == 255) | (LUCENE_LENGTH_TABLE[np.minimum(encoded.astype(int) + 1, 255)] > lengths))


@st.composite
def random_postings(draw, max_docs: int = 60):
    """A random segment: sorted postings per term, lengths, and a query over some of its terms."""
    n_docs = draw(st.integers(1, max_docs))
    n_terms = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    docs, tfs, offsets = [], [], [0]
    for _ in range(n_terms):
        df = int(rng.integers(0, n_docs + 1))
        docs.append(np.sort(rng.choice(n_docs, size=df, replace=False)))
        tfs.append(rng.integers(1, draw(st.sampled_from([2, 5, 50])), size=df))
        offsets.append(offsets[-1] + df)
    lengths = rng.integers(0, draw(st.sampled_from([30, 3000])), size=n_docs)
    query = draw(st.lists(st.integers(0, n_terms - 1), min_size=1, max_size=5, unique=True))
    weights = rng.uniform(0.01, 5, size=len(query)).astype(np.float32)
    if draw(st.booleans()):
        weights = np.round(weights, 1)  # coarse weights make exact score ties likely
    return (
        np.concatenate(docs).astype(np.uint32),
        np.concatenate(tfs).astype(np.uint32),
        np.array(offsets, dtype=np.int64),
        lengths,
        np.array(query, dtype=np.int64),
        weights,
    )


@settings(max_examples=300, deadline=None)
@given(
    random_postings(), st.integers(1, 70), st.sampled_from(["lucene", "exact"]), st.floats(0, 3), st.floats(0, 1),
    st.booleans(), st.sampled_from([None, 0.0, 0.3, 0.9]), st.booleans(), st.sampled_from([-1, 0, 1]),
)  # fmt: skip
def test_kernel_equals_numpy_reference(postings, k, length_norm, k1, b, linear, masked_share, keyed, top):
    """Whichever way the kernel finds its top k (top: by the query's size, a touched list, or a scan)."""
    docs, tfs, offsets, lengths, query, weights = postings
    mask = random_mask(len(lengths), masked_share)
    keys = random_keys(len(lengths)) if keyed else NO_KEYS
    params = BM25Params(k1=k1, b=b, length_norm=length_norm)
    avgdl = float(max(lengths.mean(), 1))
    if length_norm == "lucene":
        norm_index, table = lucene_norm_bytes(lengths), norm_inverse_table(params, avgdl, 255)
    else:
        norm_index, table = lengths.astype(np.uint32), norm_inverse_table(params, avgdl, int(lengths.max()))
    starts, ends = offsets[query], offsets[query + 1]
    accumulator, touched = exhaustive_scratch(len(lengths))
    got_docs, got_scores = bm25_exhaustive(
        docs, tfs, starts, ends, weights, norm_index, table, k, accumulator, touched, linear, mask, keys, top
    )
    want_docs, want_scores = bm25_reference(docs, tfs, starts, ends, weights, norm_index, table, k, linear, mask,
                                            keys)  # fmt: skip
    assert all(mask[got_docs]) if len(mask) else True
    np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-6)
    assert got_docs.tolist() == want_docs.tolist()
    assert not accumulator.any(), "the kernel must leave its scratch space zeroed"


def test_kernels_score_lists_that_touch_every_passage():
    """Every passage in every query list: the touched list fills up and each later posting is written to its spare
    entry (the kernels append without a branch), which must neither lose a passage nor write past the scratch."""
    n_docs, n_terms = 300, 3
    rng = np.random.default_rng(7)
    docs = np.tile(np.arange(n_docs, dtype=np.uint32), n_terms)
    tfs = rng.integers(1, 9, size=n_docs * n_terms).astype(np.uint32)
    offsets = np.arange(0, n_docs * n_terms + 1, n_docs, dtype=np.int64)
    lengths = rng.integers(1, 200, size=n_docs)
    norm_index, table = lucene_norm_bytes(lengths), norm_inverse_table(BM25Params(), float(lengths.mean()), 255)
    weights = np.array([1.5, 0.7, 2.2], dtype=np.float32)
    starts, ends = offsets[:-1], offsets[1:]
    want = bm25_reference(docs, tfs, starts, ends, weights, norm_index, table, n_docs)
    blocks = compute_blocks(docs, tfs, offsets, lengths)
    packed = packed_postings(*encode(docs, tfs, offsets))
    for top in (0, 1):  # a touched list, or a scan
        accumulator, touched = exhaustive_scratch(n_docs)
        raw = bm25_exhaustive(docs, tfs, starts, ends, weights, norm_index, table, n_docs, accumulator, touched,
                              False, NO_MASK, NO_KEYS, top)  # fmt: skip
        from_blocks = bm25_exhaustive_packed(packed, starts, ends, blocks.offsets[:-1], blocks.last_doc, weights,
                                             norm_index, table, n_docs, accumulator, touched, False, NO_MASK,
                                             NO_KEYS, top)  # fmt: skip
        for found in (raw, from_blocks):
            assert found[0].tolist() == want[0].tolist() and found[1].tolist() == want[1].tolist()
        assert not accumulator.any()


@given(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.25]), min_size=1, max_size=200), st.integers(1, 250))
def test_top_k_orders_by_score_then_id(values, k):
    scores = np.array(values, dtype=np.float32)
    candidates = np.random.default_rng(len(values)).permutation(len(values)).astype(np.int64)
    docs, best = top_k(candidates, scores, k)
    expected = sorted(range(len(values)), key=lambda d: (-values[d], d))[:k]
    assert docs.tolist() == expected
    assert best.tolist() == [values[d] for d in expected]


@given(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.25]), min_size=1, max_size=300), st.integers(1, 320),
       st.sampled_from(["few", "many", "close", "signed"]), st.booleans())  # fmt: skip
def test_top_k_narrowed_by_histogram_equals_the_heap(values, k, spread, keyed):
    """Narrowing by a histogram keeps the best k, exact ties (many here) at the k-th score included, so the heap
    then returns the same passages in the same order as on all candidates."""
    scores = np.array(values, dtype=np.float32)
    if spread == "many":  # few ties: scores over many values
        scores = scores * np.float32(1000) + np.arange(len(values), dtype=np.float32)
    elif spread == "close":  # distinct scores that share a histogram bucket
        scores = np.float32(1000) + np.arange(len(values), dtype=np.float32) * np.float32(1e-4)
    elif spread == "signed":  # zero and negative scores too (the query syntax's boosts), all in the lowest bucket
        scores = scores - np.float32(2)
    candidates = np.random.default_rng(len(values)).permutation(len(values)).astype(np.int64)
    keys = random_keys(len(values)) if keyed else NO_KEYS
    narrowed = narrowed_by_histogram(candidates, scores, k)
    assert len(narrowed) >= min(k, len(values)) and set(narrowed.tolist()) <= set(candidates.tolist())
    by_heap = top_k_by_heap(candidates, scores, k, keys)
    after_narrowing = top_k_by_heap(narrowed, scores, k, keys)
    assert after_narrowing[0].tolist() == by_heap[0].tolist()
    assert after_narrowing[1].tolist() == by_heap[1].tolist()
    expected = sorted(candidates.tolist(), key=lambda d: (-scores[d], keys[d] if keyed else d))[:k]
    assert by_heap[0].tolist() == expected
    assert top_k(candidates, scores, k, keys)[0].tolist() == expected


@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.25]), min_size=1, max_size=300), st.integers(1, 320),
       st.booleans())  # fmt: skip
def test_scanning_every_passage_for_the_top_k_equals_keeping_the_touched_ones(values, k, keyed):
    """The exhaustive kernels' two ways to their top k (a list of touched passages, or a scan of all of them once
    a query touches many) give the same passages and scores, ties by key, and leave the accumulator zeroed."""
    scores = np.array(values, dtype=np.float32)
    touched = np.flatnonzero(scores > 0)
    touched = np.random.default_rng(len(values)).permutation(touched).astype(np.int64)
    keys = random_keys(len(values)) if keyed else NO_KEYS
    found = {}
    for scanned in (True, False):
        accumulator = scores.copy()
        found[scanned] = top_k_and_reset(accumulator, touched, len(touched), scanned, k, keys)
        assert not accumulator.any()
    assert found[True][0].tolist() == found[False][0].tolist()
    assert found[True][1].tolist() == found[False][1].tolist()
    order = sorted(touched.tolist(), key=lambda d: (-values[d], keys[d] if keyed else d))[:k]
    assert found[True][0].tolist() == order


def brute_force_bm25(documents: list[dict], query: str, k1=0.9, b=0.4, k=10):
    """BM25 as Lucene 9 computes it, straight from the raw documents: no index involved."""
    analyzer = Analyzer()
    bags = [Counter(analyzer.analyze(f"{d['title']} {d['text']}" if d["title"] else d["text"])) for d in documents]
    lengths = np.array([sum(bag.values()) for bag in bags])
    n = int((lengths > 0).sum())
    avgdl = np.float32(lengths.sum() / n)
    decoded = LUCENE_LENGTH_TABLE[lucene_norm_bytes(lengths)].astype(np.float32)
    with np.errstate(divide="ignore"):  # k1 = 0: infinite inverse norm, the score is the idf
        norm_inverse = np.float32(1) / (
            np.float32(k1) * ((np.float32(1) - np.float32(b)) + np.float32(b) * decoded / avgdl)
        )
    scores = np.zeros(len(documents), dtype=np.float32)
    for term, boost in Counter(analyzer.analyze(query)).items():
        df = sum(term in bag for bag in bags)
        if not df:
            continue
        weight = np.float32(np.log(1 + (n - df + 0.5) / (df + 0.5))) * np.float32(boost)
        for i, bag in enumerate(bags):
            if bag[term]:
                scores[i] += weight - weight / (np.float32(1) + np.float32(bag[term]) * norm_inverse[i])
    # exact ties by document id (UTF-8 bytes): Sift's convention, independent of how passages are numbered
    ranked = sorted((i for i in range(len(documents)) if scores[i] > 0),
                    key=lambda i: (-scores[i], documents[i]["_id"].encode("utf-8")))[:k]  # fmt: skip
    return [documents[i]["_id"] for i in ranked], [float(scores[i]) for i in ranked]


QUERIES = ["search engine", "quick brown fox fox", "the dog", "money bank river", "runs running ran", "zebra"]


@pytest.mark.slow
@pytest.mark.parametrize("postings", ["raw", "packed"])
@pytest.mark.parametrize("memory_mb", [512, 1])
@pytest.mark.parametrize("merge", [True, False])
def test_index_scores_equal_brute_force(tmp_path, memory_mb, merge, postings):
    documents = random_documents(6000 if memory_mb == 1 else 400, seed=memory_mb, max_words=60)
    corpus = write_jsonl(tmp_path / "c.jsonl", documents)
    options = BuildOptions(memory_mb=memory_mb, merge=merge, postings=postings)
    report = build_index(CorpusReader(open_source(corpus)), tmp_path / "idx", options)
    index = open_index(tmp_path / "idx")
    if memory_mb == 1:
        assert report.segments_flushed > 1
        assert len(index.segments) == (1 if merge else report.segments_flushed)
    for query in QUERIES:
        for k in (1, 10, 100):
            want_ids, want_scores = brute_force_bm25(documents, query, k=k)
            hits = index.search(query, k)
            assert [h.id for h in hits] == want_ids
            np.testing.assert_allclose([h.score for h in hits], want_scores, rtol=0, atol=1e-5)


def test_query_time_parameters_change_scores_as_formula_says(tmp_path):
    documents = random_documents(200, seed=3)
    build_index(CorpusReader(open_source(write_jsonl(tmp_path / "c.jsonl", documents))), tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    for k1, b in [(1.2, 0.75), (0.0, 0.0), (2.0, 1.0)]:
        want_ids, want_scores = brute_force_bm25(documents, "quick fox river", k1=k1, b=b, k=20)
        hits = index.search("quick fox river", 20, BM25Params(k1=k1, b=b))
        assert [h.id for h in hits] == want_ids
        np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("postings", ["raw", "packed"])
def test_every_algorithm_returns_the_same_hits(tmp_path, postings):
    documents = random_documents(30000, seed=6, max_words=80)
    corpus = write_jsonl(tmp_path / "c.jsonl", documents)
    build_index(CorpusReader(open_source(corpus)), tmp_path / "idx", BuildOptions(postings=postings))
    index = open_index(tmp_path / "idx")
    assert index.segments[0].packed == (postings == "packed")
    queries = [*QUERIES, "search index query passage document ranking", "cat dog fox quality prune"]
    for k in (1, 10, 1000):
        for query in queries:
            exhaustive = index.search(query, k, algorithm="exhaustive")
            assert index.search(query, k, algorithm="maxscore") == exhaustive
            assert index.search(query, k, algorithm="auto") == exhaustive
    with pytest.raises(ValueError, match="unknown algorithm"):
        index.search("cat", algorithm="wand")


def test_batch_search_equals_single_queries(tmp_path):
    documents = random_documents(500, seed=4)
    build_index(CorpusReader(open_source(write_jsonl(tmp_path / "c.jsonl", documents))), tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    queries = QUERIES * 5
    single = [index.search(q, 50) for q in queries]
    assert index.batch_search(queries, 50, threads=4) == single
    assert index.batch_search(queries, 50, threads=1) == single


def test_auto_prunes_long_lists_of_few_terms_and_scores_long_queries_exhaustively():
    assert choose_algorithm("auto", 10**6, 10, 3) == "maxscore"
    assert choose_algorithm("auto", 10**4, 10, 3) == "exhaustive"
    assert choose_algorithm("auto", 10**6, 10, 40) == "exhaustive"
    assert choose_algorithm("maxscore", 10**6, 10, 40) == "maxscore"


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="b must be between 0 and 1"):
        BM25Params(b=1.5)
    with pytest.raises(ValueError, match="k1"):
        BM25Params(k1=-1)


def random_mask(passages: int, masked_share: float | None) -> np.ndarray:
    """A kernel mask hiding about masked_share of the passages (deletions, filters); None: the empty mask."""
    if masked_share is None:
        return NO_MASK
    return (np.random.default_rng(passages).random(passages) >= masked_share).astype(np.uint8)


def random_keys(passages: int) -> np.ndarray:
    """Tie keys in an order unrelated to passage numbers (as document ids are)."""
    return np.random.default_rng(passages + 1).permutation(passages).astype(np.int64)


def run_maxscore(docs, tfs, offsets, lengths, query, weights, k, params, linear=False, mask=NO_MASK, keys=NO_KEYS):
    avgdl = float(max(lengths.mean(), 1))
    if params.length_norm == "lucene":
        norm_index, table = lucene_norm_bytes(lengths), norm_inverse_table(params, avgdl, 255)
        norm_lengths = LUCENE_LENGTH_TABLE
    else:
        longest = int(lengths.max())
        norm_index, table = lengths.astype(np.uint32), norm_inverse_table(params, avgdl, longest)
        norm_lengths = np.arange(longest + 1, dtype=np.int64)
    blocks = compute_blocks(docs, tfs, offsets, lengths.astype(np.uint32))
    starts, ends = offsets[query], offsets[query + 1]
    pruned = bm25_maxscore(
        raw_postings(docs, tfs), starts, ends, weights, norm_index, table, norm_lengths, blocks.offsets[query],
        blocks.max_tf, blocks.min_length, blocks.last_doc, k, linear, mask, keys,
    )  # fmt: skip
    packed = bm25_maxscore(
        packed_postings(*encode(docs, tfs, offsets)), starts, ends, weights,
        norm_index, table, norm_lengths, blocks.offsets[query], blocks.max_tf, blocks.min_length, blocks.last_doc, k,
        linear, mask, keys,
    )  # fmt: skip
    assert packed[0].tolist() == pruned[0].tolist() and packed[1].tolist() == pruned[1].tolist()
    accumulator, touched = exhaustive_scratch(len(lengths))
    exhaustive = bm25_exhaustive(docs, tfs, starts, ends, weights, norm_index, table, k, accumulator, touched, linear,
                                 mask, keys)  # fmt: skip
    return pruned, exhaustive


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    random_postings(), st.integers(1, 70), st.sampled_from(["lucene", "exact"]), st.floats(0.01, 3), st.floats(0, 1),
    st.booleans(), st.sampled_from([None, 0.0, 0.3, 0.9]), st.booleans(),
)  # fmt: skip
def test_maxscore_returns_exactly_the_exhaustive_top_k(postings, k, length_norm, k1, b, linear, masked_share, keyed):
    check_maxscore(postings, k, length_norm, k1, b, linear, masked_share, keyed)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(
    random_postings(max_docs=3 * MAXSCORE_WINDOW), st.integers(1, 70), st.sampled_from(["lucene", "exact"]),
    st.floats(0.01, 3), st.floats(0, 1), st.booleans(), st.sampled_from([None, 0.3]), st.booleans(),
)  # fmt: skip
def test_maxscore_across_windows_returns_exactly_the_exhaustive_top_k(postings, k, length_norm, k1, b, linear,
                                                                      masked_share, keyed):  # fmt: skip
    """Segments of up to three of MaxScore's windows over its essential lists."""
    check_maxscore(postings, k, length_norm, k1, b, linear, masked_share, keyed)


def check_maxscore(postings, k, length_norm, k1, b, linear, masked_share, keyed):
    docs, tfs, offsets, lengths, query, weights = postings
    (got_docs, got_scores), (want_docs, want_scores) = run_maxscore(
        docs, tfs, offsets, lengths, query, weights, k, BM25Params(k1=k1, b=b, length_norm=length_norm), linear,
        random_mask(len(lengths), masked_share), random_keys(len(lengths)) if keyed else NO_KEYS,
    )
    assert got_docs.tolist() == want_docs.tolist()
    assert got_scores.tolist() == want_scores.tolist()  # bit-identical: summed in the same order


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_maxscore_on_long_zipfian_lists(seed, linear):
    """Many blocks per term, skewed frequencies: where pruning actually skips."""
    rng = np.random.default_rng(seed)
    n_docs, n_terms = 20000, 6
    docs, tfs, offsets = [], [], [0]
    for t in range(n_terms):
        df = int(n_docs * [0.6, 0.3, 0.1, 0.02, 0.005, 0.001][t])
        docs.append(np.sort(rng.choice(n_docs, size=df, replace=False)))
        tfs.append(rng.zipf(2.0, size=df).clip(1, 60))
        offsets.append(offsets[-1] + df)
    lengths = rng.integers(5, 400, size=n_docs)
    weights = np.array([0.2, 0.6, 1.5, 3.0, 4.5, 6.0], dtype=np.float32)
    docs_all = np.concatenate(docs).astype(np.uint32)
    tfs_all = np.concatenate(tfs).astype(np.uint32)
    for k in (1, 10, 100, 1000):
        (got_docs, got_scores), (want_docs, want_scores) = run_maxscore(
            docs_all, tfs_all, np.array(offsets), lengths, np.arange(n_terms), weights, k, BM25Params(), linear
        )
        assert got_docs.tolist() == want_docs.tolist()
        assert got_scores.tolist() == want_scores.tolist()


def regional_postings(seed: int):
    """Six terms whose tf, and so whose block maxima, are high in one region and low elsewhere: one window's
    essential terms differ from the next's, and a term probed in one window is scored in full in a later one."""
    rng = np.random.default_rng(seed)
    n_docs = 3 * MAXSCORE_WINDOW + int(rng.integers(0, MAXSCORE_WINDOW))
    docs, tfs, offsets = [], [], [0]
    for _ in range(6):
        chosen = np.sort(rng.choice(n_docs, size=int(rng.choice([60, 140, 300, 2000, 6000])), replace=False))
        peak = rng.uniform(0, n_docs)
        docs.append(chosen)
        tfs.append(rng.integers(1, np.where(np.abs(chosen - peak) < MAXSCORE_WINDOW, 20, 2) + 1))
        offsets.append(offsets[-1] + len(chosen))
    lengths = rng.integers(5, 300, size=n_docs)
    weights = rng.uniform(0.2, 4, size=6).astype(np.float32)
    docs_all, tfs_all = np.concatenate(docs).astype(np.uint32), np.concatenate(tfs).astype(np.uint32)
    return docs_all, tfs_all, np.array(offsets), lengths, np.arange(6), weights


@pytest.mark.parametrize("seed", [114, 144, *range(8)])  # 114 and 144 once caught a probe's short last block
def test_maxscore_when_windows_change_which_terms_are_essential(seed):
    docs, tfs, offsets, lengths, query, weights = regional_postings(seed)
    for k in (1, 10, 100):
        (got_docs, got_scores), (want_docs, want_scores) = run_maxscore(
            docs, tfs, offsets, lengths, query, weights, k, BM25Params()
        )
        assert got_docs.tolist() == want_docs.tolist()
        assert got_scores.tolist() == want_scores.tolist()
