"""Queries as people write them, measured on the shared collections (each built with and without positions):

    python3 -m bench.queries [--collections scifact,vaswani,cranfield,debian]

- the positional index's size, against the same index without positions;
- speed, one thread, each collection's test queries: plain BM25 top-10; the same as a phrase of their first two
  words ("w1 w2", lucene syntax); top-10 with snippets against without;
- fuzzy terms: each query's first kept word as `word~1`, and the time one expansion over the vocabulary takes;
- fields: nDCG@10 and QPS of the words searched over title and text as fields of their own (each its own BM25,
  summed, with boosts) against the default (contents: title and text together, Lucene's parity index), with paired
  t-tests;
- Adaptive-k (k="auto", the largest score gap among the best 100) against fixed k for BM25, dense and hybrid (the
  last two when the dense model is installed): mean passages returned, recall of the relevant ones among them
  (R@100 of the cut ranking), nDCG@10 of the cut ranking.
"""

from __future__ import annotations

import argparse
import shutil
import time
from functools import partial

from bench.first_stage import installed_debian_documents, sampled_queries
from bench.harness import DATA, WORK, directory_bytes, publish
from engine.analysis import Analyzer
from engine.evaluation import compare, evaluate
from engine.index import open_index
from engine.models import ModelError, resolve
from engine.pipeline import Pipeline
from engine.reader import ADAPTIVE_CANDIDATES, adaptive_k
from engine.typos import expand
from indexers.corpus import CorpusReader, Document, open_source, read_qrels, read_queries
from indexers.inverted import BuildOptions
from indexers.writer import build_dense, build_index

DENSE_MODEL = "all-minilm-l6-v2-onnx-int8"

FIXED_K = (1, 3, 5, 10, 20)
DEBIAN_QUERIES = 1000
FIELD_QUERIES = 300  # timed over fields (each term's positions are read: the slowest queries here)
FIELD_CHOICES = ("contents", "title,text", "title^2,text", "contents,title")


def _qps(search, queries: list[str], rounds: int = 3) -> float:
    for query in queries[:20]:
        search(query)
    started = time.perf_counter()
    for _ in range(rounds):
        for query in queries:
            search(query)
    return rounds * len(queries) / (time.perf_counter() - started)


def _first_word(index, text: str) -> str | None:
    words = [w.lower() for w in index.bm25.analyzer.tokenize(text) if index.bm25.analyzer.analyze(w)]
    return words[0] if words else None


def _phrase(index, text: str) -> str | None:
    """The query's first two words that the analyzer keeps, as a phrase."""
    words = [w for w in index.bm25.analyzer.tokenize(text) if index.bm25.analyzer.analyze(w)][:2]
    return '"' + " ".join(w.replace('"', "") for w in words) + '"' if len(words) == 2 else None


def _documents(name: str):
    """(documents to index, afresh each call; queries; qrels or None): a shared collection's test split, or the
    Debian passages (tools/debian_corpus.py) with bench.first_stage's seeded queries and no judgments."""
    if name == "debian":
        records = list(installed_debian_documents())
        queries = sampled_queries(records, DEBIAN_QUERIES, Analyzer().analyze)
        return lambda: (Document(r["_id"], r["text"], title=r["title"]) for r in records), queries, None
    folder = DATA / name
    corpus = next(folder.glob("corpus.*"))
    documents = partial(CorpusReader, open_source(corpus), skip_bad=True)
    return documents, read_queries(folder / "queries.test.tsv"), read_qrels(folder / "qrels.test.txt")


