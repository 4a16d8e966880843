"""What every benchmark shares: where data and results live, the machine and software they ran on, writing
results."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHARED_DATA") or ROOT.parent / "shared" / "data")  # as the tests find it
# SIFT_BENCH_DIR moves results and scratch elsewhere (the tests use it to keep bench/results untouched).
_OUTPUT = Path(os.environ.get("SIFT_BENCH_DIR", ROOT / "bench"))
RESULTS = _OUTPUT / "results"
WORK = _OUTPUT / "work"


def machine() -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory, 1), "os": platform.platform()}


def software() -> dict:
    names = ["sift-engine", "numpy", "numba", "PyStemmer", "pyjnius", "pyserini", "pyterrier-pisa", "bm25s", "tantivy",
             "onnxruntime", "faiss-cpu", "torch", "sentence-transformers", "fastapi", "uvicorn"]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_results(stem: str, table: str, report: dict) -> Path:
    """bench/results/<stem>.md (the table) and .json (everything); returns the folder."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(table, encoding="utf-8")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return RESULTS


def publish(stem: str, report: dict, render) -> None:
    """Stamps a report with the date, machine and software, writes its table (render(report)) and JSON to
    bench/results/<stem>, and prints the table."""
    report.update(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), machine=machine(), software=software()
    )
    table = render(report)
    write_results(stem, table, report)
    print(table)
    print(f"written: {RESULTS / stem}.md, .json")


def latencies(search: Callable, queries: list, k: int, warmups: int = 2) -> dict:
    """Per-query latency of search(query, k) on this thread, after warm-up passes (numba, the JVM's JIT, page
    cache): QPS and p50/p95/p99/mean in milliseconds."""
    for _ in range(warmups):
        for query in queries:
            search(query, k)
    timings = np.empty(len(queries))
    for i, query in enumerate(queries):
        started = time.perf_counter()
        search(query, k)
        timings[i] = time.perf_counter() - started
    return latency_summary(timings)


def latency_summary(seconds: np.ndarray) -> dict:
    """QPS and p50/p95/p99/mean in milliseconds of per-query latencies given in seconds."""
    ms = seconds * 1000
    return {
        "qps": round(len(seconds) / seconds.sum(), 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p95_ms": round(float(np.percentile(ms, 95)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
    }
