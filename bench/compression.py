"""Postings compression study: raw uint32 arrays against the block codec (engine/codec.py), for size and speed.

Builds a Sift index of the corpus, encodes its postings, checks that decoding is lossless and that BM25 over the
compressed postings returns the same top k, then times exhaustive top-k over both on one thread.

    python -m bench.compression --corpus synthetic:1000000
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time

import numpy as np

from bench.first_stage import load_corpus
from bench.foundation import RESULTS, WORK, machine, software
from engine.codec import encode, packed_postings
from engine.index import open_index
from engine.sparse import bm25_exhaustive, bm25_exhaustive_packed
from indexers.corpus import Document
from indexers.inverted import build_index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="synthetic:1000000", help="a shared collection name, or synthetic:N")
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args(argv)

    ids, texts, queries = load_corpus(args.corpus, args.queries)
    path = WORK / f"compression-{args.corpus.replace(':', '-')}"
    shutil.rmtree(path, ignore_errors=True)
    build_index((Document(i, t) for i, t in zip(ids, texts)), path)
    del texts
    index = open_index(path)
    (segment,) = index.segments
    started = time.perf_counter()
    words, block_word, doc_width, tf_width = encode(segment.docs, segment.tfs, segment.offsets)
    encode_seconds = time.perf_counter() - started
    compressed = packed_postings(words, block_word, doc_width, tf_width)
    raw_bytes = segment.docs.nbytes + segment.tfs.nbytes
    packed_bytes = words.nbytes + block_word.nbytes + doc_width.nbytes + tf_width.nbytes
    norms = index.norms(index.default_params)
    plans = [index.plan(text) for _, text in queries]
    plans = [p for p in plans if len(p.per_segment[0][0])]
    accumulator = np.zeros(segment.passages, dtype=np.float32)
    touched = np.empty(segment.passages, dtype=np.int64)

    def raw(plan, k):
        starts, ends, weights, _ = plan.per_segment[0]
        return bm25_exhaustive(segment.docs, segment.tfs, starts, ends, weights, norms.per_segment[0],
                               norms.inverse, k, accumulator, touched)  # fmt: skip

    def packed(plan, k):
        starts, ends, weights, block_first = plan.per_segment[0]
        return bm25_exhaustive_packed(
            compressed, starts, ends, block_first, segment.blocks.last_doc, weights, norms.per_segment[0],
            norms.inverse, k, accumulator, touched,
        )  # fmt: skip

    rows = []
    for k in (10, 1000):
        for plan in plans:
            a, b = raw(plan, k), packed(plan, k)
            if not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])):
                raise SystemExit("compressed postings changed a result: the codec is broken")
        timings = {}
        for name, run in (("raw", raw), ("packed", packed), ("raw ", raw), ("packed ", packed)):
            started = time.perf_counter()
            for plan in plans:
                run(plan, k)
            timings[name.strip()] = len(plans) / (time.perf_counter() - started)  # the second pass counts
        rows.append({"k": k, "raw_qps": round(timings["raw"], 1), "packed_qps": round(timings["packed"], 1)})
    postings = len(segment.docs)
    report = {
        "corpus": args.corpus,
        "postings": postings,
        "raw_bytes": int(raw_bytes),
        "packed_bytes": int(packed_bytes),
        "raw_bits_per_posting": round(raw_bytes * 8 / postings, 2),
        "packed_bits_per_posting": round(packed_bytes * 8 / postings, 2),
        "encode_seconds": round(encode_seconds, 2),
        "speed": rows,
        "queries": len(plans),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "software": software(),
    }
    lines = [
        f"# Postings compression: {args.corpus} ({postings:,} postings, {len(plans):,} queries)",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores",
        "",
        "| postings | bytes | bits/posting | ratio |",
        "|---|---|---|---|",
        f"| raw uint32 (docs + tfs) | {raw_bytes:,} | {report['raw_bits_per_posting']} | 1.00 |",
        f"| block codec (delta + bit-packing, 128) | {packed_bytes:,} | {report['packed_bits_per_posting']} | "
        f"{packed_bytes / raw_bytes:.2f} |",
        "",
        "Exhaustive BM25 top-k on one thread, same plans, results verified identical:",
        "",
        "| k | raw QPS | packed QPS | packed/raw |",
        "|---|---|---|---|",
        *[
            f"| {r['k']} | {r['raw_qps']:,} | {r['packed_qps']:,} | {r['packed_qps'] / r['raw_qps']:.2f} |"
            for r in rows
        ],
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    stem = f"compression-{args.corpus.replace(':', '-')}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(table, encoding="utf-8")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
