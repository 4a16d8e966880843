"""First-stage benchmark: Sift against PISA, Lucene, bm25s and tantivy on identical pre-tokenized input.

Each engine gets the same surrogate tokens (bench/peers.py). Per k: a warm-up pass, then per-query latencies on one
thread (p50, p95, p99, mean, QPS), and QPS on all threads from each engine's batch entry point. Every query Sift
times is also run exhaustively, and the benchmark fails if pruning changed any result. Writes
bench/results/first-stage-<corpus>.{md,json,png}.

    sift bench first-stage --corpus scifact --peers sift,pisa-bmw,pyserini,bm25s --k 10,1000 --json
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.harness import DATA, RESULTS, WORK, latency_summary, machine, software, write_results
from bench.peers import PEERS, Corpus, PeerUnavailable, SiftEngine, make
from engine.analysis import Analyzer
from engine.errors import SiftError
from indexers.corpus import CorpusReader, open_source, read_queries
from tools.debian_corpus import PACKAGES, MissingPackages, debian_documents
from tools.synthetic import synthetic_documents, synthetic_queries


class BenchmarkError(SiftError):
    pass


def load_corpus(name: str, max_queries: int, log=print, query_file: Path | None = None
                ) -> tuple[Corpus, list[list[str]], list[bool]]:  # fmt: skip
    """The corpus as surrogate tokens, its queries as token lists and which queries are "hard" (sampled_queries),
    for a shared collection, "debian", "synthetic:N" or any corpus file Sift reads (JSONL, TSV; queries sampled from
    it unless query_file names a TSV of them). Synthetic words are plain lower-case tokens already: they are their
    own surrogates, and the corpus is written to a file once and streamed (10M passages would not fit in memory as
    Python lists)."""
    if name.startswith("synthetic:"):
        count = int(name.split(":", 1)[1])
        path = WORK / f"synthetic-{count}.tsv"
        WORK.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            log(f"writing {count:,} synthetic passages to {path}")
            Corpus.write(((d["_id"], d["text"]) for d in synthetic_documents(count, seed=0)), path)
        sample = [d for _, d in zip(range(_QUERY_SAMPLE), synthetic_documents(count, seed=0))]
        sampled = sampled_queries(sample, max_queries, str.split)
        hard = [qid.startswith("hard") for qid, _ in sampled]
        return Corpus(path=path, size=count), [text.split() for _, text in sampled], hard
    if name == "debian" or Path(name).is_file():
        if name == "debian":
            documents = list(installed_debian_documents())
        else:
            documents = [{"_id": d.id, "title": d.title, "text": d.text}
                         for d in CorpusReader(open_source(name), skip_bad=True)]  # fmt: skip
        texts = [f"{d['title']} {d['text']}" if d["title"] else d["text"] for d in documents]
        ids = [d["_id"] for d in documents]
        if query_file is not None:
            sampled = read_queries(query_file)[:max_queries]
        else:
            sampled = sampled_queries(documents, max_queries, Analyzer().analyze)
        queries, hard = [q for _, q in sampled], [q.startswith("hard") for q, _ in sampled]
    else:
        folder = DATA / name
        if not folder.is_dir():
            raise BenchmarkError(f"unknown corpus {name!r}: no such file, and no {folder}; use a corpus file "
                                 "(JSONL, TSV), a shared collection, debian or synthetic:N")  # fmt: skip
        ids, texts = [], []
        with gzip.open(folder / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                ids.append(record["_id"])
                texts.append(f"{record['title']} {record['text']}" if record.get("title") else record["text"])
        split = "test" if (folder / "queries.test.tsv").exists() else "train"
        queries = [q for _, q in read_queries(query_file or folder / f"queries.{split}.tsv")[:max_queries]]
        hard = [False] * len(queries)
    log(f"{name}: {len(ids):,} passages, {len(queries):,} queries; analyzing once for every engine")
    docs, query_tokens = surrogate_tokens(texts, queries)
    return Corpus(passages=[(i, " ".join(d)) for i, d in zip(ids, docs)]), query_tokens, hard


_QUERY_SAMPLE = 100_000  # synthetic queries are drawn from the first passages


def sampled_queries(documents: list[dict], count: int, analyze) -> list[tuple[str, str]]:
    """Seeded queries of words sampled from passages, plus a "hard" set of a fifth as many (at most 200): each also
    holds two of the corpus's 50 most frequent terms (by analyze), whose long posting lists are what dynamic pruning
    must cope with."""
    queries = synthetic_queries(documents, count, seed=0)
    hard = min(200, count // 5)
    frequency: Counter = Counter()
    for document in documents[:: max(1, len(documents) // 20_000)]:
        frequency.update(set(analyze(document["text"])))
    frequent = [term for term, _ in frequency.most_common(50)]
    rng = np.random.default_rng(7)
    extra = [(f"hard{i}", f"{' '.join(rng.choice(frequent, 2))} {text}") for i, (_, text) in enumerate(queries[:hard])]
    return queries + extra


def installed_debian_documents() -> Iterator[dict]:
    """The Debian corpus, installing its packages with apt-get when they are absent (as root)."""
    try:
        yield from debian_documents()
        return
    except MissingPackages as missing:
        command = f"apt-get update -qq && apt-get install -y -qq {PACKAGES}"
        if subprocess.run(command, shell=True, capture_output=True).returncode != 0:
            raise BenchmarkError(f"{missing}; the automatic install ({command}) failed") from None
    yield from debian_documents()


def surrogate_tokens(texts: list[str], queries: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Analyzes once with Sift's analyzer; every distinct term becomes "t<number>", which no engine alters."""
    analyzer = Analyzer()
    vocabulary: dict[str, str] = {}

    def convert(text: str) -> list[str]:
        terms = analyzer.analyze(text)
        for term in set(terms).difference(vocabulary):
            vocabulary[term] = f"t{len(vocabulary)}"
        return [vocabulary[t] for t in terms]

    docs = [convert(t) for t in texts]
    # a query term absent from the corpus matches nothing anywhere; it is dropped for every engine alike
    query_tokens = [[vocabulary[t] for t in analyzer.analyze(q) if t in vocabulary] for q in queries]
    return docs, query_tokens


