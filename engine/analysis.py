"""The one analyzer: text -> index terms, shared by indexing and querying.

The default reproduces Lucene's EnglishAnalyzer as Anserini uses it: Unicode (UAX #29) word-break tokenization as
in StandardTokenizer, English possessive removal, lower-casing, Lucene's English stop set, Porter stemming. The
settings travel in the index manifest so that queries are always analyzed as their index was.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import NamedTuple

import numpy as np
import Stemmer
from numba import njit

from engine.errors import SiftError

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET.
LUCENE_ENGLISH_STOP_WORDS = (
    *("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not"),
    *("of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was"),
    *("will", "with"),
)

# Ideographs and Hiragana are single-character tokens in UAX #29, and so are pictographs (Lucene's <EMOJI> tokens).
_IDEOGRAPHIC = "\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_PICTOGRAPHIC = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a\u231b\u2328\u23cf\u23e9-\u23f3"
    "\u23f8-\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb-\u25fe\u2600-\u2605\u2607-\u2612\u2614-\u2685"
    "\u2690-\u2705\u2708-\u2712\u2714\u2716\u271d\u2721\u2728\u2733\u2734\u2744\u2747\u274c\u274e"
    "\u2753-\u2755\u2757\u2763-\u2767\u2795-\u2797\u27a1\u27b0\u27bf\u2934\u2935\u2b05-\u2b07"
    "\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff"
)
# Python's \w takes in superscripts, subscripts and fractions (category No); word breaks do not.
_OTHER_NUMBERS = "\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u215f\u2189\u2460-\u249b\u2776-\u2793"
# Format and Extend characters (soft hyphen, joiners, combining marks) stay inside a word (UAX #29 WB4).
_EXTEND = "\u00ad\u200c\u200d\u2060\ufeff\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_WORD = rf"(?:[^\W{_IDEOGRAPHIC}{_OTHER_NUMBERS}]|[{_EXTEND}])"
_ALNUM = rf"[^\W_{_IDEOGRAPHIC}{_OTHER_NUMBERS}]"
_LETTER = rf"[^\W\d_{_IDEOGRAPHIC}{_OTHER_NUMBERS}]"
# UAX #29 word-break classes that may sit inside a word: MidLetter between letters, MidNum between digits, and
# MidNumLet / Single_Quote between either.
_MID_LETTER = ":\u00b7\u0387\u055f\u05f4\u2027\ufe13\ufe55\uff1a"
_MID_NUM = ",;\u037e\u0589\u060c\u060d\u066c\u07f8\u2044\ufe10\ufe14\ufe50\ufe54\uff0c\uff1b"
_MID_NUM_LET = ".'\u2018\u2019\u2024\ufe52\uff07\uff0e"
# A word holds at least one letter or digit (underscores alone are no token).
_STANDARD_TOKEN = re.compile(
    rf"[{_IDEOGRAPHIC}{_PICTOGRAPHIC}]"
    rf"|_*{_ALNUM}{_WORD}*(?:(?<={_LETTER})[{_MID_LETTER}{_MID_NUM_LET}](?={_LETTER}){_WORD}+"
    rf"|(?<=\d)[{_MID_NUM}{_MID_NUM_LET}](?=\d){_WORD}+)*"
)
# The same grammar restricted to ASCII, where it needs no look-ups of Unicode classes: three times faster.
_ASCII_TOKEN = re.compile(
    r"_*[A-Za-z0-9]\w*(?:(?<=[A-Za-z])[:.'](?=[A-Za-z])\w+|(?<=[0-9])[,;.'](?=[0-9])\w+)*", re.ASCII
)
_WHITESPACE_TOKEN = re.compile(r"\S+")
MAX_TOKEN_LENGTH = 255  # StandardTokenizer's default; longer tokens are cut into pieces of this length
_LONG_RUN = re.compile(rf"\S{{{MAX_TOKEN_LENGTH + 1}}}")  # no such run of non-space characters: no token too long
_POSSESSIVE_SUFFIXES = ("'s", "\u2019s", "\uff07s")
_APOSTROPHE = re.compile("['\u2019\uff07]")


class AnalyzerError(SiftError, ValueError):
    """An analyzer configuration that cannot be built."""


@dataclass(frozen=True)
class AnalyzerConfig:
    """How text becomes terms; stored in the manifest, so it must stay JSON-serializable."""

    tokenizer: str = "standard"  # "standard" (UAX #29, as Lucene) or "whitespace" (pre-tokenized text)
    lowercase: bool = True
    possessives: bool = True  # strip English "'s" as Lucene's EnglishPossessiveFilter
    stopwords: tuple[str, ...] | None = field(default=None)  # None: Lucene's English set; () for none
    stemmer: str | None = "porter"  # a PyStemmer algorithm name, or None
    min_stem_length: int = 3  # Lucene's PorterStemmer leaves words of one or two characters alone

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stopwords"] = list(self.stop_set())
        return data

    @classmethod
    def from_dict(cls, data: dict) -> AnalyzerConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("stopwords") is not None:
            known["stopwords"] = tuple(known["stopwords"])
        return cls(**known)

    def stop_set(self) -> tuple[str, ...]:
        return tuple(sorted(LUCENE_ENGLISH_STOP_WORDS if self.stopwords is None else self.stopwords))


class Analyzer:
    """Turns text into a list of index terms."""

    def __init__(self, config: AnalyzerConfig | None = None) -> None:
        self.config = config or AnalyzerConfig()
        if self.config.tokenizer == "standard":
            self._pattern = _STANDARD_TOKEN
        elif self.config.tokenizer == "whitespace":
            self._pattern = _WHITESPACE_TOKEN
        else:
            raise AnalyzerError(f"unknown tokenizer {self.config.tokenizer!r}; choose 'standard' or 'whitespace'")
        self._stop = frozenset(self.config.stop_set())
        self._stem = _stemmer(self.config.stemmer) if self.config.stemmer else None
        self._stem_cache: dict[str, str] = {}  # PyStemmer objects are not thread-safe: one per analyzer

    def tokenize(self, text: str) -> list[str]:
        """Surface tokens before filtering (also used to cut passages on token boundaries)."""
        if self._pattern is _WHITESPACE_TOKEN:
            tokens = text.split()  # the same tokens as the pattern (both use Unicode's whitespace), 3x faster
        else:
            tokens = (_ASCII_TOKEN if text.isascii() else self._pattern).findall(text)
        if len(text) > MAX_TOKEN_LENGTH and _LONG_RUN.search(text) and max(map(len, tokens)) > MAX_TOKEN_LENGTH:
            tokens = [t[i : i + MAX_TOKEN_LENGTH] for t in tokens for i in range(0, len(t), MAX_TOKEN_LENGTH)]
        return tokens

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._pattern.finditer(text)]

    def analyze(self, text: str) -> list[str]:
        tokens, stripped = self._tokens(text)
        stop = self._stop
        if self._stem is None:
            if not stop and not stripped:
                return tokens  # nothing can be empty or removed: pre-tokenized text goes through as it is
            return [t for t in tokens if t and t not in stop]
        cache = self._stem_cache
        missing = set(tokens).difference(cache)
        if missing:
            self._add_stems(missing)
        return [cache[t] for t in tokens if t and t not in stop]

    def positions(self, text: str) -> list[int]:
        """The position of each of analyze(text)'s terms: its token's number, removed tokens (stopwords) counted,
        as Lucene's position increments count them (a phrase does not match across a removed word)."""
        tokens, _ = self._tokens(text)
        stop = self._stop
        return [i for i, t in enumerate(tokens) if t and t not in stop]

    def extent(self, text: str) -> tuple[int, int]:
        """(positions the text takes, terms it keeps): where a field that follows it in one passage starts, and the
        field's length, as positions() and analyze() count them."""
        tokens, _ = self._tokens(text)
        stop = self._stop
        return len(tokens), sum(1 for t in tokens if t and t not in stop)

    def _tokens(self, text: str) -> tuple[list[str], bool]:
        """Tokens lower-cased and without possessives; whether any possessive was stripped."""
        # Lower-casing the whole text first is equivalent to Lucene's per-token filter, and much faster.
        if self.config.lowercase:
            text = text.lower()
        tokens = self.tokenize(text)
        stripped = self.config.possessives and _APOSTROPHE.search(text) is not None
        if stripped:
            tokens = [t[:-2] if t[-2:].lower() in _POSSESSIVE_SUFFIXES else t for t in tokens]
        return tokens, stripped

    def analyze_batch(self, texts: list[str]) -> TermBytes:
        """The terms of many texts at once, as UTF-8 bytes: what the indexer needs, without a str per term where
        it can be helped. Pre-tokenized ASCII text under a whitespace-only analyzer is split in compiled code; any
        other text goes through analyze() and its terms are joined into one buffer."""
        config = self.config
        plain = config.tokenizer == "whitespace" and not self._stop and self._stem is None
        if plain and not config.possessives:
            joined = " ".join(texts)  # the separator is whitespace: no token spans two texts
            if joined.isascii():
                data = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
                if config.lowercase:
                    data = _ascii_lower(data)
                ends_of_texts = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1) - 1
                return TermBytes(data, *_split_ascii_whitespace(data, ends_of_texts, MAX_TOKEN_LENGTH))
        analyzed = [self.analyze(text) for text in texts]
        counts = np.fromiter(map(len, analyzed), dtype=np.int64, count=len(analyzed))
        data = np.frombuffer(" ".join(chain.from_iterable(analyzed)).encode("utf-8"), dtype=np.uint8)
        starts, ends = _split_on_spaces(data)
        if len(starts) != counts.sum():  # a term holds a space (a custom tokenizer could): measure each one
            lengths = [len(t.encode("utf-8")) for t in chain.from_iterable(analyzed)]
            ends = np.cumsum(np.array(lengths, dtype=np.int64) + 1) - 1
            starts = ends - np.array(lengths, dtype=np.int64)
        return TermBytes(data, starts, ends, counts)

    def _add_stems(self, words: set[str]) -> None:
        cache = self._stem_cache
        if len(cache) > 1_000_000:
            cache.clear()
        shortest = self.config.min_stem_length
        long_words = [t for t in words if len(t) >= shortest]
        stems = self._stem.stemWords(long_words)
        if self.config.stemmer == "porter":
            stems = [lucene_porter_departures(stem, word) for stem, word in zip(stems, long_words)]
        cache.update(zip(long_words, stems))
        cache.update((t, t) for t in words if len(t) < shortest)


