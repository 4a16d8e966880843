"""Typo tolerance: the edit-distance kernel against its reference, fuzzy terms against brute force, corrections."""

import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.analysis import Analyzer
from engine.format import Folder, FolderWriter, StringTable, sort_terms, write_strings
from engine.index import open_index
from engine.typos import correct, edit_distance, one_edit, terms_within
from indexers.corpus import Document
from indexers.writer import build_index
from tools.typos import KINDS, typo, typo_queries

letters = st.text("abcdeé", min_size=0, max_size=7)


@settings(max_examples=200, deadline=None)
@given(st.sets(letters.filter(bool), min_size=1, max_size=40), letters, st.integers(0, 2))
def test_terms_within_equals_the_reference_distance(tmp_path_factory, vocabulary, word, max_edits):
    directory = tmp_path_factory.mktemp("terms")
    terms = sort_terms(vocabulary)
    write_strings(FolderWriter(directory), "terms", terms)
    table = StringTable(Folder(directory), "terms")
    numbers, edits = terms_within(table._bytes, np.asarray(table._offsets, dtype=np.int64),
                                  np.frombuffer(word.encode(), dtype=np.uint8), max_edits)  # fmt: skip
    expected = {t: edit_distance(t, word) for t in terms if edit_distance(t, word) <= max_edits}
    assert dict(zip(table.take(numbers), edits.tolist())) == expected


def test_the_reference_distance_counts_each_kind_of_typo_once():
    assert [edit_distance("regulation", w) for w in ("regulaton", "regulatoin", "rregulation", "regulaxion")] == [1] * 4
    assert edit_distance("ab", "ba") == 1 and edit_distance("abc", "ca") == 3 and edit_distance("", "ab") == 2
    assert all(edit_distance("river", w) == 1 for w in one_edit("river", "abz"))


WORDS = ["regulation", "regulatory", "vitamin", "deficiency", "river", "stone", "protein", "proteins", "cell"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6), min_size=1, max_size=20),
       st.sampled_from(WORDS), st.integers(1, 2), st.data())  # fmt: skip
def test_a_fuzzy_term_matches_the_passages_with_a_term_that_near(tmp_path_factory, corpus, word, edits, data):
    path = tmp_path_factory.mktemp("f") / "idx"
    build_index([Document(f"d{i}", " ".join(words)) for i, words in enumerate(corpus)], path)
    index = open_index(path)
    analyzer = Analyzer(index.analyzer_config)
    typed = data.draw(st.sampled_from(sorted(one_edit(word, "aeiz")))) if data.draw(st.booleans()) else word
    stem = analyzer.analyze(typed)[0]
    expected = {f"d{i}" for i, words in enumerate(corpus)
                if any(edit_distance(t, stem) <= edits for t in analyzer.analyze(" ".join(words)))}  # fmt: skip
    assert set(index.search(f"{typed}~{edits}", 100, syntax="lucene").ids) == expected


def test_correction_leaves_held_terms_and_mends_one_typo(tmp_path):
    texts = ["regulation of proteins", "vitamin deficiency in cells", "the regulation of cells", "river stone"]
    build_index([Document(f"d{i}", t) for i, t in enumerate(texts)], tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    analyzer = index.bm25.analyzer
    assert correct(analyzer, index.segments, "Regulation, vitamin river") == "Regulation, vitamin river"
    assert correct(analyzer, index.segments, "Regulaton of vitamn defciency (rivr)") == (
        "regulation of vitamin deficiency (river)")
    assert correct(analyzer, index.segments, "xyzzy ab") == "xyzzy ab"  # nothing near, too short: as typed
    assert index.search("regulaton of protiens", 10, typos="auto") == index.search("regulation of proteins", 10)


@settings(max_examples=200, deadline=None)
@given(st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=12), st.sampled_from(KINDS), st.integers(0, 10**6))
def test_every_kind_of_typo_is_one_edit(word, kind, seed):
    typed = typo(word, kind, random.Random(seed))
    assert typed != word and edit_distance(word, typed) == 1


def test_typo_queries_are_seeded_and_change_one_word_that_matters():
    queries = [(str(i), "the effect of vitamin d on bone density in older adults") for i in range(50)]
    first, again = typo_queries(queries, seed=3), typo_queries(queries, seed=3)
    assert first == again and first != typo_queries(queries, seed=4)
    for (_, clean), (_, typed) in zip(queries, first):
        changed = [(a, b) for a, b in zip(clean.split(), typed.split()) if a != b]
        assert len(changed) == 1 and changed[0][0] not in ("the", "of", "on", "in")
