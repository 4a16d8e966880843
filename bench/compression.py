"""Postings compression study: raw uint32 arrays against the block codec (engine/codec.py), for size and speed.

Builds the corpus twice (--postings raw and packed), checks both return identical results, then times one-thread
top-k with each query algorithm over both.

    python -m bench.compression --corpus synthetic:1000000
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time

import numpy as np

from bench.first_stage import load_corpus
from bench.harness import WORK, directory_bytes, machine, software, write_results
from engine.index import open_index
from indexers.corpus import Document
from indexers.inverted import BuildOptions
from indexers.writer import build_index

FORMATS = ("raw", "packed")


def postings_bytes(index) -> int:
    names = ("postings.docs.npy", "postings.tfs.npy", "postings.words.npy", "blocks.word.npy")
    names += ("blocks.doc_width.npy", "blocks.tf_width.npy")
    return sum((s.directory / n).stat().st_size for s in index.segments for n in names if (s.directory / n).exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--corpus", default="synthetic:1000000", help="a shared collection name, debian, or synthetic:N"
    )
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args(argv)

    passages, queries, _ = load_corpus(args.corpus, args.queries)  # surrogate tokens, which analyze to themselves
    indexes, sizes, build_seconds = {}, {}, {}
    for postings in FORMATS:
        path = WORK / f"compression-{args.corpus.replace(':', '-')}-{postings}"
        shutil.rmtree(path, ignore_errors=True)
        started = time.perf_counter()
        build_index((Document(i, t) for i, t in passages), path, BuildOptions(postings=postings))
        build_seconds[postings] = round(time.perf_counter() - started, 2)
        indexes[postings] = open_index(path)
        sizes[postings] = {"index_bytes": directory_bytes(path), "postings_bytes": postings_bytes(indexes[postings])}
    del passages
    plans = [indexes["raw"].bm25.plan(terms) for terms in queries]
    terms = [query for query, plan in zip(queries, plans) if plan.postings[0]]
    rows = []
    for k in (10, 1000):
        for algorithm in ("exhaustive", "maxscore", "auto"):
            row = {"k": k, "algorithm": algorithm}
            answers = {}
            for postings in FORMATS:
                index = indexes[postings]
                answers[postings] = [index.search_passages(q, k, algorithm=algorithm) for q in terms]  # warm-up
                started = time.perf_counter()
                for q in terms:
                    index.search_passages(q, k, algorithm=algorithm)
                row[f"{postings}_qps"] = round(len(terms) / (time.perf_counter() - started), 1)
            for a, b in zip(answers["raw"], answers["packed"]):
                if not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])):
                    raise SystemExit("packed postings changed a result: the codec is broken")
            rows.append(row)
    postings_count = int(sum(len(s.offsets) and s.offsets[-1] for s in indexes["raw"].segments))
    report = {
        "corpus": args.corpus,
        "postings": postings_count,
        "sizes": sizes,
        "build_seconds": build_seconds,
        "speed": rows,
        "queries": len(terms),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "software": software(),
    }
    raw, packed = sizes["raw"], sizes["packed"]
    lines = [
        f"# Postings compression: {args.corpus} ({postings_count:,} postings, {len(terms):,} queries)",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores",
        "",
        "| postings | postings bytes | bits/posting | whole index bytes | build s |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {sizes[name]['postings_bytes']:,} | "
            f"{sizes[name]['postings_bytes'] * 8 / max(postings_count, 1):.2f} | {sizes[name]['index_bytes']:,} | "
            f"{build_seconds[name]} |"
            for name in FORMATS
        ],
        "",
        f"Packed postings are {packed['postings_bytes'] / raw['postings_bytes']:.2f} of raw; the whole index "
        f"{packed['index_bytes'] / raw['index_bytes']:.2f}.",
        "",
        "One-thread top-k through Index.search_passages (results verified identical):",
        "",
        "| k | algorithm | raw QPS | packed QPS | packed/raw |",
        "|---|---|---|---|---|",
        *[
            f"| {r['k']} | {r['algorithm']} | {r['raw_qps']:,} | {r['packed_qps']:,} | "
            f"{r['packed_qps'] / r['raw_qps']:.2f} |"
            for r in rows
        ],
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(f"compression-{args.corpus.replace(':', '-')}", table, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
