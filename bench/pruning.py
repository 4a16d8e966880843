"""Static pruning sweep: for each quality estimator and pruning rate, the index is rebuilt without the lowest-scoring
passages and each pipeline's nDCG@10 on the test queries is tested for equivalence with the unpruned index (two
one-sided paired t-tests, margin a share of the unpruned mean), beside the index size and indexing time saved.

    sift bench pruning --collection ../shared/data/scifact [--json]

BM25 indexes are really rebuilt at every rate (its statistics change with what is kept). Dense vectors are encoded
once for the whole collection and reused by every pruned index (a pruned passage is never encoded, so a pruned
index's encoding time is the kept share of the measured full encoding: reported as such). Quality scores, vectors
and reranker scores are cached under bench/work/pruning/COLLECTION, with the time they took to compute, so a rerun
(another rate, another pipeline) recomputes nothing.

A reranked pipeline is given like any other, e.g. "hybrid(bm25,dense,alpha=0.5) >> rerank:scifact-t53@20(mix=0.3)":
its (query, passage) scores are cached by text, so the passages that every pruned index shares are scored once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from bench.harness import DATA, RESULTS, WORK, directory_bytes, publish
from engine.analysis import AnalyzerConfig
from engine.evaluation import equivalence, evaluate
from engine.index import open_index
from engine.pipeline import Pipeline, Spec, parse
from engine.rerank import CachedScorer
from indexers.corpus import CorpusReader, open_source, read_qrels, read_queries
from indexers.quality import ESTIMATORS, CorpusPassages, PruneSpec, ScoreCache, pruned_keys, score_passages
from indexers.writer import build_dense, build_index

RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
PIPELINES = ("bm25", "dense", "hybrid(bm25,dense,alpha=0.5)")
MARKERS = "osD^v<>px*h"


class CachedEncoder:
    """The bi-encoder's vectors for every passage, computed once, looked up by text."""

    def __init__(self, name: str, vectors: dict[str, np.ndarray]) -> None:
        self.name, self.vectors = name, vectors

    def encode(self, texts, batch_size: int = 32, query: bool = False, on_progress=None) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def encode_once(work: Path, model: str, texts: list[str]) -> tuple[CachedEncoder, float]:
    """Every passage's vector, from work/vectors-MODEL.npz if an earlier run encoded these very texts; and the
    seconds the encoding took when it was done."""
    from engine.encoders import BiEncoder

    path = work / f"vectors-{model}.npz"
    digest = hashlib.blake2b("\0".join(texts).encode(), digest_size=16).hexdigest()
    if path.exists():
        stored = np.load(path)
        if str(stored["digest"]) == digest:
            return CachedEncoder(model, dict(zip(texts, stored["vectors"]))), float(stored["seconds"])
    started = time.perf_counter()
    vectors = BiEncoder(model).encode(texts)
    seconds = time.perf_counter() - started
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, vectors=vectors, seconds=seconds, digest=digest)
    temporary.replace(path)
    return CachedEncoder(model, dict(zip(texts, vectors))), seconds


class LazyReranker:
    """A reranking model loaded only when a pair its cache lacks must be scored."""

    def __init__(self, model: str) -> None:
        self.name, self._scorer = model, None

    def score(self, query: str, passages) -> np.ndarray:
        from engine.rerank import load_reranker

        self._scorer = self._scorer or load_reranker(self.name)
        return self._scorer.score(query, passages)


def cached_reranker(model: str, path: Path) -> CachedScorer:
    """A reranker's score per (query, passage text), kept in a file across runs: pruned indexes share most of their
    candidates, so only pairs never seen before reach the model."""
    return CachedScorer(LazyReranker(model), path=path)


def _rerank_models(spec: Spec) -> list[str]:
    return [s.arguments[0] for s in spec.later]


def _collection(path: str) -> Path:
    folder = Path(path)
    return folder if folder.is_dir() else DATA / path


