"""Lucene parity: BM25 effectiveness on the shared collections equals pyserini's (Lucene 9.9.1) figures."""

import pytest

from conftest import DATA
from engine.evaluation import evaluate
from engine.index import open_index
from indexers.corpus import CorpusReader, open_source, read_qrels, read_queries
from indexers.writer import build_index

# ../shared/data/README.md: pyserini 1.6.0, default English analyzer, title + text, k1=0.9, b=0.4, top 1000
LUCENE = {
    "scifact": {"nDCG@10": 0.6789, "R@100": 0.9253, "R@1000": 0.9767, "AP": 0.6401, "RR": 0.6506},
    "vaswani": {"nDCG@10": 0.4368, "R@100": 0.6186, "R@1000": 0.9340, "AP": 0.2856, "RR": 0.6802},
    "cranfield": {"nDCG@10": 0.3510, "R@100": 0.7224, "R@1000": 0.9518, "AP": 0.2879, "RR": 0.5124},
}


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("collection", sorted(LUCENE))
def test_bm25_matches_lucene(tmp_path, collection):
    if not (DATA / collection).is_dir():
        pytest.skip(f"{DATA / collection} is absent")
    folder = DATA / collection
    # Lucene indexes Cranfield's two empty documents as documents without terms: the same statistics as skipping
    build_index(CorpusReader(open_source(folder), skip_bad=True), tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    queries = read_queries(folder / "queries.test.tsv")
    hits = index.batch_search([text for _, text in queries], 1000)
    run = {qid: {h.id: h.score for h in found} for (qid, _), found in zip(queries, hits)}
    measured = evaluate(run, read_qrels(folder / "qrels.test.txt")).means
    reference = LUCENE[collection]
    assert abs(measured["nDCG@10"] - reference["nDCG@10"]) <= 0.003, measured
    assert abs(measured["R@1000"] - reference["R@1000"]) <= 0.005, measured
    # the analyzer produces Lucene's terms on every document of these collections, so the rest agrees closely too
    for measure in ("R@100", "AP", "RR"):
        assert abs(measured[measure] - reference[measure]) <= 0.002, (measure, measured)
