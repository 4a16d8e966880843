"""Typo'd queries, seeded, of the kinds "Dealing with Typos for BERT-based Passage Retrieval and Ranking" (Zhuang and
Zuccon, 2021) uses: a random character inserted, deleted or substituted, two adjacent characters swapped, or one
replaced by a neighbour on a QWERTY keyboard. One word of each query is changed: a word of at least three letters
that is not a stopword (a typo in "the" changes nothing a search engine sees)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from engine.analysis import LUCENE_ENGLISH_STOP_WORDS

KINDS = ("insert", "delete", "substitute", "transpose", "keyboard")
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours(row: str, i: int) -> str:
    """Keys left and right of row[i], and those in the same column of the other rows."""
    beside = "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row))
    return beside + "".join(other[i] for other in _ROWS if other is not row and i < len(other))


KEYBOARD = {c: _neighbours(row, i) for row in _ROWS for i, c in enumerate(row)}
_WORD = re.compile(r"[A-Za-z]{3,}")


def typo(word: str, kind: str, rng: random.Random) -> str:
    """word with one typo of the kind, never the word itself."""
    at = rng.randrange(len(word))
    letters = "abcdefghijklmnopqrstuvwxyz"
    if kind == "insert":
        return word[:at] + rng.choice(letters) + word[at:]
    if kind == "delete":
        return word[:at] + word[at + 1 :]
    if kind == "substitute":
        return word[:at] + rng.choice(letters.replace(word[at].lower(), "")) + word[at + 1 :]
    if kind == "transpose":
        choices = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if not choices:
            return typo(word, "substitute", rng)
        i = rng.choice(choices)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "keyboard":
        near = KEYBOARD.get(word[at].lower())
        if not near:
            return typo(word, "substitute", rng)
        return word[:at] + rng.choice(near) + word[at + 1 :]
    raise ValueError(f"unknown typo kind {kind!r}; choose one of {', '.join(KINDS)}")


def typo_query(text: str, rng: random.Random) -> str:
    """The query with one eligible word changed by a typo of a random kind (unchanged if none is eligible)."""
    words = [m for m in _WORD.finditer(text) if m.group().lower() not in LUCENE_ENGLISH_STOP_WORDS]
    if not words:
        return text
    chosen = rng.choice(words)
    return text[: chosen.start()] + typo(chosen.group(), rng.choice(KINDS), rng) + text[chosen.end() :]


def typo_queries(queries: Iterable[tuple[str, str]], seed: int = 0) -> list[tuple[str, str]]:
    """(qid, typo'd text) per query; the same seed gives the same typos."""
    rng = random.Random(seed)
    return [(qid, typo_query(text, rng)) for qid, text in queries]
