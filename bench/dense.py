"""Approximate dense indexes against exact search: recall of HNSW and IVF-PQ at 10 and 100, and their speed, on the
stored passage vectors of an index's dense index, with the collection's queries.

    python3 -m bench.dense --index idx/scifact --queries ../shared/data/scifact/queries.test.tsv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.harness import publish
from engine.encoders import BiEncoder
from engine.index import open_index
from indexers.corpus import read_queries
from indexers.neural import build_faiss


def run(index_dir: Path, queries_path: Path, ks: tuple[int, ...] = (10, 100)) -> dict:
    import faiss

    index = open_index(index_dir)
    model, entry = next(iter(index.manifest["dense"].items()))
    vectors = np.concatenate([np.load(index.path / entry["segments"][segment.directory.name] / "vectors.npy",
                                      mmap_mode="r") for segment in index.segments])  # fmt: skip
    queries = BiEncoder(model).encode([text for _, text in read_queries(queries_path)], query=True)
    faiss.omp_set_num_threads(1)
    depth = max(ks)
    rows, exact = [], None
    for kind in ("flat", "hnsw", "ivfpq"):
        started = time.perf_counter()
        searcher = build_faiss(np.asarray(vectors), kind)
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        _, found = searcher.search(queries, depth)
        seconds = time.perf_counter() - started
        if exact is None:
            exact = found
        recall = {f"recall@{k}": _recall(found, exact, k) for k in ks}
        rows.append({"faiss": kind, **recall, "qps": round(len(queries) / seconds, 1),
                     "build_s": round(build_seconds, 2)})  # fmt: skip
    return {"index": str(index_dir), "model": model, "passages": int(vectors.shape[0]), "queries": len(queries),
            "results": rows}  # fmt: skip


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return round(float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)])), 4)


def render(report: dict) -> str:
    lines = [
        f"# Dense: approximate against exact ({report['index']}, {report['model']}, {report['passages']:,} passages,"
        f" {report['queries']} queries)",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, one thread",
        "",
        "| faiss | recall@10 | recall@100 | QPS | build s |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['faiss']} | {r['recall@10']} | {r['recall@100']} | {r['qps']:,} | {r['build_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path, help="an index with a dense index")
    parser.add_argument("--queries", required=True, type=Path)
    parser.add_argument("--name", default=None, help="results file stem (dense-<index folder name>)")
    args = parser.parse_args(argv)
    report = run(args.index, args.queries)
    publish(args.name or f"dense-{args.index.name}", report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
