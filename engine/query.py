"""The query syntax (`syntax="lucene"`): Lucene's classic parser's language, read into a tree, and BM25 over it.

Plain text stays the default (every character is text). In the syntax: terms, `+required`, `-excluded`, `AND`,
`OR`, `NOT`, parentheses, `term^2.5` boosts; `"phrases"`, `"phrase"~N`, `term~N` and `field:` parse (and print back)
phrases need an index built with positions, fuzzy terms expand to the index terms within N edits (engine/typos.py),
and `field:` is refused until per-field indexes exist. Clauses combine as
Lucene's QueryParser combines them (default operator OR; `a AND b` makes both required; `NOT` excludes), and a
matching passage scores the sum of its matching clauses' BM25 (Lucene's BooleanQuery), each times its boost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import numba
import numpy as np

from engine.analysis import Analyzer
from engine.errors import SiftError
from engine.sparse import BLOCK, BM25Params, BM25Searcher, _load_block, top_k
from engine.typos import expand

MUST, SHOULD, MUST_NOT = "+", "", "-"


class QuerySyntaxError(SiftError, ValueError):
    """A query that the syntax cannot read; the message names the position (0-based character offset)."""


@dataclass(frozen=True)
class Term:
    text: str
    field: str | None = None
    boost: float = 1.0
    fuzzy: int | None = None  # term~N: edits allowed


@dataclass(frozen=True)
class Phrase:
    words: tuple[str, ...]
    field: str | None = None
    boost: float = 1.0
    slop: int = 0


@dataclass(frozen=True)
class Group:
    clauses: tuple[tuple[str, Term | Phrase | Group], ...]  # (occur, node): MUST, SHOULD or MUST_NOT
    boost: float = 1.0


Node = Term | Phrase | Group


def to_text(node: Node, top: bool = True) -> str:
    """The query written back in the syntax: parse_query(to_text(q)) == q."""
    if isinstance(node, Group):
        inner = " ".join(occur + to_text(child, False) for occur, child in node.clauses)
        text = inner if top else f"({inner})"
    elif isinstance(node, Phrase):
        text = '"' + " ".join(node.words) + '"' + (f"~{node.slop}" if node.slop else "")
    else:
        text = _escape(node.text) + (f"~{node.fuzzy}" if node.fuzzy is not None else "")
    prefix = f"{node.field}:" if isinstance(node, Term | Phrase) and node.field else ""
    return prefix + text + (f"^{node.boost!r}" if node.boost != 1.0 else "")


_SPECIAL = set('+-!():^[]"{}~*?\\/&|')
_OPERATORS = ("AND", "OR", "NOT")


def _escape(word: str) -> str:
    escaped = "".join("\\" + c if c in _SPECIAL or c.isspace() else c for c in word)
    return "\\" + escaped if word in _OPERATORS else escaped


# --- parsing --------------------------------------------------------------------------------------------------------


def parse_query(text: str) -> Group:
    """The query's tree: a Group of (occur, node) clauses. QuerySyntaxError says what is wrong and where."""
    parser = _Parser(text)
    group = parser.clauses(top=True)
    return group


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def error(self, message: str, at: int | None = None) -> QuerySyntaxError:
        at = self.at if at is None else at
        return QuerySyntaxError(f"query syntax: {message} at position {at}: {self.text[:at]}»{self.text[at:]}")

    def skip_space(self) -> None:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def peek_word(self) -> str:
        """The next bare operator word (AND, OR, NOT, &&, ||) if one starts here, else ""."""
        for word in ("AND", "OR", "NOT", "&&", "||"):
            end = self.at + len(word)
            if self.text.startswith(word, self.at) and (end == len(self.text) or self.text[end].isspace()
                                                         or self.text[end] in '("'):  # fmt: skip
                return word
        return ""

    def clauses(self, top: bool) -> Group:
        """Lucene's QueryParserBase.addClause: a conjunction makes the clause before it required (AND) or leaves it
        optional (OR); NOT or '-' excludes, '+' or AND requires, anything else is optional."""
        clauses: list[list] = []
        conjunction = ""
        while True:
            self.skip_space()
            if self.at >= len(self.text):
                break
            if self.text[self.at] == ")":
                if top:
                    raise self.error("')' without a matching '('")
                break
            word = self.peek_word()
            if word in ("AND", "&&", "OR", "||"):
                if not clauses or conjunction:
                    raise self.error(f"{word} needs a clause on each side")
                conjunction = "AND" if word in ("AND", "&&") else "OR"
                self.at += len(word)
                continue
            occur = None
            if word == "NOT":
                occur = MUST_NOT
                self.at += 3
                self.skip_space()
            elif self.text[self.at] in "+-!":
                occur = MUST if self.text[self.at] == "+" else MUST_NOT
                self.at += 1
            if self.at >= len(self.text) or self.text[self.at].isspace() or self.text[self.at] == ")":
                raise self.error("an operator with nothing after it")
            node = self.clause()
            if conjunction == "AND" and clauses and clauses[-1][0] == SHOULD:
                clauses[-1][0] = MUST
            if occur is None:
                occur = MUST if conjunction == "AND" else SHOULD
            clauses.append([occur, node])
            conjunction = ""
        if conjunction:
            raise self.error("AND/OR at the end of the query")
        if not clauses and not top:
            raise self.error("empty parentheses")
        return Group(tuple((occur, node) for occur, node in clauses))

    def clause(self) -> Node:
        start = self.at
        field_name = None
        word = self._word()
        if word is not None and self.at < len(self.text) and self.text[self.at] == ":":
            field_name = word
            self.at += 1
            if self.at >= len(self.text) or self.text[self.at].isspace():
                raise self.error(f"nothing after the field name {field_name}:")
            word = None
        elif word is not None:
            return self._modifiers(Term(word))
        if self.text[self.at] == "(":
            self.at += 1
            group = self.clauses(top=False)
            if self.at >= len(self.text) or self.text[self.at] != ")":
                raise self.error("'(' without a matching ')'", start)
            self.at += 1
            if field_name is not None:
                raise self.error("a field before parentheses is not supported; write field:term for each term", start)
            return self._modifiers(group)
        if self.text[self.at] == '"':
            self.at += 1
            end = self.text.find('"', self.at)
            if end < 0:
                raise self.error('a phrase without its closing "', self.at - 1)
            words = tuple(self.text[self.at : end].split())
            self.at = end + 1
            if not words:
                raise self.error("an empty phrase", end)
            phrase = Phrase(words, field_name)
            if self.at < len(self.text) and self.text[self.at] == "~":
                self.at += 1
                phrase = Phrase(words, field_name, slop=self._integer("a phrase's ~ needs a whole number (slop)"))
            return self._modifiers(phrase)
        word = self._word()
        if word is None:
            raise self.error(f"unexpected {self.text[self.at]!r}")
        return self._modifiers(Term(word, field_name))

    def _word(self) -> str | None:
        """A bare word with backslash escapes, or None where none starts."""
        out = []
        while self.at < len(self.text):
            c = self.text[self.at]
            if c == "\\":
                if self.at + 1 >= len(self.text):
                    raise self.error("a backslash at the end of the query")
                out.append(self.text[self.at + 1])
                self.at += 2
                continue
            if c.isspace() or c in '():^"~' or (c in "+-!" and not out) or c in "[]{}":
                break
            out.append(c)
            self.at += 1
        return "".join(out) if out else None

    def _integer(self, message: str) -> int:
        start = self.at
        while self.at < len(self.text) and self.text[self.at].isdigit():
            self.at += 1
        if start == self.at:
            raise self.error(message)
        return int(self.text[start : self.at])

    def _modifiers(self, node: Node) -> Node:
        if isinstance(node, Term) and self.at < len(self.text) and self.text[self.at] == "~":
            self.at += 1
            edits = self._integer("a fuzzy term's ~ needs a whole number of edits (1 or 2)")
            if edits > 2:
                raise self.error("fuzzy terms allow at most 2 edits", self.at - 1)
            node = Term(node.text, node.field, node.boost, edits)
        if self.at < len(self.text) and self.text[self.at] == "^":
            self.at += 1
            start = self.at
            while self.at < len(self.text) and (self.text[self.at].isdigit() or self.text[self.at] == "."):
                self.at += 1
            try:
                boost = float(self.text[start : self.at])
            except ValueError:
                raise self.error("^ needs a number (a boost)", start) from None
            if boost <= 0:
                raise self.error("a boost must be above 0", start)
            node = Group(node.clauses, boost) if isinstance(node, Group) else _with_boost(node, boost)
        if self.at < len(self.text) and not (self.text[self.at].isspace() or self.text[self.at] == ")"):
            raise self.error(f"unexpected {self.text[self.at]!r}")
        return node


