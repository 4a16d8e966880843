"""Retrieval pipelines as values: first stages, fused, cut off, described by a short expression.

    bm25                     BM25 (the index's inverted postings)
    dense  | dense(MODEL)    a dense index of the index (its first one, or MODEL's)
    splade | splade(MODEL)   an impact index of the index (learned sparse weights, its first one or MODEL's)
    hybrid | hybrid(A,B)     min-max normalized interpolation of two first stages (alpha=0.5 by default)
    rrf(A,B)                 reciprocal-rank fusion (k=60)
    cort(A,B)                complementary, in the spirit of CoRT: A's and B's rankings interleaved, A first,
                             each id at its first appearance (B fills in what A missed, rank by rank)

Later stages follow `>>`:

    rerank:MODEL@DEPTH       rerank the top DEPTH with a cross-encoder or seq2seq model (engine/rerank.py); the
                             rest follow in their order. rerank:MODEL@DEPTH(mix=W) ranks by (1 - W) * reranker +
                             W * previous stage, both min-max normalized. Two rerank stages make a cascade:
                             `bm25 >> rerank:small@100 >> rerank:large@20`.

Fusion reads each input to a depth of max(k, 1000). Each query's Results carry the seconds each stage took for it
(`timings`; a batched first stage's time is shared equally). A pipeline file is JSON, {"pipeline": EXPRESSION,
...}: what `sift tune` writes, with how its weight was chosen.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import SiftError
from engine.index import Index
from engine.reader import Results

BUILT_IN = ("bm25", "dense", "splade", "hybrid")
_NEURAL = ("dense", "splade")
_FUSION_DEPTH = 1000
_RRF_K = 60


class PipelineError(SiftError, ValueError):
    pass


@dataclass(frozen=True)
class Stage:
    name: str  # bm25 | dense | splade | hybrid | rrf | cort | rerank | chain (a first stage, then reranks)
    arguments: tuple = ()
    options: dict = field(default_factory=dict)

    def __str__(self) -> str:
        if self.name == "chain":
            return " >> ".join(str(a) for a in self.arguments)
        if self.name == "rerank":
            mix = self.options.get("mix")
            return f"rerank:{self.arguments[0]}@{self.options['depth']}" + (f"(mix={mix})" if mix else "")
        inner = [str(a) for a in self.arguments] + [f"{k}={v}" for k, v in self.options.items()]
        return f"{self.name}({','.join(inner)})" if inner else self.name

    @property
    def first(self) -> Stage:
        """The first stage (the whole stage unless it is a chain)."""
        return self.arguments[0] if self.name == "chain" else self


def parse(expression: str) -> Stage:
    """A pipeline expression, or the path of a pipeline file -> its stage tree; errors name what was wrong."""
    if expression.endswith(".json"):
        path = Path(expression)
        try:
            expression = json.loads(path.read_text(encoding="utf-8"))["pipeline"]
        except FileNotFoundError:
            raise PipelineError(f"{path}: no such pipeline file") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PipelineError(f'{path}: not a pipeline file (expected {{"pipeline": "EXPRESSION", ...}})') from None
    first, *later = expression.replace(" ", "").split(">>")
    stage, rest = _parse(first, expression)
    if rest:
        raise PipelineError(f"pipeline {expression!r}: unexpected {rest!r}")
    if not later:
        return stage
    return Stage("chain", (stage, *(_parse_rerank(text, expression) for text in later)))


def _parse_rerank(text: str, expression: str) -> Stage:
    match = re.fullmatch(r"rerank:([A-Za-z0-9_./-]+)@([0-9]+)(?:\(mix=([0-9.]+)\))?", text)
    if not match:
        raise PipelineError(f"pipeline {expression!r}: expected a later stage like rerank:MODEL@DEPTH or "
                            f"rerank:MODEL@DEPTH(mix=0.2), got {text!r}")  # fmt: skip
    depth = int(match.group(2))
    if depth < 1:
        raise PipelineError(f"pipeline {expression!r}: a rerank depth must be at least 1")
    options: dict = {"depth": depth}
    if match.group(3):
        mix = float(match.group(3))
        if not 0 <= mix <= 1:
            raise PipelineError(f"pipeline {expression!r}: mix must be between 0 and 1")
        options["mix"] = mix
    return Stage("rerank", (match.group(1),), options)


def _parse(text: str, expression: str) -> tuple[Stage, str]:
    match = re.match(r"([a-z][a-z0-9_-]*)", text)
    if not match:
        raise PipelineError(f"pipeline {expression!r}: expected a stage name at {text!r}")
    name, rest = match.group(1), text[match.end() :]
    arguments: list = []
    options: dict = {}
    if rest.startswith("("):
        rest = rest[1:]
        while not rest.startswith(")"):
            option = re.match(r"([a-z_]+)=([0-9.]+)", rest)
            if option:
                options[option.group(1)] = float(option.group(2))
                rest = rest[option.end() :]
            elif name in _NEURAL:
                model = re.match(r"([A-Za-z0-9_./-]+)", rest)
                if not model:
                    raise PipelineError(f"pipeline {expression!r}: expected a model name at {rest!r}")
                arguments.append(model.group(1))
                rest = rest[model.end() :]
            else:
                inner, rest = _parse(rest, expression)
                arguments.append(inner)
            if rest.startswith(","):
                rest = rest[1:]
            elif not rest.startswith(")"):
                raise PipelineError(f"pipeline {expression!r}: expected ',' or ')' at {rest!r}")
        rest = rest[1:]
    if name in ("hybrid", "rrf", "cort"):
        if not arguments:
            arguments = [Stage("bm25"), Stage("dense")]
        if len(arguments) != 2:
            raise PipelineError(f"pipeline {expression!r}: {name} fuses two first stages")
        unknown = set(options) - {"hybrid": {"alpha"}, "rrf": {"k"}, "cort": set()}[name]
        if unknown:
            raise PipelineError(f"pipeline {expression!r}: {name} has no option {sorted(unknown)[0]!r}")
    elif name not in ("bm25", *_NEURAL):
        raise PipelineError(f"pipeline {expression!r}: unknown stage {name!r}; first stages: bm25, dense, "
                            "splade, hybrid, rrf, cort")  # fmt: skip
    return Stage(name, tuple(arguments), options), rest


class Pipeline:
    """Runs a stage tree over an index: search(queries, k) -> one Results per query."""

    def __init__(self, index: Index, expression: str | Stage, threads: int | None = None,
                 rerankers: dict | None = None, **bm25) -> None:  # fmt: skip
        """rerankers: model name -> an object with the Reranker's score(query, texts, keys), used instead of loading
        the model (scores cached or computed elsewhere)."""
        self.index = index
        self.stage = parse(expression) if isinstance(expression, str) else expression
        self.threads = threads
        self.bm25 = bm25  # params, algorithm for the BM25 stage
        self._searchers: dict = {("rerank", name): scorer for name, scorer in (rerankers or {}).items()}

    def __str__(self) -> str:
        return str(self.stage)

    def search(self, queries: Sequence[str], k: int = 10) -> list[Results]:
        queries = list(queries)
        later = self.stage.arguments[1:] if self.stage.name == "chain" else ()
        depth = max([k, *(s.options["depth"] for s in later)])
        started = time.perf_counter()
        found = self._run(self.stage.first, queries, depth)
        share = (time.perf_counter() - started) / max(len(queries), 1)
        for results in found:
            results.timings[str(self.stage.first)] = share
        for stage in later:
            reranker = self._reranker(stage.arguments[0])
            for i, query in enumerate(queries):
                started = time.perf_counter()
                reranked = self.rerank(reranker, query, found[i], stage.options["depth"], stage.options.get("mix"))
                reranked.timings.update(found[i].timings)
                reranked.timings[str(stage)] = time.perf_counter() - started
                found[i] = reranked
        if depth == k:
            return found
        cut = []
        for results in found:
            top = Results(results.ids[:k], results.doc_ids[:k], results.scores[:k], results.passages[:k])
            top.timings = results.timings
            cut.append(top)
        return cut

    def _reranker(self, model: str):
        if ("rerank", model) not in self._searchers:
            from engine.rerank import Reranker

            self._searchers[("rerank", model)] = Reranker(model, threads=self.threads)
        return self._searchers[("rerank", model)]

    def rerank(self, reranker, query: str, results: Results, depth: int, mix: float | None = None) -> Results:
        """results' top depth ordered by the reranker (ties: the earlier first), the rest after them in order."""
        head = min(depth, len(results))
        scores = reranker.score(query, self.index.texts(results.passages[:head]), results.passages[:head].tolist())
        if mix:
            scores = ((1 - mix) * _min_max(scores) + mix * _min_max(results.scores[:head])).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        tail = len(results) - head
        floor = float(scores.min()) if head else 0.0
        final = np.concatenate([scores[order], floor - np.arange(1, tail + 1, dtype=np.float32)]).astype(np.float32)
        ranked = np.concatenate([order, np.arange(head, len(results))])
        return Results([results.ids[i] for i in ranked], [results.doc_ids[i] for i in ranked], final,
                       results.passages[ranked])  # fmt: skip

    def _run(self, stage: Stage, queries: list[str], k: int) -> list[Results]:
        documents = self.index.split_passages
        if stage.name == "bm25":
            return self.index.batch_search(queries, k, documents=documents, threads=self.threads, **self.bm25)
        if stage.name in _NEURAL:
            model = stage.arguments[0] if stage.arguments else None
            key = (stage.name, model)
            if key not in self._searchers:
                from engine.neural import DenseSearcher, ImpactSearcher

                searcher = DenseSearcher if stage.name == "dense" else ImpactSearcher
                self._searchers[key] = searcher(self.index, model, threads=self.threads)
            return self._searchers[key].search_many(queries, k)
        depth = max(k, _FUSION_DEPTH)
        left, right = (self._run(s, queries, depth) for s in stage.arguments)
        return self.fuse(stage, left, right, k)

    def fuse(self, stage: Stage, left: list[Results], right: list[Results], k: int) -> list[Results]:
        """A fusion stage over its inputs' results (so that tuning runs the inputs once)."""
        if stage.name == "cort":
            return [self._interleave(a, b, k) for a, b in zip(left, right)]
        if stage.name == "rrf":
            return [self._fuse(a, b, k, _rrf(a, stage.options.get("k", _RRF_K)),
                               _rrf(b, stage.options.get("k", _RRF_K))) for a, b in zip(left, right)]  # fmt: skip
        alpha = stage.options.get("alpha", 0.5)
        return [self._fuse(a, b, k, (1 - alpha) * _min_max(a.scores), alpha * _min_max(b.scores))
                for a, b in zip(left, right)]  # fmt: skip

    def _interleave(self, a: Results, b: Results, k: int) -> Results:
        """a[0], b[0], a[1], b[1], ... skipping ids already taken; the score is 1 / fused rank."""
        taken: dict[str, int] = {}
        for i in range(max(len(a), len(b))):
            for results in (a, b):
                if i < len(results) and results.ids[i] not in taken:
                    taken[results.ids[i]] = int(results.passages[i])
            if len(taken) >= k:
                break
        ids = list(taken)[:k]
        numbers = np.array([taken[i] for i in ids], dtype=np.int64)
        scores = (1.0 / np.arange(1, len(ids) + 1)).astype(np.float32)
        doc_ids = ids if self.index.split_passages else self.index.ids(numbers)[1]
        return Results(ids, doc_ids, scores, numbers)

    def _fuse(self, a: Results, b: Results, k: int, a_scores: np.ndarray, b_scores: np.ndarray) -> Results:
        """Sums per-id fused scores (an id absent from one list gets 0 from it); ties by id."""
        total: dict[str, float] = {}
        passage: dict[str, int] = {}
        for results, scores in ((a, a_scores), (b, b_scores)):
            for hit_id, score, number in zip(results.ids, scores.tolist(), results.passages.tolist()):
                total[hit_id] = total.get(hit_id, 0.0) + score
                passage.setdefault(hit_id, number)
        ranked = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:k]
        numbers = np.array([passage[i] for i, _ in ranked], dtype=np.int64)
        scores = np.array([s for _, s in ranked], dtype=np.float32)
        ids = [i for i, _ in ranked]
        doc_ids = ids if self.index.split_passages else self.index.ids(numbers)[1]
        return Results(ids, doc_ids, scores, numbers)


