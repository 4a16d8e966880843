"""Typo robustness on the shared collections: each collection's test queries clean, with one typo each (seeded:
tools/typos.py, the kinds of Zhuang and Zuccon, 2021), and typo'd then corrected (`typos="auto"`, engine/typos.py),
for BM25, dense and hybrid:

    python3 -m bench.typos [--collections scifact,vaswani,cranfield] [--pipelines bm25,dense,hybrid] [--seed 0]

Reported: nDCG@10 of each; the loss typos cause and its paired t-test; the share of that loss the correction
recovers and its paired t-test against the typo'd queries; and whether correcting clean queries leaves them
equivalent (TOST, paired, margin 5% of the clean nDCG@10).
"""

from __future__ import annotations

import argparse
import shutil

from bench.harness import DATA, WORK, publish
from engine.evaluation import compare, equivalence, evaluate
from engine.index import open_index
from engine.models import resolve
from engine.pipeline import Pipeline
from engine.typos import correct
from indexers.corpus import CorpusReader, open_source, read_qrels, read_queries
from indexers.writer import build_dense, build_index
from tools.typos import typo_queries

DENSE_MODEL = "all-minilm-l6-v2-onnx-int8"


def run_collection(name: str, pipelines: list[str], seed: int) -> dict:
    folder = DATA / name
    path = WORK / "typos" / name
    shutil.rmtree(path, ignore_errors=True)
    build_index(CorpusReader(open_source(next(folder.glob("corpus.*"))), skip_bad=True), path)
    if any(p != "bm25" for p in pipelines):
        build_dense(path, DENSE_MODEL)
    index = open_index(path)
    queries = read_queries(folder / "queries.test.tsv")
    qrels = read_qrels(folder / "qrels.test.txt")
    typoed = typo_queries(queries, seed)
    analyzer = index.bm25.analyzer
    variants = {
        "clean": [text for _, text in queries],
        "typo": [text for _, text in typoed],
        "typo_corrected": [correct(analyzer, index.segments, text) for _, text in typoed],
        "clean_corrected": [correct(analyzer, index.segments, text) for _, text in queries],
    }
    changed = sum(a != b for a, b in zip(variants["clean"], variants["typo"]))
    rows = {}
    for expression in pipelines:
        pipeline = Pipeline(index, expression)
        evaluations = {}
        for variant, texts in variants.items():
            results = pipeline.search(texts, 10)
            run = {qid: dict(found.pairs()) for (qid, _), found in zip(queries, results)}
            evaluations[variant] = evaluate(run, qrels, ["nDCG@10"])
        clean, typo, fixed = (evaluations[v].means["nDCG@10"] for v in ("clean", "typo", "typo_corrected"))
        loss = compare(evaluations["clean"], evaluations["typo"])
        gain = compare(evaluations["typo"], evaluations["typo_corrected"])
        same = equivalence(evaluations["clean"], evaluations["clean_corrected"])
        rows[expression] = {
            "clean": round(clean, 4), "typo": round(typo, 4), "typo_corrected": round(fixed, 4),
            "clean_corrected": round(evaluations["clean_corrected"].means["nDCG@10"], 4),
            "loss_p": loss.p_value, "gain_p": gain.p_value,
            "recovered": round((fixed - typo) / (clean - typo), 3) if clean > typo else None,
            "clean_equivalent": same.equivalent, "tost_p": same.p_value,
        }  # fmt: skip
    return {"queries": len(queries), "typo_changed": changed, "pipelines": rows,
            "examples": list(zip(variants["clean"][:3], variants["typo"][:3], variants["typo_corrected"][:3]))}


def render(report: dict) -> str:
    lines = [
        "# Typo robustness: clean, typo'd and corrected queries",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores. Each test query "
        f"gets one typo (seed {report['seed']}, tools/typos.py: insertion, deletion, substitution, transposition "
        "or QWERTY neighbour in one non-stopword of 3+ letters); `typos=\"auto\"` replaces each word the index does "
        "not hold by the held word one edit away that the index holds most often. nDCG@10; p: paired t-tests "
        "(typo'd vs clean; corrected vs typo'd); recovered: share of the loss the correction wins back; clean ≡: "
        "correcting clean queries is TOST-equivalent (margin 5%).",
        "",
        "| collection | pipeline | clean | typo'd | p | typo'd + corrected | p | recovered | clean corrected | "
        "clean ≡ (p) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, collection in report["collections"].items():
        for expression, row in collection["pipelines"].items():
            lines.append(f"| {name} | {expression} | {row['clean']} | {row['typo']} | {row['loss_p']:.2g} | "
                         f"{row['typo_corrected']} | {row['gain_p']:.2g} | {row['recovered']} | "
                         f"{row['clean_corrected']} | {'yes' if row['clean_equivalent'] else 'no'} "
                         f"({row['tost_p']:.2g}) |")  # fmt: skip
    lines += ["", "Examples (clean → typo'd → corrected):", ""]
    for name, collection in report["collections"].items():
        for clean, typo, fixed in collection["examples"]:
            lines.append(f"- {name}: `{clean}` → `{typo}` → `{fixed}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", default="scifact,vaswani,cranfield")
    parser.add_argument("--pipelines", default="bm25,dense,hybrid")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pipelines = args.pipelines.split(",")
    if any(p != "bm25" for p in pipelines):
        resolve(DENSE_MODEL)  # a clear error now if the model is not installed
    names = [n for n in args.collections.split(",") if (DATA / n).is_dir()]
    report = {"seed": args.seed, "collections": {n: run_collection(n, pipelines, args.seed) for n in names}}
    publish("typos", report, render)


if __name__ == "__main__":
    main()
