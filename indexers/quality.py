"""Query-independent passage quality for static pruning: every estimator maps passages to one score each (higher is
better), scores are computed once and cached beside the index, and a pruning rate or an absolute threshold picks the
passages that are never indexed (as in Chang et al., "Neural Passage Quality Estimation for Static Pruning").

Estimators: `random` (the control), `length` (analyzed terms), `stopwords` (share of stop words: prose over lists
and boilerplate), `inr` (information-to-noise: distinct content terms over all tokens), `cdd` (collection-document
divergence: KL of the passage's language model from the collection's), `dense-norm` (all-MiniLM-L6-v2's vector
magnitude before normalization), `splade-norm` (SPLADE-tiny's total term weight), `pppl` (masked-LM
pseudo-log-likelihood), and any model trained by `sift train quality` (QualT5).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.analysis import Analyzer, AnalyzerConfig
from engine.encoders import run_batches
from engine.errors import SiftError
from engine.format import MANIFEST, QUALITY_FOLDER, Segment
from indexers.corpus import CorpusReader, Document, Passage, open_source, split_passages


class QualityError(SiftError, ValueError):
    pass


# the models some estimators run (installed by the command line before scoring starts)
ESTIMATOR_MODELS = {"dense-norm": "all-minilm-l6-v2", "splade-norm": "splade-tiny", "pppl": "splade-tiny"}


class Estimator:
    """Scores passages without a query. `fit` sees every passage first (for collection statistics)."""

    name = ""

    def fit(self, texts: Sequence[str]) -> None:
        return None

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


class RandomEstimator(Estimator):
    """A uniform score per passage key, the same on every run: the control every estimator must beat."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        digests = (hashlib.blake2b(f"{self.seed}:{k}".encode(), digest_size=8).digest() for k in keys)
        return np.fromiter((int.from_bytes(d, "little") / 2**64 for d in digests), dtype=np.float64, count=len(keys))


class _TermEstimator(Estimator):
    """Estimators over the index's own analysis (surface tokens and the terms left after stopping and stemming)."""

    def __init__(self, analyzer: AnalyzerConfig | None = None) -> None:
        self.analyzer = Analyzer(analyzer or AnalyzerConfig())
        self.stop = frozenset(self.analyzer.config.stop_set())


class LengthEstimator(_TermEstimator):
    name = "length"

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        return np.array([len(self.analyzer.analyze(t)) for t in texts], dtype=np.float64)


class StopwordEstimator(_TermEstimator):
    name = "stopwords"

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        scores = np.zeros(len(texts))
        for i, text in enumerate(texts):
            tokens = self.analyzer.tokenize(text.lower())
            if tokens:
                scores[i] = sum(t in self.stop for t in tokens) / len(tokens)
        return scores


class InformationToNoiseEstimator(_TermEstimator):
    name = "inr"

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        scores = np.zeros(len(texts))
        for i, text in enumerate(texts):
            tokens = self.analyzer.tokenize(text)
            if tokens:
                scores[i] = len(set(self.analyzer.analyze(text))) / len(tokens)
        return scores


class DivergenceEstimator(_TermEstimator):
    """KL(passage || collection) over analyzed terms, the collection model fitted on the passages being scored."""

    name = "cdd"

    def fit(self, texts: Sequence[str]) -> None:
        counts: Counter = Counter()
        for text in texts:
            counts.update(self.analyzer.analyze(text))
        total = sum(counts.values()) or 1
        self.collection = {term: count / total for term, count in counts.items()}
        self.unseen = 1 / (total + 1)

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "collection"):
            self.fit(texts)
        scores = np.zeros(len(texts))
        for i, text in enumerate(texts):
            terms = Counter(self.analyzer.analyze(text))
            length = sum(terms.values())
            scores[i] = sum(c / length * math.log(c / length / self.collection.get(t, self.unseen))
                            for t, c in terms.items())  # fmt: skip
        return scores


