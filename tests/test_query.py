"""The query syntax: parsing (round trips, every operator, errors with positions) and boolean BM25 against brute
force over random small corpora."""

import re
from itertools import pairwise, product

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.analysis import Analyzer
from engine.format import copy_runs, copy_runs_reference
from engine.index import open_index
from engine.query import (
    MUST,
    MUST_NOT,
    SHOULD,
    Group,
    Phrase,
    QuerySyntaxError,
    Term,
    field_frequencies,
    field_frequencies_reference,
    parse_query,
    read_postings,
    snippet,
    to_text,
)
from engine.reader import adaptive_k
from engine.sparse import idf, lucene_norm_bytes, norm_inverse_table
from indexers.corpus import Document
from indexers.inverted import BuildOptions
from indexers.writer import IndexWriter, MergePolicy, build_index

words_text = st.text(st.sampled_from("abcxyz019+-!():^[]\"{}~*?\\/&| AND"), min_size=1, max_size=6)
boosts = st.sampled_from([1.0, 0.5, 2.0, 2.5, 10.0])
fields = st.one_of(st.none(), st.sampled_from(["title", "year", "f2"]))
terms = st.builds(Term, words_text, fields, boosts, st.sampled_from([None, 0, 1, 2]))
phrases = st.builds(Phrase, st.lists(st.text("abcé1", min_size=1, max_size=4), min_size=1, max_size=3).map(tuple),
                    fields, boosts, st.integers(0, 3))  # fmt: skip
occurs = st.sampled_from([MUST, SHOULD, MUST_NOT])
nodes = st.recursive(
    st.one_of(terms, phrases),
    lambda inner: st.builds(Group, st.lists(st.tuples(occurs, inner), min_size=1, max_size=4).map(tuple), boosts),
    max_leaves=8,
)
queries = st.lists(st.tuples(occurs, nodes), min_size=1, max_size=4).map(lambda c: Group(tuple(c)))


@settings(max_examples=300, deadline=None)
@given(queries)
def test_any_query_reads_back_as_written(query):
    assert parse_query(to_text(query)) == query


@pytest.mark.parametrize(("text", "expected"), [
    ("a b", [(SHOULD, "a"), (SHOULD, "b")]),
    ("a AND b", [(MUST, "a"), (MUST, "b")]),
    ("a && b", [(MUST, "a"), (MUST, "b")]),
    ("a OR b", [(SHOULD, "a"), (SHOULD, "b")]),
    ("a AND NOT b", [(MUST, "a"), (MUST_NOT, "b")]),
    ("cancer AND NOT mouse", [(MUST, "cancer"), (MUST_NOT, "mouse")]),
    ("+a b -c", [(MUST, "a"), (SHOULD, "b"), (MUST_NOT, "c")]),
    ("!a b", [(MUST_NOT, "a"), (SHOULD, "b")]),
    ("a AND b OR c", [(MUST, "a"), (MUST, "b"), (SHOULD, "c")]),  # Lucene's classic parser: no precedence
    ("NOT a AND b", [(MUST_NOT, "a"), (MUST, "b")]),
    ("a-b", [(SHOULD, "a-b")]),  # a '-' inside a word is text
    (r"\AND \+x", [(SHOULD, "AND"), (SHOULD, "+x")]),
])  # fmt: skip
def test_every_operator_combines_clauses_as_lucene_does(text, expected):
    assert [(occur, node.text) for occur, node in parse_query(text).clauses] == expected


def test_modifiers_groups_fields_and_phrases_parse():
    query = parse_query('title:"heart failure"~2^1.5 (a OR b)^3 x~1 year:2019 c^0.5')
    assert query.clauses == (
        (SHOULD, Phrase(("heart", "failure"), "title", 1.5, 2)),
        (SHOULD, Group(((SHOULD, Term("a")), (SHOULD, Term("b"))), 3.0)),
        (SHOULD, Term("x", fuzzy=1)),
        (SHOULD, Term("2019", "year")),
        (SHOULD, Term("c", boost=0.5)),
    )


@pytest.mark.parametrize(("text", "position"), [
    ("a AND", 5), ("AND a", 0), ("(a b", 0), ("a b)", 3), ("a^", 2), ("a^0", 2), ('"a b', 0), ("x:", 2),
    ("a~3", 2), ("()", 1), ("a ^2", 2), ("+", 1), ('""', 1), ("a\\", 1),
])  # fmt: skip
def test_a_syntax_error_names_its_position(text, position):
    with pytest.raises(QuerySyntaxError, match=f"at position {position}:"):
        parse_query(text)


