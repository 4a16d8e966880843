"""Passage-quality pruning: estimators against direct computations, exact pruning counts, the score cache, and an
index built with pruning that answers exactly as one built from the kept passages alone."""

import json
import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from engine.analysis import Analyzer
from engine.evaluation import Evaluation, equivalence
from engine.index import open_index
from indexers.corpus import CorpusReader, Document, open_source
from indexers.quality import (
    CorpusPassages,
    PruneSpec,
    QualityError,
    ScoreCache,
    estimator,
    pruned_keys,
    score_passages,
)
from indexers.writer import build_index
from sift.cli import main
from tests.conftest import random_documents, write_jsonl

TEXTS = ["the cat and the dog", "quantum chromodynamics lattice gauge", "the the the of", "x"]


def test_prune_specs_parse_and_refuse_nonsense():
    assert PruneSpec.parse("cdd:0.25") == PruneSpec("cdd", rate=0.25)
    assert PruneSpec.parse("length:>=3") == PruneSpec("length", threshold=3.0)
    for bad in ("cdd", "nothing:0.2", "cdd:1", "cdd:-0.1", "cdd:lots"):
        with pytest.raises(QualityError):
            PruneSpec.parse(bad)


def test_pruned_keys_drop_exactly_the_lowest_share():
    keys = [f"d{i}#0" for i in range(10)]
    scores = np.array([5, 1, 1, 9, 0, 3, 1, 7, 2, 8], dtype=float)
    assert pruned_keys(keys, scores, PruneSpec("length", rate=0.3)) == {"d4#0", "d1#0", "d2#0"}  # ties: key order
    assert pruned_keys(keys, scores, PruneSpec("length", rate=0.0)) == set()
    assert pruned_keys(keys, scores, PruneSpec("length", threshold=2.0)) == {"d1#0", "d2#0", "d4#0", "d6#0"}


def test_term_estimators_equal_direct_computations():
    analyzer = Analyzer()
    keys = [str(i) for i in range(len(TEXTS))]
    assert estimator("length").score(keys, TEXTS).tolist() == [len(analyzer.analyze(t)) for t in TEXTS]
    assert estimator("stopwords").score(keys, TEXTS).tolist() == [0.6, 0.0, 1.0, 0.0]
    assert estimator("inr").score(keys, TEXTS).tolist() == [2 / 5, 4 / 4, 0.0, 1.0]
    cdd = estimator("cdd")
    cdd.fit(TEXTS)
    collection = Counter(t for text in TEXTS for t in analyzer.analyze(text))
    total = sum(collection.values())
    for text, score in zip(TEXTS, cdd.score(keys, TEXTS)):
        terms = Counter(analyzer.analyze(text))
        n = sum(terms.values())
        expected = sum(c / n * math.log((c / n) / (collection[t] / total)) for t, c in terms.items()) if n else 0.0
        assert score == pytest.approx(expected, abs=1e-12)


def test_random_scores_are_stable_per_key_and_uniform():
    keys = [f"d{i}#0" for i in range(4000)]
    first = estimator("random").score(keys, [""] * len(keys))
    assert np.array_equal(first, estimator("random").score(keys, [""] * len(keys)))
    assert stats.kstest(first, "uniform").pvalue > 0.001
    assert np.array_equal(first[10:20], estimator("random").score(keys[10:20], [""] * 10))


def test_score_cache_round_trips_and_scores_only_what_it_lacks(tmp_path):
    passages = list(CorpusPassages([Document(f"d{i}", t) for i, t in enumerate(TEXTS)], Analyzer().config, 0, 0))
    cache = ScoreCache(tmp_path / "quality")
    keys, scores, scored = score_passages(passages[:2], "length", cache)
    assert scored == 2 and cache.load("length") == dict(zip(keys, scores.tolist()))
    keys, scores, scored = score_passages(passages, "length", cache)
    assert scored == 2 and scores.tolist() == [2.0, 4.0, 0.0, 1.0]
    assert cache.timing("length")["passages"] == 4 and cache.throughput("length") > 0  # speed kept with the scores
    (tmp_path / "quality" / "length.keys.json").write_text(json.dumps(keys[:1]))  # torn write: scores do not match
    assert cache.load("length") == {}


