"""Streaming corpus readers (BEIR, JSONL, TSV, TREC), passage splitting, and bad-input reporting.

Readers yield one Document at a time and never hold the corpus in memory. A bad record raises CorpusError naming
file, line and problem, or, when skipping is on, is counted in a SkipReport instead.
"""

from __future__ import annotations

import gzip
import html
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from engine.analysis import Analyzer
from engine.errors import SiftError
from engine.fields import coerce
from engine.reader import indexed_text

FORMATS = ("beir", "jsonl", "tsv", "trec")
DEFAULT_ID_FIELDS = ("_id", "id", "docid", "doc_id", "docno")
DEFAULT_TEXT_FIELDS = ("title", "text")


class CorpusError(SiftError, ValueError):
    """A corpus record that cannot be indexed."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass
class Document:
    id: str
    text: str
    title: str = ""
    source: str = ""  # file:line, for error messages further down the line
    fields: dict = field(default_factory=dict)  # metadata values, as engine.fields.coerce made them


@dataclass
class Passage:
    doc_id: str
    part: int
    title: str
    text: str
    fields: dict = field(default_factory=dict)  # the document's, on each of its passages

    @property
    def key(self) -> str:
        """Names the passage across runs (pruning and its score cache)."""
        return f"{self.doc_id}#{self.part}"

    @property
    def indexed_text(self) -> str:
        return indexed_text(self.title, self.text)


@dataclass
class SkipReport:
    """What --skip-bad skipped, by problem, with the first few places for the summary."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, error: CorpusError) -> None:
        self.counts[error.problem.split(":")[0]] += 1
        if len(self.examples) < 5:
            self.examples.append(str(error))

    def merge(self, other: SkipReport) -> None:
        """Adds another reader's report (the tasks of a sharded build each keep their own)."""
        self.counts.update(other.counts)
        self.examples.extend(other.examples[: max(0, 5 - len(self.examples))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"skipped": self.total, "by_problem": dict(self.counts), "examples": self.examples}


@dataclass
class CorpusSource:
    """Where a corpus is and how to read it."""

    path: Path
    format: str
    id_field: str | None = None  # JSONL: None tries _id, id, docid, doc_id, docno
    text_fields: tuple[str, ...] = DEFAULT_TEXT_FIELDS  # JSONL: joined with a space; "title" is kept apart
    fields: dict = field(default_factory=dict)  # metadata fields read from JSONL records: name -> type

    @property
    def files(self) -> list[Path]:
        if self.format != "beir":
            return [self.path]
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (self.path / name).exists():
                return [self.path / name]
        raise CorpusError(self.path, None, "BEIR folder without corpus.jsonl or corpus.jsonl.gz")

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "beir"
    if not path.exists():
        raise CorpusError(path, None, "no such file or folder")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".tsv", ".txt")) and not name.endswith(".trec.txt"):
        return "tsv"
    if name.endswith((".trec", ".sgml", ".xml", ".trec.txt")):
        return "trec"
    raise CorpusError(path, None, f"cannot tell the format from the name; pass --format ({'|'.join(FORMATS)})")


