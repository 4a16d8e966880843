"""Retrieval pipelines as values, in PyTerrier's spirit: every stage is an object with `search(queries, k)` that
returns one Results per query, and stages compose with operators.

    bm25 = BM25(index); dense = Dense(index)
    bm25 >> Rerank(index, scorer, depth=100)     then: rerank the first stage's top 100
    (bm25 + dense) % 10                          + : min-max interpolation (alpha 0.5); % : rank cut-off
    bm25 | dense                                 | : reciprocal-rank fusion

The expression language (`--pipeline`) only builds these objects, from a registry of stage names
(`register_stage`):

    bm25                     BM25 (the index's inverted postings)
    dense  | dense(MODEL)    a dense index of the index (its first one, or MODEL's)
    splade | splade(MODEL)   an impact index of the index (learned sparse weights, its first one or MODEL's)
    hybrid | hybrid(A,B)     min-max normalized interpolation of two stages (alpha=0.5 by default)
    rrf(A,B)                 reciprocal-rank fusion (k=60)
    cort(A,B)                complementary, in the spirit of CoRT: A's and B's rankings interleaved, A first,
                             each id at its first appearance (B fills in what A missed, rank by rank)

Later stages follow `>>`:

    rerank:MODEL@DEPTH       rerank the top DEPTH with a cross-encoder or seq2seq model (engine/rerank.py); the
                             rest follow in their order. rerank:MODEL@DEPTH(mix=W) ranks by (1 - W) * reranker +
                             W * previous stage, both min-max normalized. Two rerank stages make a cascade:
                             `bm25 >> rerank:small@100 >> rerank:large@20`.

Fusion reads each input to a depth of max(k, 1000). Each query's Results carry the seconds each stage took for it
(`timings`; a batched stage's time is shared equally). A pipeline file is JSON, {"pipeline": EXPRESSION, ...}:
what `sift tune` writes, with how its weight was chosen.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import SiftError
from engine.index import Index
from engine.reader import Results

_FUSION_DEPTH = 1000
_RRF_K = 60


class PipelineError(SiftError, ValueError):
    pass


# --- stages ---------------------------------------------------------------------------------------------------------


class Stage:
    """search(queries, k, filter) -> one Results per query, best first. Composes: >> (then), % (cut-off),
    + (interpolation), | (reciprocal-rank fusion). filter: an expression over the index's fields; every first stage
    returns only matching passages (engine/fields.py), so later stages only see those."""

    def search(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        raise NotImplementedError

    def __rshift__(self, later: Later) -> Stage:
        return Then(self, later)

    def __mod__(self, k: int) -> Stage:
        return CutOff(self, k)

    def __add__(self, other: Stage) -> Stage:
        return Interpolate(self, other)

    def __or__(self, other: Stage) -> Stage:
        return RRF(self, other)


def _timed(stage: Stage, run: Callable[[], list[Results]], queries: int) -> list[Results]:
    started = time.perf_counter()
    found = run()
    share = (time.perf_counter() - started) / max(queries, 1)
    for results in found:
        results.timings[str(stage)] = share
    return found


class BM25(Stage):
    def __init__(self, index: Index, params=None, algorithm: str = "auto", threads: int | None = None) -> None:
        self.index, self.params, self.algorithm, self.threads = index, params, algorithm, threads

    def __str__(self) -> str:
        return "bm25"

    def search(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        return _timed(self, lambda: self.index.batch_search(
            list(queries), k, self.params, documents=self.index.split_passages, threads=self.threads,
            algorithm=self.algorithm, filter=filter), len(queries))  # fmt: skip


class _Neural(Stage):
    """A first stage over one model's index inside the Index (the searcher is loaded on first use)."""

    name = ""

    def __init__(self, index: Index, model: str | None = None, threads: int | None = None) -> None:
        self.index, self.model, self.threads = index, model, threads
        self._searcher = None

    def __str__(self) -> str:
        return f"{self.name}({self.model})" if self.model else self.name

    def _load(self):
        raise NotImplementedError

    def search(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        if self._searcher is None:
            sharded = getattr(self.index, "neural_searcher", None)  # a sharded index searches its shards' own
            self._searcher = sharded(self.name, self.model, self.threads) if sharded else self._load()
        return _timed(self, lambda: self._searcher.search_many(list(queries), k, filter=filter), len(queries))


class Dense(_Neural):
    name = "dense"

    def _load(self):
        from engine.neural import DenseSearcher

        return DenseSearcher(self.index, self.model, threads=self.threads)


class Splade(_Neural):
    name = "splade"

    def _load(self):
        from engine.neural import ImpactSearcher

        return ImpactSearcher(self.index, self.model, threads=self.threads)


class Fusion(Stage):
    """Two stages' results, each read to max(k, 1000), combined per query."""

    name = ""

    def __init__(self, left: Stage, right: Stage) -> None:
        self.left, self.right = left, right

    def _inner(self) -> list[str]:
        return [str(self.left), str(self.right)]

    def __str__(self) -> str:
        return f"{self.name}({','.join(self._inner())})"

    def search(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        depth = max(k, _FUSION_DEPTH)
        left, right = self.left.search(queries, depth, filter), self.right.search(queries, depth, filter)
        started = time.perf_counter()
        found = self.fuse(left, right, k)
        share = (time.perf_counter() - started) / max(len(queries), 1)
        for results, a, b in zip(found, left, right):
            results.timings.update({**a.timings, **b.timings, str(self): share})
        return found

    def fuse(self, left: list[Results], right: list[Results], k: int) -> list[Results]:
        """The fusion of inputs already run (so that tuning runs them once)."""
        return [self.fuse_one(a, b, k) for a, b in zip(left, right)]

    def fuse_one(self, a: Results, b: Results, k: int) -> Results:
        raise NotImplementedError

    def _summed(self, a: Results, b: Results, k: int, a_scores: np.ndarray, b_scores: np.ndarray) -> Results:
        """Sums per-id fused scores (an id absent from one list gets 0 from it); ties by id."""
        total: dict[str, float] = {}
        passage: dict[str, int] = {}
        doc: dict[str, str] = {}
        for results, scores in ((a, a_scores), (b, b_scores)):
            for hit_id, doc_id, score, number in zip(results.ids, results.doc_ids, scores.tolist(),
                                                     results.passages.tolist()):  # fmt: skip
                total[hit_id] = total.get(hit_id, 0.0) + score
                passage.setdefault(hit_id, number)
                doc.setdefault(hit_id, doc_id)
        ranked = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:k]
        ids = [i for i, _ in ranked]
        return Results(ids, [doc[i] for i in ids], np.array([s for _, s in ranked], dtype=np.float32),
                       np.array([passage[i] for i in ids], dtype=np.int64))  # fmt: skip


class Interpolate(Fusion):
    """(1 - alpha) * min-max(left) + alpha * min-max(right)."""

    name = "hybrid"

    def __init__(self, left: Stage, right: Stage, alpha: float = 0.5) -> None:
        super().__init__(left, right)
        self.alpha = alpha

    def _inner(self) -> list[str]:
        return super()._inner() + ([f"alpha={self.alpha}"] if self.alpha != 0.5 else [])

    def fuse_one(self, a: Results, b: Results, k: int) -> Results:
        return self._summed(a, b, k, (1 - self.alpha) * min_max(a.scores), self.alpha * min_max(b.scores))


class RRF(Fusion):
    name = "rrf"

    def __init__(self, left: Stage, right: Stage, k: float = _RRF_K) -> None:
        super().__init__(left, right)
        self.k = k

    def _inner(self) -> list[str]:
        return super()._inner() + ([f"k={self.k}"] if self.k != _RRF_K else [])

    def fuse_one(self, a: Results, b: Results, k: int) -> Results:
        return self._summed(a, b, k, _rrf(a, self.k), _rrf(b, self.k))


class CoRT(Fusion):
    """a[0], b[0], a[1], b[1], ... skipping ids already taken; the score is 1 / fused rank."""

    name = "cort"

    def fuse_one(self, a: Results, b: Results, k: int) -> Results:
        taken: dict[str, tuple[int, str]] = {}
        for i in range(max(len(a), len(b))):
            for results in (a, b):
                if i < len(results) and results.ids[i] not in taken:
                    taken[results.ids[i]] = (int(results.passages[i]), results.doc_ids[i])
            if len(taken) >= k:
                break
        ids = list(taken)[:k]
        scores = (1.0 / np.arange(1, len(ids) + 1)).astype(np.float32)
        return Results(ids, [taken[i][1] for i in ids], scores,
                       np.array([taken[i][0] for i in ids], dtype=np.int64))  # fmt: skip


class CutOff(Stage):
    """At most `limit` results of a stage."""

    def __init__(self, stage: Stage, limit: int) -> None:
        if limit < 1:
            raise PipelineError(f"a rank cut-off must be at least 1, got {limit}")
        self.stage, self.limit = stage, limit

    def __str__(self) -> str:
        return f"({self.stage}) % {self.limit}"

    def search(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        return self.stage.search(queries, min(k, self.limit), filter)


class Later:
    """A stage after the first: reorders the results it is given. `depth`: how many it needs from before."""

    depth = 0

    def transform(self, queries: Sequence[str], found: list[Results]) -> list[Results]:
        raise NotImplementedError


class Rerank(Later):
    """The top `depth` ordered by a scorer's (query, passage text) scores (ties: the earlier first), the rest after
    them in order. mix=W ranks by (1 - W) * min-max(scorer) + W * min-max(previous scores)."""

    def __init__(self, index: Index, scorer, depth: int, mix: float | None = None, name: str | None = None) -> None:
        self.index, self.scorer, self.depth, self.mix = index, scorer, depth, mix
        self.name = name or getattr(scorer, "name", "model")

    def __str__(self) -> str:
        return f"rerank:{self.name}@{self.depth}" + (f"(mix={self.mix})" if self.mix else "")

    def transform(self, queries: Sequence[str], found: list[Results]) -> list[Results]:
        reranked = []
        for query, results in zip(queries, found):
            started = time.perf_counter()
            ordered = self.rerank(query, results)
            ordered.timings.update(results.timings)
            ordered.timings[str(self)] = time.perf_counter() - started
            reranked.append(ordered)
        return reranked

    def rerank(self, query: str, results: Results) -> Results:
        head = min(self.depth, len(results))
        scores = self.scorer.score(query, self.index.texts(results.passages[:head]))
        ranked, final = reorder(scores, results.scores, self.mix)
        return Results([results.ids[i] for i in ranked], [results.doc_ids[i] for i in ranked], final,
                       results.passages[ranked])  # fmt: skip


def reorder(model_scores: np.ndarray, first_scores: np.ndarray,
            mix: float | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A ranking (first_scores, best first) whose head the model scored (model_scores): the new order, as positions
    in the old, and its scores. The head goes by the model's scores (mix=W: (1 - W) * min-max(model) + W *
    min-max(first)), ties keeping the earlier first; the rest follows in its order, scored below the head."""
    head = len(model_scores)
    scores = np.asarray(model_scores, dtype=np.float32)
    if mix:
        scores = ((1 - mix) * min_max(scores) + mix * min_max(np.asarray(first_scores)[:head])).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    tail = len(first_scores) - head
    floor = float(scores.min()) if head else 0.0
    final = np.concatenate([scores[order], floor - np.arange(1, tail + 1, dtype=np.float32)]).astype(np.float32)
    return np.concatenate([order, np.arange(head, len(first_scores))]), final


def rerank_candidates(scorer, query: str, candidates: Sequence[tuple[str, float]], text_of, depth: int = 100,
                      mix: float | None = None) -> list[tuple[str, float]]:  # fmt: skip
    """The Rerank stage over candidates from anywhere (another engine's run): (id, score) best first, text_of(id) ->
    the passage text the model reads; the top `depth` reordered by the scorer as Rerank orders them."""
    head = min(depth, len(candidates))
    scores = scorer.score(query, [text_of(doc_id) for doc_id, _ in candidates[:head]])
    ranked, final = reorder(scores, np.array([score for _, score in candidates], dtype=np.float64), mix)
    return [(candidates[i][0], float(score)) for i, score in zip(ranked, final)]


class Then(Stage):
    """first >> later: the first stage read deep enough for the later one, then reordered, then cut to k."""

    def __init__(self, first: Stage, later: Later) -> None:
        self.first, self.later = first, later

    def __str__(self) -> str:
        return f"{self.first} >> {self.later}"

    def search(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        queries = list(queries)
        found = self.later.transform(queries, self.first.search(queries, max(k, self.later.depth), filter))
        return [_cut(results, k) for results in found]


def _cut(results: Results, k: int) -> Results:
    if len(results) <= k:
        return results
    top = Results(results.ids[:k], results.doc_ids[:k], results.scores[:k], results.passages[:k])
    top.timings = results.timings
    return top


def _rrf(results: Results, k: float) -> np.ndarray:
    return 1.0 / (k + np.arange(1, len(results) + 1, dtype=np.float64))


def min_max(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return scores
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low) if high > low else np.ones_like(scores)


# --- the expression language: a parser, and a registry of stage names ----------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A parsed expression: a stage name, its inputs (Specs) or model, and options. Prints as it parses."""

    name: str
    arguments: tuple = ()
    options: dict = field(default_factory=dict)
    later: tuple = ()  # the `>> ...` stages after this one, as Specs

    def __str__(self) -> str:
        if self.later:
            return " >> ".join([str(Spec(self.name, self.arguments, self.options)), *map(str, self.later)])
        if STAGES.get(self.name) and STAGES[self.name].kind == "later":
            options = "".join(f"({k}={v})" for k, v in self.options.items() if k != "depth")
            return f"{self.name}:{self.arguments[0]}@{self.options['depth']}{options}"
        inner = [str(a) for a in self.arguments] + [f"{k}={v}" for k, v in self.options.items()]
        return f"{self.name}({','.join(inner)})" if inner else self.name


@dataclass
class Context:
    """What building a stage may need beside its spec: the index, threads, BM25 settings, and scorers to use in
    place of loading a model (scores cached or computed elsewhere)."""

    index: Index
    threads: int | None = None
    bm25: dict = field(default_factory=dict)
    scorers: dict = field(default_factory=dict)
    built: dict = field(default_factory=dict)  # one object per spec, so that a stage named twice runs once

    def build(self, spec: Spec):
        key = str(spec)
        if key not in self.built:
            self.built[key] = STAGES[spec.name].build(spec, self)
        return self.built[key]

    def scorer(self, model: str):
        if model not in self.scorers:
            from engine.rerank import CachedScorer, load_reranker

            self.scorers[model] = CachedScorer(load_reranker(model, threads=self.threads))
        return self.scorers[model]


@dataclass(frozen=True)
class StageType:
    """A registered stage name: how to build it, and what its expression may hold."""

    build: Callable[[Spec, Context], Stage | Later]
    kind: str = "first"  # "first" (takes a model name), "fusion" (takes two stages) or "later" (after >>)
    options: frozenset = frozenset()
    default_inputs: tuple = ()


STAGES: dict[str, StageType] = {}


def register_stage(name: str, build: Callable[[Spec, Context], Stage | Later], kind: str = "first",
                   options: Sequence[str] = (), default_inputs: Sequence[str] = ()) -> None:  # fmt: skip
    """Adds a stage name to the expression language."""
    STAGES[name] = StageType(build, kind, frozenset(options), tuple(Spec(i) for i in default_inputs))


def _model(spec: Spec) -> str | None:
    return spec.arguments[0] if spec.arguments else None


register_stage("bm25", lambda s, c: BM25(c.index, threads=c.threads, **c.bm25))
register_stage("dense", lambda s, c: Dense(c.index, _model(s), c.threads))
register_stage("splade", lambda s, c: Splade(c.index, _model(s), c.threads))
register_stage("hybrid", lambda s, c: Interpolate(*map(c.build, s.arguments), **s.options), "fusion", ["alpha"],
               ["bm25", "dense"])  # fmt: skip
register_stage("rrf", lambda s, c: RRF(*map(c.build, s.arguments), **s.options), "fusion", ["k"], ["bm25", "dense"])
register_stage("cort", lambda s, c: CoRT(*map(c.build, s.arguments)), "fusion", [], ["bm25", "dense"])
register_stage("rerank", lambda s, c: Rerank(c.index, c.scorer(s.arguments[0]), int(s.options["depth"]),
                                             s.options.get("mix"), s.arguments[0]), "later", ["mix"])  # fmt: skip


def parse(expression: str) -> Spec:
    """A pipeline expression, or the path of a pipeline file -> its Spec; errors name what was wrong."""
    if expression.endswith(".json"):
        path = Path(expression)
        try:
            expression = json.loads(path.read_text(encoding="utf-8"))["pipeline"]
        except FileNotFoundError:
            raise PipelineError(f"{path}: no such pipeline file") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PipelineError(f'{path}: not a pipeline file (expected {{"pipeline": "EXPRESSION", ...}})') from None
    first, *later = expression.replace(" ", "").split(">>")
    spec, rest = _parse(first, expression)
    if rest:
        raise PipelineError(f"pipeline {expression!r}: unexpected {rest!r}")
    if not later:
        return spec
    return Spec(spec.name, spec.arguments, spec.options, tuple(_parse_later(text, expression) for text in later))


def _parse_later(text: str, expression: str) -> Spec:
    match = re.fullmatch(r"([a-z][a-z0-9_-]*):([A-Za-z0-9_./-]+)@([0-9]+)(?:\(([a-z_]+)=([0-9.]+)\))?", text)
    if not match or STAGES.get(match.group(1), StageType(None)).kind != "later":
        later = sorted(name for name, t in STAGES.items() if t.kind == "later")
        raise PipelineError(f"pipeline {expression!r}: expected a later stage like rerank:MODEL@DEPTH or "
                            f"rerank:MODEL@DEPTH(mix=0.2) (later stages: {', '.join(later)}), got {text!r}")
    name, model, depth = match.group(1), match.group(2), int(match.group(3))
    if depth < 1:
        raise PipelineError(f"pipeline {expression!r}: a {name} depth must be at least 1")
    options: dict = {"depth": depth}
    if match.group(4):
        if match.group(4) not in STAGES[name].options:
            raise PipelineError(f"pipeline {expression!r}: {name} has no option {match.group(4)!r}")
        value = float(match.group(5))
        if match.group(4) == "mix" and not 0 <= value <= 1:
            raise PipelineError(f"pipeline {expression!r}: mix must be between 0 and 1")
        options[match.group(4)] = value
    return Spec(name, (model,), options)


def _parse(text: str, expression: str) -> tuple[Spec, str]:
    match = re.match(r"([a-z][a-z0-9_-]*)", text)
    if not match:
        raise PipelineError(f"pipeline {expression!r}: expected a stage name at {text!r}")
    name, rest = match.group(1), text[match.end() :]
    kind = STAGES[name].kind if name in STAGES else None
    if kind not in ("first", "fusion"):
        first = sorted(n for n, t in STAGES.items() if t.kind != "later")
        raise PipelineError(f"pipeline {expression!r}: unknown stage {name!r}; first stages: {', '.join(first)}")
    arguments: list = []
    options: dict = {}
    if rest.startswith("("):
        rest = rest[1:]
        while not rest.startswith(")"):
            option = re.match(r"([a-z_]+)=([0-9.]+)", rest)
            if option:
                options[option.group(1)] = float(option.group(2))
                rest = rest[option.end() :]
            elif kind == "first":
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
    if kind == "fusion":
        arguments = arguments or list(STAGES[name].default_inputs)
        if len(arguments) != 2:
            raise PipelineError(f"pipeline {expression!r}: {name} fuses two first stages")
    unknown = set(options) - STAGES[name].options
    if unknown:
        raise PipelineError(f"pipeline {expression!r}: {name} has no option {sorted(unknown)[0]!r}")
    return Spec(name, tuple(arguments), options), rest


def build(spec: Spec | str, context: Context) -> Stage:
    """The stage object a Spec (or an expression) describes."""
    spec = parse(spec) if isinstance(spec, str) else spec
    stage = context.build(Spec(spec.name, spec.arguments, spec.options))
    for later in spec.later:
        stage = stage >> context.build(later)
    return stage


class Pipeline(Stage):
    """An expression built over an index: search(queries, k) -> one Results per query.

    scorers: model name -> an object with the rerankers' score(query, texts), used instead of loading the model."""

    def __init__(self, index: Index, expression: str | Spec, threads: int | None = None,
                 scorers: dict | None = None, **bm25) -> None:  # fmt: skip
        self.spec = parse(expression) if isinstance(expression, str) else expression
        self.stage = build(self.spec, Context(index, threads, bm25, dict(scorers or {})))

    def __str__(self) -> str:
        return str(self.stage)

    def search(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        return self.stage.search(list(queries), k, filter)


def tune_alpha(
    index: Index,
    spec: Spec,
    queries: list[tuple[str, str]],
    qrels: dict,
    grid: Sequence[float] = tuple(i / 20 for i in range(21)),
    measure: str = "nDCG@10",
    threads: int | None = None,
) -> tuple[Spec, list[tuple[float, float]]]:
    """The interpolation weight of a hybrid stage that maximizes `measure` on judged (training) queries; returns
    the tuned spec and (alpha, value) for the whole grid."""
    from engine.evaluation import evaluate

    if spec.name != "hybrid" or spec.later:
        raise PipelineError(f"only hybrid stages have a weight to tune, not {spec}")
    stage = Pipeline(index, spec, threads=threads).stage
    texts = [text for _, text in queries]
    left, right = stage.left.search(texts, _FUSION_DEPTH), stage.right.search(texts, _FUSION_DEPTH)
    scores = []
    for alpha in grid:
        fused = Interpolate(stage.left, stage.right, alpha).fuse(left, right, _FUSION_DEPTH)
        run = {qid: dict(zip(r.ids, r.scores.tolist())) for (qid, _), r in zip(queries, fused)}
        scores.append((alpha, evaluate(run, qrels).to_dict()[measure]))
    best = max(scores, key=lambda item: (item[1], -abs(item[0] - 0.5)))[0]
    return Spec("hybrid", spec.arguments, {"alpha": best}), scores