# --- matching and scoring against brute force -----------------------------------------------------------------------

VOCABULARY = ["fox", "river", "stone", "cloud", "bank", "tree", "lamp", "road"]  # each its own stem
query_terms = st.builds(Term, st.sampled_from(VOCABULARY), st.none(), st.sampled_from([1.0, 2.0]))
query_nodes = st.recursive(
    query_terms,
    lambda inner: st.builds(Group, st.lists(st.tuples(occurs, inner), min_size=1, max_size=3).map(tuple)),
    max_leaves=6,
)
query_trees = st.lists(st.tuples(occurs, query_nodes), min_size=1, max_size=4).map(lambda c: Group(tuple(c)))
corpora = st.lists(st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=12), min_size=1, max_size=30)


def brute_force_matches(node, words: set[str]) -> bool:
    if isinstance(node, Term):
        return node.text in words
    required = [child for occur, child in node.clauses if occur == MUST]
    if any(brute_force_matches(c, words) for o, c in node.clauses if o == MUST_NOT):
        return False
    if required:
        return all(brute_force_matches(c, words) for c in required)
    return any(brute_force_matches(c, words) for o, c in node.clauses if o == SHOULD)


def _flat_positive_terms(tree: Group) -> list[str] | None:
    """The positive terms of a query of terms only (no groups, no boosts), in order; None otherwise."""
    if any(isinstance(c, Group) or c.boost != 1.0 for _, c in tree.clauses):
        return None
    positive = [c.text for o, c in tree.clauses if o != MUST_NOT]
    return positive if len(set(positive)) == len(positive) else None  # Lucene sums a repeated clause once each


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpus=corpora, trees=st.lists(query_trees, min_size=1, max_size=6), segments=st.integers(1, 3),
       deleted=st.sets(st.integers(0, 29), max_size=5), packed=st.booleans())  # fmt: skip
