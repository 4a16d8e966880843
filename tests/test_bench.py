"""The benchmark harness's CLI contract, on a small synthetic corpus with Sift alone (peers are optional)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_first_stage_json_contract(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIFT_BENCH_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "sift", "bench", "first-stage", "--corpus", "synthetic:3000",
               "--peers", "sift", "--k", "10,100", "--threads", "2", "--queries", "50", "--json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["corpus"] == "synthetic:3000" and report["queries"] > 50  # sampled plus the "hard" set
    rows = {(r["system"], r["k"], r["threads"]) for r in report["results"]}
    assert rows == {("sift", 10, 1), ("sift", 10, 2), ("sift", 100, 1), ("sift", 100, 2)}
    single = next(r for r in report["results"] if r["threads"] == 1)
    assert {"qps", "p50_ms", "p95_ms", "p99_ms", "agreement"} <= set(single)
    assert single["p50_ms"] <= single["p95_ms"] <= single["p99_ms"] and single["agreement"] is None  # no peer
    assert report["pruning_verified_queries"] == 2 * report["queries"]
    assert (tmp_path / "results" / "first-stage-synthetic-3000.md").exists()


@pytest.mark.slow
def test_first_stage_takes_any_corpus_file_and_reports_what_auto_chose(tmp_path):
    """--corpus FILE (JSONL as sift index reads it): queries sampled from it, the hard ones reported apart, and how
    many queries each of Sift's kernels served."""
    records = [{"_id": f"d{i}", "text": " ".join(f"w{(i * 7 + j) % 50}" for j in range(8 + i % 5))}
               for i in range(400)]  # fmt: skip
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIFT_BENCH_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "sift", "bench", "first-stage", "--corpus", str(tmp_path / "mine.jsonl"),
               "--peers", "sift", "--k", "10", "--threads", "1", "--queries", "40", "--json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["passages"] == 400 and report["hard_queries"] == 8
    assert sum(report["sift_algorithms_served"]["10"].values()) == report["queries"]  # one segment
    single = next(r for r in report["results"] if r["threads"] == 1)
    assert single["hard"]["p50_ms"] <= single["hard"]["p95_ms"]
    assert (tmp_path / "results" / "first-stage-mine.md").exists()


def test_unknown_peer_is_a_one_line_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIFT_BENCH_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "sift", "bench", "first-stage", "--peers", "sift,elastic"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    expected = "sift: error: unknown peer 'elastic'; choose from sift, pisa-bmw, pisa-bmm, pyserini, bm25s, tantivy"
    assert result.returncode == 1 and result.stderr.strip() == expected


