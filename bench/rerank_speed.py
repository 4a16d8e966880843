"""Reranking speed: Sift's ONNX reranker against sentence-transformers' CrossEncoder (PyTorch) on the same model and
the same (query, passage) pairs, in the same run: each SciFact test query's BM25 top DEPTH, one query at a time (the
per-query latency of a rerank stage), with what length bucketing, int8 weights and tokenization each account for.

    python3 -m bench.rerank_speed --index idx/scifact --model scifact-ce2 --queries 10 --depth 100

The model must be a registered cross-encoder whose directory keeps its PyTorch checkpoint (checkpoint/), as
`sift train` leaves it; the int8 variant is exported from that checkpoint on first use.
"""

from __future__ import annotations

import argparse
import itertools
import time
from functools import partial
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from bench.harness import DATA, publish
from engine import models
from engine.index import open_index
from engine.rerank import load_reranker
from indexers.corpus import read_qrels, read_queries

# variants exported from the checkpoint: name suffix -> int8 with these nodes kept fp32 (a regular expression over
# node names), or None: fp32
VARIANTS = {
    "fp32": None,
    "int8": "",
    "int8-fp32-ffn-down": r"layer\.\d+/output/dense",  # the FFN down-projections, where BERT's outlier activations are
    "int8-fp32-last-layer": r"layer\.5/|pooler|classifier",
}


def _variant_model(name: str, variant: str) -> str:
    target = f"{name}-{variant}"
    try:
        models.resolve(target)
        return target
    except models.ModelError:
        pass
    import tempfile

    from indexers.export import export_onnx

    source = models.resolve(name)
    config = models.read_config(source)
    with tempfile.TemporaryDirectory() as work:
        quantize = VARIANTS[variant] is not None
        export_onnx(source / "checkpoint", "cross-encoder", work, quantize=quantize, optimize=True,
                    keep_fp32=VARIANTS[variant] or "")  # fmt: skip
        models.register(work, target, "cross-encoder", max_length=config.max_length, extra=config.extra,
                        precision="int8" if quantize else "fp32", source=f"{name}, {variant}")  # fmt: skip
    return target


def _predict(reference, query: str, texts: list[str]) -> np.ndarray:
    return reference.predict([(query, t) for t in texts], batch_size=32, show_progress_bar=False)


def _ndcg10(ranked: list[str], judged: dict[str, int]) -> float:
    gains = [judged.get(d, 0) for d in ranked[:10]]
    ideal = sorted(judged.values(), reverse=True)[:10]
    discount = 1 / np.log2(np.arange(2, 12))
    best = float(np.dot(ideal, discount[: len(ideal)]))
    return float(np.dot(gains, discount[: len(gains)])) / best if best else 0.0


