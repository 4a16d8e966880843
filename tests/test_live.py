"""The live index: adds, upserts, deletes, merges and compaction, against a fresh build of the live documents.

After any sequence of changes, BM25 over the index must equal a fresh `build_index` of the documents it holds:
the same statistics, the same scores to the bit, the same ids (up to exact score ties at the cut-off)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA, WORDS, register_lookup_model, requires_data, write_jsonl
from engine.format import COMPOUND, IndexLockedError, live_folders, read_manifest
from engine.index import open_index
from indexers.corpus import Document
from indexers.inverted import BuildOptions
from indexers.writer import IndexWriter, MergePolicy, build_dense, build_impact, build_index

QUERIES = ["fox river", "search engine index query", "money water stream", "cat", "runs running", "zebra"]


def document(doc_id: str, words: list[str], title: str = "") -> Document:
    return Document(doc_id, " ".join(words), title)


def assert_same_ranking(live, fresh) -> None:
    """Equal scores rank by rank; the ids above the last (possibly tied) score are the same set."""
    assert live.scores.tolist() == fresh.scores.tolist()
    if len(live):
        cut = live.scores[-1]
        assert {i for i, s in live.pairs() if s > cut} == {i for i, s in fresh.pairs() if s > cut}


def assert_equals_fresh_build(index_dir, documents: dict[str, Document], tmp_path, options=None) -> None:
    live = open_index(index_dir)
    fresh_dir = tmp_path / f"fresh-{os.urandom(4).hex()}"
    if not documents:
        assert live.documents == 0 and live.search("fox", 10) == []
        return
    build_index(list(documents.values()), fresh_dir, options)
    fresh = open_index(fresh_dir)
    assert live.documents == fresh.documents == len(documents)
    assert live.live_passages == fresh.live_passages
    assert live.scored_passages == fresh.scored_passages
    assert live.avgdl == fresh.avgdl
    for query in QUERIES:
        for k in (1, 3, 10, 1000):
            for algorithm in ("exhaustive", "maxscore"):
                assert_same_ranking(live.search(query, k, algorithm=algorithm), fresh.search(query, k))
    for doc_id, doc in list(documents.items())[:5]:
        assert doc.text.startswith(live.fetch(doc_id)["text"])  # the document's first passage


words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=25)
titles = st.sampled_from(["", "A title"])
doc_ids = st.sampled_from([f"d{i}" for i in range(40)])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.tuples(doc_ids, words, titles), min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.lists(doc_ids, min_size=1, max_size=5, unique=True)),
        st.tuples(st.just("commit"), st.none()),
        st.tuples(st.just("compact"), st.integers(1, 3)),
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.slow
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial=st.lists(st.tuples(words, st.sampled_from(["", "A title"])), min_size=1, max_size=20),
       steps=operations, packed=st.booleans(), window=st.sampled_from([0, 6]))  # fmt: skip
def test_any_sequence_of_changes_equals_a_fresh_build(tmp_path_factory, initial, steps, packed, window):
    tmp_path = tmp_path_factory.mktemp("live")
    options = BuildOptions(postings="packed" if packed else "raw", passage_window=window)
    documents = {f"d{i}": document(f"d{i}", w, title) for i, (w, title) in enumerate(initial)}
    build_index(list(documents.values()), tmp_path / "live", options)
    apply_changes(tmp_path / "live", steps, documents, document,
                  lambda: assert_equals_fresh_build(tmp_path / "live", documents, tmp_path, options))  # fmt: skip


def apply_changes(index_dir, steps, documents: dict, make, check) -> None:
    """Runs generated steps through one writer (with merges frequent on small corpora), keeping `documents` as
    the live documents they leave; check() after every commit, and after the last."""
    with IndexWriter(index_dir, merge_policy=MergePolicy(segments_per_tier=2, floor_passages=4)) as writer:
        for operation, argument in steps:
            if operation == "add":
                made = [make(doc_id, w, title) for doc_id, w, title in argument]
                for doc in made:
                    documents.pop(doc.id, None)
                    documents[doc.id] = doc
                writer.add(made)
            elif operation == "delete":
                gone = [d for d in argument if d not in documents]
                for doc_id in argument:
                    documents.pop(doc_id, None)
                assert writer.delete(argument) == gone
            elif operation == "compact":
                writer.compact(argument)
            if operation in ("commit", "compact"):
                writer.commit()
                check()
        writer.commit()
    check()


def test_upsert_replaces_and_delete_reports_missing_ids(tmp_path):
    build_index([document("a", ["fox", "river"]), document("b", ["cat"])], tmp_path / "idx")
    with IndexWriter(tmp_path / "idx") as writer:
        assert writer.add([document("a", ["dog"]), document("c", ["dog", "cat"])]) == (1, 1)
        assert writer.delete(["b", "nope"]) == ["nope"]
        generation = writer.commit()
    index = open_index(tmp_path / "idx")
    assert generation == 2 and index.documents == 2
    assert index.search("fox", 10) == [] and {h.id for h in index.search("dog", 10)} == {"a", "c"}
    assert index.fetch("a")["text"] == "dog"
    with pytest.raises(KeyError):
        index.fetch("b")


def test_a_document_without_text_is_refused_as_the_corpus_reader_refuses_it(tmp_path):
    build_index([document("a", ["fox"])], tmp_path / "idx")
    with IndexWriter(tmp_path / "idx") as writer, pytest.raises(ValueError, match="'b' has no title or text"):
        writer.add([document("b", [])])


def test_rollback_and_an_exception_leave_the_last_commit(tmp_path):
    build_index([document("a", ["fox"])], tmp_path / "idx")
    with IndexWriter(tmp_path / "idx") as writer:
        writer.add([document("b", ["fox"])])
        writer.rollback()
        writer.delete(["a"])
        writer.rollback()
        assert not writer.pending
    with pytest.raises(RuntimeError), IndexWriter(tmp_path / "idx", commit_on_exit=True) as writer:
        writer.delete(["a"])
        raise RuntimeError("stop")
    assert read_manifest(tmp_path / "idx")["generation"] == 1
    with IndexWriter(tmp_path / "idx", commit_on_exit=True) as writer:
        writer.delete(["a"])
    assert read_manifest(tmp_path / "idx")["generation"] == 2 and open_index(tmp_path / "idx").documents == 0


def test_a_second_writer_fails_at_once_or_waits(tmp_path):
    build_index([document("a", ["fox"])], tmp_path / "idx")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from engine.format import WriteLock; from pathlib import Path\n"
         "with WriteLock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(1.0)", str(tmp_path / "idx")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(IndexLockedError, match="another process"):
        IndexWriter(tmp_path / "idx").__enter__()
    with IndexWriter(tmp_path / "idx", timeout=30) as writer:
        writer.add([document("b", ["fox"])])
        writer.commit()
    holder.wait()
    assert open_index(tmp_path / "idx").documents == 2


def test_merge_policy_merges_full_tiers_and_expunges_deletions():
    policy = MergePolicy(segments_per_tier=3, floor_passages=10)
    assert policy.choose([(5, 5), (6, 6), (100, 100)]) == []
    assert policy.choose([(5, 5), (6, 6), (7, 7), (100, 100)]) == [[0, 1, 2]]
    assert policy.choose([(60, 100), (50, 50)]) == [[0]]  # 40% deleted
    assert policy.choose([(1, 1), (1, 1), (20, 20)]) == []  # small commits never drag a bigger segment in
    assert policy.choose([(12, 12), (1, 1), (29, 29), (15, 15)]) == [[0, 2, 3]]  # 10 <= size < 30: one tier
    assert MergePolicy.compact([(5, 5), (5, 5), (5, 5), (5, 5)], 2) == [[0, 1], [2, 3]]
    assert MergePolicy.compact([(5, 5), (4, 5)], 2) == [[1]]  # only the one with deletions is rewritten


FIELDS = {"group": "keyword", "n": "int"}
FILTERS = [None, "group = red", "n >= 20", "group IN [red, blue] AND n < 30", "NOT group = green OR n > 35"]


@pytest.fixture
def tiny_models(tmp_path, model_home):
    """A bi-encoder and a SPLADE model over WORDS (lookup tables, engine-run): dense and impact parts to follow."""
    pytest.importorskip("onnx")
    size = len(WORDS) + 1
    dense = np.random.default_rng(0).normal(size=(size, 8)).astype(np.float32)
    register_lookup_model(tmp_path / "dense-source", "tiny", "bi-encoder", dense, "last_hidden_state", WORDS)
    splade = (np.random.default_rng(3).normal(size=(size, size)) - 0.8).astype(np.float32)
    register_lookup_model(tmp_path / "splade-source", "tiny-splade", "splade", splade, "logits", WORDS)


def build_with_neural_parts(documents, index_dir, options) -> None:
    build_index(documents, index_dir, options)
    build_dense(index_dir, "tiny", faiss_kind="flat")
    build_impact(index_dir, "tiny-splade")


def assert_every_first_stage_equals_fresh_build(index_dir, documents, tmp_path, options) -> None:
    """BM25, dense and SPLADE, with and without filters, against a fresh build with its own dense and SPLADE parts."""
    from engine.neural import DenseSearcher, ImpactSearcher

    if not documents:
        return
    fresh_dir = tmp_path / f"fresh-{os.urandom(4).hex()}"
    build_with_neural_parts(list(documents.values()), fresh_dir, options)
    live, fresh = open_index(index_dir), open_index(fresh_dir)
    searchers = [(DenseSearcher(live, "tiny").search_many, DenseSearcher(fresh, "tiny").search_many),
                 (ImpactSearcher(live).search_many, ImpactSearcher(fresh).search_many)]  # fmt: skip
    for expression in FILTERS:
        for k in (1, 10, 1000):
            for query in QUERIES:
                assert_same_ranking(live.search(query, k, filter=expression), fresh.search(query, k, filter=expression))
            for on_live, on_fresh in searchers:
                for got, want in zip(on_live(QUERIES, k, filter=expression), on_fresh(QUERIES, k, filter=expression)):
                    assert_same_ranking(got, want)


def field_values(number: int) -> dict:
    return {"group": ["red", "blue", "green"][number % 3], "n": number}


@pytest.mark.slow
@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial=st.lists(words, min_size=1, max_size=12), steps=operations, window=st.sampled_from([0, 6]),
       numbers=st.lists(st.integers(0, 40), min_size=60, max_size=60))  # fmt: skip
def test_dense_splade_and_filters_follow_any_sequence_of_changes(tmp_path_factory, tiny_models, initial, steps,
                                                                 window, numbers):  # fmt: skip
    tmp_path = tmp_path_factory.mktemp("neural")
    options = BuildOptions(passage_window=window, fields=FIELDS)
    values = iter(numbers)

    def make(doc_id, w, title=""):
        return Document(doc_id, " ".join(w), title, fields=field_values(next(values, 7)))

    documents = {f"d{i}": make(f"d{i}", w) for i, w in enumerate(initial)}
    build_with_neural_parts(list(documents.values()), tmp_path / "live", options)
    apply_changes(tmp_path / "live", steps, documents, make,
                  lambda: assert_every_first_stage_equals_fresh_build(tmp_path / "live", documents, tmp_path, options))
    manifest = read_manifest(tmp_path / "live")
    names = [s["name"] for s in manifest["segments"]]
    assert [list(manifest[kind][model]["segments"]) for kind, model in (("dense", "tiny"), ("impact", "tiny-splade"))
            ] == [names, names]  # fmt: skip
    assert {p.name for p in (tmp_path / "live").iterdir() if p.is_dir()} == set(live_folders(manifest))


def test_added_documents_are_encoded_once_and_merges_encode_nothing(tmp_path, tiny_models, monkeypatch):
    from engine.encoders import BiEncoder

    encoded: list[str] = []
    original = BiEncoder.encode
    monkeypatch.setattr(BiEncoder, "encode", lambda self, texts, *a, **kw: encoded.extend(texts) or
                        original(self, texts, *a, **kw))  # fmt: skip
    build_with_neural_parts([document(f"a{i}", ["fox", "river"]) for i in range(5)], tmp_path / "idx", None)
    encoded.clear()
    with IndexWriter(tmp_path / "idx") as writer:
        writer.add([document("b", ["cat", "dog"]), document("a1", ["money"])])
        writer.commit()
        assert encoded == ["cat dog", "money"]
        encoded.clear()
        writer.delete(["a2"])
        writer.compact(1)
        writer.commit()
    assert encoded == [] and len(read_manifest(tmp_path / "idx")["segments"]) == 1


def test_cli_add_delete_compact_and_info(tmp_path):
    import json

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"fox river {i}"} for i in range(20)])
    more = write_jsonl(tmp_path / "m.jsonl", [{"_id": "d1", "text": "changed"}, {"_id": "x", "text": "fox new"}])
    run = [sys.executable, "-m", "sift"]
    subprocess.run([*run, "index", str(corpus), str(tmp_path / "idx")], check=True, capture_output=True)
    out = subprocess.run([*run, "add", str(tmp_path / "idx"), str(more), "--json"], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    assert json.loads(out) == {"added": 1, "replaced": 1, "generation": 2}
    ids = tmp_path / "ids.txt"
    ids.write_text("d2\nd3\n")
    out = subprocess.run([*run, "delete", str(tmp_path / "idx"), "d4", "nope", "--ids-file", str(ids), "--json"],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    assert json.loads(out) == {"deleted": 3, "missing": ["nope"], "generation": 3}
    info = json.loads(subprocess.run([*run, "info", str(tmp_path / "idx"), "--json"], check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    assert (info["documents"], info["deleted_documents"], info["segments"]) == (18, 4, 2)
    subprocess.run([*run, "compact", str(tmp_path / "idx")], check=True, capture_output=True)
    info = json.loads(subprocess.run([*run, "info", str(tmp_path / "idx"), "--json"], check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    assert (info["documents"], info["deleted_documents"], info["segments"]) == (18, 0, 1)
    assert np.isclose(info["avgdl"], open_index(tmp_path / "idx").avgdl)


def test_the_embedding_api_writes_and_refreshes_while_old_readers_keep_their_commit(tmp_path):
    import sift

    build_index([document("a", ["fox"]), document("b", ["fox", "river"])], tmp_path / "idx", BuildOptions(merge=True))
    old = sift.open_index(tmp_path / "idx")
    before = old.search("fox", 10)
    with old.writer() as writer:
        writer.add([document("c", ["fox", "fox"])])
        writer.delete(["a"])
    with old.writer() as writer:
        writer.compact()  # the first generation's files are deleted now
    assert old.search("fox", 10) == before and old.fetch("a")["text"] == "fox"
    new = old.refresh()
    assert new is not old and new.refresh() is new
    assert {h.id for h in new.search("fox", 10)} == {"b", "c"}
    build_index([document("z", ["fox"])], tmp_path / "idx", BuildOptions(overwrite=True))
    assert set(new.search("fox", 10).ids) == {"b", "c"}
    assert new.refresh().search("fox", 10).ids == ["z"]


def test_exact_ties_across_segments_rank_by_document_id_at_every_k(tmp_path):
    ids = [f"t{n}" for n in np.random.default_rng(3).permutation(30)]  # ties, added in no particular order
    build_index([document(ids[0], ["fox", "river"]), document("best", ["fox", "fox"])], tmp_path / "idx")
    with IndexWriter(tmp_path / "idx", merge_policy=MergePolicy(segments_per_tier=100)) as writer:
        for start in range(1, 30, 10):
            writer.add([document(doc_id, ["fox", "river"]) for doc_id in ids[start : start + 10]])
            writer.commit()
    index = open_index(tmp_path / "idx")
    assert len(index.segments) == 4
    tied = sorted(ids, key=lambda d: d.encode())
    for k in (1, 2, 5, 11, 31, 40):
        assert index.search("fox", k).ids == ["best", *tied][:k]


def test_refresh_reuses_the_segments_that_did_not_change(tmp_path):
    build_index([document("a", ["fox"])], tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    with IndexWriter(tmp_path / "idx") as writer:
        writer.add([document("b", ["fox"])])
        writer.commit()
        published = writer.reader.segments[1]
    newer = index.refresh()
    assert len(newer.segments) == 2 and newer.segments[0] is index.segments[0]
    assert newer.segments[1] is published  # the writer's maps, shared: a small commit maps nothing twice
    assert open_index(tmp_path / "idx").segments[1] is published


def test_an_index_rebuilt_in_place_is_never_answered_from_the_old_maps(tmp_path):
    build_index([document("a", ["fox"]), document("b", ["river"])], tmp_path / "idx")
    old = open_index(tmp_path / "idx")
    shutil.rmtree(tmp_path / "idx")  # deleted and built again: generation 1 again, under the same folder names
    build_index([document("z", ["fox", "fox"])], tmp_path / "idx")
    fresh = open_index(tmp_path / "idx")
    assert fresh.segments[0].directory.name == old.segments[0].directory.name  # the same folder name, reused
    assert fresh.segments[0] is not old.segments[0]
    assert fresh.search("fox", 10).ids == ["z"] and old.search("fox", 10).ids == ["a"]


LIVE_FAILPOINTS = ["after-flush", "after-add", "merge", "before-commit", "before-manifest-rename", "after-commit"]


def sift_command(*arguments: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    if failpoint:
        env["SIFT_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "sift", *arguments], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def snapshot(index_dir) -> list:
    index = open_index(index_dir)
    shape = [index.documents, index.deleted_passages, len(index.segments)]
    return [shape, [index.search(q, 50).pairs() for q in QUERIES]]


@pytest.mark.slow
def test_sigkill_at_every_failpoint_of_add_delete_and_merge_leaves_one_whole_commit(tmp_path):
    import signal

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": " ".join(WORDS[i % 40: i % 40 + 9])}
                                                for i in range(3000)])  # fmt: skip
    more = write_jsonl(tmp_path / "m.jsonl", [{"_id": f"d{i}", "text": f"fox river changed {i}"}
                                              for i in range(0, 6000, 3)])  # fmt: skip
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"d{i}\n" for i in range(1, 3000, 7)))
    index_dir = str(tmp_path / "idx")
    changes = {  # each starts from the index the ones before it left
        "add": ("add", index_dir, str(more), "--quiet"),
        "delete": ("delete", index_dir, "--ids-file", str(ids)),
        "compact": ("compact", index_dir),
    }

    def prepare(change: str) -> None:
        assert sift_command("index", str(corpus), index_dir, "--overwrite", "--quiet").returncode == 0
        for earlier in list(changes)[: list(changes).index(change)]:
            assert sift_command(*changes[earlier]).returncode == 0

    kills = 0
    for name, arguments in changes.items():
        prepare(name)
        before = snapshot(index_dir)
        assert sift_command(*arguments).returncode == 0
        after = snapshot(index_dir)
        assert after != before
        prepare(name)
        for failpoint in LIVE_FAILPOINTS:
            killed = sift_command(*arguments, failpoint=failpoint).returncode == -signal.SIGKILL
            kills += killed  # a change that never passes the point (a delete writes no segment) just completes
            expected = after if failpoint == "after-commit" or not killed else before
            assert snapshot(index_dir) == expected, (name, failpoint)
            if expected == after:
                prepare(name)
        assert sift_command(*arguments).returncode == 0  # the next writer clears what the dead ones left
        assert snapshot(index_dir) == after
        assert not [p for p in (tmp_path / "idx").iterdir() if p.name.startswith(".staging")]
    assert kills >= 10


def _damages(path):
    """(what, damaged bytes) for a file: truncated, a part zero-filled, one byte flipped; in a compound file, the
    bytes of each member zero-filled and flipped as well."""
    original = path.read_bytes()
    spans = [(0, len(original))]
    if path.name == COMPOUND:
        members = json.loads((path.parent / "segment.json").read_text())["compound"]
        spans += [(offset, size) for offset, size, *_ in members.values() if size]
    yield "truncate", original[: len(original) // 2]
    for offset, size in spans:
        data = bytearray(original)
        start = offset + size // 3
        data[start : start + max(1, size // 4)] = bytes(max(1, size // 4))[: offset + size - start]
        yield f"zero {offset}+{size}", bytes(data)
        data = bytearray(original)
        data[offset + size // 2] ^= 0x5A
        yield f"flip {offset}+{size}", bytes(data)


def damaged_copies(index_dir, tmp_path):
    """Every file of the index (every member of a compound file), one at a time, damaged each way of _damages."""
    files = sorted(p.relative_to(index_dir) for p in index_dir.rglob("*")
                   if p.is_file() and p.name != "write.lock")  # fmt: skip
    for number, relative in enumerate(files):
        for trial, (damage, data) in enumerate(_damages(index_dir / relative)):
            if data == (index_dir / relative).read_bytes():  # zeros over zeros: nothing damaged
                continue
            target = tmp_path / f"damaged-{number}-{trial}"
            shutil.copytree(index_dir, target)
            (target / relative).write_bytes(data)
            yield target, str(relative), damage
            shutil.rmtree(target)


@pytest.mark.parametrize("compound", [True, False], ids=["compound", "separate-files"])
def test_every_damaged_file_is_reported_by_sift_check_and_never_answers_wrongly(tmp_path, monkeypatch, compound):
    from engine.format import IndexFormatError, check_index

    if not compound:
        monkeypatch.setattr("engine.format.COMPOUND_BYTES", 0)
    documents = [Document(f"d{i}", " ".join(WORDS[i % 30 : i % 30 + 7]), fields={"year": 1990 + i % 30})
                 for i in range(400)]  # fmt: skip
    build_index(documents, tmp_path / "idx", BuildOptions(fields={"year": "int"}))
    with IndexWriter(tmp_path / "idx") as writer:  # deletions files too
        writer.delete(["d3", "d7"])
        writer.commit()
    (segment,) = read_manifest(tmp_path / "idx")["segments"]
    assert (tmp_path / "idx" / segment["name"] / COMPOUND).exists() == compound
    expected = snapshot(tmp_path / "idx")
    assert check_index(tmp_path / "idx")["files"] > (5 if compound else 20)
    trials = caught_at_open = 0
    for damaged, name, damage in damaged_copies(tmp_path / "idx", tmp_path):
        trials += 1
        with pytest.raises(IndexFormatError, match=name.split("/")[-1].replace(".", r"\.")):
            check_index(damaged)
        try:
            found = snapshot(damaged)
        except IndexFormatError as error:
            assert name.split("/")[-1] in str(error) or name.split("/")[0] in str(error)
            caught_at_open += 1
            continue
        assert found == expected, (name, damage)  # whatever opening let through still answers rightly
    assert trials >= 60 and caught_at_open == trials


READER = """
import sys, time
from pathlib import Path
from engine.index import open_index
index = open_index(sys.argv[1])
stop = Path(sys.argv[2])
index.search("fox river", 1000)
print("ready", flush=True)
searches = 0
while not stop.exists():
    index = index.refresh()
    hits = index.search("fox river", 1000)
    # a consistent commit: every hit is live there, no document twice, only ids the writer uses
    assert len(hits) == len(set(hits.ids)), "duplicate document"
    assert all(index.is_live(hits.passages)), "a deleted passage returned"
    assert {h.id for h in hits} <= {f"d{i}" for i in range(2000)}
    searches += 1