def test_pruning_json_contract(tmp_path):
    from tests.conftest import random_documents, write_jsonl

    data = tmp_path / "mini"
    data.mkdir()
    write_jsonl(data / "corpus.jsonl", random_documents(200, seed=7))
    (data / "queries.test.tsv").write_text("".join(f"q{i}\tquick brown fox river {i}\n" for i in range(30)))
    (data / "qrels.test.txt").write_text("".join(f"q{i} 0 d{3 * i} 1\n" for i in range(30)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIFT_BENCH_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "sift", "bench", "pruning", "--collection", str(data), "--estimators",
               "random,length", "--rates", "0.2,0.5", "--pipelines", "bm25", "--alpha", "0.1", "--json"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["collection"] == "mini"
    rows = {(r["estimator"], r["pipeline"], r["rate"]): r for r in report["results"]}
    assert set(rows) == {(e, "bm25", rate) for e in ("random", "length") for rate in (0.0, 0.2, 0.5)}
    for row in rows.values():
        assert {"nDCG@10", "tost_equivalent", "index_bytes", "index_seconds"} <= set(row)
        assert row["passages"] == 200 - round(200 * row["rate"])
    assert rows[("random", "bm25", 0.0)]["tost_equivalent"] is True
    assert rows[("random", "bm25", 0.5)]["index_bytes"] < rows[("random", "bm25", 0.0)]["index_bytes"]
    assert (tmp_path / "results" / "pruning-mini.md").exists()
    assert json.loads((tmp_path / "results" / "pruning-mini.json").read_text())["alpha"] == 0.1


def test_skipping_bounds_cover_everything_when_k_exceeds_the_matches_and_shrink_for_top_1(tmp_path):
    """bench.kernels --bounds: with k above every query's matches the threshold is 0, so every list is essential
    and every posting within its block-max bound; for the top 1, block-max shares never exceed essential ones, and
    Zipfian lists leave something to skip."""
    from bench.kernels import skipping_bounds
    from engine.index import open_index
    from indexers.corpus import Document
    from indexers.writer import build_index
    from tools.synthetic import synthetic_documents

    documents = list(synthetic_documents(3000, seed=1, vocabulary_size=2000))
    build_index((Document(d["_id"], d["text"]) for d in documents), tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    searcher = index.bm25
    frequent = Counter(word for d in documents for word in d["text"].split()).most_common(1)[0][0]
    plans = [searcher.ranges(searcher.plan(" ".join([*d["text"].split()[:3], frequent])), 0) for d in documents[:40]]
    norms = searcher.norms(searcher.default_params)
    hard = np.arange(len(plans)) % 2 == 0
    rows = {(r["k"], r["queries"]): r for r in skipping_bounds(index.segments[0], norms, plans, hard, [1, 10**6])}
    for subset in ("all", "hard"):
        assert rows[10**6, subset]["essential_share"] == 1.0 and rows[10**6, subset]["block_max_share"] == 1.0
        top1 = rows[1, subset]
        assert 0 <= top1["block_max_share"] <= top1["essential_share"] <= 1
    assert rows[1, "all"]["block_max_share"] < 1


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_impacts_rounded_up_then_rescored_give_the_exact_top_k(tmp_path, bits):
    """bench.impacts: an impact kernel's candidates rescored exactly equal the exact kernel, ids and scores, also
    at 4 bits, where many passages share an impact score and the kernel must run again with more candidates."""
    from bench.impacts import Context
    from engine.index import open_index
    from indexers.corpus import Document
    from indexers.writer import build_index
    from tools.synthetic import synthetic_documents

    documents = list(synthetic_documents(3000, seed=2, vocabulary_size=500))
    build_index((Document(d["_id"], d["text"]) for d in documents), tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    searcher = index.bm25
    context = Context(index.segments[0], searcher.norms(searcher.default_params).for_kernels[0], (bits,))
    plans = [searcher.ranges(searcher.plan(" ".join(d["text"].split()[:4])), 0) for d in documents[:60]]
    for k in (1, 10, 100):
        for plan in plans:
            want_docs, want_scores = context.exact(plan, k, "exhaustive")
            for algorithm in ("exhaustive", "maxscore"):
                docs, scores = context.with_impacts(plan, k, algorithm, bits)
                assert docs.tolist() == want_docs.tolist() and scores.tolist() == want_scores.tolist()
    if bits == 4:
        assert context.reruns[4] > 0


def test_block_max_wand_instrument_returns_the_exhaustive_top_k(tmp_path):
    """bench.kernels' BMW: the same passages and scores as the exhaustive kernel, order and ties included, with and
    without a mask of deleted passages, on Zipfian lists of many blocks (frequent terms) and short ones."""
    from bench.kernels import bm25_bmw
    from engine.index import open_index
    from engine.sparse import NO_KEYS, NO_MASK, bm25_exhaustive_packed, exhaustive_scratch
    from indexers.corpus import Document
    from indexers.writer import build_index
    from tools.synthetic import synthetic_documents

    documents = list(synthetic_documents(4000, seed=3, vocabulary_size=800))
    build_index((Document(d["_id"], d["text"]) for d in documents), tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    searcher = index.bm25
    segment = index.segments[0]
    blocks = segment.blocks
    norms = searcher.norms(searcher.default_params)
    norm_index, inverse = norms.per_segment[0], norms.inverse
    accumulator, touched = exhaustive_scratch(segment.passages)
    frequent = [w for w, _ in Counter(w for d in documents for w in d["text"].split()).most_common(3)]
    rng = np.random.default_rng(3)
    mask = (rng.random(segment.passages) > 0.2).astype(np.uint8)
    queries = [" ".join(d["text"].split()[:4]) for d in documents[:40]]
    queries += [" ".join([*frequent[: 1 + i % 3], *d["text"].split()[:2]]) for i, d in enumerate(documents[40:80])]
    for text in queries:
        starts, ends, weights, first = searcher.ranges(searcher.plan(text), 0)
        for k in (1, 10, 100):
            for chosen in (NO_MASK, mask):
                want = bm25_exhaustive_packed(segment.postings, starts, ends, first, blocks.last_doc, weights,
                                              norm_index, inverse, k, accumulator, touched, False, chosen, NO_KEYS,
                                              -1)  # fmt: skip
                got = bm25_bmw(segment.postings, starts, ends, weights, norm_index, inverse, norms.lengths, first,
                               blocks.max_tf, blocks.min_length, blocks.last_doc, k, False, chosen,
                               NO_KEYS)  # fmt: skip
                assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist(), (text, k)
