"""The general training mixture: sources grouped by query, negatives mined where a source gives none."""

import random

from tools.training_mix import pair_examples


def test_pair_sources_become_examples_with_mined_negatives_where_none_are_given(tmp_path):
    rows = {
        "graded": [{"qid": "a", "query": "red apple", "text": "a red apple", "label": 2},
                   {"qid": "a", "query": "red apple", "text": "a green pear", "label": 0},
                   {"qid": "b", "query": "no answer", "text": "nothing here", "label": 0}],
        "positives": [{"qid": "c", "query": "green pear", "text": "the green pear tree", "label": 1}],
    }  # fmt: skip
    examples = pair_examples(rows, tmp_path, cap=10, pool=5, rng=random.Random(0))
    by_query = {e["query"]: e for e in examples}
    assert set(by_query) == {"red apple", "green pear"}  # a query without a positive teaches nothing
    assert by_query["red apple"]["negatives"] == ["a green pear"]  # the source's own
    mined = by_query["green pear"]["negatives"]
    assert mined and "the green pear tree" not in mined and mined[0] == "a green pear"  # BM25's best other passage


def test_quality_examples_pit_answers_against_random_passages_that_answer_nothing():
    """A query-free model's supervision: each judged passage once, against passages judged relevant to nothing."""
    from tools.training_mix import _quality_examples

    others = ["a", "b", "c", "d", "e", "f"]
    examples = _quality_examples("src", ["b", "a", "b"], others, cap=10, pool=3, rng=random.Random(0))
    assert [e["positives"] for e in examples] == [["a"], ["b"]]
    for example in examples:
        assert example["query"] == "" and example["source"] == "src"
        assert len(example["negatives"]) == 3 and set(example["negatives"]) <= {"c", "d", "e", "f"}
    assert len(_quality_examples("src", list("abcdef"), others, cap=2, pool=3, rng=random.Random(0))) == 0
