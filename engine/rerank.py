"""Reranking with transformer models on ONNX Runtime: cross-encoders (monoBERT) and sequence-to-sequence rankers
(monoT5).

- cross-encoder: ``[CLS] query [SEP] passage [SEP]`` -> one relevance logit, or two classes of which the positive
  one's log-probability is the score (Nogueira & Cho, "Passage Re-ranking with BERT");
- seq2seq: ``Query: {query} Document: {passage} Relevant:`` -> one decoder step from the start token; the score is
  log P("true") under a softmax over the logits of the "true" and "false" target tokens (Nogueira et al., "Document
  Ranking with a Pretrained Sequence-to-Sequence Model"). Template and target tokens come from the model's config.

The query is kept whole and the passage truncated to the model's max length. Pairs are batched by length (little
padding); CachedScorer keeps scores per (query, passage), so a cascade or a repeated query scores each pair once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.encoders import onnx_session, run_batches
from engine.models import ModelConfig, ModelError, read_config, resolve

MONOT5_TEMPLATE = "Query: {query} Document: {passage} Relevant:"
QUALITY_TEMPLATE = "Document: {passage} Relevant:"  # QualT5: the monoT5 input without a query
TARGET_TOKENS = {"true": ("▁true", "true"), "false": ("▁false", "false")}  # T5 sentencepiece, then WordPiece


class PairScorer:
    """Scores (query, passage) pairs with a reranking model directory on ONNX Runtime. Its subclasses say how a pair
    is tokenized and how the model's output becomes a relevance score; the batching loop is the one every model
    shares (engine.encoders.run_batches). Not cached: wrap it in CachedScorer."""

    kind = ""

    def __init__(self, directory: Path, config: ModelConfig, threads: int | None = None, batch_size: int = 32,
                 bucketing: bool = True) -> None:  # fmt: skip
        from tokenizers import Tokenizer

        self.directory, self.config = directory, config
        self.session = onnx_session(directory / "model.onnx", threads)
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.max_length = config.max_length
        self.batch_size = batch_size
        self.bucketing = bucketing

    @property
    def name(self) -> str:
        return self.config.name

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """float32 scores, one per passage (higher: more relevant)."""
        encoded = self.encode_pairs(query, list(passages))
        scores = np.empty(len(encoded), dtype=np.float32)
        for chosen, logits, _ in run_batches(self.session, encoded, self.batch_size, self.bucketing):
            scores[chosen] = self.relevance(np.asarray(logits, dtype=np.float32))
        return scores

    def encode_pairs(self, query: str, passages: list[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and type ids per pair, the passage truncated so the pair fits max_length."""
        raise NotImplementedError

    def relevance(self, logits: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class CrossEncoder(PairScorer):
    """[CLS] query [SEP] passage [SEP] -> one relevance logit, or classes of which the positive one's
    log-probability is the score (monoBERT)."""

    kind = "cross-encoder"

    def __init__(self, directory: Path, config: ModelConfig, **options) -> None:
        super().__init__(directory, config, **options)
        self.tokenizer.enable_truncation(self.max_length, strategy="only_second")
        self.positive_class = int(config.extra.get("positive_class", 1))

    def encode_pairs(self, query: str, passages: list[str]) -> list[tuple[list[int], list[int]]]:
        return encode_cross(self.tokenizer, query, passages, self.name)

    def relevance(self, logits: np.ndarray) -> np.ndarray:
        if logits.ndim == 1 or logits.shape[1] == 1:
            return logits.reshape(-1)
        wide = logits.astype(np.float64)
        top = wide.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(wide - top).sum(axis=1))
        return (wide[:, self.positive_class] - log_norm).astype(np.float32)


class Seq2SeqRanker(PairScorer):
    """The model's template filled with query and passage -> one decoder step; the score is log P("true") under a
    softmax over the "true" and "false" target tokens' logits (monoT5)."""

    kind = "seq2seq"

    def __init__(self, directory: Path, config: ModelConfig, **options) -> None:
        super().__init__(directory, config, **options)
        self.tokenizer.no_truncation()
        extra = config.extra
        self.template = extra.get("template", MONOT5_TEMPLATE)
        if "{passage}" not in self.template:  # {query} may be absent: a quality model scores passages alone
            raise ModelError(f"model {config.name!r}: template {self.template!r} needs {{passage}}")
        self.targets = (self._token_id(extra.get("true_token"), "true"),
                        self._token_id(extra.get("false_token"), "false"))  # fmt: skip

    def _token_id(self, configured: str | None, word: str) -> int:
        for token in (configured,) if configured else TARGET_TOKENS[word]:
            found = self.tokenizer.token_to_id(token)
            if found is not None:
                return found
        raise ModelError(f"model {self.config.name!r}: its vocabulary has no {configured or word!r} token; set "
                         f"{word}_token in {self.directory / 'sift-model.json'}")  # fmt: skip

    def encode_pairs(self, query: str, passages: list[str]) -> list[tuple[list[int], list[int]]]:
        return [(ids, [0] * len(ids)) for ids in encode_template(self.tokenizer, self.template, query, passages,
                                                                  self.max_length, self.name)]  # fmt: skip

    def relevance(self, logits: np.ndarray) -> np.ndarray:
        two = logits[:, list(self.targets)].astype(np.float64)
        return (two[:, 0] - np.logaddexp(two[:, 0], two[:, 1])).astype(np.float32)


