"""Sharded indexes on Ray: what sharding costs and buys on one machine, and the figures a cluster plan starts from.

    python3 -m bench.distributed --corpora synthetic:1000000,debian --shards 2 --queries 300

- Build: one index in one process (as `sift index`) against `--shards N` on a local Ray (one task per core) and
  `--shards N` without Ray (the same tasks one after another): wall time and speed-up. Ray's start-up (ray.init of
  a local cluster) and its per-task overhead (a task that does nothing, one at a time and many at once) apart.
- Query (the last corpus, real text for Debian): BM25 top 10, one index against the same documents in N shards
  searched in this process and served by Ray actors: per-query latency with one client (the scatter-gather
  overhead), then QPS with 1 to 32 clients (threads, each sending its queries one after another). Every sharded
  answer is checked equal to one index's (ids and scores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.first_stage import installed_debian_documents, sampled_queries
from bench.harness import RESULTS, WORK, directory_bytes, latency_summary, publish
from engine.analysis import Analyzer
from engine.index import open_index
from indexers.corpus import CorpusReader, open_source
from indexers.inverted import BuildOptions
from indexers.sharded import build_sharded
from indexers.writer import build_index
from tools.synthetic import synthetic_documents

CLIENTS = (1, 2, 4, 8, 16, 32)


def corpus_file(name: str) -> tuple[Path, list[str]]:
    """The corpus as a file sift index reads (uncompressed, so that tasks read it in spans) and sampled queries."""
    folder = WORK / "distributed"
    folder.mkdir(parents=True, exist_ok=True)
    if name.startswith("synthetic:"):
        count = int(name.split(":", 1)[1])
        path = folder / f"synthetic-{count}.jsonl"
        sample = [d for _, d in zip(range(100_000), synthetic_documents(count, seed=0))]
        documents = None if path.exists() else synthetic_documents(count, seed=0)
    elif name == "debian":
        path = folder / "debian.jsonl"
        documents = list(installed_debian_documents())
        sample = documents
    else:
        raise SystemExit(f"unknown corpus {name!r}: synthetic:N or debian")
    if documents is not None and not path.exists():
        with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as f:
            for d in documents:
                f.write(json.dumps({"_id": d["_id"], "title": d.get("title", ""), "text": d["text"]}) + "\n")
        path.with_suffix(".tmp").replace(path)
    queries = [text for _, text in sampled_queries(sample, 400, Analyzer().analyze)]
    return path, queries


def ray_overheads(ray) -> dict:
    @ray.remote(num_cpus=1)
    def nothing() -> None:
        return None

    ray.get(nothing.remote())
    started = time.perf_counter()
    for _ in range(100):
        ray.get(nothing.remote())
    one_at_a_time = (time.perf_counter() - started) / 100
    started = time.perf_counter()
    ray.get([nothing.remote() for _ in range(1000)])
    many = (time.perf_counter() - started) / 1000
    return {"task_round_trip_ms": round(one_at_a_time * 1e3, 3), "task_ms_when_1000_at_once": round(many * 1e3, 3)}


def build(name: str, shards: int) -> dict:
    path, _ = corpus_file(name)
    work = WORK / "distributed" / name.replace(":", "-")
    shutil.rmtree(work, ignore_errors=True)
    source = open_source(path)
    row = {"corpus": name, "bytes": path.stat().st_size}
    started = time.perf_counter()
    report = build_index(CorpusReader(source), work / "one", BuildOptions())
    row["one_process_s"] = round(time.perf_counter() - started, 2)
    row["documents"] = report.documents
    row["index_bytes"] = directory_bytes(work / "one")
    for label, address in (("ray", "auto"), ("in_process", None)):
        started = time.perf_counter()
        sharded = build_sharded(source, work / f"sharded-{label}", shards, BuildOptions(), ray_address=address)
        row[f"sharded_{label}_s"] = round(time.perf_counter() - started, 2)
        row[f"sharded_{label}_tasks"] = sharded.tasks
    row["speedup_ray"] = round(row["one_process_s"] / row["sharded_ray_s"], 2)
    row["speedup_in_process"] = round(row["one_process_s"] / row["sharded_in_process_s"], 2)
    return row


def _check_equal(one, sharded, queries: list[str], k: int) -> None:
    for want, got in zip(one.batch_search(queries, k, threads=1), sharded.batch_search(queries, k, threads=1)):
        if want.pairs() != got.pairs():
            raise SystemExit("a sharded answer differs from one index's; this benchmark stops")


def query(name: str, shards: int) -> dict:
    _, queries = corpus_file(name)
    work = WORK / "distributed" / name.replace(":", "-")
    setups = {"one index": open_index(work / "one"),
              f"{shards} shards in process": open_index(work / "sharded-ray"),
              f"{shards} shards on Ray actors": open_index(work / "sharded-ray", ray="auto")}  # fmt: skip
    one = setups["one index"]
    rows = []
    for label, index in setups.items():
        first = np.empty(len(queries))  # the first sight of each term: on Ray actors, a round for its df first
        for i, query_text in enumerate(queries):
            started = time.perf_counter()
            index.search(query_text, 10)
            first[i] = time.perf_counter() - started
        _check_equal(one, index, queries, 10)
        seconds = np.empty(len(queries))
        for i, query_text in enumerate(queries):
            started = time.perf_counter()
            index.search(query_text, 10)
            seconds[i] = time.perf_counter() - started
        row = {"setup": label, **latency_summary(seconds), "first_pass_p50_ms": round(1e3 * np.median(first), 4)}
        for clients in CLIENTS:
            row[f"qps_{clients}_clients"] = round(_throughput(index, queries, clients), 1)
        rows.append(row)
        print(row)
    return {"corpus": name, "queries": len(queries), "k": 10, "rows": rows}


def _throughput(index, queries: list[str], clients: int) -> float:
    """QPS with `clients` threads each sending every query once, one after another."""

    def client(offset: int) -> None:
        for i in range(len(queries)):
            index.search(queries[(i + offset) % len(queries)], 10)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return clients * len(queries) / (time.perf_counter() - started)


def render(report: dict) -> str:
    lines = [f"# Sharded indexes on Ray, one machine ({report['machine']['cores']} cores)", "",
             f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"{report['machine']['memory_gib']} GiB; Ray {report['ray_version']}; {report['shards']} shards.", "",
             "## Ray's own costs", "",
             f"- Starting a local Ray (ray.init): {report['ray_start_s']} s.",
             f"- A task that does nothing: {report['ray']['task_round_trip_ms']} ms a round trip one at a time, "
             f"{report['ray']['task_ms_when_1000_at_once']} ms each when 1,000 are sent at once.", "",
             "## Build: one index in one process against the shards built as tasks", "",
             "| corpus | documents | MB | one process s | shards on Ray s | speed-up | shards in process s | "
             "speed-up |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["builds"]:
        lines.append(f"| {r['corpus']} | {r['documents']:,} | {r['bytes'] / 1e6:.0f} | {r['one_process_s']} | "
                     f"{r['sharded_ray_s']} | {r['speedup_ray']}× | {r['sharded_in_process_s']} | "
                     f"{r['speedup_in_process']}× |")  # fmt: skip
    q = report["query"]
    lines += ["", f"## Query: BM25 top {q['k']}, {q['corpus']}, {q['queries']} queries (every sharded answer "
              "checked equal to one index's)", "",
              "p50 ms first pass: each query's first run, when a term's df is gathered from the shards before the "
              "search (Ray actors) or looked up (in process); the other columns are taken after that pass.", "",
              "| setup | p50 ms first pass | p50 ms | p95 ms | p99 ms | "
              + " | ".join(f"QPS {c} clients" for c in CLIENTS) + " |",
              "|---|---|---|---|---|" + "---|" * len(CLIENTS)]  # fmt: skip
    for r in q["rows"]:
        first = r.get("first_pass_p50_ms")
        lines.append(f"| {r['setup']} | {first if first is not None else ''} | {r['p50_ms']:.3f} | "
                     f"{r['p95_ms']:.3f} | {r['p99_ms']:.3f} | "
                     + " | ".join(str(r[f"qps_{c}_clients"]) for c in CLIENTS) + " |")  # fmt: skip
    return "\n".join(lines + plan(report)) + "\n"


# One shard of 10M synthetic passages, BM25 top 10, one thread (bench/results/first-stage-synthetic-10000000.md,
# 2026-12-01): what a cluster's shard costs a query.
SHARD_PASSAGES = 10_000_000
SHARD_P50_MS, SHARD_P99_MS, SHARD_QPS_PER_CORE = 6.9, 53.9, 90


def plan(report: dict) -> list[str]:
    """On paper: 100M and 1B passages, from this run's build rate, index size and scatter-gather overhead, and the
    10M-passage shard's query cost."""
    first = report["builds"][0]
    tasks = first["sharded_ray_tasks"]
    core_seconds = tasks["partition_seconds"] + tasks["build_seconds"]
    rate = first["documents"] / core_seconds  # documents a core indexes per second, partitioning included
    bytes_per_passage = first["index_bytes"] / first["documents"]
    rows = {r["setup"]: r for r in report["query"]["rows"]}
    ray_row = next(r for label, r in rows.items() if "Ray" in label)
    overhead = ray_row["p50_ms"] - rows["one index"]["p50_ms"]
    shard_gb = bytes_per_passage * SHARD_PASSAGES / 1e9
    lines = ["", "## A plan for 100M and 1B passages (on paper, from the figures above)", "",
             "Assumptions, stated so that they can be checked:",
             f"- Shards of {SHARD_PASSAGES / 1e6:.0f}M passages. One such shard, BM25 top 10 on one thread: p50 "
             f"{SHARD_P50_MS} ms, p99 {SHARD_P99_MS} ms, {SHARD_QPS_PER_CORE} QPS a core "
             "(bench/results/first-stage-synthetic-10000000.md). Query cost grows with the postings a query "
             "reads, so about linearly with shard size; every query reads every shard (documents are partitioned, "
             "not terms).",
             f"- Index size: {bytes_per_passage:.0f} bytes a passage (this run's {first['corpus']} index), so "
             f"{shard_gb:.1f} GB a shard, kept in page cache: nodes of 16 cores and 64 GB, 48 GB of it for shards.",
             f"- Build: {rate:,.0f} passages a core-second, partitioning and building together ({first['corpus']}, "
             "this run), spread evenly over cores by one task per span and per shard; the corpus on storage every "
             "node reads at its disk's speed.",
             f"- Scatter-gather: {overhead:.1f} ms a query over plain p50 with Ray actors on this 2-core machine "
             "(driver, actors and Ray's processes sharing 2 cores: an upper bound for a real cluster's network "
             "round trip of ~0.2-1 ms).",
             "- Replicas: 2 per shard, so that a node can fail; requests spread over both.", "",
             "| passages | shards | replicas | index GB | nodes (64 GB) | CPU ms a query | QPS, all nodes | "
             "p50 ms | p99 ms | build on K=4 / 16 nodes |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for total in (100_000_000, 1_000_000_000):
        shards = total // SHARD_PASSAGES
        index_gb = bytes_per_passage * total / 1e9
        nodes = max(1, int(np.ceil(2 * index_gb / 48)))
        cpu_ms = shards * 1000 / SHARD_QPS_PER_CORE
        qps = nodes * 16 * 1000 / cpu_ms
        builds = " / ".join(f"{total / (rate * 16 * k) / 60:.0f} min" for k in (4, 16))
        # the slowest of `shards` parallel shard answers: the median query waits for about the shards' p90-p99
        lines.append(f"| {total / 1e6:,.0f}M | {shards} | 2 | {index_gb:,.0f} | {nodes} | {cpu_ms:,.0f} | "
                     f"{qps:,.0f} | {SHARD_P99_MS * 0.5 + overhead:.0f}-{SHARD_P99_MS + overhead:.0f} | "
                     f"{2 * SHARD_P99_MS + overhead:.0f}+ | {builds} |")  # fmt: skip
    lines += ["", "- Every query costs CPU on every shard: at 1B passages, ~1.1 s of CPU a query, so QPS per node "
              "falls as the collection grows whatever the shard size. Past that, add replicas (QPS grows with "
              "nodes) or tier the index (a first pass over a smaller, pruned index, e.g. `--prune`).",
              "- The median query waits for its slowest shard: with 10 to 100 shards, its p50 is near a shard's "
              "p90-p99, and its p99 beyond a shard's p99. Block-max pruning's long tail (the hard queries) sets the "
              "latency; a per-shard timeout with allow_partial trades exactness for a bound.",
              "- Memory per node: shards are memory-mapped, so a node serves the shards whose files its page cache "
              "holds; the table's node count keeps both replicas of every shard resident."]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="synthetic:1000000,debian", help="built in turn; the last is queried")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--render", action="store_true", help="rewrite the table from the last run's JSON")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads((RESULTS / "distributed.json").read_text(encoding="utf-8"))
        (RESULTS / "distributed.md").write_text(render(report), encoding="utf-8")
        print(render(report))
        return
    import ray

    started = time.perf_counter()
    ray.init(log_to_driver=False, include_dashboard=False)
    report = {"ray_start_s": round(time.perf_counter() - started, 2), "ray_version": ray.__version__,
              "shards": args.shards, "ray": ray_overheads(ray)}  # fmt: skip
    print(report)
    corpora = args.corpora.split(",")
    report["builds"] = []
    for name in corpora:
        report["builds"].append(build(name, args.shards))
        print(report["builds"][-1])
    report["query"] = query(corpora[-1], args.shards)
    ray.shutdown()
    publish("distributed", report, render)


if __name__ == "__main__":
    main()