def test_scoring_streams_through_the_corpus_and_resumes_after_a_failure(tmp_path, monkeypatch):
    from indexers import quality

    corpus = write_jsonl(tmp_path / "corpus.jsonl", random_documents(700, seed=2))
    passages = CorpusPassages(CorpusReader(open_source(corpus)), Analyzer().config, 8, 4)
    in_memory = list(passages)
    for name in ("length", "cdd"):  # cdd reads the stream twice: its collection model, then the scores
        streamed = score_passages(passages, name)
        assert streamed[0] == [p.key for p in in_memory] and len(streamed[0]) > 700
        np.testing.assert_array_equal(streamed[1], score_passages(in_memory, name)[1])
    batches = []
    real = quality.LengthEstimator.score

    def failing(self, keys, texts):
        if len(batches) == 3:
            raise RuntimeError("killed")
        batches.append(len(keys))
        return real(self, keys, texts)

    monkeypatch.setattr(quality.LengthEstimator, "score", failing)
    cache = ScoreCache(tmp_path / "quality")
    with pytest.raises(RuntimeError):
        score_passages(passages, "length", cache, save_every=2 * quality.SCORE_BATCH)
    assert len(cache.load("length")) == 2 * quality.SCORE_BATCH  # saved before the failure: not scored again
    monkeypatch.setattr(quality.LengthEstimator, "score", real)
    _, scores, scored = score_passages(passages, "length", cache)
    assert scored == len(in_memory) - 2 * quality.SCORE_BATCH
    np.testing.assert_array_equal(scores, score_passages(in_memory, "length")[1])


def test_a_pruned_index_answers_as_one_built_from_the_kept_passages(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", random_documents(300, seed=4))
    passages = CorpusPassages(CorpusReader(open_source(corpus)), Analyzer().config, 0, 0)
    keys, scores, _ = score_passages(passages, "random")
    pruned = pruned_keys(keys, scores, PruneSpec("random", rate=0.4))
    build_index(CorpusReader(open_source(corpus)), tmp_path / "pruned", pruned=pruned, pruning={"rate": 0.4})
    kept = [d for d in random_documents(300, seed=4) if f"{d['_id']}#0" not in pruned]
    build_index(CorpusReader(open_source(write_jsonl(tmp_path / "kept.jsonl", kept))), tmp_path / "kept")
    a, b = open_index(tmp_path / "pruned"), open_index(tmp_path / "kept")
    assert a.manifest["pruning"] == {"rate": 0.4} and a.passages == len(kept) == 180
    for query in ("quick brown fox", "river bank money", "dense sparse neural model"):
        x, y = a.search(query, k=20), b.search(query, k=20)
        assert x.ids == y.ids and np.array_equal(x.scores, y.scores)
        assert not set(x.ids) & {k.split("#")[0] for k in pruned}


def test_cli_prunes_while_indexing_and_reprunes_from_the_cache(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", random_documents(300, seed=5))
    index_dir = tmp_path / "idx"
    assert main(["index", str(corpus), str(index_dir), "--prune", "cdd:0.3", "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["passages"] == 210 and report["pruning"]["pruned"] == 90
    assert main(["prune", str(index_dir), "--estimator", "cdd", "--rate", "0.1", "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["passages"] == 270 and report["pruning"]["scored_now"] == 0
    assert open_index(index_dir).manifest["pruning"]["rate"] == 0.1
    assert main(["index", str(corpus), str(tmp_path / "bad"), "--prune", "cdd:2", "--quiet"]) == 1
    assert "the rate is the share of passages dropped" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _evaluation(values: list[float]) -> Evaluation:
    return Evaluation({"nDCG@10": float(np.mean(values))}, {"nDCG@10": {str(i): v for i, v in enumerate(values)}},
                      len(values))  # fmt: skip


def test_tost_equals_two_one_sided_t_tests():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.9, 200)
    b = np.clip(a + rng.normal(0.0, 0.05, 200), 0, 1)
    result = equivalence(_evaluation(a.tolist()), _evaluation(b.tolist()), margin=0.05)
    d, bound = b - a, 0.05 * a.mean()
    se = d.std(ddof=1) / math.sqrt(len(d))
    expected = max(stats.t.sf((d.mean() + bound) / se, len(d) - 1), stats.t.cdf((d.mean() - bound) / se, len(d) - 1))
    assert result.p_value == pytest.approx(expected, rel=1e-9) and result.equivalent == (expected < 0.05)
    assert equivalence(_evaluation(a.tolist()), _evaluation(a.tolist())).equivalent
    assert not equivalence(_evaluation(a.tolist()), _evaluation((a * 0.8).tolist())).equivalent