class TermBytes(NamedTuple):
    """Terms of consecutive texts: term i is data[starts[i]:ends[i]] (UTF-8); text j has counts[j] terms."""

    data: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    counts: np.ndarray

    def terms(self) -> list[str]:
        raw = self.data.tobytes()
        return [raw[s:e].decode("utf-8") for s, e in zip(self.starts.tolist(), self.ends.tolist())]


@njit(nogil=True, cache=True)
def _ascii_lower(data):
    lowered = data.copy()
    for i in range(len(lowered)):
        if 65 <= lowered[i] <= 90:
            lowered[i] += 32
    return lowered


@njit(nogil=True, cache=True)
def _is_ascii_space(byte):
    return byte == 32 or 9 <= byte <= 13 or 28 <= byte <= 31  # the ASCII characters str.split() splits on


@njit(nogil=True, cache=True)
def _split_ascii_whitespace(data, ends_of_texts, max_length):
    """str.split() of each text (text j ends at ends_of_texts[j]), tokens longer than max_length cut in pieces."""
    starts = np.empty(len(data) // 2 + 1, dtype=np.int64)
    ends = np.empty(len(data) // 2 + 1, dtype=np.int64)
    counts = np.zeros(len(ends_of_texts), dtype=np.int64)
    found = 0
    position = 0
    for text in range(len(ends_of_texts)):
        end_of_text = ends_of_texts[text]
        while position < end_of_text:
            while position < end_of_text and _is_ascii_space(data[position]):
                position += 1
            if position == end_of_text:
                break
            start = position
            while position < end_of_text and not _is_ascii_space(data[position]):
                position += 1
            for piece in range(start, position, max_length):
                starts[found] = piece
                ends[found] = min(piece + max_length, position)
                found += 1
                counts[text] += 1
        position = end_of_text + 1
    return starts[:found], ends[:found], counts


@njit(nogil=True, cache=True)
def _split_on_spaces(data):
    starts = np.empty(len(data) // 2 + 1, dtype=np.int64)
    ends = np.empty(len(data) // 2 + 1, dtype=np.int64)
    found = 0
    start = 0
    for i in range(len(data) + 1):
        if i == len(data) or data[i] == 32:
            if i > start:
                starts[found] = start
                ends[found] = i
                found += 1
            start = i + 1
    return starts[:found], ends[:found]


def _stemmer(name: str) -> Stemmer.Stemmer:
    try:
        return Stemmer.Stemmer(name)
    except KeyError:
        raise AnalyzerError(f"unknown stemmer {name!r}; choose one of: {', '.join(Stemmer.algorithms())}") from None


def _consonant(word: str, i: int) -> bool:
    c = word[i]
    if c in "aeiou":
        return False
    if c == "y":
        return i == 0 or not _consonant(word, i - 1)
    return True


def _measure(stem: str) -> int:
    """Porter's m: the number of vowel-consonant sequences in stem."""
    kinds = "".join("c" if _consonant(stem, i) else "v" for i in range(len(stem)))
    return kinds.lstrip("c").count("vc") if kinds else 0


def _ends_cvc(word: str) -> bool:
    return (
        len(word) >= 3
        and _consonant(word, len(word) - 3)
        and not _consonant(word, len(word) - 2)
        and _consonant(word, len(word) - 1)
        and word[-1] not in "wxy"
    )


def lucene_porter_departures(stem: str, word: str) -> str:
    """Applies the two rules by which Lucene's PorterStemmer (Porter's own C version) departs from the published
    algorithm that Snowball's "porter" implements: step 2 maps "bli" to "ble" (not only "abli" to "able") and "logi"
    to "log"; a "ble" then goes through steps 4 and 5 as Lucene would take it. Step 2 sees the word after step 1,
    so a stem whose final "e" step 5 removed later ("pharmacologie" -> "pharmacologi") keeps its "logi"/"bli".
    """
    if word.endswith(("logie", "blie")):
        return stem
    if stem.endswith("logi") and _measure(stem[:-4]) > 0:
        return stem[:-1]
    if stem.endswith("bli") and not stem.endswith("abli") and _measure(stem[:-3]) > 0:
        word = stem[:-1] + "e"
        if word.endswith("ible") and _measure(word[:-4]) > 1:
            return word[:-4]
        m = _measure(word[:-1])
        if m > 1 or (m == 1 and not _ends_cvc(word[:-1])):
            return word[:-1]
        return word
    return stem