class DenseNormEstimator(Estimator):
    name = "dense-norm"

    def __init__(self, model: str = ESTIMATOR_MODELS["dense-norm"]) -> None:
        self.model = model
        self.encoder = None  # loaded on first use: scoring from a cache needs no model

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        from engine.encoders import BiEncoder

        self.encoder = self.encoder or BiEncoder(self.model)
        return np.linalg.norm(self.encoder.encode(list(texts), unit_length=False), axis=1).astype(np.float64)


class SpladeNormEstimator(Estimator):
    name = "splade-norm"

    def __init__(self, model: str = ESTIMATOR_MODELS["splade-norm"]) -> None:
        self.model = model
        self.encoder = None

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        from engine.encoders import SpladeEncoder

        self.encoder = self.encoder or SpladeEncoder(self.model)
        return np.array([sum(weights.values()) for weights in self.encoder.encode(list(texts))], dtype=np.float64)


class PseudoPerplexityEstimator(Estimator):
    """Masked-LM pseudo-log-likelihood (Salazar et al., "Masked Language Model Scoring"): the mean log-probability
    of each token given the rest with it masked, i.e. minus the log pseudo-perplexity; higher for fluent prose.

    Each token is masked exactly once, but `passes` tokens apart (pass j masks positions j, j + passes, ...), so a
    passage takes `passes` forward runs instead of one per token. The model is any whose ONNX output is masked-LM
    logits (batch x tokens x vocabulary) with a [MASK] token: SPLADE-tiny is the one shipped (its head fine-tuned
    for SPLADE, so its probabilities are not a plain language model's). Only the first `max_tokens` tokens are
    scored: the output layer (every position times the vocabulary) dominates the cost."""

    name = "pppl"

    def __init__(self, model: str = ESTIMATOR_MODELS["pppl"], passes: int = 6, max_tokens: int = 128,
                 batch_size: int = 16) -> None:  # fmt: skip
        self.model, self.passes, self.max_tokens, self.batch_size = model, passes, max_tokens, batch_size
        self.session = None

    def _load(self) -> None:
        from engine.encoders import _tokenizer, onnx_session
        from engine.models import read_config, resolve

        directory = resolve(self.model)
        length = min(self.max_tokens, read_config(directory).max_length)
        self.tokenizer = _tokenizer(directory / "tokenizer.json", length)
        self.mask_id = self.tokenizer.token_to_id("[MASK]")
        if self.mask_id is None:
            raise QualityError(f"model {self.model!r}: its tokenizer has no [MASK] token, so it is no masked LM")
        self.session = onnx_session(directory / "model.onnx", None)

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        if self.session is None:
            self._load()
        runs = []  # (passage, token ids, the positions masked in this run)
        for number, encoding in enumerate(self.tokenizer.encode_batch(list(texts))):
            ids = np.array(encoding.ids, dtype=np.int64)
            positions = np.flatnonzero(np.array(encoding.special_tokens_mask) == 0)
            runs += [(number, ids, positions[j :: self.passes]) for j in range(min(self.passes, len(positions)))]
        sequences = []
        for _, ids, masked in runs:
            masked_ids = ids.copy()
            masked_ids[masked] = self.mask_id
            sequences.append((masked_ids, None))
        totals, counts = np.zeros(len(texts)), np.zeros(len(texts))
        for chosen, logits, _ in run_batches(self.session, sequences, self.batch_size):
            for row, run in enumerate(chosen.tolist()):
                number, ids, masked = runs[run]
                predicted = logits[row, masked].astype(np.float64)
                top = predicted.max(axis=1)
                normalizer = top + np.log(np.exp(predicted - top[:, None]).sum(axis=1))
                totals[number] += float((predicted[np.arange(len(masked)), ids[masked]] - normalizer).sum())
                counts[number] += len(masked)
        # a passage with no token is as unlikely as a uniform guess over the vocabulary
        floor = -math.log(self.tokenizer.get_vocab_size())
        return np.where(counts > 0, totals / np.maximum(counts, 1), floor)