def open_source(path: str | Path, fmt: str | None = None, **options) -> CorpusSource:
    path = Path(path)
    if not path.exists():
        raise CorpusError(path, None, "no such file or folder")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise CorpusError(path, None, f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "beir" and not path.is_dir():
        raise CorpusError(path, None, "format beir expects a folder holding corpus.jsonl[.gz]")
    return CorpusSource(path, fmt, **options)


class _ByteCounter:
    """Counts bytes read from the file on disk (compressed bytes for .gz), for an honest progress bar."""

    def __init__(self) -> None:
        self.bytes = 0


@dataclass(frozen=True)
class Span:
    """A part of a line-based file that one task reads: the lines starting in [start, end), the first of which is
    line number first_line of the file."""

    path: Path
    start: int
    end: int
    first_line: int = 1


def splittable(source: CorpusSource) -> bool:
    """Whether the corpus can be read in spans: uncompressed JSONL or TSV (TREC documents span lines, gzip streams
    cannot be entered midway)."""
    return source.format in ("beir", "jsonl", "tsv") and not any(f.name.endswith(".gz") for f in source.files)


def corpus_spans(source: CorpusSource, pieces: int) -> list[Span]:
    """About `pieces` spans of similar size, cut at line ends (found by seeking, not by reading the corpus), with
    their first line numbers counted (count_lines, one span at a time, possibly in parallel) by line_numbered."""
    spans = []
    for path in source.files:
        size = path.stat().st_size
        cuts = [0]
        with open(path, "rb") as f:
            for i in range(1, pieces):
                f.seek(max(size * i // pieces - 1, cuts[-1]))
                f.readline()  # to the end of the line the cut falls in
                cuts.append(max(min(f.tell(), size), cuts[-1]))
        cuts.append(size)
        spans += [Span(path, a, b) for a, b in pairwise(cuts) if b > a]
    return spans


def count_lines(span: Span) -> int:
    """Lines starting in the span."""
    lines, last = 0, b"\n"
    with open(span.path, "rb") as f:
        f.seek(span.start)
        left = span.end - span.start
        while left > 0:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            left -= len(chunk)
            last = chunk[-1:]
    return lines + (last != b"\n")  # a last line without its newline


def line_numbered(spans: list[Span], counts: list[int]) -> list[Span]:
    """The spans with their first line numbers, from each span's line count (count_lines)."""
    numbered, line, path = [], 1, None
    for span, count in zip(spans, counts):
        line = 1 if span.path != path else line
        numbered.append(Span(span.path, span.start, span.end, line))
        line, path = line + count, span.path
    return numbered


def _binary_lines(path: Path, counter: _ByteCounter, span: Span | None = None) -> Iterator[tuple[int, bytes]]:
    raw = open(path, "rb")
    try:
        if span is None:
            stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
            for number, line in enumerate(stream, 1):
                counter.bytes = raw.tell()
                yield number, line
            return
        raw.seek(span.start)
        position = span.start
        for number, line in enumerate(raw, span.first_line):
            if position >= span.end:
                break
            position += len(line)
            counter.bytes = position - span.start
            yield number, line
    except (OSError, EOFError) as e:
        raise CorpusError(path, None, f"unreadable file ({e})") from None
    finally:
        raw.close()


def _decode(path: Path, number: int, line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(path, number, f"invalid UTF-8: byte {line[e.start]:#04x} at column {e.start + 1}") from None


def _read_jsonl(source: CorpusSource, path: Path, counter: _ByteCounter,
                span: Span | None = None) -> Iterator[Document | CorpusError]:  # fmt: skip
    for number, raw in _binary_lines(path, counter, span):
        try:
            line = _decode(path, number, raw).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(path, number, f"malformed JSON: {e.msg} at column {e.colno}") from None
            yield record_document(record, source, path, number)
        except CorpusError as error:
            yield error


def record_document(record, source: CorpusSource, path: Path | str, number: int) -> Document:
    """A JSON record as the document it describes (id, text fields, title, metadata fields by source's settings);
    CorpusError names path:number and what is wrong. Files and requests to the service read records alike."""
    if not isinstance(record, dict):
        raise CorpusError(path, number, "malformed record: expected a JSON object")
    text_fields = [f for f in source.text_fields if f != "title"]
    id_fields = [source.id_field] if source.id_field else DEFAULT_ID_FIELDS
    doc_id = next((record[f] for f in id_fields if record.get(f) not in (None, "")), None)
    if doc_id is None:
        raise CorpusError(path, number, f"missing id: none of the fields {', '.join(id_fields)}")
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool):
        raise CorpusError(path, number, "malformed record: the id is not a string or a number")
    parts = [record.get(f) for f in text_fields]
    bad = [f for f, v in zip(text_fields, parts) if v is not None and not isinstance(v, str)]
    if bad:
        raise CorpusError(path, number, f"malformed record: field {bad[0]!r} is not a string")
    title = record.get("title") if "title" in source.text_fields else ""
    if title is not None and not isinstance(title, str):
        raise CorpusError(path, number, "malformed record: field 'title' is not a string")
    values = {}
    for name, kind in source.fields.items():
        if record.get(name) is not None:
            try:
                values[name] = coerce(kind, record[name])
            except ValueError as e:
                raise CorpusError(path, number, f"field {name!r} ({kind}): {e}") from None
    return Document(str(doc_id), " ".join(p for p in parts if p), title or "", f"{path}:{number}", values)


def _read_tsv(source: CorpusSource, path: Path, counter: _ByteCounter,
              span: Span | None = None) -> Iterator[Document | CorpusError]:  # fmt: skip
    for number, raw in _binary_lines(path, counter, span):
        try:
            line = _decode(path, number, raw).rstrip("\r\n")
            if not line.strip():
                continue
            doc_id, tab, text = line.partition("\t")
            if not tab:
                raise CorpusError(path, number, "malformed line: expected id<TAB>text")
            if not doc_id.strip():
                raise CorpusError(path, number, "missing id")
            yield Document(doc_id.strip(), text, "", f"{path}:{number}")
        except CorpusError as error:
            yield error


_DOCNO = re.compile(r"<DOCNO>\s*(.*?)\s*</DOCNO>", re.S | re.I)
_TAG = re.compile(r"<[^>]*>")


_DOC_OPEN = re.compile(r"<DOC>", re.I)
_DOC_CLOSE = re.compile(r"</DOC>", re.I)


def _read_trec(source: CorpusSource, path: Path, counter: _ByteCounter) -> Iterator[Document | CorpusError]:
    buffer: list[str] | None = None
    start = 0
    for number, raw in _binary_lines(path, counter):
        try:
            rest = _decode(path, number, raw)
        except CorpusError as error:
            yield error
            buffer = None
            continue
        while rest:
            if buffer is None:
                opening = _DOC_OPEN.search(rest)
                if not opening:
                    if rest.strip():
                        yield CorpusError(path, number, "malformed line: text outside <DOC>...</DOC>")
                    break
                buffer, start, rest = [], number, rest[opening.end() :]
                continue
            closing = _DOC_CLOSE.search(rest)
            if not closing:
                buffer.append(rest)
                break
            buffer.append(rest[: closing.start()])
            rest = rest[closing.end() :]
            yield _trec_document(path, start, "".join(buffer))
            buffer = None
    if buffer is not None:
        yield CorpusError(path, start, "malformed document: <DOC> without </DOC> at end of file")


def _trec_document(path: Path, line: int, body: str) -> Document | CorpusError:
    match = _DOCNO.search(body)
    if not match or not match.group(1):
        return CorpusError(path, line, "missing id: no <DOCNO>")
    text = html.unescape(_TAG.sub(" ", body[: match.start()] + body[match.end() :]))
    return Document(match.group(1), " ".join(text.split()), "", f"{path}:{line}")


_READERS = {"beir": _read_jsonl, "jsonl": _read_jsonl, "tsv": _read_tsv, "trec": _read_trec}


class CorpusReader:
    """Iterates a corpus's valid documents; checks ids are unique and texts non-empty."""

    def __init__(self, source: CorpusSource, skip_bad: bool = False, span: Span | None = None) -> None:
        """span: read only that part of one of the source's files (corpus_spans)."""
        self.source = source
        self.skip_bad = skip_bad
        self.span = span
        self.skipped = SkipReport()
        self.documents = 0
        self._counter = _ByteCounter()
        self._done_bytes = 0

    @property
    def bytes_read(self) -> int:
        return self._done_bytes + self._counter.bytes

    def __iter__(self) -> Iterator[Document]:
        seen: set[str] = set()
        for path in [self.span.path] if self.span else self.source.files:
            read = _READERS[self.source.format]
            items = read(self.source, path, self._counter, self.span) if self.span else read(self.source, path,
                                                                                              self._counter)
            for item in items:
                if isinstance(item, Document):
                    item = self._check(item, seen, path)
                if isinstance(item, CorpusError):
                    if not self.skip_bad:
                        raise item
                    self.skipped.add(item)
                    continue
                seen.add(item.id)
                self.documents += 1
                yield item
            self._done_bytes += path.stat().st_size
            self._counter = _ByteCounter()

    @staticmethod
    def _check(doc: Document, seen: set[str], path: Path) -> Document | CorpusError:
        line = int(doc.source.rsplit(":", 1)[1])
        if doc.id in seen:
            return CorpusError(path, line, f"duplicate id: {doc.id!r} appeared earlier in the corpus")
        if not doc.text.strip() and not doc.title.strip():
            return CorpusError(path, line, f"empty text: document {doc.id!r} has no title or text")
        return doc


def split_passages(doc: Document, analyzer: Analyzer, window: int, stride: int) -> list[Passage]:
    """Overlapping windows of `window` tokens every `stride` tokens, cut on token boundaries of the original text.

    window 0 keeps the document whole. The title is kept apart and indexed with every passage.
    """
    if window <= 0:
        return [Passage(doc.id, 0, doc.title, doc.text, doc.fields)]
    spans = analyzer.token_spans(doc.text)
    if len(spans) <= window:
        return [Passage(doc.id, 0, doc.title, doc.text, doc.fields)]
    passages = []
    for part, start in enumerate(range(0, len(spans), stride)):
        end = min(start + window, len(spans))
        text = doc.text[spans[start][0] : spans[end - 1][1]]
        passages.append(Passage(doc.id, part, doc.title, text, doc.fields))
        if end == len(spans):
            break
    return passages


def read_queries(path: str | Path) -> list[tuple[str, str]]:
    """A query file: qid<TAB>text per line (TSV), or JSONL with _id/id and text fields."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(path, None, "no such query file")
    queries = []
    for number, raw in _binary_lines(path, _ByteCounter()):
        line = _decode(path, number, raw).strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
                qid = next(str(record[k]) for k in DEFAULT_ID_FIELDS if k in record)
            except (json.JSONDecodeError, StopIteration):
                raise CorpusError(path, number, 'malformed query: expected {"_id": ..., "text": ...}') from None
            queries.append((qid, record.get("text", record.get("query", ""))))
            continue
        qid, tab, text = line.partition("\t")
        if not tab:
            raise CorpusError(path, number, "malformed query line: expected qid<TAB>text")
        queries.append((qid.strip(), text))
    return queries


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC qrels (qid iter docid grade), or BEIR's TSV qrels with a header (query-id corpus-id score)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(path, None, "no such qrels file")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            fields = _decode(path, number, raw).split()
            if not fields or (number == 1 and fields[0].lower() in ("query-id", "qid", "query_id")):
                continue
            if len(fields) == 3:
                qid, docid, grade = fields
            elif len(fields) == 4:
                qid, _, docid, grade = fields
            else:
                raise CorpusError(path, number, "malformed qrels line: expected 'qid 0 docid grade'")
            try:
                qrels.setdefault(qid, {})[docid] = int(float(grade))
            except ValueError:
                raise CorpusError(path, number, f"malformed qrels line: grade {grade!r} is not a number") from None
    return qrels
