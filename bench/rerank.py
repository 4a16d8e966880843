"""Reranked pipelines on the shared collections: nDCG@10 of each first stage alone and followed by each reranker at a
depth, with paired t-tests against the first stage it reranks; the interpolation weight (mix) of each (first stage,
reranker) chosen on held-out training queries only.

    python3 -m bench.rerank --index scifact=idx/scifact --index vaswani=idx/vaswani --first bm25 \\
        --first hybrid.json --reranker scifact-ce --reranker scifact-t5 \\
        --validation scifact:VAL.queries.tsv:VAL.qrels.txt

Scoring 100 passages of 300-500 tokens per query is the slow part on a CPU (about 13 pairs/s on two cores for a
MiniLM-L6 at 512 tokens). `--pairs DIR` takes the candidate pairs' scores computed elsewhere by the same model's
PyTorch checkpoint (a GPU; `--export-pairs DIR` writes the pairs to score): a sample of them is checked against the
ONNX reranker here, and the largest difference is reported with the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.harness import DATA, publish
from engine.evaluation import compare, evaluate
from engine.index import Index, open_index
from engine.pipeline import Pipeline, Rerank, parse
from engine.reader import Results
from engine.rerank import CachedScorer, PairScorer, load_reranker
from indexers.corpus import read_qrels, read_queries
from tools.typos import typo_queries

MIX_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class ScoredPairs:
    """A reranker's scores computed elsewhere, looked up by (query, passage text)."""

    def __init__(self, scores: dict[tuple[str, str], float]) -> None:
        self.scores = scores

    def score(self, query: str, passages) -> np.ndarray:
        return np.array([self.scores[(query, text)] for text in passages], dtype=np.float32)


def _first_stages(index: Index, queries: list[str], firsts: list[str], depth: int) -> dict[str, list[Results]]:
    return {str(parse(f)): Pipeline(index, parse(f)).search(queries, max(depth, 1000)) for f in firsts}


def _run(found: list[Results], queries: list[tuple[str, str]]) -> dict:
    return {qid: dict(zip(r.ids, r.scores.tolist())) for (qid, _), r in zip(queries, found)}


def export_pairs(indexes: dict[str, Path], firsts: list[str], depth: int, validation: dict, out: Path) -> None:
    """Every (query, passage) a reranker would score, with the texts, for scoring elsewhere."""
    out.mkdir(parents=True, exist_ok=True)
    for name, queries, _, index in _query_sets(indexes, validation):
        texts = [t for _, t in queries]
        pairs = sorted({(qi, int(p)) for results in _first_stages(index, texts, firsts, depth).values()
                        for qi, r in enumerate(results) for p in r.passages[:depth]})  # fmt: skip
        passages = sorted({p for _, p in pairs})
        record = {"queries": texts, "passages": dict(zip(map(str, passages), index.texts(np.array(passages)))),
                  "pairs": pairs}  # fmt: skip
        (out / f"{name}.json").write_text(json.dumps(record), encoding="utf-8")
        print(f"{name}: {len(pairs):,} pairs over {len(passages):,} passages", flush=True)


def _query_sets(indexes: dict[str, Path], validation: dict, typos: bool = False):
    """(name, queries, qrels, index) for each collection's test queries (each with one typo, tools.typos' seeded
    generator, when asked) and the validation set."""
    for collection, index_dir in indexes.items():
        index = open_index(index_dir)
        if collection in validation:
            queries_path, qrels_path = validation[collection]
            yield f"{collection}-validation", read_queries(queries_path), read_qrels(qrels_path), index
        data = DATA / collection
        queries = read_queries(data / "queries.test.tsv")
        yield collection, typo_queries(queries) if typos else queries, read_qrels(data / "qrels.test.txt"), index


def _load_pairs(directory: Path, name: str, model: str) -> ScoredPairs:
    record = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    scores = np.load(directory / f"{name}.{model}.npy")
    keys = [(record["queries"][qi], record["passages"][str(p)]) for qi, p in record["pairs"]]
    return ScoredPairs(dict(zip(keys, scores.tolist())))