def run(collection: Path, estimators: list[str], rates: list[float], pipelines: list[str], margin: float,
        alpha: float, model: str = "all-minilm-l6-v2") -> dict:  # fmt: skip
    work = WORK / "pruning" / collection.name
    work.mkdir(parents=True, exist_ok=True)
    source = open_source(collection)
    passages = list(CorpusPassages(CorpusReader(source, skip_bad=True), AnalyzerConfig(), 0, 0))
    queries = read_queries(collection / "queries.test.tsv")
    qrels = read_qrels(collection / "qrels.test.txt")
    texts = [p.indexed_text for p in passages]
    dense = any("dense" in p for p in pipelines)
    encoder = None
    full_encode_seconds = 0.0
    if dense:
        encoder, full_encode_seconds = encode_once(work, model, texts)
    rerankers = {name: cached_reranker(name, work / f"pairs-{name}.json")
                 for expression in pipelines for name in _rerank_models(parse(expression))}  # fmt: skip
    cache = ScoreCache(work / "quality")
    throughput = {}
    results, baselines = [], {}
    for name in estimators:
        keys, scores, scored = score_passages(passages, name, cache)
        speed = cache.throughput(name)
        throughput[name] = {"passages_per_second": round(speed, 1) if speed else None, "scored_now": scored}
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
                found = Pipeline(index, parse(expression), scorers=rerankers).search([t for _, t in queries], 1000)
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
            for reranker in rerankers.values():
                reranker.save()
    for row in results:
        row.pop("_evaluation", None)
    return {"collection": collection.name, "margin": margin, "alpha": alpha, "passages": len(passages),
            "dense_encode_passages_per_second": round(len(passages) / full_encode_seconds, 1) if dense else None,
            "quality_throughput": throughput, "results": results}  # fmt: skip


def _by_estimator(report: dict) -> dict[tuple[str, str], dict[float, dict]]:
    rows: dict[tuple[str, str], dict[float, dict]] = {}
    for row in report["results"]:
        rows.setdefault((row["estimator"], row["pipeline"]), {})[row["rate"]] = row
    return rows


def largest_equivalent(by_rate: dict[float, dict]) -> float:
    """The largest rate at which this and every smaller rate are equivalent to the unpruned index."""
    rates = sorted(by_rate)
    return max((r for r in rates if all(by_rate[s]["tost_equivalent"] for s in rates if s <= r)), default=0.0)