class ModelQualityEstimator(Estimator):
    """A registered quality model (`sift train quality`, QualT5 style): log P(true | "Document: {d} Relevant:")."""

    def __init__(self, model: str) -> None:
        self.name = model
        self.reranker = None

    def score(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        from engine.rerank import load_reranker

        self.reranker = self.reranker or load_reranker(self.name)
        return self.reranker.score("", list(texts)).astype(np.float64)


def is_quality_model(name: str) -> bool:
    """A registered seq2seq model whose template has no query."""
    from engine.models import ModelError, read_config, resolve

    try:
        config = read_config(resolve(name))
    except (ModelError, OSError):
        return False
    return config.kind == "seq2seq" and "{query}" not in config.extra.get("template", "{query}")


ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "random": RandomEstimator,
    "length": LengthEstimator,
    "stopwords": StopwordEstimator,
    "inr": InformationToNoiseEstimator,
    "cdd": DivergenceEstimator,
    "dense-norm": DenseNormEstimator,
    "splade-norm": SpladeNormEstimator,
    "pppl": PseudoPerplexityEstimator,
}


def estimator(name: str) -> Estimator:
    if name in ESTIMATORS:
        return ESTIMATORS[name]()
    if is_quality_model(name):
        return ModelQualityEstimator(name)
    raise QualityError(f"unknown quality estimator {name!r}; choose one of {', '.join(ESTIMATORS)} or a model "
                       "trained by `sift train quality`")  # fmt: skip


@dataclass
class PruneSpec:
    """What to prune: the lowest `rate` share of passages by `estimator`, or those scoring below `threshold`."""

    estimator: str
    rate: float | None = None
    threshold: float | None = None

    @classmethod
    def parse(cls, text: str) -> PruneSpec:
        """ESTIMATOR:RATE (a share in [0, 1)) or ESTIMATOR:>=SCORE (an absolute threshold)."""
        name, _, value = text.partition(":")
        if not value or (name not in ESTIMATORS and not is_quality_model(name)):
            raise QualityError(f"--prune takes ESTIMATOR:RATE or ESTIMATOR:>=SCORE with ESTIMATOR one of "
                               f"{', '.join(ESTIMATORS)} or a model trained by `sift train quality`, got {text!r}")
        try:
            if value.startswith(">="):
                return cls(name, threshold=float(value[2:]))
            rate = float(value)
        except ValueError:
            raise QualityError(f"--prune {text!r}: {value!r} is not a number") from None
        if not 0 <= rate < 1:
            raise QualityError(f"--prune {text!r}: the rate is the share of passages dropped, from 0 to below 1")
        return cls(name, rate=rate)

    def to_dict(self) -> dict:
        return {"estimator": self.estimator, "rate": self.rate, "threshold": self.threshold}


def pruned_keys(keys: Sequence[str], scores: np.ndarray, spec: PruneSpec) -> set[str]:
    """The lowest `rate` of passages (ties broken by key order, so the count is exact) or those below threshold."""
    if spec.threshold is not None:
        return {k for k, s in zip(keys, scores) if s < spec.threshold}
    count = round(spec.rate * len(keys))
    order = np.lexsort((np.arange(len(keys)), scores))
    return {keys[i] for i in order[:count]}


