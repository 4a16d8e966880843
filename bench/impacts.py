"""Would stored impacts pay? BM25 precomputed per posting at index time (as PISA's --quantize, or bm25s's stored
scores), timed against Sift's exact kernels on the same queries.

    python3 -m bench.impacts --corpus debian --queries 1000     # or synthetic:1000000, a shared collection, a file

The corpus and queries are the first-stage benchmark's. From the built index's postings, in memory:

- impacts-8 / impacts-16: each posting's tf part of Lucene's BM25, 1 - 1 / (1 + tf * norm_inverse), rounded up to
  8 or 16 bits and bit-packed in place of the tf (the engine's block codec and its kernels in linear mode, the way
  learned sparse impacts are stored). Rounding up makes every impact score an upper bound of the exact one, so the
  top k stays exact: the kernel keeps k + k/8 (at least k + 8) candidates, they are rescored exactly from their
  stored tf and length, and if the best left out could still reach the k-th exact score, the kernel runs again
  keeping 4 times as many. Every query's result is checked equal to the exact exhaustive kernel's.
- float scores: the tf part as a float32 per posting, read beside the packed passage ids and multiplied by the
  term's weight (what bm25s stores; no rescoring, so not Lucene's scores to the float): what precomputed scores
  save at most.

Each probe runs over the same planned queries, one thread, interleaved query by query, best of `--repeats`.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from bench.first_stage import corpus_stem, load_corpus
from bench.harness import WORK, publish
from bench.peers import SiftEngine
from engine.codec import BLOCK, encode, packed_postings
from engine.format import compute_blocks
from engine.sparse import (
    NO_KEYS,
    NO_MASK,
    _bm25,
    _load_block,
    bm25_exhaustive_packed,
    bm25_maxscore,
    exhaustive_scratch,
    top_k_and_reset,
)


def tf_parts(segment, norm_index: np.ndarray, norm_inverse: np.ndarray) -> np.ndarray:
    """Per posting, in float64: the factor of the term's weight in Lucene's BM25, in [0, 1)."""
    inverse = norm_inverse.astype(np.float64)[norm_index[segment.docs]]
    return 1.0 - 1.0 / (1.0 + segment.tfs.astype(np.float64) * inverse)


def quantized(segment, parts: np.ndarray, bits: int) -> tuple:
    """Impacts rounded up to `bits` (at least 1), packed with the engine's codec: (postings, block maxima)."""
    scale = (1 << bits) - 1
    impacts = np.clip(np.ceil(parts * scale * (1 + 1e-6)), 1, scale).astype(np.uint32)
    blocks = compute_blocks(segment.docs, impacts, segment.offsets, segment.lengths)
    return packed_postings(*encode(segment.docs, impacts, segment.offsets)), blocks


@numba.njit(nogil=True, cache=True)
def exact_scores(postings, starts, ends, block_first, block_last_doc, weights, norm_index, norm_inverse, passages):
    """Lucene's BM25 of the given passages (ascending), summed in query-term order as the exact kernels sum."""
    scores = np.zeros(len(passages), dtype=np.float32)
    docs = np.empty(BLOCK, dtype=np.int64)
    tfs = np.empty(BLOCK, dtype=np.int64)
    for q in range(len(starts)):
        w = weights[q]
        if w <= 0:
            continue
        blocks = (ends[q] - starts[q] + BLOCK - 1) // BLOCK
        first = block_first[q]
        block = 0
        loaded = -1
        at = 0
        for c in range(len(passages)):
            d = passages[c]
            while block < blocks and block_last_doc[first + block] < d:
                block += 1
            if block == blocks:
                break
            if loaded != block:
                start = starts[q] + block * BLOCK
                _load_block(postings, block_last_doc, first, first + block, start, min(BLOCK, ends[q] - start), docs,
                            tfs)  # fmt: skip
                loaded = block
                at = 0
            while docs[at] < d:
                at += 1
            if docs[at] == d:
                scores[c] += _bm25(w, tfs[at], norm_inverse[norm_index[d]], False)
    return scores


@numba.njit(nogil=True, cache=True)
def float_scores_exhaustive(postings, parts, starts, ends, block_first, block_last_doc, weights, k, accumulator,
                            touched):  # fmt: skip
    """The exhaustive kernel with a stored float32 per posting in place of the tf and length."""
    docs = np.empty(BLOCK, dtype=np.int64)
    tfs = np.empty(BLOCK, dtype=np.int64)
    n_touched = 0
    for q in range(len(starts)):
        w = weights[q]
        block = block_first[q]
        for start in range(starts[q], ends[q], BLOCK):
            n = min(BLOCK, ends[q] - start)
            _load_block(postings, block_last_doc, block_first[q], block, start, n, docs, tfs)
            for i in range(n):
                d = docs[i]
                a = accumulator[d]
                touched[n_touched] = d
                n_touched += a == 0
                accumulator[d] = a + w * parts[start + i]
            block += 1
    return top_k_and_reset(accumulator, touched, n_touched, False, k, NO_KEYS)


