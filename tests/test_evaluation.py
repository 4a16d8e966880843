import math

import numpy as np
import pytest
from scipy import stats

from engine.evaluation import RunFileError, compare, evaluate, read_run, write_run

QRELS = {"q1": {"a": 1, "b": 2, "x": 0}, "q2": {"c": 1}, "q3": {"z": 0}}  # q3 judges nothing relevant
RUN = {"q1": {"a": 3.0, "x": 2.0, "b": 1.0}, "q2": {"d": 5.0, "c": 4.0}}


def test_measures_match_hand_computation():
    result = evaluate(RUN, QRELS)
    assert result.queries == 2  # only queries with a relevant document count
    ideal_q1 = 2 / math.log2(2) + 1 / math.log2(3)
    ndcg_q1 = (1 / math.log2(2) + 2 / math.log2(4)) / ideal_q1
    ndcg_q2 = (1 / math.log2(3)) / 1
    assert result.means["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2)
    assert result.means["RR@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert result.means["AP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2)
    assert result.means["R@100"] == pytest.approx(1.0)


def test_unanswered_query_counts_as_zero():
    result = evaluate({"q1": RUN["q1"]}, QRELS)
    assert result.queries == 2 and result.per_query["RR@10"]["q2"] == 0.0


def test_run_file_round_trip(tmp_path):
    write_run(tmp_path / "r.trec", RUN)
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 a 1 3.000000 sift"
    assert read_run(tmp_path / "r.trec") == RUN
    (tmp_path / "bad.trec").write_text("q1 Q0 a 1\n")
    with pytest.raises(RunFileError, match=r"bad\.trec:1: malformed run line"):
        read_run(tmp_path / "bad.trec")


def test_paired_t_test_is_scipys():
    rng = np.random.default_rng(0)
    qrels = {f"q{i}": {"rel": 1} for i in range(30)}
    run_a = {q: {"rel": 1.0, **{f"n{j}": float(rng.random() * 2) for j in range(5)}} for q in qrels}
    run_b = {q: {"rel": 1.5, **{f"n{j}": float(rng.random() * 2) for j in range(5)}} for q in qrels}
    a, b = evaluate(run_a, qrels), evaluate(run_b, qrels)
    result = compare(a, b)
    x = [a.per_query["nDCG@10"][q] for q in sorted(qrels)]
    y = [b.per_query["nDCG@10"][q] for q in sorted(qrels)]
    expected = stats.ttest_rel(y, x)
    assert result.t == pytest.approx(expected.statistic) and result.p_value == pytest.approx(expected.pvalue)
    assert compare(a, a).p_value == 1.0