print(searches)
"""


@pytest.mark.slow
def test_reader_processes_search_without_error_while_a_writer_adds_deletes_and_merges(tmp_path):
    import random
    import time

    build_index([document(f"d{i}", ["fox", "river", WORDS[i % 40]]) for i in range(500)], tmp_path / "idx")
    open_index(tmp_path / "idx").search("fox river", 1000)  # compiles the kernels into the cache the readers share
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-c", READER, str(tmp_path / "idx"), str(tmp_path / "stop")]
    readers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]  # fmt: skip
    for reader in readers:
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
    rng = random.Random(3)
    commits = 0
    deadline = time.time() + 10
    with IndexWriter(tmp_path / "idx", merge_policy=MergePolicy(segments_per_tier=3, floor_passages=50)) as writer:
        while time.time() < deadline:
            writer.add(document(f"d{rng.randrange(2000)}", ["fox", rng.choice(WORDS)]) for _ in range(20))
            writer.delete(f"d{rng.randrange(2000)}" for _ in range(10))
            if commits % 5 == 4:
                writer.compact(2)
            writer.commit()
            commits += 1
    (tmp_path / "stop").touch()
    outcomes = [reader.communicate(timeout=120) for reader in readers]
    assert all(reader.returncode == 0 for reader in readers), [err for _, err in outcomes]
    assert all(int(out) >= 1 for out, _ in outcomes) and commits > 5, outcomes  # searches done, commits made


def test_bad_field_values_and_a_full_disk_are_one_line_errors_and_change_nothing(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": f"d{i}", "text": f"fox {i}", "year": 2000 + i}
                                                for i in range(30)])  # fmt: skip
    run = [sys.executable, "-m", "sift"]
    index_dir = str(tmp_path / "idx")
    subprocess.run([*run, "index", str(corpus), index_dir, "--field", "year:int"], check=True, capture_output=True)
    before = snapshot(index_dir)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"_id": "x", "text": "fox"}, {"_id": "y", "text": "a", "year": "new"}])
    result = subprocess.run([*run, "add", index_dir, str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "bad.jsonl:2: field 'year' (int): expected an integer" in result.stderr
    with IndexWriter(index_dir) as writer:
        with pytest.raises(ValueError, match="unknown field 'journal'"):
            writer.add([Document("z", "fox", fields={"journal": "Nature"})])
        with pytest.raises(ValueError, match="field 'year' \\(int\\): expected an integer"):
            writer.add([Document("z", "fox", fields={"year": 2.5})])
    more = write_jsonl(tmp_path / "more.jsonl", [{"_id": "new", "text": "fox river", "year": 2024}])
    env = {**os.environ, "SIFT_FAILPOINT": "disk-full"}
    for command in (["add", index_dir, str(more)], ["delete", index_dir, "d1"], ["compact", index_dir]):
        result = subprocess.run([*run, *command], capture_output=True, text=True, env=env)
        assert result.returncode == 1 and "No space left on device" in result.stderr, command
        assert result.stderr.count("\n") == 1
        assert snapshot(index_dir) == before
        assert not [p for p in (tmp_path / "idx").iterdir() if p.name.startswith(".staging")]
    result = subprocess.run([*run, "delete", index_dir, "d1", "nope", "--json"], capture_output=True, text=True)
    assert json.loads(result.stdout.splitlines()[-1])["missing"] == ["nope"]


@pytest.mark.slow
@requires_data("scifact")
def test_scifact_after_deleting_a_fifth_and_re_adding_half_changed_equals_a_fresh_build(tmp_path):
    import random

    from engine.evaluation import evaluate
    from indexers.corpus import CorpusReader, open_source, read_qrels, read_queries

    documents = {doc.id: doc for doc in CorpusReader(open_source(DATA / "scifact" / "corpus.jsonl.gz"))}
    rng = random.Random(7)
    gone = rng.sample(sorted(documents), len(documents) // 5)
    back = rng.sample(gone, len(gone) // 2)
    build_index(list(documents.values()), tmp_path / "live")
    changed = [Document(i, " ".join(reversed(documents[i].text.split())) + " revised", documents[i].title)
               for i in back]  # fmt: skip
    with IndexWriter(tmp_path / "live") as writer:
        assert writer.delete(gone) == []
        writer.commit()
        assert writer.add(changed) == (len(back), 0)
        writer.commit()
    live_documents = {i: d for i, d in documents.items() if i not in set(gone)} | {d.id: d for d in changed}
    build_index(list(live_documents.values()), tmp_path / "fresh")
    live, fresh = open_index(tmp_path / "live"), open_index(tmp_path / "fresh")
    assert (live.documents, live.avgdl) == (fresh.documents, fresh.avgdl) == (len(live_documents), fresh.avgdl)
    queries = read_queries(DATA / "scifact" / "queries.test.tsv")
    texts = [text for _, text in queries]
    runs = [{qid: dict(r.pairs()) for (qid, _), r in zip(queries, index.batch_search(texts, 1000))}
            for index in (live, fresh)]  # fmt: skip
    for qid, _ in queries:  # the whole run: every score, and the ids above each query's last (tied) score
        a, b = runs[0][qid], runs[1][qid]
        assert sorted(a.values()) == sorted(b.values())
        cut = min(a.values(), default=0)
        assert {i for i, s in a.items() if s > cut} == {i for i, s in b.items() if s > cut}
    qrels = read_qrels(DATA / "scifact" / "qrels.test.txt")
    assert evaluate(runs[0], qrels).means == evaluate(runs[1], qrels).means


@settings(max_examples=25)
@given(st.lists(st.tuples(words, titles), min_size=1, max_size=30), st.data())
def test_what_deleted_passages_take_from_df_is_the_same_analyzed_or_scanned(tmp_path_factory, initial, data):
    from engine.analysis import Analyzer
    from indexers.writer import _analyzed_terms, _postings_of

    index_dir = tmp_path_factory.mktemp("df") / "idx"
    build_index([document(f"d{i}", w, title) for i, (w, title) in enumerate(initial)], index_dir)
    index = open_index(index_dir)
    segment = index.segments[0]
    chosen = data.draw(st.lists(st.integers(0, segment.passages - 1), unique=True))
    passages = np.array(sorted(chosen), dtype=np.int64)
    analyzed = _analyzed_terms(segment, passages, Analyzer(index.analyzer_config))
    assert analyzed.tolist() == _postings_of(segment, passages).tolist()


def test_a_reader_opening_a_commit_whose_files_a_newer_commit_removed_opens_the_newer(tmp_path, monkeypatch):
    """Between checking a file's size and reading it for its checksum, a writer may commit and collect the folder:
    the reader opens the newest commit instead (as Lucene's readers retry), never fails."""
    import engine.format

    build_index([document(f"d{i}", ["fox", WORDS[i % 40]]) for i in range(50)], tmp_path / "idx")
    with IndexWriter(tmp_path / "idx") as writer:
        writer.delete(["d1"])
        writer.commit()
    real = engine.format._crc32
    raced = []

    def checksum_after_a_commit(path):
        if ".del" in path.parent.name and not raced:
            raced.append(path)
            with IndexWriter(tmp_path / "idx") as writer:  # replaces this commit's deletions and collects them
                writer.delete(["d2"])
                writer.commit()
            assert not path.exists()
        return real(path)

    monkeypatch.setattr(engine.format, "_crc32", checksum_after_a_commit)
    index = open_index(tmp_path / "idx")
    assert raced and index.manifest["generation"] == 3 and index.documents == 48