def run(index_dir: Path, model: str, count: int, depth: int, threads_list: list[int]) -> dict:
    import torch
    from sentence_transformers import CrossEncoder

    index = open_index(index_dir)
    queries = read_queries(DATA / "scifact" / "queries.test.tsv")[:count]
    qrels = read_qrels(DATA / "scifact" / "qrels.test.txt")
    work = []
    for qid, text in queries:
        found = index.search(text, depth)
        work.append((qid, text, found.ids, index.texts(found.passages)))
    pairs = sum(len(w[3]) for w in work)
    config = models.read_config(models.resolve(model))
    variant = {name: _variant_model(model, name) for name in VARIANTS}
    ffn_down, last_layer = variant["int8-fp32-ffn-down"], variant["int8-fp32-last-layer"]
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        reference = CrossEncoder(str(models.resolve(model) / "checkpoint"), device="cpu",
                                 max_length=config.max_length, activation_fn=torch.nn.Identity())  # fmt: skip
        systems = {
            "sentence-transformers CrossEncoder (PyTorch fp32)": partial(_predict, reference),
            "Sift fp32 (fused, length-bucketed)": load_reranker(variant["fp32"], threads=threads).score,
            "Sift fp32, no length bucketing": load_reranker(variant["fp32"], threads=threads, bucketing=False).score,
            "Sift int8 (fused, length-bucketed)": load_reranker(variant["int8"], threads=threads).score,
            "Sift int8, FFN down-projections fp32": load_reranker(ffn_down, threads=threads).score,
            "Sift int8, last layer and head fp32": load_reranker(last_layer, threads=threads).score,
        }  # fmt: skip
        baseline_scores = None
        for system, score in systems.items():
            score(work[0][1], work[0][3][:8])  # warm up
            latencies, scores, quality = [], [], []
            for qid, text, ids, texts in work:
                started = time.perf_counter()
                values = np.asarray(score(text, texts), dtype=np.float32)
                latencies.append(time.perf_counter() - started)
                scores.append(values)
                order = np.argsort(-values, kind="stable")
                quality.append(_ndcg10([ids[i] for i in order], {d: g for d, g in qrels.get(qid, {}).items() if g > 0}))
            flat = np.concatenate(scores)
            if baseline_scores is None:
                baseline_scores = flat
            ranks = [np.argsort(np.argsort(-s)) for s in (flat, baseline_scores)]
            bounds = np.cumsum([0] + [len(v) for v in scores])
            per_query = [spearmanr(flat[a:b], baseline_scores[a:b])[0] for a, b in itertools.pairwise(bounds)]
            rows.append({
                "threads": threads, "system": system, "pairs_per_s": round(pairs / sum(latencies), 1),
                "ms_per_query_p50": round(1000 * float(np.median(latencies)), 1),
                "max_abs_difference": float(np.abs(flat - baseline_scores).max()),
                "rank_correlation": round(float(np.corrcoef(ranks[0], ranks[1])[0, 1]), 4),
                "per_query_rank_correlation": round(float(np.nanmean(per_query)), 4),
                "nDCG@10": round(float(np.mean(quality)), 4),
            })  # fmt: skip
            print(rows[-1], flush=True)
        tokenizer_reranker = load_reranker(model, threads=threads)
        started = time.perf_counter()
        for _, text, _, texts in work:
            tokenizer_reranker.encode_pairs(text, texts)
        rows.append({"threads": threads, "system": "Sift tokenization alone (what pre-tokenizing would save)",
                     "ms_per_query_p50": round(1000 * (time.perf_counter() - started) / len(work), 1)})  # fmt: skip
    return {"model": model, "max_length": config.max_length, "queries": count, "depth": depth, "pairs": pairs,
            "results": rows}  # fmt: skip


def render(report: dict) -> str:
    lines = [
        f"# Reranking speed: {report['model']} (MiniLM-L6 cross-encoder, max {report['max_length']} tokens)",
        "",
        "int8 variants: weights quantized per output channel, activations per batch (dynamic); named nodes kept fp32.",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores; onnxruntime "
        f"{report['software']['onnxruntime']}, torch {report['software']['torch']}, sentence-transformers "
        f"{report['software']['sentence-transformers']}",
        "",
        f"{report['queries']} SciFact test queries, each reranking its BM25 top {report['depth']} ({report['pairs']:,} "
        "pairs), one query at a time, batches of 32. Ratio: pairs/s over sentence-transformers' at the same thread "
        "count. Differences and rank correlation against sentence-transformers' scores (over all pairs, and Spearman "
        "within each query's candidates, averaged: what reranking sees); nDCG@10 over these queries only.",
        "",
        "| threads | system | pairs/s | x PyTorch | ms/query p50 | max abs diff | rank corr | per-query rank corr "
        "| nDCG@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {}
    for row in report["results"]:
        if "pairs_per_s" not in row:
            lines.append(f"| {row['threads']} | {row['system']} | | | {row['ms_per_query_p50']} | | | | |")
            continue
        base.setdefault(row["threads"], row["pairs_per_s"])
        ratio = row["pairs_per_s"] / base[row["threads"]]
        lines.append(f"| {row['threads']} | {row['system']} | {row['pairs_per_s']} | {ratio:.2f}x | "
                     f"{row['ms_per_query_p50']} | {row['max_abs_difference']:.2g} | {row['rank_correlation']} | "
                     f"{row.get('per_query_rank_correlation', '')} | {row['nDCG@10']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="an index of SciFact")
    parser.add_argument("--model", required=True, help="a registered cross-encoder with checkpoint/")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--threads", default="1,2", help="thread counts (1,2)")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    publish(f"rerank-speed-{args.model}", run(args.index, args.model, args.queries, args.depth, threads), render)


if __name__ == "__main__":
    main()
