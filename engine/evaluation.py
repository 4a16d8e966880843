"""Effectiveness: trec_eval measures (via ir-measures / pytrec-eval-terrier), TREC run files, paired t-tests."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ir_measures
import numpy as np
from scipy import stats

from engine.errors import SiftError

# name in reports -> ir-measures measure. RR@10 is the cut-off reciprocal rank; RR and AP run to the run's depth.
MEASURES = {
    "nDCG@10": ir_measures.nDCG @ 10,
    "RR@10": ir_measures.RR @ 10,
    "R@100": ir_measures.R @ 100,
    "R@1000": ir_measures.R @ 1000,
    "AP": ir_measures.AP,
    "RR": ir_measures.RR,
}

Run = Mapping[str, Mapping[str, float]]  # qid -> docid -> score
Qrels = Mapping[str, Mapping[str, int]]


class RunFileError(SiftError, ValueError):
    pass


@dataclass
class Evaluation:
    means: dict[str, float]
    per_query: dict[str, dict[str, float]]  # measure -> qid -> value (every judged query; unanswered ones score 0)
    queries: int

    def to_dict(self) -> dict:
        return {**{k: round(v, 4) for k, v in self.means.items()}, "queries": self.queries}


def evaluate(run: Run, qrels: Qrels, measures: Sequence[str] = tuple(MEASURES)) -> Evaluation:
    """trec_eval semantics over the judged queries; a judged query with no results counts as 0 (trec_eval -c)."""
    judged = [q for q, docs in qrels.items() if any(g > 0 for g in docs.values())]
    if not judged:
        raise ValueError("the qrels judge no document relevant: nothing to evaluate")
    chosen = [MEASURES[m] for m in measures]
    per_query: dict[str, dict[str, float]] = {m: dict.fromkeys(judged, 0.0) for m in measures}
    names = {MEASURES[m]: m for m in measures}
    qrels_judged = {q: dict(qrels[q]) for q in judged}
    answered = {q: dict(docs) for q, docs in run.items() if q in qrels_judged and docs}
    for metric in ir_measures.iter_calc(chosen, qrels_judged, answered):
        per_query[names[metric.measure]][metric.query_id] = float(metric.value)
    means = {m: float(np.mean(list(per_query[m].values()))) for m in measures}
    return Evaluation(means, per_query, len(judged))


def write_run(path: str | os.PathLike, run: Run, tag: str = "sift") -> None:
    """TREC run format: qid Q0 docid rank score tag, ranks from 1 in descending score order (a tag's whitespace
    becomes _: a pipeline expression is a tag, and a run's fields are whitespace-separated)."""
    tag = "_".join(tag.split()) or "sift"
    with open(path, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda item: -item[1])
            for rank, (docid, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def read_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"{path}: no such run file")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise RunFileError(f"{path}:{number}: malformed run line: expected 'qid Q0 docid rank score tag'")
            try:
                run.setdefault(fields[0], {})[fields[2]] = float(fields[4])
            except ValueError:
                raise RunFileError(f"{path}:{number}: score {fields[4]!r} is not a number") from None
    return run


@dataclass
class Comparison:
    measure: str
    mean_a: float
    mean_b: float
    t: float
    p_value: float
    queries: int

    def to_dict(self) -> dict:
        return {
            "measure": self.measure,
            "a": round(self.mean_a, 4),
            "b": round(self.mean_b, 4),
            "delta": round(self.mean_b - self.mean_a, 4),
            "t": None if np.isnan(self.t) else round(self.t, 4),
            "p_value": None if np.isnan(self.p_value) else round(self.p_value, 6),
            "queries": self.queries,
        }


def compare(a: Evaluation, b: Evaluation, measure: str = "nDCG@10") -> Comparison:
    """Paired two-sided t-test over the judged queries both evaluations share."""
    shared = sorted(set(a.per_query[measure]) & set(b.per_query[measure]))
    x = np.array([a.per_query[measure][q] for q in shared])
    y = np.array([b.per_query[measure][q] for q in shared])
    if len(shared) < 2 or np.all(x == y):
        t, p = float("nan"), 1.0
    else:
        result = stats.ttest_rel(y, x)
        t, p = float(result.statistic), float(result.pvalue)
    return Comparison(measure, float(x.mean()), float(y.mean()), t, p, len(shared))


@dataclass
class Equivalence:
    measure: str
    mean_a: float
    mean_b: float
    margin: float  # absolute bound: the stated share of mean_a
    p_value: float  # the larger of the two one-sided tests' p-values
    equivalent: bool
    queries: int

    def to_dict(self) -> dict:
        return {"measure": self.measure, "a": round(self.mean_a, 4), "b": round(self.mean_b, 4),
                "margin": round(self.margin, 4), "p_value": round(self.p_value, 6), "equivalent": self.equivalent,
                "queries": self.queries}  # fmt: skip


def equivalence(a: Evaluation, b: Evaluation, measure: str = "nDCG@10", margin: float = 0.05,
                alpha: float = 0.05) -> Equivalence:  # fmt: skip
    """Two one-sided paired t-tests (TOST): b is equivalent to a when the mean difference is shown to lie within
    +-margin x mean(a) at level alpha (both one-sided tests reject)."""
    shared = sorted(set(a.per_query[measure]) & set(b.per_query[measure]))
    x = np.array([a.per_query[measure][q] for q in shared])
    y = np.array([b.per_query[measure][q] for q in shared])
    bound = margin * float(x.mean()) if len(shared) else 0.0
    differences = y - x
    if len(shared) < 2:
        p = 1.0
    elif np.all(differences == differences[0]):  # no variance: the difference is known exactly
        p = 0.0 if abs(differences[0]) < bound else 1.0
    else:
        lower = stats.ttest_1samp(differences, -bound, alternative="greater").pvalue
        upper = stats.ttest_1samp(differences, bound, alternative="less").pvalue
        p = float(max(lower, upper))
    return Equivalence(measure, float(x.mean()) if len(shared) else 0.0, float(y.mean()) if len(shared) else 0.0,
                       bound, p, p < alpha, len(shared))  # fmt: skip