def run_collection(name: str) -> dict:
    documents, queries, qrels = _documents(name)
    sizes = {}
    for positions in (False, True):
        path = WORK / "queries" / f"{name}-{'positions' if positions else 'plain'}"
        shutil.rmtree(path, ignore_errors=True)
        build_index(documents(), path, BuildOptions(positions=positions))
        sizes[positions] = directory_bytes(path)
    pipelines = ["bm25"]
    try:
        if qrels is not None:
            resolve(DENSE_MODEL)
            build_dense(path, DENSE_MODEL)
            pipelines += ["dense", "hybrid"]
    except ModelError:
        pass
    index = open_index(path)
    texts = [text for _, text in queries]
    phrases = [p for p in (_phrase(index, t) for t in texts) if p]
    row = {
        "documents": index.documents, "queries": len(queries),
        "index_mb": round(sizes[False] / 2**20, 2), "with_positions_mb": round(sizes[True] / 2**20, 2),
        "positions_cost": round(sizes[True] / sizes[False], 3),
        "qps_bm25": round(_qps(lambda q: index.search(q, 10), texts), 1),
        "qps_phrase": round(_qps(lambda q: index.search(q, 10, syntax="lucene"), phrases), 1),
        "phrase_queries": len(phrases),
    }  # fmt: skip
    plain = _qps(lambda q: index.search(q, 10), texts)
    with_text = _qps(lambda q: [index.fetch(hit.passage) for hit in index.search(q, 10)], texts)
    with_snippets = _qps(lambda q: index.snippets(index.search(q, 10), q), texts)
    row["snippet_cost"] = round(with_text / with_snippets, 2)
    row["snippet_cost_bare"] = round(plain / with_snippets, 2)
    words = [w for w in (_first_word(index, t) for t in texts) if w]
    row["qps_fuzzy"] = round(_qps(lambda w: index.search(f"{w}~1", 10, syntax="lucene"), words), 1)
    started = time.perf_counter()
    for word in words:
        expand(index.segments, index.bm25.analyzer.analyze(word)[0], 2)
    row["expand2_ms"] = round((time.perf_counter() - started) / len(words) * 1000, 3)
    row["vocabulary"] = sum(len(segment.terms) for segment in index.segments)
    row["fields"] = {}
    baseline = None
    for spec in FIELD_CHOICES:
        qps = _qps(lambda q, spec=spec: index.search(q, 10, fields=spec), texts[:FIELD_QUERIES], rounds=1)
        row["fields"][spec] = {"qps": round(qps, 1), "ndcg10": "", "p_value": ""}
        if qrels is not None:
            run = {qid: dict(index.search(text, 10, fields=spec).pairs()) for qid, text in queries}
            measured = evaluate(run, qrels, ["nDCG@10"])
            baseline = baseline or measured
            row["fields"][spec].update(ndcg10=round(measured.means["nDCG@10"], 4),
                                       p_value=round(compare(baseline, measured).p_value, 4))  # fmt: skip
    row["cutoffs"] = {}
    for expression in pipelines if qrels is not None else ():
        found = Pipeline(index, expression).search(texts, ADAPTIVE_CANDIDATES)
        ranked = {qid: r for (qid, _), r in zip(queries, found)}
        cuts = {"auto": {qid: adaptive_k(r.scores) for qid, r in ranked.items()}}
        cuts.update({str(k): dict.fromkeys(ranked, k) for k in FIXED_K})
        for label, chosen in cuts.items():
            run = {qid: dict(r.head(chosen[qid]).pairs()) for qid, r in ranked.items()}
            measures = evaluate(run, qrels, ["nDCG@10", "R@100"]).means
            returned = sum(len(run[qid]) for qid in run) / len(run)
            row["cutoffs"][f"{expression} {label}"] = {"mean_k": round(returned, 2), "recall": round(
                measures["R@100"], 4), "ndcg10": round(measures["nDCG@10"], 4)}  # fmt: skip
    return row


def render(report: dict) -> str:
    lines = [
        "# Queries: positions, phrases, snippets and Adaptive-k",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores; one thread; "
        "each collection's test queries (debian: the Debian passages of tools/debian_corpus.py, with "
        f"{DEBIAN_QUERIES:,} seeded queries sampled from them and up to 200 more holding two frequent terms, as "
        "bench.first_stage draws them; no judgments, so speed only). Phrase queries: each query's first two kept "
        "words as a phrase (lucene syntax). Snippet cost: top-10 with snippets ÷ top-10 with its stored texts "
        "(what a results page shows anyway), and ÷ top-10 alone (ids and scores).",
        "",
        "| collection | documents | index MB | with positions MB | size × | BM25 top-10 QPS | phrase QPS "
        "(queries) | fuzzy word~1 QPS | expansion, 2 edits (ms; terms) | snippet cost (÷ with texts / ÷ alone) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["collections"].items():
        lines.append(f"| {name} | {row['documents']:,} | {row['index_mb']} | {row['with_positions_mb']} | "
                     f"{row['positions_cost']}× | {row['qps_bm25']:,} | {row['qps_phrase']:,} "
                     f"({row['phrase_queries']}) | {row['qps_fuzzy']:,} | {row['expand2_ms']} "
                     f"({row['vocabulary']:,}) | {row['snippet_cost']}× / {row['snippet_cost_bare']}× |")  # fmt: skip
    lines += ["", "Fields: each query's words searched in the fields named (title, text: each its own BM25 with its "
              "own statistics, the scores summed with the boosts given; contents: title and text together, the "
              "default and Lucene's parity index). p: paired t-test against contents.", "",
              "| collection | fields | nDCG@10 | p | top-10 QPS |", "|---|---|---|---|---|"]  # fmt: skip
    for name, row in report["collections"].items():
        for spec, measured in row["fields"].items():
            lines.append(f"| {name} | {spec} | {measured['ndcg10']} | {measured['p_value']} | {measured['qps']:,} |")
    lines += ["", "Adaptive-k: passages returned per query, recall of the relevant ones among them, nDCG@10 of the "
              "cut ranking.", "", "| collection | pipeline | cut | mean k | recall | nDCG@10 |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in report["collections"].items():
        for label, cut in row["cutoffs"].items():
            expression, k = label.split(" ")
            lines.append(f"| {name} | {expression} | {'auto' if k == 'auto' else 'k=' + k} | {cut['mean_k']} | "
                         f"{cut['recall']} | {cut['ndcg10']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", default="scifact,vaswani,cranfield,debian",
                        help="shared collections, and debian: the Debian passages (speed only; no judgments)")
    args = parser.parse_args(argv)
    names = [n for n in args.collections.split(",") if n == "debian" or (DATA / n).is_dir()]
    publish("queries", {"collections": {name: run_collection(name) for name in names}}, render)


if __name__ == "__main__":
    main()