def _with_boost(node: Term | Phrase, boost: float) -> Term | Phrase:
    if isinstance(node, Term):
        return Term(node.text, node.field, boost, node.fuzzy)
    return Phrase(node.words, node.field, boost, node.slop)


# --- BM25 over a query tree -----------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def read_postings(postings, start, end, first_block, block_last_doc):
    """One term's postings (passage ids, term frequencies), decoded if packed."""
    docs = np.empty(end - start, dtype=np.int64)
    tfs = np.empty(end - start, dtype=np.int64)
    block_docs = np.empty(BLOCK, dtype=np.int64)
    block_tfs = np.empty(BLOCK, dtype=np.int64)
    block = first_block
    for at in range(start, end, BLOCK):
        n = min(BLOCK, end - at)
        _load_block(postings, block_last_doc, first_block, block, at, n, block_docs, block_tfs, True)
        docs[at - start : at - start + n] = block_docs[:n]
        tfs[at - start : at - start + n] = block_tfs[:n]
        block += 1
    return docs, tfs


@numba.njit(nogil=True, cache=True)
def phrase_frequencies(positions, starts, runs, places, slop, present):
    """Per candidate passage (runs[i, c]: the posting of phrase term i there; present[c]: all terms occur), the
    phrase's frequency: with slop 0, how often its terms stand at their places; with slop > 0, 1 / (1 + s) where
    s, the smallest spread of (position - place) over one position of each term, is at most slop (0: no match)."""
    n_terms, n = runs.shape
    frequency = np.zeros(n, dtype=np.float32)
    cursor = np.empty(n_terms, dtype=np.int64)
    for c in range(n):
        if not present[c]:
            continue
        if slop == 0:
            first = runs[0, c]
            count = 0
            for j in range(starts[first], starts[first + 1]):
                anchor = np.int64(positions[j]) - places[0]
                everywhere = True
                for i in range(1, n_terms):
                    run = runs[i, c]
                    lo, hi = starts[run], starts[run + 1]
                    want = anchor + places[i]
                    while lo < hi:  # binary search in the run (positions ascend)
                        mid = (lo + hi) // 2
                        if np.int64(positions[mid]) < want:
                            lo = mid + 1
                        else:
                            hi = mid
                    if lo == starts[run + 1] or np.int64(positions[lo]) != want:
                        everywhere = False
                        break
                if everywhere:
                    count += 1
            frequency[c] = count
            continue
        for i in range(n_terms):  # smallest range covering one (position - place) of every term
            cursor[i] = starts[runs[i, c]]
        best = np.int64(1) << 40
        while True:
            low, high, lowest = np.int64(1) << 40, -(np.int64(1) << 40), 0
            for i in range(n_terms):
                value = np.int64(positions[cursor[i]]) - places[i]
                if value < low:
                    low, lowest = value, i
                high = max(high, value)
            best = min(best, high - low)
            cursor[lowest] += 1
            if cursor[lowest] == starts[runs[lowest, c] + 1]:
                break
        if best <= slop:
            frequency[c] = np.float32(1) / np.float32(1 + best)
    return frequency