class ScoreCache:
    """Scores by (estimator, passage key), stored as QUALITY_FOLDER/ESTIMATOR.npy (memory-mapped) beside one shared
    QUALITY_FOLDER/ESTIMATOR.keys.json, so re-pruning at another rate never re-scores."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def load(self, name: str) -> dict[str, float]:
        scores_path, keys_path = self._paths(name)
        if not scores_path.exists() or not keys_path.exists():
            return {}
        keys = json.loads(keys_path.read_text(encoding="utf-8"))
        scores = np.load(scores_path, mmap_mode="r")
        if len(keys) != len(scores):
            return {}  # a write was interrupted between the two files: score again
        return dict(zip(keys, scores.tolist()))

    def save(self, name: str, scores: dict[str, float], scored: int = 0, seconds: float = 0.0) -> None:
        """Writes the scores; `scored` passages newly scored in `seconds` add to the estimator's recorded speed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        scores_path, keys_path = self._paths(name)
        keys = list(scores)
        timing = self.timing(name)
        timing = {"passages": timing["passages"] + scored, "seconds": timing["seconds"] + seconds}
        timing_path = self._timing_path(name)
        for path, write in ((scores_path, lambda f: np.save(f, np.array([scores[k] for k in keys]))),
                            (keys_path, lambda f: f.write(json.dumps(keys).encode("utf-8"))),
                            (timing_path, lambda f: f.write(json.dumps(timing).encode("utf-8")))):  # fmt: skip
            temporary = path.with_name(path.name + ".tmp")
            with open(temporary, "wb") as f:
                write(f)
            os.replace(temporary, path)

    def timing(self, name: str) -> dict:
        """{"passages", "seconds"}: how many passages this cache's scores took to compute, and how long."""
        path = self._timing_path(name)
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"passages": 0, "seconds": 0.0}

    def throughput(self, name: str) -> float | None:
        """Passages scored per second when the cached scores were computed (None if never timed)."""
        timing = self.timing(name)
        return timing["passages"] / timing["seconds"] if timing["passages"] and timing["seconds"] > 0 else None

    def _timing_path(self, name: str) -> Path:
        return self.directory / f"{name}.timing.json"

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.npy", self.directory / f"{name}.keys.json"


SCORE_BATCH = 256


def score_passages(passages: Iterable[Passage], name: str, cache: ScoreCache | None = None,
                   on_progress: Callable[[int], None] | None = None,
                   save_every: int = 50_000) -> tuple[list[str], np.ndarray, int]:  # fmt: skip
    """(keys, scores, how many were scored now): cached scores are reused, the rest scored and cached.

    Passages stream through in batches (only keys and scores are kept), and the cache is written every `save_every`
    passages scored, so an interrupted run resumes where it stopped. An estimator with collection statistics (cdd)
    reads `passages` once more first: give something that iterates again (a list, or CorpusPassages)."""
    known = cache.load(name) if cache else {}
    keys: list[str] = []
    chosen: Estimator | None = None
    scored = unsaved = 0
    started = time.perf_counter()

    def score(batch: list[Passage]) -> None:
        nonlocal chosen, scored, unsaved, started
        if chosen is None:
            chosen = estimator(name)
            if type(chosen).fit is not Estimator.fit:
                chosen.fit(p.indexed_text for p in passages)
        values = chosen.score([p.key for p in batch], [p.indexed_text for p in batch])
        known.update(zip((p.key for p in batch), values.tolist()))
        scored, unsaved = scored + len(batch), unsaved + len(batch)
        if on_progress:
            on_progress(len(batch))
        if cache and unsaved >= save_every:
            cache.save(name, known, unsaved, time.perf_counter() - started)
            unsaved, started = 0, time.perf_counter()

    batch: list[Passage] = []
    for passage in passages:
        keys.append(passage.key)
        if passage.key not in known:
            batch.append(passage)
            if len(batch) == SCORE_BATCH:
                score(batch)
                batch = []
    if batch:
        score(batch)
    if cache and unsaved:
        cache.save(name, known, unsaved, time.perf_counter() - started)
    return keys, np.array([known[k] for k in keys], dtype=np.float64), scored


