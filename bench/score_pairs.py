"""Scores the (query, passage) pairs that `bench.rerank --export-pairs DIR` wrote, with a registered reranker's
PyTorch checkpoint (kept in its model directory by `sift train`): the step behind `bench.rerank --pairs DIR`, run on a
GPU where there is one (`--device cuda`), or on the CPU. Tokenization and the relevance score are the ONNX
reranker's own (engine/rerank.py), so the two differ only by float rounding; bench.rerank checks a sample of them.

    python -m bench.score_pairs --pairs DIR --model scifact-t53 [--device cuda] [--batch-size 64]

Writes DIR/NAME.MODEL.npy beside each DIR/NAME.json, one float32 score per pair in the file's order.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from engine.rerank import PairScorer, load_reranker
from indexers.export import torch_module


def score_file(record: dict, scorer: PairScorer, module, torch, device, batch_size: int) -> np.ndarray:
    """Every pair of one exported file, in its order."""
    sequences = []
    for query_number, passage in record["pairs"]:
        sequences += scorer.encode_pairs(record["queries"][query_number], [record["passages"][str(passage)]])
    order = np.argsort([-len(ids) for ids, _ in sequences], kind="stable")
    scores = np.empty(len(sequences), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            width = max(len(sequences[i][0]) for i in chosen)
            ids = torch.zeros((len(chosen), width), dtype=torch.long)
            types = torch.zeros_like(ids)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(chosen.tolist()):
                token_ids, type_ids = sequences[i]
                ids[row, : len(token_ids)] = torch.tensor(token_ids)
                types[row, : len(token_ids)] = torch.tensor(type_ids)
                mask[row, : len(token_ids)] = 1
            arguments = (ids, mask) if scorer.kind == "seq2seq" else (ids, mask, types)
            logits = module(*(a.to(device) for a in arguments)).float().cpu().numpy()
            scores[chosen] = scorer.relevance(logits)
    return scores


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, required=True, metavar="DIR", help="what --export-pairs wrote")
    parser.add_argument("--model", required=True, help="a registered reranker with a checkpoint/ folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    scorer = load_reranker(args.model)
    checkpoint = scorer.directory / "checkpoint"
    if not checkpoint.is_dir():
        raise SystemExit(f"{checkpoint}: no PyTorch checkpoint (models trained by `sift train` keep one)")
    module, _ = torch_module(scorer.kind, checkpoint)
    module = module.to(args.device).eval()
    for path in sorted(p for p in args.pairs.glob("*.json") if "." not in p.stem):
        started = time.perf_counter()
        scores = score_file(json.loads(path.read_text(encoding="utf-8")), scorer, module, torch, args.device,
                            args.batch_size)  # fmt: skip
        np.save(path.with_name(f"{path.stem}.{args.model}.npy"), scores)
        print(f"{path.name}: {len(scores):,} pairs in {time.perf_counter() - started:.1f}s on {args.device}")


if __name__ == "__main__":
    main()
