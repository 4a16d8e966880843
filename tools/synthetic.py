"""A seeded synthetic corpus with Zipfian term frequencies, for scale tests where no judged corpus exists."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np

_ONSETS = ("b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "pl", "gr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "s", "t", "l", "x", "m")


def vocabulary(size: int, seed: int = 0) -> list[str]:
    """Distinct pronounceable pseudo-words, so tokenizer and stemmer treat them like real words."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        syllables = rng.integers(1, 4)
        word = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(syllables)
        )
        words.setdefault(word, None)
    return list(words)


def synthetic_documents(
    count: int, seed: int = 0, vocabulary_size: int = 100_000, mean_length: int = 60, zipf: float = 1.1
) -> Iterator[dict]:
    """{"_id", "title", "text"} records; document lengths are log-normal, terms drawn from a Zipf law."""
    words = np.array(vocabulary(vocabulary_size, seed))
    rng = np.random.default_rng(seed + 1)
    weights = 1.0 / np.arange(1, vocabulary_size + 1) ** zipf
    cumulative = np.cumsum(weights / weights.sum())
    batch = 10_000
    for start in range(0, count, batch):
        n = min(batch, count - start)
        lengths = np.maximum(3, rng.lognormal(np.log(mean_length), 0.5, size=n).astype(int))
        draws = np.searchsorted(cumulative, rng.random(int(lengths.sum())), side="right")
        draws = np.minimum(draws, vocabulary_size - 1)
        tokens = words[draws]
        offset = 0
        for i, length in enumerate(lengths.tolist()):
            yield {"_id": f"s{start + i}", "title": "", "text": " ".join(tokens[offset : offset + length])}
            offset += length


def synthetic_queries(documents: list[dict], count: int, seed: int = 0, terms: tuple[int, int] = (2, 5)):
    """Queries sampled from passage text: a few words of a random document each."""
    rng = np.random.default_rng(seed + 2)
    queries = []
    for i in range(count):
        words = documents[rng.integers(len(documents))]["text"].split()
        size = min(len(words), int(rng.integers(terms[0], terms[1] + 1)))
        queries.append((f"q{i}", " ".join(rng.choice(words, size=size, replace=False))))
    return queries


def write_synthetic_corpus(path: str | os.PathLike, count: int, seed: int = 0) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in synthetic_documents(count, seed):
            f.write(json.dumps(record) + "\n")
