"""Metadata fields and filters: typed values per document, stored per segment as memory-mapped columns, and filter
expressions (Meilisearch's syntax) evaluated into the passage mask the kernels take, the same mechanism as
deletions, so a filtered search is exactly the top k of the matching passages.

    year >= 2019 AND journal IN [Nature, Science]
    NOT tags = retracted OR (year 2000 TO 2010 AND price < 9.5) OR doi EXISTS

Types: keyword, keyword[] (several values; a condition holds if it holds for one of them), int, float, date
(ISO 8601, kept as seconds since 1970 UTC; compared with dates or numbers).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import SiftError

if TYPE_CHECKING:
    from engine.format import Folder, FolderWriter

FIELD_TYPES = ("keyword", "keyword[]", "int", "float", "date")
RESERVED = ("id", "part", "title", "text", "score", "rank", "doc_id")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


class FilterError(SiftError, ValueError):
    """A filter expression that cannot be read or does not fit the index's fields."""


def parse_field_spec(spec: str) -> tuple[str, str]:
    """'year:int' -> ('year', 'int')."""
    name, _, kind = spec.partition(":")
    name, kind = name.strip(), (kind.strip() or "keyword")
    if not _NAME.match(name) or name in RESERVED:
        raise ValueError(f"--field {spec}: {name!r} is not a usable field name (letters, digits, _ . -; not one of "
                         f"{', '.join(RESERVED)})")  # fmt: skip
    if kind not in FIELD_TYPES:
        raise ValueError(f"--field {spec}: unknown type {kind!r}; choose one of {', '.join(FIELD_TYPES)}")
    return name, kind


def parse_date(text: str) -> int:
    """Seconds since 1970-01-01 UTC of an ISO 8601 date or date-time (UTC when it names no zone)."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date (e.g. 2019-05-31 or 2019-05-31T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())


def coerce(kind: str, value):
    """A record's value as the field's type stores it; ValueError says what does not fit."""
    if kind == "keyword":
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"expected a string, got {json.dumps(value)}")
        return str(value)
    if kind == "keyword[]":
        values = value if isinstance(value, list) else [value]
        return [coerce("keyword", v) for v in values]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {json.dumps(value)}")
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{value} does not fit in 64 bits")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {json.dumps(value)}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 date string, got {json.dumps(value)}")
    return parse_date(value)


# --- columns ------------------------------------------------------------------------------------------------------


def _files(name: str) -> str:
    return f"field.{name}"


class ColumnsWriter:
    """One segment's field values, a document at a time."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.values: dict[str, list] = {name: [] for name in fields}

    def add(self, values: dict | None) -> None:
        for name in self.fields:
            self.values[name].append((values or {}).get(name))

    def write(self, out: FolderWriter) -> None:
        from engine.format import write_strings

        for name, kind in self.fields.items():
            column, prefix = self.values[name], _files(name)
            if kind in ("int", "float", "date"):
                dtype = np.float64 if kind == "float" else np.int64
                out.array(f"{prefix}.values.npy", np.array([v or 0 for v in column], dtype=dtype))
                out.array(f"{prefix}.present.npy", np.array([v is not None for v in column], dtype=np.uint8))
                continue
            lists = [([v] if isinstance(v, str) else v or []) for v in column]
            dictionary = sorted({v for values in lists for v in values}, key=lambda v: v.encode("utf-8"))
            code = {v: i for i, v in enumerate(dictionary)}
            offsets = np.zeros(len(lists) + 1, dtype=np.int64)
            np.cumsum([len(values) for values in lists], out=offsets[1:])
            out.array(f"{prefix}.offsets.npy", offsets)
            out.array(f"{prefix}.codes.npy", np.array([code[v] for vs in lists for v in vs], dtype=np.int64))
            write_strings(out, f"{prefix}.dict", dictionary)