def test_boolean_queries_match_exactly_the_brute_force_set(tmp_path_factory, corpus, trees, segments, deleted,
                                                           packed):  # fmt: skip
    """Over several segments with deletions: the matching set is the brute-force one; a query of terms only scores
    each match as plain BM25 over its positive terms (Lucene's BooleanQuery: the sum of matching clauses)."""
    path = tmp_path_factory.mktemp("q") / "idx"
    documents = [Document(f"d{i}", " ".join(words)) for i, words in enumerate(corpus)]
    cut = [len(documents) * s // segments for s in range(segments + 1)]
    build_index(documents[: max(cut[1], 1)], path, BuildOptions(postings="packed" if packed else "raw"))
    with IndexWriter(path, merge_policy=MergePolicy(segments_per_tier=100)) as writer:
        for a, b in pairwise(cut[1:]):
            if b > a:
                writer.add(documents[a:b])
                writer.commit()
        writer.delete([f"d{i}" for i in deleted])
        writer.commit()
    index = open_index(path)
    analyzer = Analyzer(index.analyzer_config)
    live = {d.id: set(analyzer.analyze(d.text)) for d in documents if int(d.id[1:]) not in deleted}
    for tree in trees:
        text = to_text(tree)
        can_match = any(o != MUST_NOT for o, _ in tree.clauses)
        if not can_match:
            with pytest.raises(QuerySyntaxError):
                index.search(text, 10, syntax="lucene")
            continue
        try:
            found = index.search(text, 1000, syntax="lucene")
        except QuerySyntaxError:  # every positive clause was a group of exclusions only
            continue
        expected = {doc_id for doc_id, words in live.items() if brute_force_matches(tree, words)}
        assert set(found.ids) == expected, text
        assert list(found.scores) == sorted(found.scores, reverse=True)
        positive = _flat_positive_terms(tree)
        if positive and found.ids:
            plain = dict(index.search(" ".join(positive), 1000).pairs())
            assert [plain[i] for i in found.ids] == found.scores.tolist(), text


def test_a_plain_query_in_the_syntax_equals_plain_search_bit_for_bit(tmp_path):
    documents = [Document(f"d{i}", " ".join(np.random.default_rng(i).choice(VOCABULARY, 9))) for i in range(200)]
    build_index(documents, tmp_path / "idx", BuildOptions(postings="packed"))
    index = open_index(tmp_path / "idx")
    for query in ("fox", "fox river", "river stone cloud bank", "road lamp tree fox"):
        for k in (1, 10, 1000):
            assert index.search(query, k, syntax="lucene") == index.search(query, k)


def test_pages_continue_each_other_exactly(tmp_path):
    documents = [Document(f"d{i}", " ".join(np.random.default_rng(i).choice(VOCABULARY, 5))) for i in range(300)]
    build_index(documents, tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    for syntax, query in (("plain", "fox river"), ("lucene", "+fox -stone")):
        whole = index.search(query, 60, syntax=syntax)
        pages = [index.search(query, 20, syntax=syntax, offset=offset) for offset in (0, 20, 40)]
        assert [hit for page in pages for hit in page] == list(whole)
        assert [page[0].rank for page in pages] == [1, 21, 41]


# --- snippets and adaptive k ----------------------------------------------------------------------------------------

PROSE = ["Running", "runs", "river's", "the", "Banks", "bank", "stone", "of", "water,", "flows.", "(rivers)", "a"]
prose = st.lists(st.sampled_from(PROSE), min_size=1, max_size=80).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(prose, st.lists(st.sampled_from(["run", "river", "bank", "water", "flow", "tree"]), min_size=1, max_size=3),
       st.integers(20, 120))  # fmt: skip
def test_a_snippet_marks_exactly_the_words_the_analyzer_makes_query_terms(text, query, length):
    analyzer = Analyzer()
    terms = set(analyzer.analyze(" ".join(query)))
    fragment = snippet(text, terms, analyzer, length, ("[", "]"))
    plain = fragment.replace("[", "").replace("]", "").strip("…")
    assert plain in text
    marked = re.findall(r"\[([^\]]*)\]", fragment)
    assert all(analyzer.analyze(word)[0] in terms for word in marked)
    unmarked = re.sub(r"\[[^\]]*\]", " ", fragment.strip("…"))
    assert not any(set(analyzer.analyze(word)) & terms for word in analyzer.tokenize(unmarked)
                   if not fragment.startswith("…") or word != analyzer.tokenize(unmarked)[0])  # fmt: skip
    if set(analyzer.analyze(text)) & terms:
        assert marked


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=120))
def test_adaptive_k_cuts_at_the_largest_gap(scores):
    scores = sorted(scores, reverse=True)
    k = adaptive_k(np.array(scores))
    if len(scores) < 2:
        assert k == len(scores)
        return
    gaps = [a - b for a, b in pairwise(scores)]
    assert 1 <= k < len(scores) and gaps[k - 1] == max(gaps) and max(gaps) > max(gaps[: k - 1], default=-1)


def test_k_auto_returns_the_head_before_the_largest_gap(tmp_path):
    documents = [Document(f"d{i}", "fox " * (3 if i < 4 else 1) + "river " * (i % 3)) for i in range(40)]
    build_index(documents, tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    ranked = index.search("fox", 100)
    chosen = index.search("fox", "auto")
    assert chosen == ranked.head(adaptive_k(ranked.scores)) and 1 <= len(chosen) < len(ranked)


# --- positions and phrases ------------------------------------------------------------------------------------------

PHRASE_WORDS = ["heart", "failure", "the", "of", "river", "stone"]  # two stopwords: positions count them


def brute_force_phrase(analyzer: Analyzer, text: str, words: list[str], slop: int) -> bool:
    terms, places = analyzer.analyze(" ".join(words)), analyzer.positions(" ".join(words))
    found = {}
    for term, position in zip(analyzer.analyze(text), analyzer.positions(text)):
        found.setdefault(term, []).append(position)
    if len(terms) < 2:
        return bool(terms) and terms[0] in found
    if not all(t in found for t in terms):
        return False
    spreads = (max(p - q for p, q in zip(choice, places)) - min(p - q for p, q in zip(choice, places))
               for choice in product(*(found[t] for t in terms)))  # fmt: skip
    return min(spreads) <= slop


def segmented_then_merged(path, documents: list, deleted: set[int], options: BuildOptions):
    """(compacted, index): half the documents built, half added as a live segment, `deleted` deleted; then the
    same compacted to one segment (positions and fields must survive flushes, live adds, deletions and merges)."""
    half = max(1, len(documents) // 2)
    build_index(documents[:half], path, options)
    with IndexWriter(path, merge_policy=MergePolicy(segments_per_tier=100)) as writer:
        if documents[half:]:
            writer.add(documents[half:])
            writer.commit()
        writer.delete([f"d{i}" for i in deleted])
        writer.commit()
        yield False, open_index(path)
        writer.compact(1)
        writer.commit()
        yield True, open_index(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpus=st.lists(st.lists(st.sampled_from(PHRASE_WORDS), min_size=1, max_size=14), min_size=1, max_size=25),
       phrases=st.lists(st.tuples(st.lists(st.sampled_from(PHRASE_WORDS), min_size=2, max_size=3), st.integers(0, 3)),
                        min_size=1, max_size=5),
       deleted=st.sets(st.integers(0, 24), max_size=4), packed=st.booleans())  # fmt: skip
def test_phrases_match_exactly_where_brute_force_finds_them(tmp_path_factory, corpus, phrases, deleted, packed):
    """Positions survive flushes, live adds, deletions and merges: over several segments, then compacted to one."""
    documents = [Document(f"d{i}", " ".join(words)) for i, words in enumerate(corpus)]
    options = BuildOptions(positions=True, postings="packed" if packed else "raw", memory_mb=1)
    for compacted, index in segmented_then_merged(tmp_path_factory.mktemp("p") / "idx", documents, deleted, options):
        analyzer = Analyzer(index.analyzer_config)
        for words, slop in phrases:
            query = '"' + " ".join(words) + '"' + (f"~{slop}" if slop else "")
            expected = {d.id for d in documents if int(d.id[1:]) not in deleted
                        and brute_force_phrase(analyzer, d.text, words, slop)}  # fmt: skip
            if not analyzer.analyze(" ".join(words)):
                continue
            found = index.search(query, 1000, syntax="lucene")
            assert set(found.ids) == expected, (query, compacted)


def test_a_phrase_without_positions_is_a_clear_error(tmp_path):
    build_index([Document("a", "heart failure")], tmp_path / "idx")
    with pytest.raises(QuerySyntaxError, match="--positions"):
        open_index(tmp_path / "idx").search('"heart failure"', 10, syntax="lucene")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), max_size=6), min_size=1, max_size=8), st.data())