def _rrf(results: Results, k: float) -> np.ndarray:
    return 1.0 / (k + np.arange(1, len(results) + 1, dtype=np.float64))


def _min_max(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return scores
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low) if high > low else np.ones_like(scores)


def tune_alpha(
    index: Index,
    stage: Stage,
    queries: list[tuple[str, str]],
    qrels: dict,
    grid: Sequence[float] = tuple(i / 20 for i in range(21)),
    measure: str = "nDCG@10",
    threads: int | None = None,
) -> tuple[Stage, list[tuple[float, float]]]:
    """The interpolation weight of a hybrid stage that maximizes `measure` on judged (training) queries; returns
    the tuned stage and (alpha, value) for the whole grid."""
    from engine.evaluation import evaluate

    if stage.name != "hybrid":
        raise PipelineError(f"only hybrid stages have a weight to tune, not {stage}")
    pipeline = Pipeline(index, stage, threads=threads)
    texts = [text for _, text in queries]
    left, right = (pipeline._run(s, texts, _FUSION_DEPTH) for s in stage.arguments)
    scores = []
    for alpha in grid:
        candidate = Stage("hybrid", stage.arguments, {"alpha": alpha})
        fused = pipeline.fuse(candidate, left, right, _FUSION_DEPTH)
        run = {qid: dict(zip(r.ids, r.scores.tolist())) for (qid, _), r in zip(queries, fused)}
        scores.append((alpha, evaluate(run, qrels).to_dict()[measure]))
    best = max(scores, key=lambda item: (item[1], -abs(item[0] - 0.5)))[0]
    return Stage("hybrid", stage.arguments, {"alpha": best}), scores
