"""Static pruning sweep: for each quality estimator and pruning rate, the index is rebuilt without the lowest-scoring
passages and each pipeline's nDCG@10 on the test queries is tested for equivalence with the unpruned index (two
one-sided paired t-tests, margin a share of the unpruned mean), beside the index size and indexing time saved.

    sift bench pruning --collection ../shared/data/scifact [--json]

BM25 indexes are really rebuilt at every rate (its statistics change with what is kept). Dense vectors are encoded
once for the whole collection and reused by every pruned index (a pruned passage is never encoded, so a pruned
index's encoding time is the kept share of the measured full encoding: reported as such).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from bench.harness import DATA, WORK, directory_bytes, publish
from engine.analysis import AnalyzerConfig
from engine.evaluation import equivalence, evaluate
from engine.index import open_index
from engine.pipeline import Pipeline, parse
from indexers.corpus import CorpusReader, open_source, read_qrels, read_queries
from indexers.inverted import build_index
from indexers.neural import build_dense
from indexers.quality import ESTIMATORS, PruneSpec, ScoreCache, pruned_keys, score_passages, split_all

RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
PIPELINES = ("bm25", "dense", "hybrid(bm25,dense,alpha=0.5)")


class CachedEncoder:
    """The bi-encoder's vectors for every passage, computed once, looked up by text."""

    def __init__(self, name: str, vectors: dict[str, np.ndarray]) -> None:
        self.name, self.vectors = name, vectors

    def encode(self, texts, batch_size: int = 32, query: bool = False, on_progress=None) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def _collection(path: str) -> Path:
    folder = Path(path)
    return folder if folder.is_dir() else DATA / path


def run(collection: Path, estimators: list[str], rates: list[float], pipelines: list[str], margin: float,
        alpha: float, model: str = "all-minilm-l6-v2") -> dict:  # fmt: skip
    from engine.encoders import BiEncoder

    work = WORK / "pruning" / collection.name
    work.mkdir(parents=True, exist_ok=True)
    source = open_source(collection)
    passages = split_all(CorpusReader(source, skip_bad=True), AnalyzerConfig(), 0, 0)
    queries = read_queries(collection / "queries.test.tsv")
    qrels = read_qrels(collection / "qrels.test.txt")
    texts = [p.indexed_text for p in passages]
    dense = any("dense" in p for p in pipelines)
    encoder = None
    full_encode_seconds = 0.0
    if dense:
        started = time.perf_counter()
        real = BiEncoder(model)
        vectors = real.encode(texts)
        full_encode_seconds = time.perf_counter() - started
        encoder = CachedEncoder(real.name, dict(zip(texts, vectors)))
    cache = ScoreCache(work / "quality")
    throughput = {}
    results, baselines = [], {}
    for name in estimators:
        started = time.perf_counter()
        keys, scores, scored = score_passages(passages, name, cache)
        seconds = time.perf_counter() - started
        throughput[name] = {"passages_per_second": round(scored / seconds, 1) if scored else None, "scored": scored}
        for rate in rates:
            if rate == 0 and baselines:
                results += [{**row, "estimator": name} for row in baselines.values()]
                continue
            pruned = pruned_keys(keys, scores, PruneSpec(name, rate=rate))
            index_dir = work / "index"
            shutil.rmtree(index_dir, ignore_errors=True)
            started = time.perf_counter()
            build_index(CorpusReader(source, skip_bad=True), index_dir, pruned=pruned,
                        pruning={"estimator": name, "rate": rate})  # fmt: skip
            index_seconds = time.perf_counter() - started
            kept = len(passages) - len(pruned)
            if dense:
                build_dense(index_dir, model, "flat", encoder=encoder)
                index_seconds += full_encode_seconds * kept / len(passages)
            index = open_index(index_dir)
            for expression in pipelines:
                found = Pipeline(index, parse(expression)).search([t for _, t in queries], 1000)
                evaluation = evaluate({q: dict(zip(r.ids, r.scores.tolist())) for (q, _), r in zip(queries, found)},
                                      qrels)  # fmt: skip
                row = {"estimator": name, "pipeline": expression, "rate": rate, "passages": kept,
                       "nDCG@10": round(evaluation.means["nDCG@10"], 4), "index_bytes": directory_bytes(index_dir),
                       "index_seconds": round(index_seconds, 3), "_evaluation": evaluation}  # fmt: skip
                if rate == 0:
                    baselines[expression] = row
                test = equivalence(baselines[expression]["_evaluation"], evaluation, margin=margin, alpha=alpha)
                row.update(tost_equivalent=bool(test.equivalent), tost_p=round(test.p_value, 6))
                results.append(row)
                print(json.dumps({k: v for k, v in row.items() if not k.startswith("_")}), flush=True)
    for row in results:
        row.pop("_evaluation", None)
    return {"collection": collection.name, "margin": margin, "alpha": alpha, "passages": len(passages),
            "dense_encode_passages_per_second": round(len(passages) / full_encode_seconds, 1) if dense else None,
            "quality_throughput": throughput, "results": results}  # fmt: skip