class CorpusPassages:
    """Every passage of a corpus as the indexer cuts it (the same function, so the keys agree), cut afresh on each
    pass over `documents` (a CorpusReader reads its files again): nothing is held in memory."""

    def __init__(self, documents: Iterable[Document], analyzer: AnalyzerConfig, window: int, stride: int) -> None:
        self.documents, self.analyzer, self.window, self.stride = documents, analyzer, window, stride or window

    def __iter__(self) -> Iterator[Passage]:
        chosen = Analyzer(self.analyzer)
        for document in self.documents:
            yield from split_passages(document, chosen, self.window, self.stride)


def plan_pruning(passages: Iterable[Passage], spec: PruneSpec, cache: ScoreCache,
                 on_progress: Callable[[int], None] | None = None) -> tuple[set[str], dict]:  # fmt: skip
    """The passage keys to leave out, and the manifest's record of how they were chosen."""
    started = time.perf_counter()
    keys, scores, scored = score_passages(passages, spec.estimator, cache, on_progress)
    pruned = pruned_keys(keys, scores, spec)
    kept = [s for k, s in zip(keys, scores) if k not in pruned]
    record = {**spec.to_dict(), "passages": len(keys), "pruned": len(pruned), "scored_now": scored,
              "kept_min_score": min(kept) if kept else None, "seconds": round(time.perf_counter() - started, 3)}
    return pruned, record


def reprune(index_dir: str | os.PathLike, spec: PruneSpec, on_progress: Callable[[int], None] | None = None,
            memory_mb: int = 512):
    """Rebuilds an index from its recorded source with another pruning, scores taken from the cache (only passages
    it lacks are scored), re-encodes its dense and impact indexes with the same models, and commits all of it at
    once: a failure anywhere leaves the previous commit whole. Returns the build report, the pruning record and the
    neural reports."""
    from engine.encoders import BiEncoder, SpladeEncoder
    from engine.sparse import BM25Params
    from indexers.inverted import BuildOptions
    from indexers.writer import IndexWriter

    index_dir = Path(index_dir)
    if not (index_dir / MANIFEST).exists():
        raise QualityError(f"{index_dir}: no Sift index here")
    with IndexWriter(index_dir) as writer:
        manifest = writer.base
        recorded = manifest.get("source") or {}
        if "path" not in recorded:
            raise QualityError(f"{index_dir}: the manifest does not record the corpus it was built from")
        options = {k: v for k, v in recorded.items() if k in ("id_field", "text_fields") and v}
        if "text_fields" in options:
            options["text_fields"] = tuple(options["text_fields"])
        source = open_source(recorded["path"], recorded.get("format"), **options)
        analyzer = AnalyzerConfig.from_dict(manifest["analyzer"])
        window, stride = manifest["passages"]["window"], manifest["passages"]["stride"]
        passages = CorpusPassages(CorpusReader(source, skip_bad=True), analyzer, window, stride)
        pruned, record = plan_pruning(passages, spec, ScoreCache(index_dir / QUALITY_FOLDER), on_progress)
        bm25 = manifest["bm25"]
        packed = all(Segment(index_dir / s["name"]).packed for s in manifest["segments"])
        build_options = BuildOptions(analyzer=analyzer, bm25=BM25Params(k1=bm25["k1"], b=bm25["b"],
                                     length_norm=bm25.get("length_norm", "lucene")), passage_window=window,
                                     passage_stride=stride, postings="packed" if packed else "raw",
                                     memory_mb=memory_mb, positions=bool(manifest.get("positions")))  # fmt: skip
        report = writer.build_inverted(CorpusReader(source, skip_bad=True), build_options, recorded,
                                       pruned=pruned, pruning=record)  # fmt: skip
        neural = {}
        for name, entry in manifest.get("dense", {}).items():
            neural[f"dense:{name}"] = writer.add_dense(BiEncoder(name), entry.get("faiss", "auto")).to_dict()
        for name in manifest.get("impact", {}):
            neural[f"splade:{name}"] = writer.add_impact(SpladeEncoder(name)).to_dict()
        report.generation = writer.commit()
    return report, record, neural