def render(report: dict) -> str:
    rates = sorted({r["rate"] for r in report["results"]})
    rows = _by_estimator(report)
    estimators = list(dict.fromkeys(name for name, _ in rows))
    pipelines = list(dict.fromkeys(pipeline for _, pipeline in rows))
    lines = [f"# Static pruning by passage quality: {report['collection']}", "",
             f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores. Test queries; "
             f"nDCG@10 after pruning the lowest-quality share of {report['passages']:,} passages; * = equivalent to "
             f"the unpruned index by TOST (margin {report['margin']:.0%} of its nDCG@10, alpha {report['alpha']}).",
             "", "Largest pruning rate equivalent to the unpruned index (at it and every smaller rate):", "",
             "| estimator | " + " | ".join(pipelines) + " |", "|---|" + "---|" * len(pipelines)]  # fmt: skip
    for name in estimators:
        cells = [f"{largest_equivalent(rows[(name, p)]):.0%}" if (name, p) in rows else "" for p in pipelines]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "random" in estimators and len(estimators) > 1:
        lines += ["", "Best estimator against random at each rate (nDCG@10 difference):", "",
                  "| pipeline | " + " | ".join(f"{r:.0%}" for r in rates if r) + " | above random at every rate |",
                  "|---|" + "---|" * (len([r for r in rates if r]) + 1)]  # fmt: skip
        for pipeline in pipelines:
            cells, above = [], True
            for rate in (r for r in rates if r):
                scored = {n: rows[(n, pipeline)][rate]["nDCG@10"] for n in estimators
                          if n != "random" and rate in rows.get((n, pipeline), {})}  # fmt: skip
                random = rows.get(("random", pipeline), {}).get(rate)
                if not scored or random is None:
                    cells.append("")
                    continue
                best = max(scored, key=scored.get)
                above &= scored[best] > random["nDCG@10"]
                cells.append(f"{best} {scored[best] - random['nDCG@10']:+.4f}")
            lines.append(f"| {pipeline} | " + " | ".join(cells) + f" | {'yes' if above else 'no'} |")
    lines += ["", "nDCG@10 at each rate:", "",
              "| estimator | pipeline | " + " | ".join(f"{r:.0%}" for r in rates) + " | largest equivalent |",
              "|---|---|" + "---|" * (len(rates) + 1)]  # fmt: skip
    for (name, pipeline), by_rate in rows.items():
        cells = [f"{by_rate[r]['nDCG@10']:.4f}{'*' if by_rate[r]['tost_equivalent'] else ''}" if r in by_rate else ""
                 for r in rates]  # fmt: skip
        lines.append(f"| {name} | {pipeline} | " + " | ".join(cells) + f" | {largest_equivalent(by_rate):.0%} |")
    lines += ["", "| estimator | quality scoring (passages/s) |", "|---|---|"]
    lines += [f"| {n} | {t['passages_per_second']} |" for n, t in report["quality_throughput"].items()]
    if report["dense_encode_passages_per_second"]:
        lines.append(f"| (dense encoding, all-MiniLM-L6-v2) | {report['dense_encode_passages_per_second']} |")
    size = {(r["estimator"], r["rate"]): (r["index_bytes"], r["index_seconds"]) for r in report["results"]}
    lines += ["", "Index size and indexing time (BM25 build plus the dense encoding of the kept passages); the last "
              "two columns add scoring every passage's quality first, at the speed above:", "",
              "| estimator | rate | index bytes | vs unpruned | indexing seconds | vs unpruned | with quality scoring "
              "| vs unpruned |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (name, rate), (nbytes, seconds) in sorted(size.items()):
        base_bytes, base_seconds = size.get((name, 0.0), (nbytes, seconds))
        speed = report["quality_throughput"].get(name, {}).get("passages_per_second")
        total = seconds + report["passages"] / speed if speed and rate else None
        scoring = f"| {total:.1f} | {total / base_seconds:.2f} |" if total else "| | |"
        lines.append(f"| {name} | {rate:.0%} | {nbytes:,} | {nbytes / base_bytes:.2f} | {seconds:.1f} | "
                     f"{seconds / base_seconds:.2f} {scoring}")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    """nDCG@10 against pruning rate, one panel per pipeline, one line per estimator; filled markers where TOST
    finds the pruned index equivalent to the unpruned one."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = _by_estimator(report)
    estimators = list(dict.fromkeys(name for name, _ in rows))
    pipelines = list(dict.fromkeys(pipeline for _, pipeline in rows))
    fig, axes = plt.subplots(1, len(pipelines), figsize=(4.6 * len(pipelines), 4.2), squeeze=False, sharey=True)
    colors = plt.get_cmap("tab10")
    for axis, pipeline in zip(axes[0], pipelines):
        for number, name in enumerate(estimators):
            by_rate = rows.get((name, pipeline))
            if not by_rate:
                continue
            rates = sorted(by_rate)
            style = {"color": "black" if name == "random" else colors(number % 10),
                     "linestyle": "--" if name == "random" else "-"}  # fmt: skip
            axis.plot([100 * r for r in rates], [by_rate[r]["nDCG@10"] for r in rates], label=name, **style)
            for r in rates:
                axis.plot(100 * r, by_rate[r]["nDCG@10"], MARKERS[number % len(MARKERS)], color=style["color"],
                          markerfacecolor=style["color"] if by_rate[r]["tost_equivalent"] else "white")  # fmt: skip
        base = next(by_rate[0.0]["nDCG@10"] for (n, p), by_rate in rows.items() if p == pipeline and 0.0 in by_rate)
        axis.axhspan(base * (1 - report["margin"]), base * (1 + report["margin"]), color="0.9", zorder=0)
        axis.set_title(pipeline if len(pipeline) < 40 else pipeline.replace(" >> ", "\n>> "), fontsize=9)
        axis.set_xlabel("passages pruned (%)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("nDCG@10 (filled: TOST-equivalent; band: margin)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Static pruning by passage quality: {report['collection']} ({report['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summarize(name: str, estimator: str) -> str:
    """One table over every collection's NAME-COLLECTION.json: the estimator's largest equivalent rate beside
    random's and the best other estimator's, and whether it beats random at every rate."""
    reports = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(RESULTS.glob(f"{name}-*.json"))]
    if not reports:
        raise SystemExit(f"no {RESULTS}/{name}-*.json: run the sweep with --name {name} first")
    sources = ", ".join(f"{name}-{report['collection']}.md" for report in reports)
    lines = [f"# Static pruning with {estimator}, every collection", "",
             f"From {sources} (dates there). Largest rate at which "
             f"nDCG@10 on the test queries is TOST-equivalent to the unpruned index (margin {reports[0]['margin']:.0%}"
             f", alpha {reports[0]['alpha']}) at it and every smaller rate; above random: {estimator}'s nDCG@10 is "
             "higher than random pruning's at every rate.", "",
             f"| collection | pipeline | {estimator} | random | best other (rate) | {estimator} above random at every "
             "rate | its margin over random, per rate |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for report in reports:
        rows = _by_estimator(report)
        for pipeline in dict.fromkeys(p for _, p in rows):
            mine, random = rows.get((estimator, pipeline)), rows.get(("random", pipeline))
            if mine is None or random is None:
                continue
            others = {n: largest_equivalent(by) for (n, p), by in rows.items() if p == pipeline and n != estimator}
            best = max(others, key=others.get)
            margins = [mine[r]["nDCG@10"] - random[r]["nDCG@10"] for r in sorted(mine) if r and r in random]
            lines.append(f"| {report['collection']} | {pipeline} | {largest_equivalent(mine):.0%} | "
                         f"{largest_equivalent(random):.0%} | {best} ({others[best]:.0%}) | "
                         f"{'yes' if all(m > 0 for m in margins) else 'no'} | "
                         + " ".join(f"{m:+.3f}" for m in margins) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", help="a BEIR-layout folder or a shared collection's name")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS), help="comma-separated (all)")
    parser.add_argument("--rates", default=",".join(map(str, RATES)), help="comma-separated shares (0 to 0.6)")
    parser.add_argument("--pipelines", default=";".join(PIPELINES), help="semicolon-separated (bm25; dense; hybrid)")
    parser.add_argument("--margin", type=float, default=0.05, help="equivalence margin, share of nDCG@10 (0.05)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--name", default="pruning", help="results go to bench/results/NAME-COLLECTION.* (pruning)")
    parser.add_argument("--summarize", metavar="ESTIMATOR", help="write bench/results/NAME.md from every "
                        "NAME-COLLECTION.json: ESTIMATOR against the others (--collection is then ignored)")
    args = parser.parse_args(argv)
    if args.summarize:
        (RESULTS / f"{args.name}.md").write_text(summarize(args.name, args.summarize), encoding="utf-8")
        print(f"written: {RESULTS / args.name}.md")
        return 0
    if not args.collection:
        parser.error("--collection is required (or --summarize)")
    rates = sorted({0.0, *(float(r) for r in args.rates.split(",") if r.strip())})
    report = run(_collection(args.collection), [e.strip() for e in args.estimators.split(",") if e.strip()], rates,
                 [p.strip() for p in args.pipelines.split(";") if p.strip()], args.margin, args.alpha)  # fmt: skip
    stem = f"{args.name}-{report['collection']}"
    publish(stem, report, render)
    if plot(report, RESULTS / f"{stem}.png"):
        print(f"written: {RESULTS / stem}.png")
    if args.json:
        print(json.dumps({"collection": report["collection"], "results": report["results"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
