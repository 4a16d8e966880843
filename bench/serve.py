"""`sift serve` under load, against the same searches in process:

    python3 -m bench.serve [--corpora scifact,debian] [--seconds 10]

For each corpus, a BM25 index (no positions) and its queries (test queries; for the Debian passages the seeded
queries of bench.first_stage); the service runs as `sift serve` in a subprocess and wrk (apt-get install wrk) sends
GET /search?q=...&k=10 over 1, 8 and 32 keep-alive connections for 10 s each; then 8 again while a writer upserts
100 documents a second (POST /documents?commit=auto, ten every 100 ms). In process: Index.search on one thread
(per-query latency) and batch_search on all cores (throughput), on the same queries. Overhead: service p50 at one
connection minus in-process p50 (HTTP, JSON, the client's own work on the same two cores included).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode

import numpy as np

from bench.first_stage import installed_debian_documents, sampled_queries
from bench.harness import DATA, ROOT, WORK, latencies, publish
from engine.analysis import Analyzer
from engine.index import open_index
from indexers.corpus import CorpusReader, Document, open_source, read_queries
from indexers.writer import build_index

CONCURRENCY = (1, 8, 32)
DEBIAN_QUERIES = 1000
KEY = "bench-key"


def _corpus(name: str):
    if name == "debian":
        records = list(installed_debian_documents())
        queries = [text for _, text in sampled_queries(records, DEBIAN_QUERIES, Analyzer().analyze)]
        return (Document(r["_id"], r["text"], title=r["title"]) for r in records), queries
    folder = DATA / name
    documents = CorpusReader(open_source(next(folder.glob("corpus.*"))), skip_bad=True)
    return documents, [text for _, text in read_queries(folder / "queries.test.tsv")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("SIFT_PATHS")) do paths[#paths + 1] = line end
local at = 0
request = function()
  at = at % #paths + 1
  return wrk.format("GET", paths[at])
end
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _load(url: str, queries: list[str], clients: int, seconds: float) -> dict:
    """wrk (C, one thread, keep-alive) with `clients` connections for `seconds`, cycling through the queries."""
    (WORK / "serve").mkdir(parents=True, exist_ok=True)
    paths = WORK / "serve" / "paths.txt"
    paths.write_text("".join(f"/search?{urlencode({'q': q, 'k': 10})}\n" for q in queries), encoding="utf-8")
    script = WORK / "serve" / "queries.lua"
    script.write_text(_WRK_SCRIPT, encoding="utf-8")
    env = {**os.environ, "SIFT_PATHS": str(paths)}
    subprocess.run(["wrk", "-t1", "-c", str(clients), "-d", "2s", "-s", str(script), url], env=env,
                   capture_output=True, check=True)  # warm-up: numba, page cache  # fmt: skip
    out = subprocess.run(["wrk", "-t1", "-c", str(clients), "-d", f"{seconds}s", "--latency", "-s", str(script), url],
                         env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    percentile = {p: float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|errors: connect|read|write|timeout):?\s*"
                                             r"(\d+)", out))  # fmt: skip
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "qps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),
            "p50_ms": round(percentile["50"], 3), "p99_ms": round(percentile["99"], 3), "errors": errors}  # fmt: skip


def _upserts(url: str, stop: threading.Event, report: dict) -> None:
    """Ten documents every 100 ms, until stopped."""
    import httpx

    rng = np.random.default_rng(0)
    words = "search index query ranking passage retrieval stream river money water engine".split()
    sent = errors = 0
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
        while not stop.is_set():
            started = time.perf_counter()
            batch = [{"_id": f"upsert{rng.integers(0, 5000)}", "text": " ".join(rng.choice(words, 30))}
                     for _ in range(10)]  # fmt: skip
            response = http.post("/documents", params={"commit": "auto"}, json=batch)
            sent += len(batch)
            errors += response.status_code != 200
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))
    report.update(upserted=sent, upsert_errors=errors)


def run_corpus(name: str, seconds: float) -> dict:
    documents, queries = _corpus(name)
    path = WORK / "serve" / name
    shutil.rmtree(path, ignore_errors=True)
    build_index(documents, path)
    index = open_index(path)
    row = {"passages": index.passages, "queries": len(queries)}
    row["in_process"] = latencies(lambda q, k: index.search(q, k), queries, 10)
    started = time.perf_counter()
    index.batch_search(queries, 10)
    row["in_process"]["batch_qps"] = round(len(queries) / (time.perf_counter() - started), 1)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SIFT_API_KEY": KEY}
    server = subprocess.Popen([sys.executable, "-m", "sift", "serve", str(path), "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        row["service"] = {str(c): _load(url, queries, c, seconds) for c in CONCURRENCY}
        stop, writes = threading.Event(), {}
        writer = threading.Thread(target=_upserts, args=(url, stop, writes))
        writer.start()
        try:
            row["with_writes"] = _load(url, queries, 8, seconds)
        finally:
            stop.set()
            writer.join()
        row["with_writes"].update(writes)
        generation = httpx.get(f"{url}/health").json()["generation"]
        row["with_writes"]["commits"] = generation - index.manifest["generation"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    row["overhead_p50_ms"] = round(row["service"]["1"]["p50_ms"] - row["in_process"]["p50_ms"], 3)
    return row


def render(report: dict) -> str:
    lines = [
        "# sift serve under load",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores (server and load "
        "client share them). BM25 top-10, GET /search over HTTP/1.1 keep-alive connections from wrk (one thread), "
        "10 s a run; in "
        "process: Index.search on one thread, batch_search on all cores. Overhead: service p50 at one client − "
        "in-process p50. With writes: 8 clients while 100 documents/s are upserted (commit=auto, 1 s).",
        "",
        "| corpus | passages | clients | QPS | p50 ms | p99 ms | errors | QPS ÷ in-process batch | p50 ÷ in-process |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["corpora"].items():
        base = row["in_process"]
        lines.append(f"| {name} | {row['passages']:,} | in process | {base['qps']:,} (batch {base['batch_qps']:,}) "
                     f"| {base['p50_ms']} | {base['p99_ms']} | | | |")  # fmt: skip
        runs = [*((c, row["service"][c]) for c in row["service"]), ("8 + writes", row["with_writes"])]
        for clients, measured in runs:
            lines.append(f"| {name} | | {clients} | {measured['qps']:,} | {measured['p50_ms']} | "
                         f"{measured['p99_ms']} | {measured['errors']} | "
                         f"{measured['qps'] / base['batch_qps']:.2f}× | "
                         f"{measured['p50_ms'] / base['p50_ms']:.2f}× |")  # fmt: skip
    lines += ["", "| corpus | service overhead at p50 (ms) | goal < 1 ms | upserted during load | upsert errors | "
              "commits |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in report["corpora"].items():
        writes = row["with_writes"]
        lines.append(f"| {name} | {row['overhead_p50_ms']} | {'met' if row['overhead_p50_ms'] < 1 else 'not met'} "
                     f"| {writes.get('upserted', 0):,} | {writes.get('upsert_errors', 0)} | {writes['commits']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default="scifact,debian")
    parser.add_argument("--seconds", type=float, default=10, help="length of each load run (10)")
    args = parser.parse_args(argv)
    names = [n for n in args.corpora.split(",") if n == "debian" or (DATA / n).is_dir()]
    publish("serve", {"corpora": {name: run_corpus(name, args.seconds) for name in names}}, render)


if __name__ == "__main__":
    main()
