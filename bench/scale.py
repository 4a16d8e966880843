"""Scale: index N synthetic passages, then serve them memory-mapped from a fresh process and measure its memory.

python -m bench.scale --passages 10000000
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time

from bench.harness import WORK, directory_bytes, machine, software, write_results

_SERVE = """
import json, sys, time, numpy as np
from engine.index import open_index
from tools.synthetic import synthetic_documents, synthetic_queries

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

path, count = sys.argv[1], int(sys.argv[2])
sample = [d for _, d in zip(range(20000), synthetic_documents(count, seed=0))]
queries = [q for _, q in synthetic_queries(sample, 1000, seed=0)]
before = rss_mib()
index = open_index(path)
opened = rss_mib()
report = {"rss_before_open_mib": round(before, 1), "rss_after_open_mib": round(opened, 1)}
for k in (10, 1000):
    index.batch_search(queries[:50], k, threads=1)
    started = time.perf_counter()
    index.batch_search(queries, k, threads=1)
    report[f"qps_k{k}"] = round(len(queries) / (time.perf_counter() - started), 1)
report["rss_after_queries_mib"] = round(rss_mib(), 1)
print(json.dumps(report))
"""


def _run_sampled(command: list[str], every: float = 0.5) -> tuple[subprocess.Popen, dict[str, int]]:
    """Runs command, sampling its memory from /proc every `every` seconds: peak resident (VmHWM), and the peaks of
    its anonymous and file-mapped parts (RssAnon, RssFile), in MiB."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    key, _, value = line.partition(":")
                    if key in peaks:
                        peaks[key] = max(peaks[key], int(value.split()[0]) // 1024)
        except FileNotFoundError:
            break
        time.sleep(every)
    process.wait()
    return process, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=10_000_000)
    parser.add_argument("--memory-mb", type=int, default=1024, help="the builder's flush budget")
    args = parser.parse_args(argv)
    corpus = WORK / f"scale-{args.passages}.jsonl"
    index = WORK / f"scale-{args.passages}"
    WORK.mkdir(parents=True, exist_ok=True)
    if not corpus.exists():
        from tools.synthetic import write_synthetic_corpus

        write_synthetic_corpus(corpus, args.passages)
    shutil.rmtree(index, ignore_errors=True)
    started = time.perf_counter()
    build, peaks = _run_sampled(
        [sys.executable, "-m", "sift", "index", str(corpus), str(index), "--quiet", "--json",
         "--memory-mb", str(args.memory_mb)],
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if build.returncode != 0:
        raise SystemExit(f"indexing failed: {build.stderr.read().strip()}")
    serve = subprocess.run(
        [sys.executable, "-c", _SERVE, str(index), str(args.passages)], capture_output=True, text=True
    )
    if serve.returncode != 0:
        raise SystemExit(f"serving failed: {serve.stderr.strip()}")
    report = {
        "passages": args.passages,
        "build_seconds": round(seconds, 1),
        "build_docs_per_s": round(args.passages / seconds, 1),
        "build_peak_rss_mib": peaks["VmHWM"],  # resident memory, mapped index files' pages included
        "build_peak_anonymous_mib": peaks["RssAnon"],  # the process's own memory (heap, arrays)
        "build_peak_file_mapped_mib": peaks["RssFile"],  # page cache of memory-mapped files: reclaimable
        "memory_mb_budget": args.memory_mb,
        "index_bytes": directory_bytes(index),
        "corpus_bytes": corpus.stat().st_size,
        **json.loads(serve.stdout.strip().splitlines()[-1]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "software": software(),
    }
    lines = [
        f"# Scale: {args.passages:,} synthetic passages",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['memory_gib']} GiB",
        "",
        "| measure | value |",
        "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in report.items() if isinstance(v, int | float)],
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(f"scale-{args.passages}", table, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
