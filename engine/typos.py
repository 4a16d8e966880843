"""Typo tolerance: index terms within a few edits of a query term, for fuzzy terms (`term~N`) and for correcting
query terms the index does not hold (`typos="auto"`), as "Dealing with Typos for BERT-based Passage Retrieval and
Ranking" finds typos cost retrieval much of its effectiveness.

Edits are those of the optimal string alignment distance (insertion, deletion, substitution, and transposition of
adjacent characters, each one edit) over a term's UTF-8 bytes, scanned over each segment's term table in compiled
code: exact, no extra memory, and linear in the vocabulary (a SymSpell-style deletion index would trade memory for
speed on vocabularies of millions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

MAX_EDITS = 2
MAX_EXPANSIONS = 50  # a fuzzy term becomes at most this many index terms, the most frequent first (as Lucene's)


@numba.njit(nogil=True, cache=True)
def terms_within(blob, offsets, word, max_edits):
    """(term numbers, edits) of the table's terms (blob[offsets[i]:offsets[i+1]]) at most max_edits from word, by
    optimal string alignment distance over bytes."""
    n = len(word)
    found = np.empty(len(offsets) - 1, dtype=np.int64)
    edits = np.empty(len(offsets) - 1, dtype=np.int64)
    count = 0
    previous2 = np.empty(n + 1, dtype=np.int64)
    previous = np.empty(n + 1, dtype=np.int64)
    current = np.empty(n + 1, dtype=np.int64)
    for t in range(len(offsets) - 1):
        start, m = offsets[t], offsets[t + 1] - offsets[t]
        if abs(m - n) > max_edits:
            continue
        for j in range(n + 1):
            previous[j] = j
        best = 0
        for i in range(1, m + 1):
            current[0] = i
            best = i
            c = blob[start + i - 1]
            for j in range(1, n + 1):
                cost = 0 if c == word[j - 1] else 1
                value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
                if i > 1 and j > 1 and c == word[j - 2] and blob[start + i - 2] == word[j - 1]:
                    value = min(value, previous2[j - 2] + 1)
                current[j] = value
                best = min(best, value)
            if best > max_edits:
                break
            previous2[:] = previous
            previous[:] = current
        if best <= max_edits and previous[n] <= max_edits and m > 0:
            found[count] = t
            edits[count] = previous[n]
            count += 1
    return found[:count], edits[:count]


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance over UTF-8 bytes: terms_within's reference."""
    x, y = a.encode("utf-8"), b.encode("utf-8")
    d = [[i + j if i * j == 0 else 0 for j in range(len(y) + 1)] for i in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (x[i - 1] != y[j - 1]))
            if i > 1 and j > 1 and x[i - 1] == y[j - 2] and x[i - 2] == y[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(x)][len(y)]


def neighbours(segments: Sequence, term: str, max_edits: int) -> dict[str, tuple[int, int]]:
    """Index terms within max_edits of term: term -> (edits, postings over the segments, deleted ones included)."""
    if not 0 <= max_edits <= MAX_EDITS:
        raise ValueError(f"a term may be {MAX_EDITS} edits away at most, got {max_edits}")
    word = np.frombuffer(term.encode("utf-8"), dtype=np.uint8)
    found: dict[str, tuple[int, int]] = {}
    for segment in segments:
        table = segment.terms
        numbers, edits = terms_within(table._bytes, np.asarray(table._offsets, dtype=np.int64), word, max_edits)
        postings = np.diff(np.asarray(segment.offsets, dtype=np.int64))
        for name, number, distance in zip(table.take(numbers), numbers.tolist(), edits.tolist()):
            _, known = found.get(name, (distance, 0))
            found[name] = (distance, known + int(postings[number]))
    return found


def expand(segments: Sequence, term: str, max_edits: int) -> list[str]:
    """A fuzzy term's index terms: the term itself if held, then the nearest, most frequent ones."""
    ranked = sorted(neighbours(segments, term, max_edits).items(), key=lambda item: (item[1][0], -item[1][1], item[0]))
    return [name for name, _ in ranked[:MAX_EXPANSIONS]]


def one_edit(word: str, alphabet: str) -> set[str]:
    """Every string one insertion, deletion, substitution or adjacent transposition away from word."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    deleted = {a + b[1:] for a, b in splits if b}
    transposed = {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    substituted = {a + c + b[1:] for a, b in splits if b for c in alphabet}
    inserted = {a + c + b for a, b in splits for c in alphabet}
    return deleted | transposed | substituted | inserted


MIN_CORRECTED_LENGTH = 4  # shorter words have too many neighbours to guess from


def correct(analyzer, segments: Sequence, text: str) -> str:
    """The query with each word whose term the index does not hold replaced by the word one edit from it whose
    term the index holds most often (edits of the typed word, then analyzed: a typo changes the word, not its stem,
    so "regulaton" finds "regulation"). Words the index holds, short words, and words without such a neighbour
    stay as typed; the text around them too. Models read the mended text, BM25 analyzes it."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    mended, at = [], 0
    for start, end in analyzer.token_spans(text):
        token = text[start:end]
        lowered = token.lower() if analyzer.config.lowercase else token
        terms = analyzer.analyze(lowered)
        if len(terms) != 1 or len(token) < MIN_CORRECTED_LENGTH or _postings(segments, terms)[0]:
            continue
        by_term: dict[str, str] = {}
        for word in sorted(one_edit(lowered, alphabet + "".join(set(lowered)))):
            found = analyzer.analyze(word)
            if len(found) == 1 and found[0] != terms[0]:
                by_term.setdefault(found[0], word)
        candidates = sorted(by_term)
        counts = _postings(segments, candidates)
        if len(candidates) and counts.max():
            mended += [text[at:start], by_term[candidates[int(np.argmax(counts))]]]
            at = end
    return "".join(mended) + text[at:]


def _postings(segments: Sequence, terms: Sequence[str]) -> np.ndarray:
    """Per term, its postings over the segments (0: the index does not hold it)."""
    counts = np.zeros(len(terms), dtype=np.int64)
    for segment in segments:
        found = segment.terms.find_many(list(terms))
        held = found >= 0
        offsets = np.asarray(segment.offsets, dtype=np.int64)
        counts[held] += offsets[found[held] + 1] - offsets[found[held]]
    return counts