SCORERS = {scorer.kind: scorer for scorer in (CrossEncoder, Seq2SeqRanker)}


def load_reranker(model: str | os.PathLike, threads: int | None = None, batch_size: int = 32,
                  bucketing: bool = True) -> PairScorer:  # fmt: skip
    """The scorer for a reranking model (a name or a directory): a CrossEncoder or a Seq2SeqRanker by its kind."""
    directory = resolve(str(model))
    config = read_config(directory)
    if config.kind not in SCORERS:
        raise ModelError(f"model {config.name!r} is a {config.kind}, not a reranker (cross-encoder or seq2seq)")
    return SCORERS[config.kind](directory, config, threads=threads, batch_size=batch_size, bucketing=bucketing)


class CachedScorer:
    """Any scorer's scores kept per (query, passage text), so that a cascade, a repeated query or pruned indexes
    sharing candidates score each pair once. The one score cache: in memory (the most recent `capacity` pairs),
    and in a JSON file if `path` is given (`save()` writes it; benchmarks keep scores across runs)."""

    def __init__(self, scorer, capacity: int = 200_000, path: str | os.PathLike | None = None) -> None:
        self.scorer, self.capacity = scorer, capacity
        self.path = Path(path) if path else None
        self.known: OrderedDict[str, float] = OrderedDict()
        if self.path and self.path.exists():
            self.known.update(json.loads(self.path.read_text(encoding="utf-8")))
        self.scored = 0  # pairs that reached the scorer

    @property
    def name(self) -> str:
        return self.scorer.name

    @staticmethod
    def key(query: str, text: str) -> str:
        return hashlib.blake2b(f"{query}\0{text}".encode(), digest_size=12).hexdigest()

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        wanted = [self.key(query, text) for text in passages]
        missing = [i for i, key in enumerate(wanted) if key not in self.known]
        fresh = {}
        if missing:
            values = self.scorer.score(query, [passages[i] for i in missing])
            fresh = {wanted[i]: float(v) for i, v in zip(missing, values.tolist())}
            self.scored += len(missing)
        scores = np.array([fresh[k] if k in fresh else self.known[k] for k in wanted], dtype=np.float32)
        for key in wanted:
            if key in self.known:
                self.known.move_to_end(key)
        self.known.update(fresh)
        while self.path is None and len(self.known) > self.capacity:
            self.known.popitem(last=False)
        return scores

    def save(self) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.known), encoding="utf-8")
        temporary.replace(self.path)


def encode_cross(tokenizer, query: str, passages: list[str], name: str = "the model") -> list[tuple[list, list]]:
    """[CLS] query [SEP] passage [SEP] ids and type ids; the tokenizer truncates the passage ("only_second")."""
    try:
        encodings = tokenizer.encode_batch([(query, p) for p in passages])
    except Exception as e:  # the query alone is longer than max_length
        raise ModelError(f"query too long for {name}: {e}") from None
    return [(e.ids, e.type_ids) for e in encodings]


def encode_template(tokenizer, template: str, query: str, passages: list[str], max_length: int,
                    name: str = "the model") -> list[list[int]]:  # fmt: skip
    """The template filled with the query and each passage, tokenized whole (so that short inputs tokenize exactly as
    the model saw them in training), then cut to max_length by dropping the passage's last tokens, found by their
    character offsets: the query and the rest of the template are always kept."""
    head = template.partition("{passage}")[0]
    start = len(head.format(query=query))
    texts = [template.format(query=query, passage=p) for p in passages]
    found = []
    for encoding, passage in zip(tokenizer.encode_batch(texts), passages):
        ids = encoding.ids
        excess = len(ids) - max_length
        if excess > 0:
            end = start + len(passage)
            inside = [j for j, (a, b) in enumerate(encoding.offsets)
                      if start <= a and b <= end and b > a and not encoding.special_tokens_mask[j]]  # fmt: skip
            if len(inside) < excess:
                raise ModelError(f"query too long for {name} (max {max_length} tokens)")
            dropped = set(inside[len(inside) - excess :])
            ids = [t for j, t in enumerate(ids) if j not in dropped]
        found.append(ids)
    return found