class TreeSearcher:
    """Top k of the passages a query tree matches, by Lucene's BooleanQuery scoring with BM25: exact, the matching
    set restricted as the tree says (tested against brute force), scores equal to the kernels' for a plain query."""

    def __init__(self, bm25: BM25Searcher) -> None:
        self.bm25 = bm25
        self.reader = bm25.reader

    def search_passages(self, tree: Group, k: int, params: BM25Params | None = None,
                        masks: list | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        params = params or self.bm25.default_params
        tree = self._analyzed(tree)
        if tree is None or not _can_match(tree):
            raise QuerySyntaxError("the query has no term left to match (only excluded terms, or only stopwords); "
                                   "add one, e.g. 'cancer NOT mouse'")  # fmt: skip
        terms = sorted({term for leaf in _leaves(tree) for term in _terms(leaf)})
        entries = dict(zip(terms, self.bm25._entries(terms)))
        idfs = {term: np.float32(entry[0]) for term, entry in entries.items()}
        norms = self.bm25.norms(params)
        masks = masks if masks is not None else self.reader.live
        found_docs, found_scores = [], []
        for i, segment in enumerate(self.reader.segments):
            postings = {}
            for term in terms:
                located = entries[term][1][i]
                if located is not None:
                    docs, tfs = read_postings(segment.postings, located[0], located[1], located[2],
                                              segment.blocks.last_doc)  # fmt: skip
                    postings[term] = (docs, tfs, located[0])
            positive = [postings[term][0] for leaf in _leaves(tree, positive_only=True) for term in _terms(leaf)[:1]
                        if term in postings]  # a phrase's passages all hold its first term
            if not positive:
                continue
            candidates = np.unique(np.concatenate(positive))
            if masks[i] is not None:
                candidates = candidates[masks[i][candidates] != 0]
            if not len(candidates):
                continue
            leaf_scores = partial(_leaf_scores, candidates=candidates, postings=postings, idfs=idfs,
                                  inverse=norms.inverse[norms.per_segment[i][candidates]], segment=segment)
            matched, scores = _evaluate(tree, leaf_scores, len(candidates), 1.0)
            keep = np.flatnonzero(matched)
            if not len(keep):
                continue
            keys = self.reader.tie_keys[i][candidates[keep]]
            best, best_scores = top_k(np.arange(len(keep)), scores[keep], k, keys)
            found_docs.append(candidates[keep[best]] + self.reader.bases[i])
            found_scores.append(best_scores)
        return self.reader.merge_tops(found_docs, found_scores, k)

    def _analyzed(self, node: Node) -> Node | None:
        """Leaves run through the index's analyzer: a word of several tokens becomes a group of optional terms (as
        Lucene's parser makes it), a stopword disappears; refused: what this index cannot search yet."""
        if isinstance(node, Phrase):
            text = " ".join(node.words)
            if node.field is not None:
                raise QuerySyntaxError(f'field queries ({node.field}:"{text}") are not supported yet: the '
                                       "index searches title and text together; narrow by metadata with --filter")
            if any(segment.positions is None for segment in self.reader.segments):
                raise QuerySyntaxError(f'the phrase "{text}" needs positions: build the index with sift index '
                                       "--positions, or search the words without quotes")  # fmt: skip
            terms, places = self.bm25.analyzer.analyze(text), self.bm25.analyzer.positions(text)
            if len(terms) < 2:
                return Term(terms[0], boost=node.boost) if terms else None
            return _AnalyzedPhrase(tuple(terms), tuple(p - places[0] for p in places), node.slop, node.boost)
        if isinstance(node, Term):
            if node.field is not None:
                raise QuerySyntaxError(f"field queries ({node.field}:{node.text}) are not supported yet: the "
                                       "index searches title and text together; narrow by metadata with --filter")
            tokens = self.bm25.analyzer.analyze(node.text)
            if not tokens:
                return None
            if node.fuzzy is not None:  # each token by the index terms near it (Lucene sums them too, blended)
                near = [expand(self.reader.segments, token, node.fuzzy) or [token] for token in tokens]
                groups = [Group(tuple((SHOULD, Term(t)) for t in terms)) for terms in near]
                return groups[0] if len(groups) == 1 and node.boost == 1.0 else Group(
                    tuple((SHOULD, g) for g in groups), node.boost)
            if len(tokens) == 1:
                return Term(tokens[0], boost=node.boost)
            return Group(tuple((SHOULD, Term(t)) for t in tokens), node.boost)
        analyzed = [(occur, self._analyzed(child)) for occur, child in node.clauses]
        clauses = tuple((occur, child) for occur, child in analyzed if child is not None)
        return Group(clauses, node.boost) if clauses else None


@dataclass(frozen=True)
class _AnalyzedPhrase:
    """A phrase as index terms, each with its place in the phrase (removed words counted), and its slop."""

    terms: tuple[str, ...]
    places: tuple[int, ...]
    slop: int = 0
    boost: float = 1.0


def _leaf_scores(leaf: Term | _AnalyzedPhrase, boost: float, candidates: np.ndarray, postings: dict, idfs: dict,
                 inverse: np.ndarray, segment) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(matched, BM25) of one term or phrase per candidate, computed as the kernels compute it (float32, same
    operations). A phrase scores as Lucene's PhraseQuery: its frequency as tf, the sum of its terms' idf."""
    matched = np.zeros(len(candidates), dtype=bool)
    scores = np.zeros(len(candidates), dtype=np.float32)
    if isinstance(leaf, _AnalyzedPhrase):
        if not all(term in postings for term in leaf.terms):
            return matched, scores
        runs = np.empty((len(leaf.terms), len(candidates)), dtype=np.int64)
        present = np.ones(len(candidates), dtype=bool)
        for i, term in enumerate(leaf.terms):
            docs = postings[term][0]
            at = np.minimum(np.searchsorted(docs, candidates), len(docs) - 1)
            present &= docs[at] == candidates
            runs[i] = at + postings[term][2]  # the posting's number in the segment
        frequency = phrase_frequencies(segment.positions, np.asarray(segment.position_starts, dtype=np.int64),
                                       runs, np.array(leaf.places, dtype=np.int64), leaf.slop, present)  # fmt: skip
        matched = frequency > 0
        weight = np.float32(sum(np.float32(idfs[t]) for t in leaf.terms)) * np.float32(boost * leaf.boost)
        scores[matched] = weight - weight / (np.float32(1) + frequency[matched] * inverse[matched])
        return matched, scores
    if leaf.text in postings:
        docs, tfs, _ = postings[leaf.text]
        at = np.minimum(np.searchsorted(docs, candidates), len(docs) - 1)
        matched = docs[at] == candidates
        weight = idfs[leaf.text] * np.float32(boost * leaf.boost)
        tf = tfs[at[matched]].astype(np.float32)
        scores[matched] = weight - weight / (np.float32(1) + tf * inverse[matched])
    return matched, scores


def _terms(leaf: Term | _AnalyzedPhrase) -> tuple[str, ...]:
    return leaf.terms if isinstance(leaf, _AnalyzedPhrase) else (leaf.text,)


def _leaves(node: Node, positive_only: bool = False):
    if isinstance(node, Term | _AnalyzedPhrase):
        yield node
        return
    for occur, child in node.clauses:
        if not (positive_only and occur == MUST_NOT):
            yield from _leaves(child, positive_only)


def _can_match(node: Node) -> bool:
    """Whether some passage could match: a group needs a positive clause that can."""
    if isinstance(node, Term | _AnalyzedPhrase):
        return True
    return any(occur != MUST_NOT and _can_match(child) for occur, child in node.clauses)


def _evaluate(node: Node, leaf_scores, n: int, boost: float) -> tuple[np.ndarray, np.ndarray]:
    """(matched, score) per candidate: a group matches when every required clause does, no excluded one does, and
    (without required clauses) some optional one does; it scores the sum of its matching clauses, in order."""
    if isinstance(node, Term | _AnalyzedPhrase):
        return leaf_scores(node, boost)
    boost *= node.boost
    required = any(occur == MUST for occur, _ in node.clauses)
    matched = np.full(n, required)
    excluded = np.zeros(n, dtype=bool)
    score = np.zeros(n, dtype=np.float32)
    for occur, child in node.clauses:
        child_matched, child_score = _evaluate(child, leaf_scores, n, boost)
        if occur == MUST_NOT:
            excluded |= child_matched
            continue
        if occur == MUST:
            matched &= child_matched
        elif not required:
            matched |= child_matched
        score = np.where(child_matched, score + child_score, score)
    return matched & ~excluded, score


# --- snippets -------------------------------------------------------------------------------------------------------


def query_terms(query: str, analyzer: Analyzer, syntax: str = "plain") -> set[str]:
    """The index terms a query looks for (the excluded ones left out): what snippets mark."""
    if syntax == "plain":
        return set(analyzer.analyze(query))
    words = [leaf.text if isinstance(leaf, Term) else " ".join(leaf.words)
             for leaf in _written_leaves(parse_query(query))]  # fmt: skip
    return {term for text in words for term in analyzer.analyze(text)}


def _written_leaves(node: Node):
    """The terms and phrases of a parsed query outside exclusions."""
    if isinstance(node, Term | Phrase):
        yield node
        return
    for occur, child in node.clauses:
        if occur != MUST_NOT:
            yield from _written_leaves(child)


def snippet(text: str, terms: set[str], analyzer: Analyzer, length: int = 200, mark: tuple[str, str] = ("<mark>",
            "</mark>"), memo: dict | None = None) -> str:  # fmt: skip
    """The fragment of about `length` characters holding the most distinct query terms (then the most matches),
    their words marked. A word matches when the analyzer makes it one of the terms, so stemmed forms count; words
    are found by a prefix of each term first (stems change only their ending), then analyzed to be sure. memo:
    word -> its term or None, shared by the snippets of one query's hits."""
    memo = {} if memo is None else memo
    found = []
    if terms:
        prefixes = sorted({t[: max(2, len(t) - 1)] for t in terms}, key=len, reverse=True)
        alternatives = r"\b(?:" + "|".join(map(re.escape, prefixes)) + r")\w*"
        ascii_text = text.isascii()  # lower-casing ASCII keeps every offset: match without IGNORECASE (3x faster)
        pattern = re.compile(alternatives) if ascii_text else re.compile(alternatives, re.IGNORECASE)
        for match in pattern.finditer(text.lower() if ascii_text else text):
            word = text[match.start() : match.end()]
            if word not in memo:
                memo[word] = [(a, b, t[0]) for a, b in analyzer.token_spans(word)
                              if (t := analyzer.analyze(word[a:b])) and t[0] in terms]  # fmt: skip
            found += [(match.start() + a, match.start() + b, term) for a, b, term in memo[word]]
    if not found:
        return _cut(text, 0, length, [], mark)
    best, best_key, last = 0, (0, 0), -1
    counts: dict[str, int] = {}
    for first in range(len(found)):  # windows starting at each match: most distinct terms, then most matches
        while last + 1 < len(found) and found[last + 1][1] - found[first][0] <= length:
            last += 1
            counts[found[last][2]] = counts.get(found[last][2], 0) + 1
        if last < first:  # a single match longer than the fragment
            last = first
            counts[found[first][2]] = counts.get(found[first][2], 0) + 1
        key = (len(counts), last + 1 - first)
        if key > best_key:
            best, best_key = first, key
        term = found[first][2]
        counts[term] -= 1
        if not counts[term]:
            del counts[term]
    inside = [m for m in found[best:] if m[1] - found[best][0] <= length]
    span = inside[-1][1] - inside[0][0]
    start = max(0, inside[0][0] - (length - span) // 2)
    while start > 0 and not text[start - 1].isspace():  # begin on a word
        start -= 1
    return _cut(text, start, length, found, mark)  # every match the fragment holds is marked


def _cut(text: str, start: int, length: int, marked: list, mark: tuple[str, str]) -> str:
    end = min(len(text), start + length)
    while end < len(text) and not text[end].isspace():  # end on a word
        end += 1
    out, at = [], start
    for first, last, _ in marked:
        if first >= at and last <= end:
            out += [text[at:first], mark[0], text[first:last], mark[1]]
            at = last
    out.append(text[at:end])
    return ("…" if start > 0 else "") + "".join(out).strip() + ("…" if end < len(text) else "")
