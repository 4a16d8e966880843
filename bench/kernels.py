"""Where a query's time goes in Sift's BM25 kernels, per posting, beside PISA's on the same queries.

    python3 -m bench.kernels --corpus debian --queries 1000     # or synthetic:1000000, a shared collection, a file

The corpus and queries are the first-stage benchmark's (identical surrogate tokens; a "hard" set with frequent
terms). For each query set and k, every probe runs over the same planned queries, one thread, interleaved query by
query, and its time is divided by the postings of the query terms (what an exhaustive evaluation reads):

- decode: reading every block of the query's lists (bit-unpacking, delta decoding), nothing else;
- decode + score: also Lucene's BM25 per posting into the accumulator (no top k);
- exhaustive, touched list / scan: the whole kernel, keeping the list of touched passages for the top k, or
  scanning every passage for it (engine/sparse.top_k_scan; `auto` picks by the query's share of passages);
- maxscore: block-max MaxScore; auto: what `sift search` runs;
- bmw (instrument): block-max WAND with shallow cursor moves, written here to measure it against MaxScore (exact,
  but slower everywhere it was measured, so not one of the engine's kernels);
- PISA block_max_wand and block_max_maxscore through pyterrier-pisa (when installed), per posting of the same
  lists: the same queries and k, so their ns/posting is directly comparable.

The decode probes are profiling instruments built from the engine's own pieces (its block loader and scoring);
every other row times the engine's own kernels (the exhaustive one with its way to the top k forced, or its own).
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numba
import numpy as np

from bench.first_stage import corpus_stem, load_corpus
from bench.harness import WORK, publish
from bench.peers import PeerUnavailable, PisaEngine, SiftEngine
from engine.codec import BLOCK
from engine.sparse import (
    NO_KEYS,
    NO_MASK,
    _block_bounds,
    _bm25,
    _key,
    _load_block,
    _sift_down,
    _sorted_heap,
    bm25_exhaustive_packed,
    bm25_maxscore,
    exhaustive_scratch,
)


@numba.njit(nogil=True)
def _probe(postings, starts, ends, block_first, block_last_doc, weights, norm_index, norm_inverse, accumulator,
           score):  # fmt: skip
    """Decodes every block of the query's lists, and with score=True adds each posting's BM25 to the accumulator
    (left zero again)."""
    docs = np.empty(BLOCK, dtype=np.int64)
    tfs = np.empty(BLOCK, dtype=np.int64)
    checksum = 0
    for q in range(len(starts)):
        w = weights[q]
        block = block_first[q]
        for start in range(starts[q], ends[q], BLOCK):
            n = min(BLOCK, ends[q] - start)
            _load_block(postings, block_last_doc, block_first[q], block, start, n, docs, tfs)
            if score:
                for i in range(n):
                    d = docs[i]
                    accumulator[d] += _bm25(w, tfs[i], norm_inverse[norm_index[d]], False)
            else:
                checksum += docs[n - 1] + tfs[0]
            block += 1
    if score:
        accumulator[:] = 0
    return checksum


@numba.njit(nogil=True, cache=True)
def bm25_bmw(postings, starts, ends, weights, norm_index, norm_inverse, norm_lengths, block_first, block_max_tf,
             block_min_length, block_last_doc, k, linear=False, mask=NO_MASK, keys=NO_KEYS):  # fmt: skip
    """Block-max WAND (Ding & Suel), exactly bm25_exhaustive's top k: an instrument, not one of the engine's kernels.

    The lists are kept in the order of the passage under their cursors. The pivot is the first passage whose lists'
    bounds, with those of the lists before it, may reach the k-th score; the lists up to it are moved to the block
    that would hold it without decoding (shallow), and only if those blocks' maxima may reach it is the passage
    scored (all lists on it) or a list moved up to it; otherwise one list jumps past the nearest block end. Scores
    are summed in query-term order as the exhaustive kernel sums them, bounds compared with MaxScore's margin.
    Measured slower than the engine's MaxScore on every corpus (bench/results/kernels-*.md), so `auto` never
    needs it; every list moved in one place of the loop: the same moves in a helper function cost 5x the time.
    """
    masked = len(mask) > 0
    m = len(starts)
    n_docs = len(norm_index)
    block_count = np.empty(m, dtype=np.int64)
    for q in range(m):
        block_count[q] = (ends[q] - starts[q] + BLOCK - 1) // BLOCK
    bound_offsets, bounds, term_bound = _block_bounds(
        weights, block_first, block_count, block_max_tf, block_min_length, norm_lengths, norm_inverse, linear
    )
    block = np.zeros(m, dtype=np.int64)
    loaded = np.full(m, -1, dtype=np.int64)
    offset = np.zeros(m, dtype=np.int64)
    block_len = np.zeros(m, dtype=np.int64)
    buffer_docs = np.empty((m, BLOCK), dtype=np.int64)
    buffer_tfs = np.empty((m, BLOCK), dtype=np.int64)
    current = np.full(m, n_docs, dtype=np.int64)
    contribution = np.zeros(m, dtype=np.float32)
    live = 0
    for q in range(m):
        if weights[q] > 0 and ends[q] > starts[q]:
            live += 1
    order = np.empty(live, dtype=np.int64)
    j = 0
    for q in range(m):
        if weights[q] > 0 and ends[q] > starts[q]:
            order[j] = q
            block_len[q] = min(BLOCK, ends[q] - starts[q])
            _load_block(postings, block_last_doc, block_first[q], block_first[q], starts[q], block_len[q],
                        buffer_docs[q], buffer_tfs[q])  # fmt: skip
            loaded[q] = 0
            current[q] = buffer_docs[q, 0]
            j += 1
    for i in range(1, live):
        q = order[i]
        j = i - 1
        while j >= 0 and current[order[j]] > current[q]:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = q
    heap_scores = np.empty(k, dtype=np.float32)
    heap_docs = np.empty(k, dtype=np.int64)
    heap_keys = np.empty(k, dtype=np.int64)
    size = 0
    threshold = -1.0
    limit = -1.0  # threshold / margin: a bound above it may reach the k-th score
    margin = 1.0 + (m + 2) * 2.5e-7
    while True:
        # pivot: the first term in document order whose bound, with those before it, may reach the k-th score
        reach = 0.0
        pivot = -1
        for i in range(live):
            q = order[i]
            if current[q] == n_docs:
                break
            reach += term_bound[q]
            if reach > limit:
                pivot = i
                break
        if pivot < 0:
            break
        pivot_doc = current[order[pivot]]
        while pivot + 1 < live and current[order[pivot + 1]] == pivot_doc:
            pivot += 1
        # shallow: the block each list up to the pivot would hold pivot_doc in, without decoding
        block_reach = 0.0
        for i in range(pivot + 1):
            q = order[i]
            first = block_first[q]
            while block[q] < block_count[q] and block_last_doc[first + block[q]] < pivot_doc:
                block[q] += 1
            if block[q] < block_count[q]:
                block_reach += bounds[bound_offsets[q] + block[q]]
        if block_reach > limit:
            if current[order[0]] == pivot_doc:
                if not (masked and mask[pivot_doc] == 0):
                    for i in range(pivot + 1):
                        q = order[i]
                        contribution[q] = _bm25(weights[q], buffer_tfs[q, offset[q]],
                                                norm_inverse[norm_index[pivot_doc]], linear)  # fmt: skip
                    score = np.float32(0)
                    for q in range(m):
                        score += contribution[q]
                        contribution[q] = 0
                    if size < k:
                        heap_scores[size] = score
                        heap_docs[size] = pivot_doc
                        heap_keys[size] = _key(keys, pivot_doc)
                        size += 1
                        if size == k:
                            for i in range(k // 2 - 1, -1, -1):
                                _sift_down(heap_scores, heap_docs, heap_keys, k, i)
                            threshold = heap_scores[0]
                            limit = threshold / margin
                    elif score > heap_scores[0] or (score == heap_scores[0] and _key(keys, pivot_doc) < heap_keys[0]):
                        heap_scores[0] = score
                        heap_docs[0] = pivot_doc
                        heap_keys[0] = _key(keys, pivot_doc)
                        _sift_down(heap_scores, heap_docs, heap_keys, k, 0)
                        threshold = heap_scores[0]
                        limit = threshold / margin
                low, high, target = 0, pivot, pivot_doc + 1
            else:
                # a list before the pivot (the nearest one not on it) moves up to it
                i = pivot
                while current[order[i]] == pivot_doc:
                    i -= 1
                low, high, target = i, i, pivot_doc
        else:
            # no passage before the end of these blocks (or the next list's position) can make it
            target = n_docs
            for i in range(pivot + 1):
                q = order[i]
                if block[q] < block_count[q]:
                    target = min(target, np.int64(block_last_doc[block_first[q] + block[q]]) + 1)
            if pivot + 1 < live:
                target = min(target, current[order[pivot + 1]])
            best = 0
            for i in range(1, pivot + 1):
                if term_bound[order[i]] > term_bound[order[best]]:
                    best = i
            low, high = best, best
        # the lists at low..high move to their first passage from target on, then back into document order
        for i in range(high, low - 1, -1):
            q = order[i]
            first = block_first[q]
            while block[q] < block_count[q] and block_last_doc[first + block[q]] < target:
                block[q] += 1
            if block[q] == block_count[q]:
                current[q] = n_docs
            else:
                if loaded[q] != block[q]:
                    start = starts[q] + block[q] * BLOCK
                    block_len[q] = min(BLOCK, ends[q] - start)
                    _load_block(postings, block_last_doc, first, first + block[q], start, block_len[q],
                                buffer_docs[q], buffer_tfs[q])  # fmt: skip
                    loaded[q] = block[q]
                    offset[q] = 0
                at = offset[q]
                while buffer_docs[q, at] < target:
                    at += 1
                offset[q] = at
                current[q] = buffer_docs[q, at]
            j = i
            while j + 1 < live and current[order[j + 1]] < current[q]:
                order[j] = order[j + 1]
                j += 1
            order[j] = q
    if size < k:
        for i in range(size // 2 - 1, -1, -1):
            _sift_down(heap_scores, heap_docs, heap_keys, size, i)
    return _sorted_heap(heap_scores, heap_docs, heap_keys, size)


PROBES = ("decode", "decode + score", "exhaustive, touched list", "exhaustive, scan", "exhaustive (engine)",
          "maxscore", "bmw (instrument)", "auto")  # fmt: skip


def _probe_query(context, name: str, k: int, i: int) -> None:
    segment, blocks, norms, norm_index, inverse, accumulator, touched, plans, queries, searcher = context
    starts, ends, weights, first = plans[i]
    if name in ("decode", "decode + score"):
        _probe(segment.postings, starts, ends, first, blocks.last_doc, weights, norm_index, inverse, accumulator,
               name == "decode + score")  # fmt: skip
    elif name.startswith("exhaustive"):
        top = {"exhaustive, touched list": 0, "exhaustive, scan": 1}.get(name, -1)  # -1: the engine's choice
        bm25_exhaustive_packed(segment.postings, starts, ends, first, blocks.last_doc, weights, norm_index, inverse,
                               k, accumulator, touched, False, NO_MASK, NO_KEYS, top)  # fmt: skip
    elif name == "maxscore":
        # every argument given: with array defaults left out, a kernel's call from Python was measured ~200 us
        # slower once another module's kernel with the same defaults had been called
        bm25_maxscore(segment.postings, starts, ends, weights, norm_index, inverse, norms.lengths, first,
                      blocks.max_tf, blocks.min_length, blocks.last_doc, k, False, NO_MASK, NO_KEYS)  # fmt: skip
    elif name == "bmw (instrument)":
        bm25_bmw(segment.postings, starts, ends, weights, norm_index, inverse, norms.lengths, first, blocks.max_tf,
                 blocks.min_length, blocks.last_doc, k, False, NO_MASK, NO_KEYS)  # fmt: skip
    else:
        searcher.search_passages(queries[i], k)


def _pisa_query(engine, queries, k: int, i: int) -> None:
    engine.search(queries[i], k)


def skipping_bounds(segment, norms, plans: list, hard: np.ndarray, ks: list[int]) -> list[dict]:
    """What block-max skipping could save at best, from the engine's own block bounds at each query's final k-th
    score (the highest threshold any run reaches, so these are lower bounds on the work of any safe method):
    - essential share: the postings of the lists whose bounds, added to those of the weaker lists, reach it (MaxScore
      reads them in full);
    - block-max share: of those, the postings whose passage's block-max bound over all the query's lists reaches it
      (what BMW's pivoting must still score)."""
    blocks = segment.blocks
    docs = segment.docs  # decoded in full once: this is an analysis, not a timing
    accumulator, touched = exhaustive_scratch(segment.passages)
    rows = []
    for k in ks:
        totals = {"all": np.zeros(3), "hard": np.zeros(3)}  # postings, essential, within block-max bounds
        for (starts, ends, weights, first), is_hard in zip(plans, hard):
            if not len(starts):
                continue
            _, scores = bm25_exhaustive_packed(
                segment.postings, starts, ends, first, blocks.last_doc, weights, norms.per_segment[0], norms.inverse,
                k, accumulator, touched,
            )  # fmt: skip
            threshold = scores[-1] if len(scores) == k else 0.0
            counts = (ends - starts + BLOCK - 1) // BLOCK
            offsets, bounds, term_bound = _block_bounds(weights, first, counts, blocks.max_tf, blocks.min_length,
                                                        norms.lengths, norms.inverse, False)  # fmt: skip
            order = np.argsort(term_bound, kind="stable")
            essential = order[int(np.sum(np.cumsum(term_bound[order]) <= threshold)):]
            reach = 0
            for q in essential:
                passages = docs[starts[q] : ends[q]].astype(np.int64)
                bound = np.zeros(len(passages))
                for r in range(len(starts)):  # the block of list r that may hold each passage
                    block = np.searchsorted(blocks.last_doc[first[r] : first[r] + counts[r]], passages)
                    inside = block < counts[r]
                    bound[inside] += bounds[offsets[r] + block[inside]]
                reach += int((bound > threshold).sum())
            found = np.array([(ends - starts).sum(), (ends - starts)[essential].sum(), reach])
            totals["all"] += found
            if is_hard:
                totals["hard"] += found
        for subset, (postings, essential, reach) in totals.items():
            if postings:
                rows.append({"k": k, "queries": subset, "essential_share": round(essential / postings, 3),
                             "block_max_share": round(reach / postings, 3)})  # fmt: skip
    return rows


def run(corpus: str, max_queries: int, ks: list[int], repeats: int, bounds: bool = False) -> dict:
    passages, queries, hard = load_corpus(corpus, max_queries)
    kept = [i for i, q in enumerate(queries) if q]
    queries, hard = [queries[i] for i in kept], np.array([hard[i] for i in kept], dtype=bool)
    work = WORK / f"kernels-{corpus_stem(corpus)}"
    work.mkdir(parents=True, exist_ok=True)
    sift = SiftEngine()
    sift.build(passages, work)
    pisa = {}
    for algorithm in ("block_max_wand", "block_max_maxscore"):
        try:
            engine = PisaEngine(algorithm)
            engine.build(passages, work)
            pisa[engine.name] = engine
        except PeerUnavailable as e:
            print(f"PISA skipped: {e}")
            break
    index = sift.index
    searcher = index.bm25
    if len(index.segments) != 1:
        raise SystemExit("the profile reads one segment; the benchmark's index has several")
    segment = index.segments[0]
    if not segment.packed:
        raise SystemExit("the profile reads packed postings")
    norms = searcher.norms(searcher.default_params)
    norm_index, inverse = norms.per_segment[0], norms.inverse
    blocks = segment.blocks
    accumulator, touched = exhaustive_scratch(segment.passages)
    plans = [searcher.ranges(searcher.plan(q), 0) for q in queries]
    postings = np.array([int((ends - starts).sum()) for starts, ends, _, _ in plans])
    context = (segment, blocks, norms, norm_index, inverse, accumulator, touched, plans, queries, searcher)
    rows, per_query = [], {}
    for k in ks:
        probes = {name: partial(_probe_query, context, name, k) for name in PROBES}
        for name, engine in pisa.items():
            probes[name] = partial(_pisa_query, engine, queries, k)
        for call in probes.values():  # warm-up: compilation, page cache
            for i in range(len(queries)):
                call(i)
        seconds = {name: np.full(len(queries), np.inf) for name in probes}
        names = list(probes)
        for _ in range(repeats):
            for i in range(len(queries)):
                for turn in range(len(names)):
                    name = names[(i + turn) % len(names)]
                    started = time.perf_counter()
                    probes[name](i)
                    seconds[name][i] = min(seconds[name][i], time.perf_counter() - started)
        per_query[str(k)] = {name: np.round(seconds[name] * 1e6, 2).tolist() for name in names}
        for subset, chosen in (("all", np.ones(len(queries), dtype=bool)), ("hard", hard)):
            if not chosen.any():
                continue
            total = postings[chosen].sum()
            for name in names:
                spent = seconds[name][chosen]
                rows.append({"k": k, "queries": subset, "probe": name,
                             "ns_per_posting": round(1e9 * spent.sum() / total, 2),
                             "us_per_query_p50": round(1e6 * float(np.median(spent)), 1),
                             "us_per_query_p95": round(1e6 * float(np.percentile(spent, 95)), 1)})  # fmt: skip
            print(f"k={k} {subset}: " + ", ".join(f"{r['probe']} {r['ns_per_posting']}" for r in rows[-len(names):]))
    skipping = skipping_bounds(segment, norms, plans, hard, ks) if bounds else []
    return {"corpus": corpus, "passages": segment.passages, "queries": len(queries), "hard_queries": int(hard.sum()),
            "skipping_bounds": skipping,
            "postings_per_query_p50": int(np.median(postings)), "repeats": repeats, "results": rows,
            # per query, for fitting auto's choice: its postings, terms, and each probe's best time in microseconds
            "per_query": {"postings": postings.tolist(), "terms": [len(p[0]) for p in plans], "hard": hard.tolist(),
                          "microseconds": per_query}}  # fmt: skip


def _features(postings: np.ndarray, terms: np.ndarray, k: int, passages: int) -> np.ndarray:
    """What auto's cost model sees of a query in one segment (engine/sparse.choose_algorithm computes the same)."""
    postings = np.maximum(postings, 1).astype(np.float64)
    return np.column_stack([np.ones(len(postings)), np.log(postings), np.full(len(postings), np.log(k)),
                            np.log(postings / passages), terms.astype(np.float64)])  # fmt: skip


def fit_auto(paths: list) -> dict:
    """Least squares of log(maxscore time / exhaustive time) on the features above, over every query of every
    report; auto then takes maxscore where the prediction is below zero. Returns the weights and, per report and
    k, the total time of exhaustive, maxscore, the fitted choice, the report's own auto and the oracle."""
    rows, targets, parts = [], [], []
    for path in paths:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        per_query = report["per_query"]
        postings, terms = np.array(per_query["postings"]), np.array(per_query["terms"])
        for k, probes in per_query["microseconds"].items():
            exhaustive, maxscore = np.array(probes["exhaustive (engine)"]), np.array(probes["maxscore"])
            features = _features(postings, terms, int(k), report["passages"])
            rows.append(features)
            targets.append(np.log(maxscore / exhaustive))
            parts.append((report["corpus"], int(k), features, exhaustive, maxscore, np.array(probes["auto"])))
    weights, *_ = np.linalg.lstsq(np.vstack(rows), np.concatenate(targets), rcond=None)
    totals = []
    for corpus, k, features, exhaustive, maxscore, auto in parts:
        fitted = np.where(features @ weights < 0, maxscore, exhaustive)
        totals.append({"corpus": corpus, "k": k, "exhaustive_ms": round(exhaustive.sum() / 1e3, 1),
                       "maxscore_ms": round(maxscore.sum() / 1e3, 1), "fitted_ms": round(fitted.sum() / 1e3, 1),
                       "oracle_ms": round(np.minimum(exhaustive, maxscore).sum() / 1e3, 1),
                       "auto_as_measured_ms": round(auto.sum() / 1e3, 1)})  # fmt: skip
    return {"weights": [round(float(w), 4) for w in weights], "totals": totals}


def render(report: dict) -> str:
    lines = [f"# Kernel profile: {report['corpus']} ({report['passages']:,} passages, {report['queries']:,} queries, "
             f"{report['hard_queries']:,} hard)", "",
             f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores; one thread, "
             f"probes interleaved query by query, best of {report['repeats']} per query. ns/posting: time over the "
             f"postings of the query terms (median {report['postings_per_query_p50']:,} a query), the same divisor "
             "for every row, so PISA's figure is what skipping buys it.", "",
             "| k | queries | probe | ns/posting | µs/query p50 | µs/query p95 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["results"]:
        lines.append(f"| {r['k']} | {r['queries']} | {r['probe']} | {r['ns_per_posting']} | {r['us_per_query_p50']} | "
                     f"{r['us_per_query_p95']} |")  # fmt: skip
    if report.get("skipping_bounds"):
        lines += ["", "What skipping could save at best (`--bounds`), at each query's final k-th score: the share of "
                  "the postings in lists MaxScore must read in full (essential), and the share whose passage's "
                  "block-max bound over all the query's lists still reaches that score (what BMW must score).", "",
                  "| k | queries | essential share | block-max share |", "|---|---|---|---|"]  # fmt: skip
        for r in report["skipping_bounds"]:
            lines.append(f"| {r['k']} | {r['queries']} | {r['essential_share']} | {r['block_max_share']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="synthetic:200000", help="as sift bench first-stage takes it")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", default="10,1000")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; each query keeps its best")
    parser.add_argument("--bounds", action="store_true", help="also report what block-max skipping could save "
                        "at best on these queries (decodes the segment in full)")  # fmt: skip
    parser.add_argument("--fit", nargs="+", metavar="KERNELS.json", help="fit auto's cost model on these reports' "
                        "per-query times and print it (nothing is run)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.fit:
        print(json.dumps(fit_auto(args.fit), indent=1))
        return
    report = run(args.corpus, args.queries, [int(k) for k in args.k.split(",")], args.repeats, args.bounds)
    publish(f"kernels-{corpus_stem(args.corpus)}", report, render)


if __name__ == "__main__":
    main()
