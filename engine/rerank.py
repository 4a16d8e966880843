"""Reranking with transformer models on ONNX Runtime: cross-encoders (monoBERT) and sequence-to-sequence rankers
(monoT5).

- cross-encoder: ``[CLS] query [SEP] passage [SEP]`` -> one relevance logit, or two classes of which the positive
  one's log-probability is the score (Nogueira & Cho, "Passage Re-ranking with BERT");
- seq2seq: ``Query: {query} Document: {passage} Relevant:`` -> one decoder step from the start token; the score is
  log P("true") under a softmax over the logits of the "true" and "false" target tokens (Nogueira et al., "Document
  Ranking with a Pretrained Sequence-to-Sequence Model"). Template and target tokens come from the model's config.

The query is kept whole and the passage truncated to the model's max length. Pairs are batched by length (little
padding) and scores cached per (query, passage), so a cascade or a repeated query scores each pair once.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np

from engine.encoders import onnx_session
from engine.models import ModelConfig, ModelError, read_config, resolve

MONOT5_TEMPLATE = "Query: {query} Document: {passage} Relevant:"
QUALITY_TEMPLATE = "Document: {passage} Relevant:"  # QualT5: the monoT5 input without a query
TARGET_TOKENS = {"true": ("▁true", "true"), "false": ("▁false", "false")}  # T5 sentencepiece, then WordPiece


class Reranker:
    """Scores (query, passage) pairs with a cross-encoder or seq2seq model directory."""

    def __init__(
        self,
        model: str | os.PathLike,
        threads: int | None = None,
        batch_size: int = 32,
        bucketing: bool = True,
        cache_size: int = 200_000,
    ) -> None:
        from tokenizers import Tokenizer

        self.directory = resolve(str(model))
        self.config: ModelConfig = read_config(self.directory)
        if self.config.kind not in ("cross-encoder", "seq2seq"):
            raise ModelError(f"model {self.config.name!r} is a {self.config.kind}, not a reranker "
                             "(cross-encoder or seq2seq)")  # fmt: skip
        self.session = onnx_session(self.directory / "model.onnx", threads)
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.max_length = self.config.max_length
        self.batch_size = batch_size
        self.bucketing = bucketing
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        extra = self.config.extra
        if self.config.kind == "seq2seq":
            self.tokenizer.no_truncation()
            self.template = extra.get("template", MONOT5_TEMPLATE)
            if "{passage}" not in self.template:  # {query} may be absent: a quality model scores passages alone
                raise ModelError(f"model {self.config.name!r}: template {self.template!r} needs {{passage}}")
            self.targets = (self._token_id(extra.get("true_token"), "true"),
                            self._token_id(extra.get("false_token"), "false"))  # fmt: skip
        else:
            self.tokenizer.enable_truncation(self.max_length, strategy="only_second")
            self.positive_class = int(extra.get("positive_class", 1))

    @property
    def name(self) -> str:
        return self.config.name

    def _token_id(self, configured: str | None, word: str) -> int:
        for token in (configured,) if configured else TARGET_TOKENS[word]:
            found = self.tokenizer.token_to_id(token)
            if found is not None:
                return found
        raise ModelError(f"model {self.config.name!r}: its vocabulary has no {configured or word!r} token; set "
                         f"{word}_token in {self.directory / 'sift-model.json'}")  # fmt: skip

    def score(self, query: str, passages: Sequence[str], keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """float32 scores, one per passage (higher: more relevant). keys name the passages for the score cache (by
        default the text itself)."""
        keys = list(passages) if keys is None else list(keys)
        scores = np.empty(len(passages), dtype=np.float32)
        missing = []
        for i, key in enumerate(keys):
            cached = self._cache.get((query, key))
            if cached is None:
                missing.append(i)
            else:
                scores[i] = cached
                self._cache.move_to_end((query, key))
        if missing:
            fresh = self._score_pairs(query, [passages[i] for i in missing])
            scores[missing] = fresh
            for i, value in zip(missing, fresh.tolist()):
                self._cache[(query, keys[i])] = value
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return scores

    def _score_pairs(self, query: str, passages: list[str]) -> np.ndarray:
        encoded = self.encode_pairs(query, passages)
        lengths = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=len(encoded))
        order = np.argsort(-lengths, kind="stable") if self.bucketing else np.arange(len(encoded))
        scores = np.empty(len(encoded), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            width = int(lengths[chosen].max())
            ids = np.zeros((len(chosen), width), dtype=np.int64)
            types = np.zeros((len(chosen), width), dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            for row, i in enumerate(chosen.tolist()):
                token_ids, type_ids = encoded[i]
                ids[row, : len(token_ids)] = token_ids
                types[row, : len(token_ids)] = type_ids
                mask[row, : len(token_ids)] = 1
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            logits = self.session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
            scores[chosen] = self._relevance(np.asarray(logits, dtype=np.float32))
        return scores

    def encode_pairs(self, query: str, passages: list[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and type ids per pair, the passage truncated so the pair fits max_length."""
        if self.config.kind == "cross-encoder":
            return encode_cross(self.tokenizer, query, passages, self.name)
        return [(ids, [0] * len(ids)) for ids in encode_template(self.tokenizer, self.template, query, passages,
                                                                  self.max_length, self.name)]  # fmt: skip

    def _relevance(self, logits: np.ndarray) -> np.ndarray:
        if self.config.kind == "seq2seq":
            two = logits[:, list(self.targets)].astype(np.float64)
            return (two[:, 0] - np.logaddexp(two[:, 0], two[:, 1])).astype(np.float32)
        if logits.ndim == 1 or logits.shape[1] == 1:
            return logits.reshape(-1)
        wide = logits.astype(np.float64)
        top = wide.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(wide - top).sum(axis=1))
        return (wide[:, self.positive_class] - log_norm).astype(np.float32)


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