class Columns:
    """A segment's field values, memory-mapped: per document, and as masks for filters."""

    def __init__(self, files: Folder, fields: dict[str, str]) -> None:
        from engine.format import StringTable

        self.fields = fields
        self.numeric: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.keywords: dict[str, tuple[np.ndarray, np.ndarray, StringTable]] = {}
        for name, kind in fields.items():
            prefix = _files(name)
            if kind in ("int", "float", "date"):
                self.numeric[name] = (files.array(f"{prefix}.values.npy"), files.array(f"{prefix}.present.npy"))
            else:
                self.keywords[name] = (files.array(f"{prefix}.offsets.npy"), files.array(f"{prefix}.codes.npy"),
                                       StringTable(files, f"{prefix}.dict"))  # fmt: skip

    def values(self, doc: int) -> dict:
        """A document's fields as they were given (dates as ISO 8601 strings); absent ones left out."""
        found = {}
        for name, kind in self.fields.items():
            if name in self.numeric:
                values, present = self.numeric[name]
                if present[doc]:
                    value = values[doc].item()
                    found[name] = (datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat()
                                   .replace("+00:00", "Z") if kind == "date" else value)  # fmt: skip
            else:
                offsets, codes, dictionary = self.keywords[name]
                listed = dictionary.take(codes[offsets[doc] : offsets[doc + 1]])
                if listed and kind == "keyword":
                    found[name] = listed[0]
                elif listed:
                    found[name] = listed
        return found

    def raw(self, doc: int) -> dict:
        """A document's values as coerce() made them (what a rewrite stores again)."""
        found = {}
        for name, kind in self.fields.items():
            if name in self.numeric:
                values, present = self.numeric[name]
                if present[doc]:
                    found[name] = values[doc].item()
            else:
                offsets, codes, dictionary = self.keywords[name]
                listed = dictionary.take(codes[offsets[doc] : offsets[doc + 1]])
                if listed:
                    found[name] = listed[0] if kind == "keyword" else listed
        return found

    def matches(self, condition: Condition, documents: int) -> np.ndarray:
        """bool per document of the segment. `!=` holds where `=` does not (documents without the field too)."""
        if condition.op == "!=":
            return ~self.matches(Condition(condition.field, "=", condition.values), documents)
        kind = self.fields[condition.field]
        if condition.field in self.numeric:
            values, present = self.numeric[condition.field]
            present = present.astype(bool)
            if condition.op == "EXISTS":
                return present
            literals = [_number(kind, condition.field, v) for v in condition.values]
            return present & _compare(np.asarray(values), condition.op, literals)
        offsets, codes, dictionary = self.keywords[condition.field]
        owner = np.repeat(np.arange(documents), np.diff(offsets))
        if condition.op == "EXISTS":
            return np.diff(offsets) > 0
        if condition.op in ("=", "IN"):
            wanted = dictionary_codes(dictionary, condition.values)
            hit = np.isin(codes, wanted)
        else:  # order comparisons and ranges on keywords: by UTF-8 bytes, as the dictionary is sorted
            position = [_keyword_rank(dictionary, v, condition.op) for v in condition.values]
            hit = _compare(np.asarray(codes, dtype=np.float64), condition.op, position)
        found = np.zeros(documents, dtype=bool)
        found[owner[hit]] = True
        return found


def dictionary_codes(dictionary, values: Sequence[str]) -> np.ndarray:
    codes = dictionary.find_many([str(v) for v in values]) if len(dictionary) else np.zeros(0, dtype=np.int64)
    return np.asarray(codes)[np.asarray(codes) >= 0]


def _keyword_rank(dictionary, value, op: str) -> float:
    """Where a keyword literal falls among the sorted dictionary codes (x.5 between two), for order comparisons."""
    key = str(value).encode("utf-8")
    low, high = 0, len(dictionary)
    while low < high:
        middle = (low + high) // 2
        if dictionary[middle].encode("utf-8") < key:
            low = middle + 1
        else:
            high = middle
    exact = low < len(dictionary) and dictionary[low].encode("utf-8") == key
    return float(low) if exact else low - 0.5


def _number(kind: str, field: str, literal) -> float:
    if kind == "date" and isinstance(literal, str):
        try:
            return float(parse_date(literal))
        except ValueError as e:
            raise FilterError(f"filter on {field} (a date): {e}") from None
    try:
        return float(literal)
    except (TypeError, ValueError):
        raise FilterError(f"filter on {field} ({kind}): {literal!r} is not a number") from None


def _compare(values: np.ndarray, op: str, literals: list[float]) -> np.ndarray:
    if op == "TO":
        return (values >= literals[0]) & (values <= literals[1])
    if op == "IN":
        return np.isin(values, literals)
    literal = literals[0]
    return {"=": values == literal, "<": values < literal, "<=": values <= literal, ">": values > literal,
            ">=": values >= literal}[op]  # fmt: skip


def merge_columns(out: FolderWriter, fields: dict[str, str], parts: Sequence[tuple[Columns, np.ndarray]]) -> None:
    """One segment's columns from several (columns, documents kept) in order: what a merge of their segments
    writes."""
    writer = ColumnsWriter(fields)
    for columns, documents in parts:
        for doc in documents.tolist():
            writer.add(columns.raw(doc))
    writer.write(out)


