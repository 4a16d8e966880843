"""Lucene parity: BM25 effectiveness on every shared collection with reference figures equals pyserini's (Lucene
9.9.1), to the fourth decimal of every measure.

The reference runs are Anserini's: scores rounded to four decimals and ties broken by document id (its
TiebreakerReranker), which trec_eval then keeps. Sift's scores are Lucene's to the float; the run is given the same
tie convention before it is evaluated, so that like is compared with like (without it, NFCorpus's many duplicate
abstracts order differently: nDCG@10 0.3206 against 0.3218).
"""

import pytest

from conftest import DATA
from engine.evaluation import evaluate
from engine.index import open_index
from indexers.corpus import CorpusReader, open_source, read_qrels, read_queries
from indexers.writer import build_index

MEASURES = {"nDCG@10": "nDCG@10", "R@100": "R@100", "R@1000": "R@1000", "MAP": "AP", "RR": "RR"}


def reference_figures() -> dict[str, dict[str, float]]:
    """The Lucene BM25 table of ../shared/data/README.md, by collection."""
    readme = DATA / "README.md"
    if not readme.exists():
        return {}
    lines = readme.read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| collection | nDCG@10"))
    names = [cell.strip() for cell in lines[header].strip("|").split("|")]
    figures = {}
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        figures[cells[0]] = {MEASURES[n]: float(v) for n, v in zip(names[1:], cells[1:]) if n in MEASURES}
    return figures


def anserini_ties(hits) -> dict[str, float]:
    """A run in Anserini's order: scores rounded to four decimals, ties by document id (as strings)."""
    ranked = sorted(((round(h.score, 4), h.id) for h in hits), key=lambda pair: (-pair[0], pair[1]))
    return {doc_id: float(len(ranked) - rank) for rank, (_, doc_id) in enumerate(ranked)}


REFERENCE = reference_figures()


def test_the_reference_table_is_read():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent")
    assert {"scifact", "vaswani", "cranfield", "nfcorpus"} <= set(REFERENCE)
    assert REFERENCE["nfcorpus"] == {"nDCG@10": 0.3218, "R@100": 0.2457, "R@1000": 0.3704, "AP": 0.1504, "RR": 0.528}


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("collection", sorted(REFERENCE) or ["scifact"])
def test_bm25_matches_lucene(tmp_path, collection):
    folder = DATA / collection
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    # Lucene indexes Cranfield's empty documents as documents without terms: the same statistics as skipping them
    build_index(CorpusReader(open_source(folder), skip_bad=True), tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    queries = read_queries(folder / "queries.test.tsv")
    hits = index.batch_search([text for _, text in queries], 1000)
    run = {qid: anserini_ties(found) for (qid, _), found in zip(queries, hits)}
    measured = evaluate(run, read_qrels(folder / "qrels.test.txt")).to_dict()
    assert {m: measured[m] for m in REFERENCE[collection]} == REFERENCE[collection]


def test_analyzer_departures_from_snowball_porter_follow_lucene():
    """NFCorpus's French "Pharmacologie": Lucene's step 2 sees "pharmacologie" (its "e" goes in step 5), so the
    "logi" -> "log" departure must not apply."""
    from engine.analysis import Analyzer

    assert Analyzer().analyze("Pharmacologie pharmacology biologies Cosmétologie") == [
        "pharmacologi", "pharmacolog", "biologi", "cosmétologi"]  # fmt: skip
    assert Analyzer().analyze("technologies") == ["technolog"]