def _check_sample(pairs: ScoredPairs, reranker: PairScorer, count: int = 64) -> float:
    """Largest |precomputed - ONNX Runtime| over a fixed sample of the pairs."""
    keys = sorted(pairs.scores)[:: max(1, len(pairs.scores) // count)][:count]
    worst = 0.0
    for query, text in keys:
        here = reranker.score(query, [text])[0]
        worst = max(worst, abs(float(here) - pairs.scores[(query, text)]))
    return worst


def run(indexes: dict[str, Path], firsts: list[str], rerankers: list[str], depth: int, validation: dict,
        pairs_dir: Path | None, typos: bool = False) -> dict:  # fmt: skip
    rows, checks = [], {}
    tried: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (first, reranker) -> (mix, validation nDCG@10)
    # each pair is scored once, whichever first stages and mixes ask for it
    onnx = {name: CachedScorer(load_reranker(name), capacity=10_000_000) for name in rerankers}
    for name, queries, qrels, index in _query_sets(indexes, validation, typos):
        texts = [t for _, t in queries]
        first = _first_stages(index, texts, firsts, depth)
        for first_name, found in first.items():
            base = evaluate(_run(found, queries), qrels)
            if not name.endswith("-validation"):
                rows.append({"collection": name, "pipeline": first_name, **base.to_dict()})
            for model in rerankers:
                scorer = onnx[model]
                if pairs_dir is not None:
                    scorer = _load_pairs(pairs_dir, name, model)
                    checks.setdefault(model, _check_sample(scorer, onnx[model]))
                validating = name.endswith("-validation")
                grid = MIX_GRID if validating else (0.0, _chosen(tried, first_name, model))
                for mix in dict.fromkeys(grid):
                    stage = Rerank(index, scorer, depth, mix or None, model)
                    reranked = [stage.rerank(q, r) for q, r in zip(texts, found)]
                    evaluation = evaluate(_run(reranked, queries), qrels)
                    if validating:
                        tried.setdefault((first_name, model), []).append((mix, evaluation.means["nDCG@10"]))
                        continue
                    rows.append({"collection": name, "pipeline": f"{first_name} >> {stage}", **evaluation.to_dict(),
                                 "vs_first": compare(base, evaluation).to_dict()})  # fmt: skip
                    print(json.dumps({"collection": name, "pipeline": rows[-1]["pipeline"],
                                      "nDCG@10": rows[-1]["nDCG@10"]}), flush=True)  # fmt: skip
    return {"depth": depth, "typos": typos, "rerankers": rerankers, "firsts": [str(parse(f)) for f in firsts],
            "mix": [{"first": f, "reranker": m, "mix": _chosen(tried, f, m), "validation": v}
                    for (f, m), v in tried.items()],
            "validation": {k: [str(p) for p in v] for k, v in validation.items()},
            "precomputed": str(pairs_dir) if pairs_dir else None, "precomputed_max_difference": checks,
            "results": rows}  # fmt: skip


def _chosen(tried: dict, first: str, model: str) -> float:
    """The mix with the best validation nDCG@10 (the smaller on ties); 0 without validation queries."""
    values = tried.get((first, model), [(0.0, 0.0)])
    return max(values, key=lambda item: (item[1], -item[0]))[0]


def render(report: dict) -> str:
    lines = [
        "# Reranking on the shared collections",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores; onnxruntime "
        f"{report['software']['onnxruntime']}",
        "",
        ("Test queries, each with one typo (tools/typos.py, seed 0); " if report.get("typos") else "Test queries; ")
        + f"each reranker rescores the first stage's top {report['depth']}; p: paired t-test of nDCG@10 "
        "against the first stage it reranks. mix: weight of the first stage's min-max normalized score, chosen on "
        f"held-out training queries ({report['validation']}) only: "
        + ", ".join(f"{m['first']} >> {m['reranker']}: {m['mix']}" for m in report["mix"]) + ".",
    ]
    if report["precomputed"]:
        lines += ["", "Pair scores precomputed outside this run (by each model's PyTorch checkpoint in fp32 on a GPU, "
                  "or by the ONNX reranker in a separate run); a sample checked against the ONNX reranker here, "
                  "largest difference: "
                  + ", ".join(f"{m} {d:.2g}" for m, d in report["precomputed_max_difference"].items()) + "."]
    lines += ["", "| collection | pipeline | nDCG@10 | delta | p | R@100 |", "|---|---|---|---|---|---|"]
    for row in report["results"]:
        versus = row.get("vs_first")
        delta = f"{versus['delta']:+.4f}" if versus else ""
        p = "" if not versus or versus["p_value"] is None else (
            "< 0.0001" if versus["p_value"] < 1e-4 else f"{versus['p_value']:.4f}")
        lines.append(f"| {row['collection']} | {row['pipeline']} | {row['nDCG@10']:.4f} | {delta} | {p} | "
                     f"{row['R@100']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", action="append", required=True, metavar="COLLECTION=INDEX_DIR")
    parser.add_argument("--first", action="append", required=True, help="a first-stage pipeline (repeatable)")
    parser.add_argument("--reranker", action="append", default=[], help="a registered reranker (repeatable)")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--validation", action="append", default=[], metavar="COLLECTION:QUERIES:QRELS",
                        help="held-out training queries on which the mix weights are chosen")  # fmt: skip
    parser.add_argument("--pairs", type=Path, help="precomputed pair scores (see --export-pairs)")
    parser.add_argument("--export-pairs", type=Path, metavar="DIR", help="write the pairs to score, and stop")
    parser.add_argument("--name", default="rerank")
    parser.add_argument("--typos", action="store_true", help="give every test query one typo (tools.typos, seed 0)")
    args = parser.parse_args(argv)
    indexes = {c: Path(p) for c, p in (item.split("=", 1) for item in args.index)}
    validation = {c: (Path(q), Path(r)) for c, q, r in (item.split(":", 2) for item in args.validation)}
    if args.export_pairs:
        export_pairs(indexes, args.first, args.depth, validation, args.export_pairs)
        return
    publish(args.name, run(indexes, args.first, args.reranker, args.depth, validation, args.pairs, args.typos), render)


if __name__ == "__main__":
    main()
