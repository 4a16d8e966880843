"""What training reads: held-out validation queries (a fixed, reproducible subset of the judged queries, written in
the collection's formats, never among the mined examples) and the quality model's query-free examples."""

import json

import pytest

from indexers.corpus import read_qrels, read_queries
from indexers.train import ModelError, build_mining_index, hold_out, mine_examples, mine_quality_examples


@pytest.fixture
def beir(tmp_path):
    """30 documents; query i is judged relevant to document i (queries 25-29 have no judgement)."""
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "corpus.jsonl", "w") as corpus:
        for i in range(30):
            corpus.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"topic{i} shared words here"}) + "\n")
    (data / "queries.train.tsv").write_text("".join(f"q{i}\ttopic{i} words\n" for i in range(30)))
    (data / "qrels.train.txt").write_text("".join(f"q{i} 0 d{i} 1\n" for i in range(25)))
    return data


def test_held_out_queries_are_written_reproducible_and_judged(tmp_path, beir):
    held = hold_out(beir, "train", 8, tmp_path / "a")
    assert held == hold_out(beir, "train", 8, tmp_path / "b")
    assert len(held) == 8 and all(int(qid[1:]) < 25 for qid in held)  # only judged queries are held out
    assert dict(read_queries(tmp_path / "a" / "validation.queries.tsv")) == held
    assert read_qrels(tmp_path / "a" / "validation.qrels.txt") == {qid: {f"d{qid[1:]}": 1} for qid in held}


def test_held_out_queries_are_not_mined(tmp_path, beir):
    held = hold_out(beir, "train", 5, tmp_path / "model")
    index = build_mining_index(beir, tmp_path / "index", dense=False)
    mined = {example["query"] for example in mine_examples(beir, "train", index, "bm25", pool=3, exclude=set(held))}
    assert mined == {f"topic{i} words" for i in range(25)} - set(held.values())


@pytest.mark.parametrize("count", [0, 25, 40])
def test_hold_out_refuses_counts_that_leave_nothing(tmp_path, beir, count):
    with pytest.raises(ModelError, match="--hold-out takes 1 to 24 of the 25 judged train queries"):
        hold_out(beir, "train", count, tmp_path / "model")


def test_quality_examples_rank_judged_passages_above_unjudged_ones(tmp_path, beir):
    index = build_mining_index(beir, tmp_path / "index", dense=False)
    examples = mine_quality_examples(beir, "train", index, pool=4, seed=1)
    assert [e["positives"][0].split()[0] for e in examples] == sorted(f"topic{i}" for i in range(25))
    assert all(e["query"] == "" and len(e["negatives"]) == 4 for e in examples)
    unjudged = {f"topic{i} shared words here" for i in range(25, 30)}
    assert all(set(e["negatives"]) <= unjudged for e in examples)
    assert examples == mine_quality_examples(beir, "train", index, pool=4, seed=1)