def agreement(mine: list[list[tuple[str, float]]], theirs: list[list[tuple[str, float]]]) -> tuple[float, float]:
    """(per-rank score agreement within 1e-4 relative, overlap of the returned ids), averaged over queries."""
    ranks_equal, overlaps = [], []
    for a, b in zip(mine, theirs):
        if not a and not b:
            continue
        depth = max(len(a), len(b))
        same = sum(
            1 for (_, x), (_, y) in zip(a, b) if abs(x - y) <= 1e-4 * max(1.0, abs(x))
        )  # ties may order ids differently, scores may not differ
        ranks_equal.append(same / depth)
        overlaps.append(len({d for d, _ in a} & {d for d, _ in b}) / depth)
    return round(float(np.mean(ranks_equal)), 4), round(float(np.mean(overlaps)), 4)


def verify_pruning(engine: SiftEngine, queries: list[list[str]], k: int) -> int:
    """Every timed query: the pruned top k equals the exhaustive one, ids and scores."""
    for query in queries:
        pruned = engine.search_internal(query, k, "maxscore")
        exhaustive = engine.search_internal(query, k, "exhaustive")
        if not (np.array_equal(pruned[0], exhaustive[0]) and np.array_equal(pruned[1], exhaustive[1])):
            raise BenchmarkError(f"pruned results differ from exhaustive ones for query {query} at k={k}")
    return len(queries)