def test_copy_runs_equals_its_reference(runs, data):
    source = np.array([v for run in runs for v in run], dtype=np.uint32)
    source_starts = np.cumsum([0] + [len(r) for r in runs]).astype(np.int64)
    picked = np.array(data.draw(st.permutations(range(len(runs)))), dtype=np.int64)
    target_starts = np.cumsum([0] + [len(runs[p]) for p in picked]).astype(np.int64)
    fast, slow = np.zeros(len(source), np.uint32), np.zeros(len(source), np.uint32)
    targets = np.arange(len(picked), dtype=np.int64)
    copy_runs(source, source_starts, picked, fast, target_starts, targets)
    copy_runs_reference(source, source_starts, picked, slow, target_starts, targets)
    assert np.array_equal(fast, slow) and np.array_equal(fast, np.array([v for p in picked for v in runs[p]]))


def test_read_postings_equals_the_whole_segment_decoded(tmp_path):
    documents = [Document(f"d{i}", " ".join(np.random.default_rng(i).choice(VOCABULARY, 30))) for i in range(700)]
    build_index(documents, tmp_path / "idx", BuildOptions(postings="packed"))
    segment = open_index(tmp_path / "idx").segments[0]
    for term in range(len(segment.terms)):
        start, end = int(segment.offsets[term]), int(segment.offsets[term + 1])
        docs, tfs = read_postings(segment.postings, start, end, int(segment.blocks.offsets[term]),
                                  segment.blocks.last_doc)  # fmt: skip
        assert np.array_equal(docs, segment.docs[start:end]) and np.array_equal(tfs, segment.tfs[start:end])


# --- fields ---------------------------------------------------------------------------------------------------------


def brute_force_field_scores(analyzer: Analyzer, live: dict, field: str, term: str, params) -> dict[str, np.float32]:
    """Lucene's BM25 of one term in one field, from each passage's title or text analyzed on its own."""
    terms = {doc_id: analyzer.analyze(title if field == "title" else text) for doc_id, (title, text) in live.items()}
    lengths = np.array([len(t) for t in terms.values()], dtype=np.int64)
    count = int(np.count_nonzero(lengths))
    inverse = norm_inverse_table(params, float(np.float32(lengths.sum() / max(count, 1))), 255)
    holding = {doc_id: found.count(term) for doc_id, found in terms.items() if term in found}
    weight = idf(np.array([len(holding)]), count)[0]
    norm = {doc_id: inverse[lucene_norm_bytes([len(found)])[0]] for doc_id, found in terms.items()}
    return {doc_id: weight - weight / (np.float32(1) + np.float32(tf) * norm[doc_id]) for doc_id, tf in holding.items()}