class Context:
    """One segment's exact and impact postings, and the scratch the kernels share."""

    def __init__(self, segment, norms, bits: tuple[int, ...]) -> None:
        self.segment = segment
        self.norm_index, self.inverse, self.lengths = norms
        parts = tf_parts(segment, self.norm_index, self.inverse)
        self.parts = parts.astype(np.float32)
        self.impacts = {b: quantized(segment, parts, b) for b in bits}
        self.accumulator, self.touched = exhaustive_scratch(segment.passages)
        self.reruns = {b: 0 for b in bits}

    def exact(self, plan, k: int, algorithm: str):
        starts, ends, weights, first = plan
        s, blocks = self.segment, self.segment.blocks
        if algorithm == "maxscore":
            return bm25_maxscore(s.postings, starts, ends, weights, self.norm_index, self.inverse, self.lengths, first,
                                 blocks.max_tf, blocks.min_length, blocks.last_doc, k, False, NO_MASK,
                                 NO_KEYS)  # fmt: skip
        return bm25_exhaustive_packed(s.postings, starts, ends, first, blocks.last_doc, weights, self.norm_index,
                                      self.inverse, k, self.accumulator, self.touched, False, NO_MASK, NO_KEYS,
                                      -1)  # fmt: skip

    def with_impacts(self, plan, k: int, algorithm: str, bits: int, rescore: bool = True):
        """The exact top k through an impact kernel and exact rescoring (see the module's docstring)."""
        starts, ends, weights, first = plan
        postings, blocks = self.impacts[bits]
        scaled = (weights / np.float32((1 << bits) - 1)).astype(np.float32)
        margin = 1 + (len(starts) + 2) * 4e-6
        kept = k + max(8, k // 8)
        while True:
            if algorithm == "maxscore":
                docs, bounds = bm25_maxscore(postings, starts, ends, scaled, self.norm_index, self.inverse,
                                             self.lengths, first, blocks.max_tf, blocks.min_length, blocks.last_doc,
                                             kept + 1, True, NO_MASK, NO_KEYS)  # fmt: skip
            else:
                docs, bounds = bm25_exhaustive_packed(postings, starts, ends, first, blocks.last_doc, scaled,
                                                      self.norm_index, self.inverse, kept + 1, self.accumulator,
                                                      self.touched, True, NO_MASK, NO_KEYS, -1)  # fmt: skip
            if not rescore:
                return docs[:k], bounds[:k]
            candidates = np.sort(docs[:kept])
            scores = exact_scores(self.segment.postings, starts, ends, first, self.segment.blocks.last_doc, weights,
                                  self.norm_index, self.inverse, candidates)  # fmt: skip
            best = np.lexsort((candidates, -scores))[:k]
            left_out = bounds[kept] * margin if len(docs) > kept else -1.0
            if (len(best) < k and left_out < 0) or (len(best) == k and scores[best[-1]] > left_out):
                return candidates[best], scores[best]
            self.reruns[bits] += 1
            kept *= 4

    def float_scores(self, plan, k: int):
        starts, ends, weights, first = plan
        return float_scores_exhaustive(self.segment.postings, self.parts, starts, ends, first,
                                       self.segment.blocks.last_doc, weights, k, self.accumulator,
                                       self.touched)  # fmt: skip


def run(corpus: str, max_queries: int, ks: list[int], repeats: int) -> dict:
    passages, queries, _ = load_corpus(corpus, max_queries)
    work = WORK / f"impacts-{corpus_stem(corpus)}"
    work.mkdir(parents=True, exist_ok=True)
    sift = SiftEngine()
    sift.build(passages, work)
    searcher = sift.index.bm25
    if len(sift.index.segments) != 1 or not sift.index.segments[0].packed:
        raise SystemExit("this measurement reads one packed segment")
    bits = (8, 16)
    context = Context(sift.index.segments[0], searcher.norms(searcher.default_params).for_kernels[0], bits)
    plans = [plan for plan in (searcher.ranges(searcher.plan(q), 0) for q in queries if q) if len(plan[0])]
    postings = np.array([int((ends - starts).sum()) for starts, ends, _, _ in plans])
    rows, agreement = [], []
    for k in ks:
        probes = {"exact exhaustive": lambda p, k=k: context.exact(p, k, "exhaustive"),
                  "exact maxscore": lambda p, k=k: context.exact(p, k, "maxscore"),
                  "float scores exhaustive (not exact)": lambda p, k=k: context.float_scores(p, k)}  # fmt: skip
        for b in bits:
            probes[f"impacts-{b} exhaustive + rescoring"] = lambda p, k=k, b=b: context.with_impacts(p, k, "ex", b)
            probes[f"impacts-{b} maxscore + rescoring"] = lambda p, k=k, b=b: context.with_impacts(p, k, "maxscore", b)
        context.reruns = {b: 0 for b in bits}
        wrong = 0
        for plan in plans:  # warm-up and the check: every exact probe returns the exact top k
            want_docs, want_scores = probes["exact exhaustive"](plan)
            for name, probe in probes.items():
                docs, scores = probe(plan)
                if "not exact" not in name:
                    wrong += not (np.array_equal(docs, want_docs) and np.array_equal(scores, want_scores))
        if wrong:
            raise SystemExit(f"k={k}: {wrong} results differ from the exact top k")
        reruns = dict(context.reruns)  # in the check above: each bit width ran once per query and algorithm (2)
        for b in bits:
            overlaps = [len(np.intersect1d(context.with_impacts(p, k, "ex", b, rescore=False)[0],
                                           context.exact(p, k, "exhaustive")[0])) / k for p in plans]  # fmt: skip
            agreement.append({"k": k, "bits": b, "overlap_without_rescoring": round(float(np.mean(overlaps)), 4),
                              "kernel_reruns": reruns[b] // 2})  # fmt: skip
        names = list(probes)
        seconds = {name: np.full(len(plans), np.inf) for name in names}
        for _ in range(repeats):
            for i, plan in enumerate(plans):
                for turn in range(len(names)):
                    name = names[(i + turn) % len(names)]
                    started = time.perf_counter()
                    probes[name](plan)
                    seconds[name][i] = min(seconds[name][i], time.perf_counter() - started)
        for name in names:
            rows.append({"k": k, "probe": name, "ns_per_posting": round(1e9 * seconds[name].sum() / postings.sum(), 2),
                         "us_per_query_p50": round(1e6 * float(np.median(seconds[name])), 1),
                         "us_per_query_p95": round(1e6 * float(np.percentile(seconds[name], 95)), 1)})  # fmt: skip
        print(f"k={k}: " + ", ".join(f"{r['probe']} {r['ns_per_posting']}" for r in rows[-len(names):]))
    sizes = {"exact": int(context.segment.postings[3].nbytes),
             **{f"impacts-{b}": int(context.impacts[b][0][3].nbytes) for b in bits},
             "float scores": int(context.parts.nbytes)}  # fmt: skip
    return {"corpus": corpus, "passages": context.segment.passages, "queries": len(plans), "repeats": repeats,
            "postings": int(postings.sum()), "results": rows, "agreement": agreement, "posting_bytes": sizes}


def render(report: dict) -> str:
    lines = [f"# Stored impacts against exact scoring: {report['corpus']} ({report['passages']:,} passages, "
             f"{report['queries']:,} queries)", "",
             f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores; one thread, "
             f"probes interleaved query by query, best of {report['repeats']}; ns/posting over the postings of the "
             "query terms. Every probe but the float scores returned exactly the exact kernels' top k (ids and "
             "scores) on every query.", "",
             "| k | probe | ns/posting | µs/query p50 | µs/query p95 |", "|---|---|---|---|---|"]  # fmt: skip
    for r in report["results"]:
        lines.append(f"| {r['k']} | {r['probe']} | {r['ns_per_posting']} | {r['us_per_query_p50']} | "
                     f"{r['us_per_query_p95']} |")  # fmt: skip
    lines += ["", "Top-k overlap with the exact scores if the impact order were returned without rescoring, and how "
              "many times, over all the queries, an impact kernel had to run again with more candidates:", "",
              "| k | bits | overlap without rescoring | kernel reruns |", "|---|---|---|---|"]  # fmt: skip
    for a in report["agreement"]:
        lines.append(f"| {a['k']} | {a['bits']} | {a['overlap_without_rescoring']} | {a['kernel_reruns']} |")
    lines += ["", "Bytes of postings (bit-packed words; the float scores come on top of the exact postings): "
              + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in report["posting_bytes"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="synthetic:200000", help="as sift bench first-stage takes it")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", default="10,1000")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; each query keeps its best")
    args = parser.parse_args(argv)
    report = run(args.corpus, args.queries, [int(k) for k in args.k.split(",")], args.repeats)
    publish(f"impacts-{corpus_stem(args.corpus)}", report, render)


if __name__ == "__main__":
    main()