def interleaved(engines: list, queries: list[list[str]], k: int, warmups: int = 2) -> list[np.ndarray]:
    """Per engine, each query's latency on this thread in seconds, the engines taking turns query by query (the
    order rotating), so that machine noise falls on all of them alike rather than on whichever ran its whole pass
    at a bad moment."""
    for engine in engines:
        for _ in range(warmups):
            for query in queries:
                engine.search(query, k)
    timings = [np.empty(len(queries)) for _ in engines]
    for i, query in enumerate(queries):
        for turn in range(len(engines)):
            e = (i + turn) % len(engines)
            started = time.perf_counter()
            engines[e].search(query, k)
            timings[e][i] = time.perf_counter() - started
    return timings


def run(corpus: str, peers: list[str], ks: list[int], threads: int, max_queries: int, log=print,
        query_file: Path | None = None) -> dict:  # fmt: skip
    passages, query_tokens, hard = load_corpus(corpus, max_queries, log, query_file)
    kept = [i for i, q in enumerate(query_tokens) if q]
    query_tokens, hard = [query_tokens[i] for i in kept], np.array([hard[i] for i in kept], dtype=bool)
    work = WORK / corpus_stem(corpus)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    engines, builds, skipped = [], [], {}
    for name in peers:
        engine = make(name)
        try:
            seconds = engine.build(passages, work)
        except PeerUnavailable as e:
            skipped[name] = str(e)
            log(f"  {name}: skipped ({e})")
            continue
        engines.append(engine)
        builds.append({"system": name, "seconds": None if seconds is None else round(seconds, 2),
                       "docs_per_s": None if not seconds else round(len(passages) / seconds, 1),
                       "bytes": engine.index_bytes()})  # fmt: skip
        log(f"  {name}: " + ("shares the index built above" if seconds is None else f"built in {seconds:.1f} s"))
    sift = next((e for e in engines if isinstance(e, SiftEngine)), None)
    results, verified, served = [], 0, {}
    for k in ks:
        reference = [sift.search(q, k) for q in query_tokens] if sift else None
        if sift:
            verified += verify_pruning(sift, query_tokens, k)
            served[str(k)] = sift.algorithms_served(query_tokens, k)
        timings = interleaved(engines, query_tokens, k)
        for engine, seconds in zip(engines, timings):
            engine.batch(query_tokens, k, threads)  # warm-up: a peer's parallel path may compile on first use
            started = time.perf_counter()
            engine.batch(query_tokens, k, threads)
            many = len(query_tokens) / (time.perf_counter() - started)
            score_agreement = overlap = None
            if reference is not None and engine is not sift:
                found = [engine.search(q, k) for q in query_tokens]
                score_agreement, overlap = agreement(reference, found)
                if not engine.same_bm25:
                    score_agreement = None
            common = {"system": engine.name, "k": k, "agreement": score_agreement, "overlap": overlap}
            results.append({**common, "threads": 1, **latency_summary(seconds)})
            if hard.any():
                results[-1]["hard"] = latency_summary(seconds[hard])
            results.append({**common, "threads": threads, "qps": round(many, 1)})
            log(f"  k={k} {engine.name}: {results[-2]['qps']:,.0f} QPS on 1 thread, {many:,.0f} on {threads}")
    return {
        "corpus": corpus,
        "passages": len(passages),
        "queries": len(query_tokens),
        "hard_queries": int(hard.sum()),
        "results": results,
        "builds": builds,
        "skipped": skipped,
        "pruning_verified_queries": verified,
        "sift_algorithms_served": served,
    }


def corpus_stem(corpus: str) -> str:
    """A file name for the corpus: a path's file name without its suffixes."""
    return Path(corpus).name.split(".")[0] if Path(corpus).is_file() else corpus.replace(":", "-")


