"""The query syntax (`syntax="lucene"`): Lucene's classic parser's language, read into a tree, and BM25 over it.

Plain text stays the default (every character is text). In the syntax: terms, `+required`, `-excluded`, `AND`,
`OR`, `NOT`, parentheses, `term^2.5` boosts, `"phrases"`, `"phrase"~N`, `term~N` and `title:` / `text:` fields.
Phrases and fields need an index built with positions, fuzzy terms expand to the index terms within N edits
(engine/typos.py). A word without field: searches title and text together (the `contents`, as Lucene's parity
index holds them), or the fields named by `fields=` with their boosts. Clauses combine as
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
from engine.sparse import (
    BLOCK,
    BM25Params,
    BM25Searcher,
    _load_block,
    idf,
    lucene_norm_bytes,
    norm_inverse_table,
    top_k,
)
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
        _load_block(postings, block_last_doc, first_block, block, at, n, block_docs, block_tfs)
        docs[at - start : at - start + n] = block_docs[:n]
        tfs[at - start : at - start + n] = block_tfs[:n]
        block += 1
    return docs, tfs


@numba.njit(nogil=True, cache=True)
def phrase_frequencies(positions, starts, runs, places, slop, present, low, high):
    """Per candidate passage (runs[i, c]: the posting of phrase term i there; present[c]: all terms occur), the
    phrase's frequency among the positions in [low[c], high[c]) (a field's extent): with slop 0, how often its
    terms stand at their places; with slop > 0, 1 / (1 + s) where s, the smallest spread of (position - place) over
    one position of each term, is at most slop (0: no match). places ascend from 0."""
    n_terms, n = runs.shape
    frequency = np.zeros(n, dtype=np.float32)
    cursor = np.empty(n_terms, dtype=np.int64)
    last = places[n_terms - 1]
    for c in range(n):
        if not present[c]:
            continue
        if slop == 0:
            first = runs[0, c]
            count = 0
            for j in range(starts[first], starts[first + 1]):
                anchor = np.int64(positions[j]) - places[0]
                if anchor < low[c]:
                    continue
                if anchor + last >= high[c]:
                    break
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
        inside = True
        for i in range(n_terms):  # smallest range covering one (position - place) of every term, within the extent
            cursor[i] = starts[runs[i, c]]
            end = starts[runs[i, c] + 1]
            while cursor[i] < end and np.int64(positions[cursor[i]]) < low[c]:
                cursor[i] += 1
            if cursor[i] == end or np.int64(positions[cursor[i]]) >= high[c]:
                inside = False
        if not inside:
            continue
        best = np.int64(1) << 40
        while True:
            low_value, high_value, lowest = np.int64(1) << 40, -(np.int64(1) << 40), 0
            for i in range(n_terms):
                value = np.int64(positions[cursor[i]]) - places[i]
                if value < low_value:
                    low_value, lowest = value, i
                high_value = max(high_value, value)
            best = min(best, high_value - low_value)
            cursor[lowest] += 1
            if cursor[lowest] == starts[runs[lowest, c] + 1] or np.int64(positions[cursor[lowest]]) >= high[c]:
                break
        if best <= slop:
            frequency[c] = np.float32(1) / np.float32(1 + best)
    return frequency


@numba.njit(nogil=True, cache=True)
def field_frequencies(positions, starts, first, docs, title_ends, in_title):
    """Per posting of one term (docs: its passages; first: the number of its first posting), how many of its
    positions fall in the passage's title (in_title) or in its text (the positions from title_ends[passage] on)."""
    counts = np.zeros(len(docs), dtype=np.int64)
    for i in range(len(docs)):
        end = np.int64(title_ends[docs[i]])
        for j in range(starts[first + i], starts[first + i + 1]):
            if (np.int64(positions[j]) < end) == in_title:
                counts[i] += 1
    return counts


def field_frequencies_reference(positions, starts, first, docs, title_ends, in_title):
    """field_frequencies in numpy: the reference it is tested against."""
    runs = np.diff(np.asarray(starts[first : first + len(docs) + 1], dtype=np.int64))
    owner = np.repeat(np.arange(len(docs)), runs)
    found = np.asarray(positions[starts[first] : starts[first + len(docs)]], dtype=np.int64)
    inside = (found < np.asarray(title_ends, dtype=np.int64)[np.asarray(docs)][owner]) == in_title
    return np.bincount(owner, weights=inside, minlength=len(docs)).astype(np.int64)