# --- filter expressions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # = != < <= > >= TO IN EXISTS
    values: tuple = ()


@dataclass(frozen=True)
class Not:
    inner: object


@dataclass(frozen=True)
class Both:
    parts: tuple


@dataclass(frozen=True)
class Either:
    parts: tuple


_TOKEN = re.compile(r"""\s*(?:(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
                        |(?P<op>!=|<=|>=|=|<|>)|(?P<punct>[()\[\],])|(?P<word>[^\s()\[\],=<>!"']+))""", re.X)
_KEYWORDS = ("AND", "OR", "NOT", "TO", "IN", "EXISTS")


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise FilterError(f"filter {text!r}: cannot read {text[position:].strip()[:20]!r} at position {position}")
        kind = match.lastgroup
        value = match.group(kind)
        at = match.start(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        elif kind == "word" and value.upper() in _KEYWORDS:
            kind, value = "keyword", value.upper()
        tokens.append((kind, value, at))
        position = match.end()
    return tokens


def parse_filter(text: str):
    """A filter expression's tree; FilterError names the position of what cannot be read."""
    tokens = _tokens(text)
    position = 0

    def peek(offset: int = 0):
        return tokens[position + offset] if position + offset < len(tokens) else ("end", "", len(text))

    def fail(message: str):
        kind, value, at = peek()
        found = "the end" if kind == "end" else repr(value)
        raise FilterError(f"filter {text!r}: {message} at position {at}, found {found}")

    def take(kind: str, value: str | None = None):
        nonlocal position
        token = peek()
        if token[0] != kind or (value is not None and token[1] != value):
            fail(f"expected {value or kind}")
        position += 1
        return token

    def literal():
        kind, value, _ = peek()
        if kind not in ("word", "string"):
            fail("expected a value")
        take(kind)
        if kind == "word":
            try:
                return int(value)
            except ValueError:
                try:
                    return float(value)
                except ValueError:
                    return value
        return value

    def either():
        parts = [both()]
        while peek()[:2] == ("keyword", "OR"):
            take("keyword", "OR")
            parts.append(both())
        return parts[0] if len(parts) == 1 else Either(tuple(parts))

    def both():
        parts = [negation()]
        while peek()[:2] == ("keyword", "AND"):
            take("keyword", "AND")
            parts.append(negation())
        return parts[0] if len(parts) == 1 else Both(tuple(parts))

    def negation():
        if peek()[:2] == ("keyword", "NOT"):
            take("keyword", "NOT")
            return Not(negation())
        if peek()[:2] == ("punct", "("):
            take("punct", "(")
            inner = either()
            take("punct", ")")
            return inner
        return condition()

    def condition():
        kind, name, _ = peek()
        if kind not in ("word", "string"):
            fail("expected a field name")
        take(kind)
        kind, value, _ = peek()
        if kind == "op":
            take("op")
            return Condition(name, value, (literal(),))
        if (kind, value) == ("keyword", "NOT"):
            take("keyword")
            return Not(membership(name))
        if kind == "keyword" and value in ("EXISTS", "IN"):
            return membership(name)
        low = literal()
        take("keyword", "TO")
        return Condition(name, "TO", (low, literal()))

    def membership(name: str):
        kind, value, _ = peek()
        if (kind, value) == ("keyword", "EXISTS"):
            take("keyword")
            return Condition(name, "EXISTS")
        take("keyword", "IN")
        take("punct", "[")
        values = [literal()]
        while peek()[:2] == ("punct", ","):
            take("punct", ",")
            values.append(literal())
        take("punct", "]")
        return Condition(name, "IN", tuple(values))

    if not tokens:
        raise FilterError("filter is empty")
    tree = either()
    if position != len(tokens):
        fail("expected AND, OR or the end")
    return tree


def document_mask(tree, columns: Columns | None, fields: dict[str, str], documents: int) -> np.ndarray:
    """bool per document of one segment: where the filter holds."""
    if isinstance(tree, Condition):
        if tree.field not in fields:
            known = ", ".join(fields) or "none: declare them with sift index --field NAME:TYPE"
            raise FilterError(f"filter on unknown field {tree.field!r}; the index's fields: {known}")
        return columns.matches(tree, documents)
    if isinstance(tree, Not):
        return ~document_mask(tree.inner, columns, fields, documents)
    masks = [document_mask(part, columns, fields, documents) for part in tree.parts]
    return np.logical_and.reduce(masks) if isinstance(tree, Both) else np.logical_or.reduce(masks)