def render(report: dict) -> str:
    lines = [
        f"# First stage: {report['corpus']} ({report['passages']:,} passages, {report['queries']:,} queries)",
        "",
        f"Date: {report['date']}  ",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['memory_gib']} GiB  ",
        f"Software: {', '.join(f'{k} {v}' for k, v in report['software'].items() if v)}",
        "",
        "Identical input: Sift's analyzer ran once and every engine indexed the same surrogate tokens. "
        f"Pruning verified against exhaustive evaluation on {report['pruning_verified_queries']:,} timed queries. "
        "One thread: the engines take turns query by query (interleaved), after two warm-up passes each. "
        "Sift's kernels per query and segment under auto: "
        + "; ".join(f"k={k}: " + ", ".join(f"{a} {n:,}" for a, n in sorted(c.items()))
                    for k, c in report.get("sift_algorithms_served", {}).items()) + ".",
        "",
        "| system | k | threads | QPS | ratio Sift/system | p50 ms | p95 ms | p99 ms | score agreement | overlap |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    sift = {(r["k"], r["threads"]): r["qps"] for r in report["results"] if r["system"] == "sift"}
    for r in report["results"]:
        mine = sift.get((r["k"], r["threads"]))
        ratio = f"{mine / r['qps']:.2f}×" if mine and r["system"] != "sift" else ""
        lines.append(
            f"| {r['system']} | {r['k']} | {r['threads']} | {r['qps']:,.0f} | {ratio} | {r.get('p50_ms', '')} | "
            f"{r.get('p95_ms', '')} | {r.get('p99_ms', '')} | {r['agreement'] if r['agreement'] is not None else ''} | "
            f"{r['overlap'] if r['overlap'] is not None else ''} |"
        )
    hard = [r for r in report["results"] if "hard" in r]
    if hard:
        lines += ["", f"The {report['hard_queries']:,} hard queries (two of the corpus's most frequent terms added), "
                  "one thread, interleaved:", "", "| system | k | QPS | ratio Sift/system | p50 ms | p95 ms |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        mine = {r["k"]: r["hard"] for r in hard if r["system"] == "sift"}
        for r in hard:
            ratio = f"{mine[r['k']]['qps'] / r['hard']['qps']:.2f}×" if r["k"] in mine and r["system"] != "sift" else ""
            lines.append(f"| {r['system']} | {r['k']} | {r['hard']['qps']:,.0f} | {ratio} | {r['hard']['p50_ms']} | "
                         f"{r['hard']['p95_ms']} |")  # fmt: skip
    lines += ["", "| system | build s (1 thread) | docs/s | index MB |", "|---|---|---|---|"]
    for b in report["builds"]:
        seconds = "shared" if b["seconds"] is None else b["seconds"]
        lines.append(f"| {b['system']} | {seconds} | {b['docs_per_s'] or ''} | {b['bytes'] / 2**20:.1f} |")
    for name, why in report["skipped"].items():
        lines.append(f"\n{name} skipped: {why}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in report["results"] if r["threads"] == 1]
    ks = sorted({r["k"] for r in rows})
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 4), squeeze=False)
    for axis, k in zip(axes[0], ks):
        values = [next((r["qps"] for r in rows if r["system"] == s and r["k"] == k), 0) for s in systems]
        axis.bar(systems, values, color=["tab:red" if s == "sift" else "tab:gray" for s in systems])
        axis.set_title(f"top-{k}, one thread")
        axis.set_ylabel("queries per second")
        axis.tick_params(axis="x", rotation=30)
    fig.suptitle(f"{report['corpus']}: {report['passages']:,} passages ({report['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(corpus: str, peers: list[str], ks: list[int], threads: int | None, max_queries: int, as_json: bool,
         query_file: Path | None = None) -> int:  # fmt: skip
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise BenchmarkError(f"unknown peer {unknown[0]!r}; choose from {', '.join(PEERS)}")
    threads = threads or os.cpu_count() or 1
    log = (lambda *a: None) if as_json else print
    report = run(corpus, peers, ks, threads, max_queries, log=log, query_file=query_file)
    report.update(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), machine=machine(), software=software()
    )
    stem = f"first-stage-{corpus_stem(corpus)}"
    table = render(report)
    write_results(stem, table, report)
    plotted = plot(report, RESULTS / f"{stem}.png")
    if as_json:
        print(json.dumps(report))
    else:
        print(table)
        print(f"written: {RESULTS / stem}.md, .json{', .png' if plotted else ''}")
    return 0