titled_passages = st.tuples(st.lists(st.sampled_from(PHRASE_WORDS), max_size=5),
                            st.lists(st.sampled_from(PHRASE_WORDS), min_size=1, max_size=10))  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corpus=st.lists(titled_passages, min_size=1, max_size=20),
       phrases=st.lists(st.tuples(st.lists(st.sampled_from(PHRASE_WORDS), min_size=2, max_size=3), st.integers(0, 2)),
                        min_size=1, max_size=3),
       deleted=st.sets(st.integers(0, 19), max_size=4))  # fmt: skip
def test_title_and_text_score_as_their_own_bm25_against_brute_force(tmp_path_factory, corpus, phrases, deleted):
    """title:term and text:term score exactly as Lucene's BM25 over that field alone (its own docCount, average
    length, df and norms); a phrase in a field matches where it stands within the field, never across the title's
    end; words over fields= sum the fields' scores with their boosts. Over segments, deletions and a merge."""
    documents = [Document(f"d{i}", " ".join(text), title=" ".join(title)) for i, (title, text) in enumerate(corpus)]
    path = tmp_path_factory.mktemp("f") / "idx"
    for compacted, index in segmented_then_merged(path, documents, deleted, BuildOptions(positions=True)):
        analyzer, params = Analyzer(index.analyzer_config), index.default_params
        live = {d.id: (d.title, d.text) for d in documents if int(d.id[1:]) not in deleted}
        for field, word in product(("title", "text"), ("heart", "river", "failure")):
            expected = brute_force_field_scores(analyzer, live, field, analyzer.analyze(word)[0], params)
            assert dict(index.search(f"{field}:{word}", 1000, syntax="lucene").pairs()) == expected
        combined = {}
        for field, boost in (("title", 2.0), ("text", 1.0)):
            for doc_id, score in brute_force_field_scores(analyzer, live, field, "stone", params).items():
                combined[doc_id] = combined.get(doc_id, 0) + score * np.float32(boost)
        found = dict(index.search("stones", 1000, fields="title^2,text").pairs())
        assert found.keys() == combined.keys() and all(np.isclose(found[d], combined[d], rtol=1e-6) for d in found)
        for words, slop in phrases:
            if not analyzer.analyze(" ".join(words)):
                continue
            for field, part in (("title", 0), ("text", 1)):
                query = f'{field}:"{" ".join(words)}"' + (f"~{slop}" if slop else "")
                expected = {d for d, texts in live.items()
                            if brute_force_phrase(analyzer, texts[part], words, slop)}  # fmt: skip
                assert set(index.search(query, 1000, syntax="lucene").ids) == expected, (query, compacted)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), max_size=5).map(sorted), min_size=1, max_size=8), st.data())
def test_field_frequencies_equal_their_reference(runs, data):
    positions = np.array([p for run in runs for p in run], dtype=np.uint32)
    starts = np.cumsum([0] + [len(r) for r in runs]).astype(np.int64)
    first = data.draw(st.integers(0, len(runs) - 1))
    docs = np.arange(len(runs) - first, dtype=np.int64)
    title_ends = np.array(data.draw(st.lists(st.integers(0, 31), min_size=len(docs), max_size=len(docs))), np.uint32)
    for in_title in (True, False):
        fast = field_frequencies(positions, starts, first, docs, title_ends, in_title)
        assert np.array_equal(fast, field_frequencies_reference(positions, starts, first, docs, title_ends, in_title))


def test_field_queries_explain_what_they_need(tmp_path):
    build_index([Document("a", "heart failure", title="Heart")], tmp_path / "plain",
                BuildOptions(fields={"year": "int"}))  # fmt: skip
    plain = open_index(tmp_path / "plain")
    with pytest.raises(QuerySyntaxError, match="--positions"):
        plain.search("title:heart", 10, syntax="lucene")
    with pytest.raises(QuerySyntaxError, match=r"metadata field.*--filter"):
        plain.search("year:2019", 10, syntax="lucene")
    with pytest.raises(QuerySyntaxError, match="unknown field 'summary'"):
        plain.search("heart", 10, fields="summary")
    assert plain.search("heart", 10, fields="contents").pairs() == plain.search("heart", 10).pairs()
    assert len(plain.search("the of", 10, fields="title,text")) == 0  # only stopwords: no results, as plain search
