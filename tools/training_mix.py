"""Training examples for rerankers that must work on any corpus: a seeded mixture of every general source in
../shared/data, with hard negatives mined by Sift itself, and typo'd copies of a share of the queries.

    python -m tools.training_mix mix.jsonl [--per-source 400] [--typos 0.25] [--negatives 15]
    sift train cross-encoder --examples mix.jsonl --name general-ce ...
    python -m tools.training_mix quality-mix.jsonl --quality     # for `sift train quality --examples`

Sources (each capped at --per-source queries, drawn by a fixed seed):
- train-pairs/msmarco-devsmall-positives: the judged passage; negatives: BM25's top passages for the query over
  every passage of the train-pairs files (an index built here), the positive excluded;
- train-pairs/msmarco-assessed: graded BM25 top 20, label > 0 positive, 0 negative (the source's own hard negatives);
- train-pairs/wikiqa and trecqa: answer sentences against the question's other candidate sentences;
- nfcorpus train and scifact train: judged passages; negatives: BM25's top passages over the collection, judged ones
  excluded. SciFact's 200 validation queries (indexers.train.hold_out, as the SciFact model holds them out) and
  every test split stay out.
A typo'd copy (tools/typos.py: one word, one edit) replaces the query of a share of the examples, so the model
learns to rank for the query meant ("Dealing with Typos for BERT-based Passage Retrieval and Ranking").
Each line: {"query", "positives": [text], "negatives": [text, best first], "source"}.

With --quality, the same sources give a passage-quality model's supervision (QualT5, no query in its input): a
passage that answers some query (judged relevant) against passages of the same source that answer none, drawn at
random (hard negatives would teach topicality, which a query-free model cannot use).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from engine.index import open_index
from engine.reader import indexed_text
from indexers.corpus import CorpusReader, Document, open_source
from indexers.train import build_mining_index, hold_out, mine_examples, write_examples
from indexers.writer import build_index
from tools.typos import typo_query

# the shared collections, as the tests and benchmarks find them
DATA = Path(os.environ.get("SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
PAIR_FILES = ("msmarco-devsmall-positives", "msmarco-assessed", "wikiqa", "trecqa")
SEED = 7


def _rows(name: str) -> list[dict]:
    with gzip.open(DATA / "train-pairs" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _grouped(rows: list[dict]) -> dict[str, tuple[str, list[str], list[str]]]:
    """qid -> (query, positive texts, negative texts in the source's order)."""
    found: dict[str, tuple[str, list[str], list[str]]] = {}
    for row in rows:
        _, positives, negatives = found.setdefault(row["qid"], (row["query"], [], []))
        (positives if row["label"] > 0 else negatives).append(row["text"])
    return found


def _capped(examples: list[dict], cap: int, rng: random.Random) -> list[dict]:
    return examples if len(examples) <= cap else rng.sample(examples, cap)


def pair_examples(rows_by_file: dict[str, list[dict]], work: Path, cap: int, pool: int,
                  rng: random.Random) -> list[dict]:  # fmt: skip
    """The train-pairs sources as examples; queries without negatives get BM25 negatives from all their passages."""
    texts = sorted({row["text"] for rows in rows_by_file.values() for row in rows})
    build_index((Document(f"p{i}", text) for i, text in enumerate(texts)), work / "pairs")
    index = open_index(work / "pairs")
    examples = []
    for name, rows in rows_by_file.items():
        chosen = []
        for query, positives, negatives in _grouped(rows).values():
            if positives:
                chosen.append({"query": query, "positives": positives[:1], "negatives": negatives, "source": name})
        chosen = _capped(chosen, cap, rng)
        mine = [e for e in chosen if not e["negatives"]]
        for example, found in zip(mine, index.batch_search([e["query"] for e in mine], pool + 1)):
            passages = (texts[int(doc_id[1:])] for doc_id in found.ids)
            example["negatives"] = [text for text in passages if text != example["positives"][0]][:pool]
        examples += [e for e in chosen if e["negatives"]]
    return examples


def collection_examples(name: str, work: Path, cap: int, pool: int, rng: random.Random) -> list[dict]:
    """A judged collection's train split: one positive per query, BM25's other top passages as negatives."""
    data = DATA / name
    held = set(hold_out(data, "train", 200, work / f"{name}-held")) if name == "scifact" else set()
    index = build_mining_index(data, work / name, dense=False)
    examples = mine_examples(data, "train", index, "bm25", pool, held)
    for example in examples:
        example["positives"] = [rng.choice(example["positives"])]
        example["source"] = name
    return _capped(examples, cap, rng)


def training_mix(cap: int = 400, typos: float = 0.25, pool: int = 15) -> list[dict]:
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="sift-mix-") as work:
        examples = pair_examples({name: _rows(name) for name in PAIR_FILES}, Path(work), cap, pool, rng)
        for name in ("nfcorpus", "scifact"):
            if (DATA / name).is_dir():
                examples += collection_examples(name, Path(work), cap, pool, rng)
    typo_rng = random.Random(SEED + 1)
    for example in examples:
        if typo_rng.random() < typos:
            example["query"] = typo_query(example["query"], typo_rng)
            example["typo"] = True
    return [examples[i] for i in np.random.default_rng(SEED).permutation(len(examples))]


def _quality_examples(source: str, relevant: list[str], others: list[str], cap: int, pool: int,
                      rng: random.Random) -> list[dict]:  # fmt: skip
    others = sorted(set(others) - set(relevant))
    if not others:
        return []
    count = min(pool, len(others))
    return [{"query": "", "positives": [text], "negatives": rng.sample(others, count), "source": source}
            for text in _capped(sorted(set(relevant)), cap, rng)]  # fmt: skip


def quality_mix(cap: int = 400, pool: int = 15) -> list[dict]:
    """Examples for `sift train quality`: from each source, judged-relevant passages against random unjudged ones."""
    from indexers.train import judged_queries

    rng = random.Random(SEED)
    examples = []
    for name in PAIR_FILES:
        rows = _rows(name)
        relevant = [row["text"] for row in rows if row["label"] > 0]
        examples += _quality_examples(name, relevant, [row["text"] for row in rows], cap, pool, rng)
    for name in ("nfcorpus", "scifact"):
        data = DATA / name
        if not data.is_dir():
            continue
        judged, qrels = judged_queries(data, "train")
        wanted = {doc for qid, _ in judged for doc, grade in qrels[qid].items() if grade > 0}
        texts = {doc.id: indexed_text(doc.title, doc.text) for doc in CorpusReader(open_source(data), skip_bad=True)}
        relevant = [texts[doc] for doc in sorted(wanted) if doc in texts]
        examples += _quality_examples(name, relevant, list(texts.values()), cap, pool, rng)
    return [examples[i] for i in np.random.default_rng(SEED).permutation(len(examples))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT.jsonl")
    parser.add_argument("--per-source", type=int, default=400, help="queries per source at most (400)")
    parser.add_argument("--typos", type=float, default=0.25, help="share of queries typo'd (0.25)")
    parser.add_argument("--negatives", type=int, default=15, help="negatives kept per query, best first (15)")
    parser.add_argument("--quality", action="store_true", help="passage-quality examples (see above)")
    args = parser.parse_args(argv)
    if args.quality:
        examples = quality_mix(args.per_source, args.negatives)
    else:
        examples = training_mix(args.per_source, args.typos, args.negatives)
    write_examples(Path(args.out), examples)
    counts: dict[str, int] = defaultdict(int)
    for example in examples:
        counts[example["source"]] += 1
    print(f"{len(examples):,} examples -> {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
