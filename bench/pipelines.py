"""First-stage pipelines on the shared collections: nDCG@10, R@100, R@1000 of each pipeline on indexes already built
with their neural parts, with a paired t-test of nDCG@10 against BM25.

    sift index ../shared/data/scifact/corpus.jsonl.gz idx/scifact --dense --splade
    sift tune idx/scifact --queries ../shared/data/scifact/queries.train.tsv \\
        --qrels ../shared/data/scifact/qrels.train.txt --out hybrid.json
    python3 -m bench.pipelines --index scifact=idx/scifact --index vaswani=idx/vaswani \\
        --pipeline bm25 --pipeline dense --pipeline splade --pipeline hybrid.json

Pipelines are named as `sift eval --pipeline` takes them; a pipeline file is read once and used on every collection
(weights are tuned on SciFact train only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.harness import DATA, publish
from engine.evaluation import compare, evaluate
from engine.index import open_index
from engine.pipeline import Pipeline, parse
from indexers.corpus import read_qrels, read_queries


def run(indexes: dict[str, Path], pipelines: list[str], depth: int = 1000) -> dict:
    rows = []
    for collection, index_dir in indexes.items():
        index = open_index(index_dir)
        queries = read_queries(DATA / collection / "queries.test.tsv")
        qrels = read_qrels(DATA / collection / "qrels.test.txt")
        baseline = None
        for expression in pipelines:
            pipeline = Pipeline(index, parse(expression))
            found = pipeline.search([text for _, text in queries], depth)
            evaluation = evaluate({qid: dict(zip(r.ids, r.scores.tolist())) for (qid, _), r in zip(queries, found)},
                                  qrels)  # fmt: skip
            baseline = baseline or evaluation
            row = {"collection": collection, "pipeline": str(pipeline.stage), **evaluation.to_dict()}
            if evaluation is not baseline:
                row["vs_first"] = compare(baseline, evaluation).to_dict()
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("collection", "pipeline", "nDCG@10")}), flush=True)
    return {"pipelines": pipelines, "depth": depth, "results": rows}


def render(report: dict) -> str:
    first = report["pipelines"][0]
    lines = [
        "# First-stage pipelines on the shared collections",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores; onnxruntime "
        f"{report['software']['onnxruntime']}, faiss-cpu {report['software']['faiss-cpu']}",
        "",
        f"Test queries, {report['depth']} results each; p: paired t-test of nDCG@10 against `{first}` on the same "
        "collection. Indexes built by `sift index C idx/C --dense --splade` (all-MiniLM-L6-v2 fp32, faiss flat; "
        "SPLADE-tiny impacts quantized to 1/100); fusion weights chosen by `sift tune` on SciFact train only and "
        "the same pipeline file used on every collection.",
        "",
        "| collection | pipeline | nDCG@10 | p vs first | R@100 | R@1000 |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        p = row["vs_first"]["p_value"] if "vs_first" in row else None
        p = "" if p is None else "< 0.0001" if p < 1e-4 else f"{p:.4f}"
        lines.append(f"| {row['collection']} | {row['pipeline']} | {row['nDCG@10']:.4f} | {p} | {row['R@100']:.4f} | "
                     f"{row['R@1000']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", action="append", required=True, metavar="COLLECTION=INDEX_DIR",
                        help="a collection under ../shared/data and its index (repeatable)")  # fmt: skip
    parser.add_argument("--pipeline", action="append", required=True, help="a pipeline (repeatable; first: baseline)")
    parser.add_argument("--name", default="pipelines", help="results file stem under bench/results")
    args = parser.parse_args(argv)
    indexes = {c: Path(p) for c, p in (item.split("=", 1) for item in args.index)}
    publish(args.name, run(indexes, args.pipeline), render)


if __name__ == "__main__":
    main()
