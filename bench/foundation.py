"""Foundation benchmark: Sift beside Lucene (pyserini's Anserini jar) on the same text, in the same run.

Measures single-thread indexing throughput, index size, per-query latency at k=10 and k=1000, top-10 agreement,
and (on SciFact) effectiveness. Writes bench/results/foundation.{md,json}.

    python -m bench.foundation [--synthetic 200000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import shutil
import sys
import time

import numpy as np

from bench.harness import DATA, WORK, directory_bytes, latencies, machine, software, write_results
from engine.evaluation import evaluate
from engine.index import open_index
from indexers.corpus import CorpusReader, open_source, read_qrels, read_queries
from indexers.inverted import BuildOptions
from indexers.writer import build_index
from tools.synthetic import synthetic_documents, synthetic_queries


def agreement(sift_search, lucene_search, queries: list[str], k: int = 10) -> dict:
    """Share of top-k ids Lucene also returns, and the largest score difference on documents both rank."""
    overlap, score_gap = [], 0.0
    for query in queries:
        mine = dict(sift_search(query, k))
        theirs = dict(lucene_search(query, k))
        if not theirs:
            continue
        overlap.append(len(mine.keys() & theirs.keys()) / len(theirs))
        score_gap = max([score_gap] + [abs(mine[d] - theirs[d]) for d in mine.keys() & theirs.keys()])
    return {f"top{k}_overlap": round(float(np.mean(overlap)), 4), "max_score_diff": round(score_gap, 5)}


def run_corpus(name: str, documents: list[dict], queries: list[tuple[str, str]], qrels: dict | None) -> dict:
    from bench import lucene

    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = work / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for d in documents:
            f.write(json.dumps(d) + "\n")
    lucene.write_json_collection(documents, work / "lucene-input")

    started = time.perf_counter()
    build_index(CorpusReader(open_source(corpus), skip_bad=True), work / "sift", BuildOptions())
    sift_seconds = time.perf_counter() - started
    lucene_seconds = lucene.build(work / "lucene-input", work / "lucene", threads=1)
    sift_index = open_index(work / "sift")
    lucene_searcher = lucene.Searcher(work / "lucene")

    def sift_search(query: str, k: int):
        return sift_index.search(query, k).pairs()

    texts = [text for _, text in queries]
    row = {
        "corpus": name,
        "documents": len(documents),
        "queries": len(queries),
        "index": {
            "sift": {
                "seconds": round(sift_seconds, 2),
                "docs_per_s": round(len(documents) / sift_seconds, 1),
                "bytes": directory_bytes(work / "sift"),
            },
            "lucene": {
                "seconds": round(lucene_seconds, 2),
                "docs_per_s": round(len(documents) / lucene_seconds, 1),
                "bytes": directory_bytes(work / "lucene"),
            },
        },
        "search": {},
        "batch": {},
        "agreement": agreement(sift_search, lucene_searcher.search, texts),
    }
    for k in (10, 1000):
        row["search"][k] = {
            "sift": latencies(sift_search, texts, k),
            "lucene": latencies(lucene_searcher.search, texts, k),
        }
        sift_index.batch_search(texts, k, threads=1)  # warm-up
        started = time.perf_counter()
        sift_index.batch_search(texts, k, threads=1)
        sift_batch = time.perf_counter() - started
        lucene_batch = lucene.batch_seconds(work / "lucene", queries, k, work)
        row["batch"][k] = {
            "sift_qps": round(len(texts) / sift_batch, 1),
            "lucene_qps": round(len(texts) / lucene_batch, 1),
        }
    if qrels:
        runs = {
            "sift": {qid: dict(sift_search(text, 1000)) for qid, text in queries},
            "lucene": {qid: dict(lucene_searcher.search(text, 1000)) for qid, text in queries},
        }
        row["effectiveness"] = {system: evaluate(run, qrels).to_dict() for system, run in runs.items()}
    return row


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "n/a"


def render(rows: list[dict], info: dict) -> str:
    lucene = info["lucene"]
    lines = [
        "# Foundation benchmark: Sift vs Lucene (same text, same run, one thread)",
        "",
        f"Date: {info['date']}  ",
        f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, {info['machine']['memory_gib']} GiB; "
        f"{info['machine']['os']}  ",
        f"Software: {', '.join(f'{k} {v}' for k, v in info['software'].items() if v)}; "
        f"Lucene {lucene['lucene']} (Java {lucene['java']}, {lucene['anserini_jar']}, driven through pyjnius)",
        "",
        "Ratios are Sift ÷ Lucene: above 1 means Sift is faster (throughput) or larger (size).",
        "",
        "| corpus | docs | index docs/s Sift | Lucene | ratio | index MB Sift | Lucene | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, lu = r["index"]["sift"], r["index"]["lucene"]
        lines.append(
            f"| {r['corpus']} | {r['documents']:,} | {s['docs_per_s']:,.0f} | {lu['docs_per_s']:,.0f} | "
            f"{ratio(s['docs_per_s'], lu['docs_per_s'])} | {s['bytes'] / 2**20:.1f} | {lu['bytes'] / 2**20:.1f} | "
            f"{ratio(s['bytes'], lu['bytes'])} |"
        )
    lines += [
        "",
        "| corpus | k | QPS Sift | Lucene | ratio | p50 ms Sift | Lucene | p95 ms Sift | Lucene | p99 ms Sift "
        "| Lucene |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for k, pair in r["search"].items():
            s, lu = pair["sift"], pair["lucene"]
            lines.append(
                f"| {r['corpus']} | {k} | {s['qps']:,.0f} | {lu['qps']:,.0f} | {ratio(s['qps'], lu['qps'])} | "
                f"{s['p50_ms']} | {lu['p50_ms']} | {s['p95_ms']} | {lu['p95_ms']} | {s['p99_ms']} | {lu['p99_ms']} |"
            )
    lines += [
        "",
        "Batch, one thread: Sift `batch_search(threads=1)` against Anserini's SearchCollection (`-threads 1`, all in "
        "Java, run file written), the same queries.",
        "",
        "| corpus | k | batch QPS Sift | Lucene (Java) | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        for k, b in r["batch"].items():
            lines.append(f"| {r['corpus']} | {k} | {b['sift_qps']:,.0f} | {b['lucene_qps']:,.0f} | "
                         f"{ratio(b['sift_qps'], b['lucene_qps'])} |")  # fmt: skip
    lines += ["", "| corpus | top-10 overlap with Lucene | max score difference |", "|---|---|---|"]
    for r in rows:
        a = r["agreement"]
        lines.append(f"| {r['corpus']} | {a['top10_overlap']} | {a['max_score_diff']} |")
    effective = [r for r in rows if "effectiveness" in r]
    if effective:
        lines += ["", "| corpus | system | nDCG@10 | R@1000 | AP | RR |", "|---|---|---|---|---|---|"]
        for r in effective:
            for system, m in r["effectiveness"].items():
                lines.append(f"| {r['corpus']} | {system} | {m['nDCG@10']} | {m['R@1000']} | {m['AP']} | {m['RR']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=int, default=200_000, help="synthetic corpus size (0: skip)")
    parser.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    args = parser.parse_args(argv)
    from bench import lucene

    rows = []
    scifact = DATA / "scifact"
    if scifact.is_dir():
        with gzip.open(scifact / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
            documents = [json.loads(line) for line in f]
        queries = read_queries(scifact / "queries.test.tsv")
        rows.append(run_corpus("scifact", documents, queries, read_qrels(scifact / "qrels.test.txt")))
    else:
        print(f"{scifact} is absent: SciFact skipped", file=sys.stderr)
    if args.synthetic:
        documents = list(synthetic_documents(args.synthetic, seed=0))
        queries = synthetic_queries(documents, args.queries, seed=0)
        rows.append(run_corpus(f"synthetic-{args.synthetic // 1000}k", documents, queries, None))
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "software": software(),
        "lucene": lucene.versions(),
    }
    table = render(rows, info)
    print(table)
    write_results("foundation", table, {**info, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
