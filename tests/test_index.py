"""Index lifecycle: round trips, fetching, overwriting, locking, passages, and crash safety under SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import random_documents, write_jsonl
from engine.format import IndexFormatError, IndexLockedError, WriteLock
from engine.index import open_index
from indexers.corpus import CorpusReader, open_source
from indexers.inverted import BuildOptions
from indexers.writer import IndexExistsError, build_index

QUERIES = ["search engine", "quick brown fox", "money bank river", "runs", "posting block merge"]
ROOT = Path(__file__).resolve().parents[1]


def build(corpus: Path, index_dir: Path, **options):
    return build_index(CorpusReader(open_source(corpus)), index_dir, BuildOptions(**options))


def results(index_dir: Path, k: int = 20):
    index = open_index(index_dir)
    return [[(h.id, h.score) for h in index.search(q, k)] for q in QUERIES]


def test_reopen_gives_identical_results_and_fetch_returns_text(tmp_path, corpus_file):
    build(corpus_file, tmp_path / "idx")
    first = results(tmp_path / "idx")
    assert first == results(tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    originals = [json.loads(line) for line in corpus_file.read_text().splitlines()]
    for passage in (0, 31, 32, 33, 299):  # across compressed-block boundaries
        record = index.fetch(passage)
        assert (record["id"], record["title"], record["text"]) == (
            originals[passage]["_id"],
            originals[passage]["title"],
            originals[passage]["text"],
        )
    with pytest.raises(IndexError):
        index.fetch(300)
    assert index.fetch(originals[31]["_id"]) == index.fetch(31)  # by document id as well


def test_fetch_by_document_id_in_a_split_index_across_segments(tmp_path):
    documents = random_documents(1500, seed=8, min_words=5, max_words=120)
    corpus = write_jsonl(tmp_path / "c.jsonl", documents)
    build(corpus, tmp_path / "idx", passage_window=20, passage_stride=20, memory_mb=1, merge=False)
    index = open_index(tmp_path / "idx")
    assert len(index.segments) > 1
    for passage in range(0, index.passages, 97):
        record = index.fetch(passage)
        assert index.fetch(f"{record['id']}#{record['part']}") == record
        first = index.fetch(record["id"])
        assert (first["id"], first["part"]) == (record["id"], 0)
        assert index.document_passages(record["id"]).tolist().count(passage) == 1
    with pytest.raises(KeyError, match="no document or passage 'nope'"):
        index.fetch("nope")


def test_a_small_term_cache_refills_instead_of_failing(tmp_path, corpus_file):
    from engine.sparse import BM25Searcher

    build(corpus_file, tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    small = BM25Searcher(index, term_cache_size=3)
    for query in [*QUERIES, "search engine index query passage", *QUERIES]:
        assert small.search(query, 10) == index.search(query, 10)
    assert len(small._term_cache) <= 3


def test_existing_index_needs_overwrite(tmp_path, corpus_file):
    build(corpus_file, tmp_path / "idx")
    before = results(tmp_path / "idx")
    with pytest.raises(IndexExistsError, match="--overwrite"):
        build(corpus_file, tmp_path / "idx")
    assert results(tmp_path / "idx") == before
    other = write_jsonl(tmp_path / "other.jsonl", random_documents(120, seed=9))
    report = build(other, tmp_path / "idx", overwrite=True)
    assert report.generation == 2
    index = open_index(tmp_path / "idx")
    assert index.passages == 120
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["manifest.json", "seg_000002_0000", "write.lock"]


def test_refuses_a_directory_that_is_not_an_index(tmp_path, corpus_file):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(IndexExistsError, match="not empty"):
        build(corpus_file, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_one_writer_at_a_time(tmp_path, corpus_file):
    build(corpus_file, tmp_path / "idx")
    with WriteLock(tmp_path / "idx"), pytest.raises(IndexLockedError, match="another process"):
        build(corpus_file, tmp_path / "idx", overwrite=True)


def test_failed_build_leaves_nothing_behind(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "fine"}\n{"_id": "a", "text": "duplicate"}\n')
    with pytest.raises(Exception, match="duplicate id"):
        build(corpus, tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


def test_documents_rank_by_their_best_passage(tmp_path):
    documents = random_documents(150, seed=5, min_words=5, max_words=120)
    corpus = write_jsonl(tmp_path / "c.jsonl", documents)
    build(corpus, tmp_path / "idx", passage_window=20, passage_stride=10)
    index = open_index(tmp_path / "idx")
    assert index.passages > index.documents == 150
    for query in QUERIES:
        passages = index.search(query, index.passages)
        best: dict[str, float] = {}
        for hit in passages:
            assert hit.id.startswith(hit.doc_id + "#")
            best.setdefault(hit.doc_id, hit.score)
        expected = sorted(best.items(), key=lambda item: -item[1])[:10]
        documents_found = index.search(query, 10, documents=True)
        assert [(h.id, h.score) for h in documents_found] == expected


def sift_index(corpus: Path, index_dir: Path, *extra: str, failpoint: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if failpoint:
        env["SIFT_FAILPOINT"] = failpoint
    command = [sys.executable, "-m", "sift", "index", str(corpus), str(index_dir), "--quiet", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


FAILPOINTS = ["after-flush", "merge", "before-commit", "before-manifest-rename", "after-commit"]


@pytest.mark.slow
@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_sigkill_during_first_build_leaves_no_index_or_a_whole_one(tmp_path, failpoint):
    corpus = write_jsonl(tmp_path / "c.jsonl", random_documents(6000, seed=1, max_words=60))
    process = sift_index(corpus, tmp_path / "idx", "--memory-mb", "1", failpoint=failpoint)
    assert process.wait(120) == -signal.SIGKILL
    if failpoint == "after-commit":
        assert open_index(tmp_path / "idx").passages == 6000
    else:
        with pytest.raises(IndexFormatError, match="no committed Sift index"):
            open_index(tmp_path / "idx")
    # the next run cleans up the debris and needs no --overwrite where nothing was committed
    extra = ["--overwrite"] if failpoint == "after-commit" else []
    assert sift_index(corpus, tmp_path / "idx", "--memory-mb", "1", *extra).wait(120) == 0
    build(corpus, tmp_path / "reference")
    assert results(tmp_path / "idx") == results(tmp_path / "reference")
    assert not [p for p in (tmp_path / "idx").iterdir() if p.name.startswith(".staging")]


@pytest.mark.slow
def test_sigkill_while_overwriting_keeps_the_previous_generation(tmp_path):
    old = write_jsonl(tmp_path / "old.jsonl", random_documents(500, seed=2))
    new = write_jsonl(tmp_path / "new.jsonl", random_documents(6000, seed=3, max_words=60))
    build(old, tmp_path / "idx")
    build(new, tmp_path / "new-reference")
    old_results, new_results = results(tmp_path / "idx"), results(tmp_path / "new-reference")
    for failpoint in FAILPOINTS:
        process = sift_index(new, tmp_path / "idx", "--memory-mb", "1", "--overwrite", failpoint=failpoint)
        assert process.wait(120) == -signal.SIGKILL
        expected = new_results if failpoint == "after-commit" else old_results
        assert results(tmp_path / "idx") == expected, failpoint
        if failpoint == "after-commit":
            build(old, tmp_path / "idx", overwrite=True)
    # and at arbitrary moments: always one whole generation or the other
    seen = set()
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.5):
        process = sift_index(new, tmp_path / "idx", "--memory-mb", "1", "--overwrite")
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(120)
        found = results(tmp_path / "idx")
        assert found in (old_results, new_results)
        seen.add(found == new_results)
        if found == new_results:
            build(old, tmp_path / "idx", overwrite=True)
    assert False in seen  # at least one kill landed before the commit


def test_results_are_a_sequence_of_hits(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", random_documents(200, seed=3))
    index = open_index(build(corpus, tmp_path / "idx").index_dir)
    results = index.search("search engine river", 7)
    hits = list(results)
    assert len(results) == len(hits) == 7 and results == hits and results[:3] == hits[:3]
    assert results[-1] == hits[-1] and [h.rank for h in hits] == list(range(1, 8))
    assert results.pairs() == [(h.id, h.score) for h in hits]
    assert all(isinstance(h.score, float) and isinstance(h.passage, int) for h in hits)
    with pytest.raises(IndexError):
        results[7]


def test_a_writer_closed_without_commit_changes_nothing(tmp_path, corpus_file):
    from indexers.writer import IndexWriter

    with IndexWriter(tmp_path / "new", create=True) as writer:
        writer.build_inverted(CorpusReader(open_source(corpus_file)))
    assert not (tmp_path / "new").exists()  # a first build that never committed leaves nothing
    build(corpus_file, tmp_path / "idx")
    before = results(tmp_path / "idx")
    other = write_jsonl(tmp_path / "other.jsonl", random_documents(50, seed=9))
    writer = IndexWriter(tmp_path / "idx", create=True, overwrite=True)
    with pytest.raises(RuntimeError, match="stop"), writer:
        writer.build_inverted(CorpusReader(open_source(other)))
        raise RuntimeError("stop")
    assert results(tmp_path / "idx") == before and open_index(tmp_path / "idx").manifest["generation"] == 1
    assert sorted(p.name for p in (tmp_path / "idx").iterdir() if p.name.startswith(".staging")) == []
