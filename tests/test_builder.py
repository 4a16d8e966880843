"""The builder's compiled parts against plain references: term counting and the term table."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.analysis import Analyzer, AnalyzerConfig
from indexers.inverted import TermTable, count_terms, count_terms_reference


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), max_size=25), max_size=12), st.integers(0, 1000))
def test_count_terms_matches_the_numpy_reference(passages, first_passage):
    term_ids = np.array([t for p in passages for t in p], dtype=np.int64)
    lengths = np.array([len(p) for p in passages], dtype=np.int64)
    last_seen = np.full(31, -1, dtype=np.int64)
    found = count_terms(term_ids, lengths, first_passage, last_seen)
    expected = count_terms_reference(term_ids, lengths, first_passage)
    for got, want in zip(found, expected):
        np.testing.assert_array_equal(got, want)
    assert (last_seen == -1).all()  # left ready for the next batch


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.text(alphabet="ab cé\u4e2d", max_size=12), max_size=20), max_size=6))
def test_term_table_numbers_terms_in_order_of_first_appearance(batches):
    analyzer = Analyzer(AnalyzerConfig(tokenizer="whitespace", possessives=False, stopwords=(), stemmer=None))
    table, reference = TermTable(), {}
    for texts in batches:
        terms = analyzer.analyze_batch(texts)
        expected = [reference.setdefault(t, len(reference)) for t in terms.terms()]
        assert table.ids(terms).tolist() == expected
    assert table.terms() == list(reference)