def render(report: dict) -> str:
    rates = sorted({r["rate"] for r in report["results"]})
    lines = [f"# Static pruning by passage quality: {report['collection']}", "",
             f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores. Test queries; "
             f"nDCG@10 after pruning the lowest-quality share of {report['passages']:,} passages; * = equivalent to "
             f"the unpruned index by TOST (margin {report['margin']:.0%} of its nDCG@10, alpha {report['alpha']}).",
             "", "| estimator | pipeline | " + " | ".join(f"{r:.0%}" for r in rates) + " | largest equivalent |",
             "|---|---|" + "---|" * (len(rates) + 1)]  # fmt: skip
    rows: dict[tuple[str, str], dict[float, dict]] = {}
    for row in report["results"]:
        rows.setdefault((row["estimator"], row["pipeline"]), {})[row["rate"]] = row
    for (name, pipeline), by_rate in rows.items():
        cells = [f"{by_rate[r]['nDCG@10']:.4f}{'*' if by_rate[r]['tost_equivalent'] else ''}" if r in by_rate else ""
                 for r in rates]  # fmt: skip
        largest = max((r for r in rates if r in by_rate and all(by_rate[s]["tost_equivalent"] for s in rates
                                                                if s <= r and s in by_rate)), default=0.0)  # fmt: skip
        lines.append(f"| {name} | {pipeline} | " + " | ".join(cells) + f" | {largest:.0%} |")
    lines += ["", "| estimator | quality scoring (passages/s) |", "|---|---|"]
    lines += [f"| {n} | {t['passages_per_second']} |" for n, t in report["quality_throughput"].items()]
    if report["dense_encode_passages_per_second"]:
        lines.append(f"| (dense encoding, all-MiniLM-L6-v2) | {report['dense_encode_passages_per_second']} |")
    size = {(r["estimator"], r["rate"]): (r["index_bytes"], r["index_seconds"]) for r in report["results"]}
    lines += ["", "| estimator | rate | index bytes | vs unpruned | indexing seconds | vs unpruned |",
              "|---|---|---|---|---|---|"]
    for (name, rate), (nbytes, seconds) in sorted(size.items()):
        base_bytes, base_seconds = size.get((name, 0.0), (nbytes, seconds))
        lines.append(f"| {name} | {rate:.0%} | {nbytes:,} | {nbytes / base_bytes:.2f} | {seconds:.1f} | "
                     f"{seconds / base_seconds:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", required=True, help="a BEIR-layout folder or a shared collection's name")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS), help="comma-separated (all)")
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="comma-separated shares (0 to 0.6)")
    parser.add_argument("--pipelines", default=";".join(PIPELINES), help="semicolon-separated (bm25; dense; hybrid)")
    parser.add_argument("--margin", type=float, default=0.05, help="equivalence margin, share of nDCG@10 (0.05)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args(argv)
    rates = sorted({0.0, *(float(r) for r in args.rates.split(",") if r.strip())})
    report = run(_collection(args.collection), [e.strip() for e in args.estimators.split(",") if e.strip()], rates,
                 [p.strip() for p in args.pipelines.split(";") if p.strip()], args.margin, args.alpha)  # fmt: skip
    publish(f"pruning-{report['collection']}", report, render)
    if args.json:
        print(json.dumps({"collection": report["collection"], "results": report["results"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