FIELDS = ("contents", "title", "text")  # contents: title and text together, what a word without field: searches
_BEYOND = np.int64(1) << 62  # an extent's end past any position


def parse_fields(spec: str) -> dict[str, float]:
    """'title^2,text' -> {'title': 2.0, 'text': 1.0}: the fields a word without field: searches, each boosted."""
    fields = {}
    for part in spec.split(","):
        name, _, boost = part.strip().partition("^")
        if name not in FIELDS:
            raise QuerySyntaxError(f"fields {spec!r}: unknown field {name!r}; choose among {', '.join(FIELDS)}")
        try:
            fields[name] = float(boost) if boost else 1.0
        except ValueError:
            raise QuerySyntaxError(f"fields {spec!r}: {boost!r} is not a boost (a number such as 2 or 0.5)") from None
        if not 0 < fields[name] < float("inf"):
            raise QuerySyntaxError(f"fields {spec!r}: a boost must be above 0, got {boost}")
    return fields


class TreeSearcher:
    """Top k of the passages a query tree matches, by Lucene's BooleanQuery scoring with BM25: exact, the matching
    set restricted as the tree says (tested against brute force), scores equal to the kernels' for a plain query.
    title: and text: are fields of their own, each with its own BM25 statistics (docCount, average length, df and
    length norms), as Lucene scores a field; they are told apart by position, so they need a positional index."""

    def __init__(self, bm25: BM25Searcher) -> None:
        self.bm25 = bm25
        self.reader = bm25.reader
        self._field_norms: dict[tuple, tuple[list[np.ndarray], np.ndarray, int]] = {}

    def search_passages(self, tree: Group, k: int, params: BM25Params | None = None, masks: list | None = None,
                        fields: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """fields: where words without field: are searched, with boosts (default: contents, title and text
        together); e.g. {"title": 2.0, "text": 1.0} scores each word as title:word^2 text:word (Lucene's
        MultiFieldQueryParser)."""
        params = params or self.bm25.default_params
        defaults = {None if name == "contents" else name: boost for name, boost in (fields or {}).items()}
        tree = self._analyzed(tree, defaults if defaults != {None: 1.0} else {})
        if tree is None or not _can_match(tree):
            raise QuerySyntaxError("the query has no term left to match (only excluded terms, or only stopwords); "
                                   "add one, e.g. 'cancer NOT mouse'")  # fmt: skip
        keys = list(dict.fromkeys((leaf.field, term) for leaf in _leaves(tree) for term in _terms(leaf)))
        terms = list(dict.fromkeys(term for _, term in keys))
        entries = dict(zip(terms, self.bm25._entries(terms)))
        idfs = {(None, term): np.float32(entry[0]) for term, entry in entries.items()}
        postings = []  # per segment: (field, term) -> (passages, tfs, number of the first posting)
        for i, segment in enumerate(self.reader.segments):
            found = {}
            for term in terms:
                term_id = entries[term][1][i]
                if term_id >= 0:
                    start, end = int(segment.offsets[term_id]), int(segment.offsets[term_id + 1])
                    docs, tfs = read_postings(segment.postings, start, end, int(segment.blocks.offsets[term_id]),
                                              segment.blocks.last_doc)  # fmt: skip
                    found[None, term] = (docs, tfs, start)
            postings.append(found)
        self._add_field_postings(keys, postings, idfs, params)
        masks = masks if masks is not None else self.reader.live
        in_tree = {leaf.field for leaf in _leaves(tree)}
        found_docs, found_scores = [], []
        for i, segment in enumerate(self.reader.segments):
            positive = [postings[i][key][0] for leaf in _leaves(tree, positive_only=True)
                        if (key := _first_key(leaf)) in postings[i]]  # a phrase's passages all hold its first term
            if not positive:
                continue
            candidates = np.unique(np.concatenate(positive))
            if masks[i] is not None:
                candidates = candidates[masks[i][candidates] != 0]
            if not len(candidates):
                continue
            inverse = {}
            for field in in_tree:
                indexes, table = self.bm25.norms(params)[:2] if field is None else self._norms(field, params)[:2]
                inverse[field] = table[indexes[i][candidates]]
            leaf_scores = partial(_leaf_scores, candidates=candidates, postings=postings[i], idfs=idfs,
                                  inverse=inverse, segment=segment)  # fmt: skip
            matched, scores = _evaluate(tree, leaf_scores, len(candidates), 1.0)
            keep = np.flatnonzero(matched)
            if not len(keep):
                continue
            keys_of = self.reader.tie_keys[i][candidates[keep]]
            best, best_scores = top_k(np.arange(len(keep)), scores[keep], k, keys_of)
            found_docs.append(candidates[keep[best]] + self.reader.bases[i])
            found_scores.append(best_scores)
        return self.reader.merge_tops(found_docs, found_scores, k)

    def _add_field_postings(self, keys: list, postings: list[dict], idfs: dict, params: BM25Params) -> None:
        """Each field term's postings within its field (a passage holds it there at least once) and its idf from the
        field's own df and docCount over live passages."""
        for field, term in keys:
            if field is None:
                continue
            df = 0
            for segment, found, live in zip(self.reader.segments, postings, self.reader.live):
                if (None, term) not in found:
                    continue
                docs, _, first = found[None, term]
                tfs = field_frequencies(segment.positions, np.asarray(segment.position_starts, dtype=np.int64),
                                        first, docs, segment.title_ends, field == "title")  # fmt: skip
                holds = np.flatnonzero(tfs)
                if len(holds):
                    found[field, term] = (docs[holds], tfs[holds], -1)
                    df += int(np.count_nonzero(live[docs[holds]])) if live is not None else len(holds)
            idfs[field, term] = np.float32(idf(np.array([df]), self._norms(field, params)[2])[0])

    def _norms(self, field: str, params: BM25Params) -> tuple[list[np.ndarray], np.ndarray, int]:
        """A field's length norms as BM25Searcher.norms gives them for the contents (norm index per passage, table),
        and its docCount: live passages with a term in the field. Cached per field and parameters."""
        key = (field, params.k1, params.b, params.length_norm)
        if key not in self._field_norms:
            lengths = [_field_lengths(segment, field) for segment in self.reader.segments]
            live = [lens if mask is None else lens[mask != 0] for lens, mask in zip(lengths, self.reader.live)]
            count = sum(int(np.count_nonzero(lens)) for lens in live)
            avgdl = float(np.float32(sum(int(lens.sum()) for lens in live) / max(count, 1)))
            if params.length_norm == "lucene":
                indexes, top = [lucene_norm_bytes(lens) for lens in lengths], 255
            else:
                indexes, top = lengths, max((int(lens.max()) for lens in lengths if len(lens)), default=0)
            self._field_norms[key] = (indexes, norm_inverse_table(params, avgdl, top), count)
        return self._field_norms[key]

    def _analyzed(self, node: Node, defaults: dict) -> Node | None:
        """Leaves run through the index's analyzer: a word of several tokens becomes a group of optional terms (as
        Lucene's parser makes it), a stopword disappears; a leaf without field: searches the default fields, each
        boosted (defaults: field -> boost; empty: contents); refused: what this index cannot search."""
        if isinstance(node, Term | Phrase):
            if node.field is None and defaults:
                leaves = [self._leaf(_with_boost(node, node.boost * boost), field) for field, boost in
                          defaults.items()]  # fmt: skip
                clauses = tuple((SHOULD, leaf) for leaf in leaves if leaf is not None)
                return Group(clauses) if clauses else None
            return self._leaf(node, None if node.field == "contents" else node.field)
        analyzed = [(occur, self._analyzed(child, defaults)) for occur, child in node.clauses]
        clauses = tuple((occur, child) for occur, child in analyzed if child is not None)
        return Group(clauses, node.boost) if clauses else None

    def _leaf(self, node: Term | Phrase, field: str | None) -> Node | None:
        written = to_text(node, top=False)
        if field is not None:
            self._check_field(field, written)
        if isinstance(node, Phrase):
            text = " ".join(node.words)
            if any(segment.positions is None for segment in self.reader.segments):
                raise QuerySyntaxError(f'the phrase "{text}" needs positions: build the index with sift index '
                                       "--positions, or search the words without quotes")  # fmt: skip
            terms, places = self.bm25.analyzer.analyze(text), self.bm25.analyzer.positions(text)
            if len(terms) < 2:
                return Term(terms[0], field, node.boost) if terms else None
            return _AnalyzedPhrase(tuple(terms), tuple(p - places[0] for p in places), node.slop, node.boost, field)
        tokens = self.bm25.analyzer.analyze(node.text)
        if not tokens:
            return None
        if node.fuzzy is not None:  # each token by the index terms near it (Lucene sums them too, blended)
            near = [expand(self.reader.segments, token, node.fuzzy) or [token] for token in tokens]
            groups = [Group(tuple((SHOULD, Term(t, field)) for t in terms)) for terms in near]
            return groups[0] if len(groups) == 1 and node.boost == 1.0 else Group(
                tuple((SHOULD, g) for g in groups), node.boost)
        if len(tokens) == 1:
            return Term(tokens[0], field, node.boost)
        return Group(tuple((SHOULD, Term(t, field)) for t in tokens), node.boost)

    def _check_field(self, field: str, written: str) -> None:
        if field not in FIELDS:
            hint = (f"; {field} is a metadata field: narrow by it with a filter, e.g. --filter '{field} = ...'"
                    if field in self.reader.fields else "")  # fmt: skip
            raise QuerySyntaxError(f"{written}: unknown field {field!r}; searchable fields are "
                                   f"{', '.join(FIELDS)}{hint}")  # fmt: skip
        if any(segment.title_ends is None for segment in self.reader.segments):
            raise QuerySyntaxError(f"{written}: searching the title or text alone needs positions (that is how "
                                   "they are told apart): build the index with sift index --positions")  # fmt: skip


def _field_lengths(segment, field: str) -> np.ndarray:
    title = np.asarray(segment.title_lengths, dtype=np.int64)
    return title if field == "title" else np.asarray(segment.lengths, dtype=np.int64) - title


def _field_extent(segment, candidates: np.ndarray, field: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate, the positions [low, high) its field takes."""
    if field is None:
        return np.zeros(len(candidates), np.int64), np.full(len(candidates), _BEYOND)
    ends = np.asarray(segment.title_ends, dtype=np.int64)[candidates]
    if field == "title":
        return np.zeros(len(candidates), np.int64), ends
    return ends, np.full(len(candidates), _BEYOND)


@dataclass(frozen=True)
class _AnalyzedPhrase:
    """A phrase as index terms, each with its place in the phrase (removed words counted), and its slop."""

    terms: tuple[str, ...]
    places: tuple[int, ...]
    slop: int = 0
    boost: float = 1.0
    field: str | None = None


def _first_key(leaf) -> tuple:
    """The postings a leaf's matches all appear in: a phrase's first term's in the contents, a term's in its field."""
    if isinstance(leaf, _AnalyzedPhrase):
        return None, leaf.terms[0]
    return leaf.field, leaf.text


def _leaf_scores(leaf: Term | _AnalyzedPhrase, boost: float, candidates: np.ndarray, postings: dict, idfs: dict,
                 inverse: dict, segment) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(matched, BM25) of one term or phrase per candidate, computed as the kernels compute it (float32, same
    operations), in the leaf's field. A phrase scores as Lucene's PhraseQuery: its frequency as tf, the sum of its
    terms' idf."""
    matched = np.zeros(len(candidates), dtype=bool)
    scores = np.zeros(len(candidates), dtype=np.float32)
    norm = inverse[leaf.field]
    if isinstance(leaf, _AnalyzedPhrase):
        if not all((None, term) in postings for term in leaf.terms):
            return matched, scores
        runs = np.empty((len(leaf.terms), len(candidates)), dtype=np.int64)
        present = np.ones(len(candidates), dtype=bool)
        for i, term in enumerate(leaf.terms):
            docs, _, first = postings[None, term]
            at = np.minimum(np.searchsorted(docs, candidates), len(docs) - 1)
            present &= docs[at] == candidates
            runs[i] = at + first  # the posting's number in the segment
        low, high = _field_extent(segment, candidates, leaf.field)
        frequency = phrase_frequencies(segment.positions, np.asarray(segment.position_starts, dtype=np.int64),
                                       runs, np.array(leaf.places, dtype=np.int64), leaf.slop, present, low,
                                       high)  # fmt: skip
        matched = frequency > 0
        weight = np.float32(sum(np.float32(idfs[leaf.field, t]) for t in leaf.terms)) * np.float32(
            boost * leaf.boost)
        scores[matched] = weight - weight / (np.float32(1) + frequency[matched] * norm[matched])
        return matched, scores
    key = (leaf.field, leaf.text)
    if key in postings:
        docs, tfs, _ = postings[key]
        at = np.minimum(np.searchsorted(docs, candidates), len(docs) - 1)
        matched = docs[at] == candidates
        weight = idfs[key] * np.float32(boost * leaf.boost)
        tf = tfs[at[matched]].astype(np.float32)
        scores[matched] = weight - weight / (np.float32(1) + tf * norm[matched])
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
