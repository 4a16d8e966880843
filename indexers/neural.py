"""Neural indexing, one folder per segment per model, which the IndexWriter commits (indexers/writer.py):

- dense: encode a segment's passages with a bi-encoder, store the vectors, build a faiss index over them;
- impact: encode a segment's passages with a SPLADE model and store its term weights, quantized to integers, as
  the postings' tf of an inverted index in the segment format, searched by the BM25 kernels in linear mode.

A segment's neural folders live and die with it, as its postings do: added documents are encoded once, in their
new segment; a merge gathers the vectors and impacts of the passages it keeps (`gather_dense`, `gather_impact`)
and never encodes again; deleted passages are masked at search time like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.encoders import BiEncoder, SpladeEncoder
from engine.errors import SiftError
from engine.format import (
    COMPOUND_BYTES,
    FolderWriter,
    PostingLists,
    Segment,
    failpoint,
    file_checksums,
    finish_segment,
    fsync_path,
    open_array,
    sort_terms,
    write_json,
    write_postings,
)
from engine.reader import indexed_text
from indexers.inverted import group_by_term

FAISS_KINDS = ("auto", "flat", "hnsw", "ivfpq")
_ENCODE_CHUNK = 4096  # passages encoded between progress reports and vector flushes
_PQ_MIN_VECTORS = 10_000  # fewer vectors than this cannot train product quantizers well: searched exactly instead
IMPACT_SCALE = 100.0  # impact = round(weight * scale): SPLADE weights (0 to about 4) to two decimals

Rows = Sequence[tuple[Path, np.ndarray]]  # (a segment's neural folder, the passage numbers taken from it, in order)


class NeuralIndexError(SiftError):
    pass


@dataclass
class NeuralReport:
    """What one neural indexing run did: the model, passages encoded and their rate, and what it built."""

    model: str
    passages: int
    seconds: float
    encode_seconds: float
    built: dict  # dense: dimension, faiss; impact: terms, postings

    def to_dict(self) -> dict:
        rate = round(self.passages / self.encode_seconds, 1) if self.encode_seconds else None
        return {"model": self.model, "passages": self.passages, **self.built, "seconds": round(self.seconds, 3),
                "passages_per_second": rate}  # fmt: skip

    @staticmethod
    def combine(model: str, reports: Sequence[NeuralReport]) -> NeuralReport:
        """One report for the segments of an index: term and posting counts added, one faiss kind (or "mixed")."""
        if not reports:
            raise NeuralIndexError("the index has no passages to encode")
        built = dict(reports[0].built)
        for key in ("terms", "postings"):
            if key in built:
                built[key] = sum(r.built[key] for r in reports)
        if "faiss" in built and any(r.built["faiss"] != built["faiss"] for r in reports):
            built["faiss"] = "mixed"
        return NeuralReport(model, sum(r.passages for r in reports), sum(r.seconds for r in reports),
                            sum(r.encode_seconds for r in reports), built)  # fmt: skip


def choose_faiss(kind: str, passages: int) -> str:
    """auto: exact search up to 200k passages, HNSW to 5M, IVF-PQ beyond (memory); a segment too small to train
    IVF-PQ is searched exactly."""
    if kind not in FAISS_KINDS:
        raise NeuralIndexError(f"unknown faiss index {kind!r}; choose one of {', '.join(FAISS_KINDS)}")
    if kind == "auto":
        kind = "flat" if passages <= 200_000 else "hnsw" if passages <= 5_000_000 else "ivfpq"
    return "flat" if kind == "ivfpq" and passages < _PQ_MIN_VECTORS else kind


def build_faiss(vectors: np.ndarray, kind: str):
    import faiss

    n, dimension = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dimension)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        lists = max(1, min(int(4 * np.sqrt(n)), n // 39))
        subquantizers = next(m for m in (48, 32, 24, 16, 12, 8, 4, 2, 1) if dimension % m == 0)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dimension), dimension, lists, subquantizers, 8,
                                 faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        sample = vectors[np.random.default_rng(0).choice(n, size=min(n, 256 * lists), replace=False)]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = max(1, lists // 16)
    index.add(np.ascontiguousarray(vectors))
    return index


def _passage_texts(segment: Segment) -> Iterator[str]:
    """Each passage's indexed text (title and text, as BM25 saw it), in passage order."""
    for number in range(segment.passages):
        yield indexed_text(*segment.store.fields(number, "title", "text"))


def _chunks(segment: Segment) -> Iterator[list[str]]:
    texts = _passage_texts(segment)
    while chunk := [t for _, t in zip(range(_ENCODE_CHUNK), texts)]:
        yield chunk


def encode_dense(
    segment: Segment,
    encoder: BiEncoder,
    folder: Path,
    faiss_kind: str = "auto",
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> NeuralReport:
    """Encodes a segment's passages into folder (vectors and a faiss index over them), not committed.
    `encoder` is anything with a name and BiEncoder's encode() (benchmarks pass one that reuses earlier vectors)."""
    started = time.perf_counter()
    folder.mkdir()
    vectors = None
    done = 0
    for chunk in _chunks(segment):
        encoded = encoder.encode(chunk, batch_size=batch_size, on_progress=on_progress)
        if vectors is None:
            vectors = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32,
                                                shape=(segment.passages, encoded.shape[1]))  # fmt: skip
        vectors[done : done + len(chunk)] = encoded
        done += len(chunk)
    if vectors is None:
        raise NeuralIndexError(f"{segment.directory}: no passages to encode")
    encode_seconds = time.perf_counter() - started
    built = _finish_dense(folder, vectors, encoder.name, faiss_kind)
    return NeuralReport(encoder.name, segment.passages, time.perf_counter() - started, encode_seconds, built)


def gather_dense(rows: Rows, folder: Path, model: str, faiss_kind: str) -> None:
    """A merged segment's dense folder: the vectors of the passages it keeps, taken from their segments' folders
    in order (nothing is encoded again)."""
    folder.mkdir()
    sources = [(open_array(source / "vectors.npy"), taken) for source, taken in rows]
    dimension = sources[0][0].shape[1]
    vectors = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.float32,
                                        shape=(sum(len(t) for _, t in sources), dimension))  # fmt: skip
    done = 0
    for source, taken in sources:
        vectors[done : done + len(taken)] = source[taken]
        done += len(taken)
    _finish_dense(folder, vectors, model, faiss_kind)


def _finish_dense(folder: Path, vectors: np.ndarray, model: str, faiss_kind: str) -> dict:
    import faiss

    vectors.flush()
    kind = choose_faiss(faiss_kind, len(vectors))
    faiss.write_index(build_faiss(vectors, kind), str(folder / "faiss.index"))
    for path in folder.iterdir():
        fsync_path(path)
    built = {"dimension": int(vectors.shape[1]), "faiss": kind}
    write_json(folder / "dense.json", {"model": model, "passages": len(vectors), **built,
                                       "files": file_checksums(folder, skip=("dense.json",))})  # fmt: skip
    fsync_path(folder)
    failpoint("after-dense")
    return built


def quantize_impacts(weights: np.ndarray, scale: float = IMPACT_SCALE) -> np.ndarray:
    """Term weights -> integer impacts (0 where a weight rounds to nothing)."""
    return np.floor(np.asarray(weights, dtype=np.float64) * scale + 0.5).astype(np.uint32)


def encode_impact(
    segment: Segment,
    encoder: SpladeEncoder,
    folder: Path,
    packed: bool = True,
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> NeuralReport:
    """Encodes a segment's passages with a learned sparse model into an impact index in folder (in the segment
    format, packed like the BM25 postings), not committed."""
    started = time.perf_counter()
    name = encoder.config.name
    chunks = []
    done = 0
    for chunk in _chunks(segment):
        for number, (ids, weights) in enumerate(encoder.encode_ids(chunk, batch_size, on_progress), done):
            impacts = quantize_impacts(weights)
            kept = impacts > 0
            chunks.append((ids[kept], np.full(int(kept.sum()), number, dtype=np.uint32), impacts[kept]))
        done += len(chunk)
    if not done:
        raise NeuralIndexError(f"{segment.directory}: no passages to encode")
    encode_seconds = time.perf_counter() - started
    vocabulary_ids, passages, impacts = (np.concatenate(parts) for parts in zip(*chunks))
    used, term_of_posting = np.unique(vocabulary_ids, return_inverse=True)
    tokens = [encoder.tokenizer.id_to_token(int(t)) for t in used]
    built = _write_impacts(folder, tokens, term_of_posting, passages, impacts, segment.passages, name, packed)
    return NeuralReport(name, segment.passages, time.perf_counter() - started, encode_seconds, built)


def gather_impact(rows: Rows, folder: Path, model: str, packed: bool) -> None:
    """A merged segment's impact folder: the postings of the passages it keeps, renumbered in order, taken from
    their segments' folders (nothing is encoded again); equal to encoding those passages afresh."""
    tokens: list[str] = []
    position: dict[str, int] = {}
    parts = []
    base = 0
    for source, taken in rows:
        lists = PostingLists(source)
        renumber = np.full(lists.meta["passages"], -1, dtype=np.int64)
        renumber[taken] = np.arange(base, base + len(taken))
        docs = renumber[np.asarray(lists.docs)]
        keep = docs >= 0
        source_terms = np.repeat(np.arange(len(lists.terms)), np.diff(np.asarray(lists.offsets)))[keep]
        present = np.unique(source_terms)
        present_tokens = lists.terms.take(present)
        for token in present_tokens:
            if token not in position:
                position[token] = len(tokens)
                tokens.append(token)
        remap = np.zeros(len(lists.terms), dtype=np.int64)
        remap[present] = [position[t] for t in present_tokens]
        parts.append((remap[source_terms], docs[keep].astype(np.uint32), np.asarray(lists.tfs)[keep]))
        base += len(taken)
    terms, passages, impacts = (np.concatenate(p) for p in zip(*parts))
    order = np.argsort(passages, kind="stable")
    _write_impacts(folder, tokens, terms[order], passages[order], impacts[order], base, model, packed)


def _write_impacts(folder: Path, tokens: list[str], term_of_posting: np.ndarray, passages: np.ndarray,
                   impacts: np.ndarray, n: int, model: str, packed: bool) -> dict:  # fmt: skip
    """Postings (term, passage ascending, impact) into an impact folder, terms sorted as the format wants."""
    folder.mkdir()
    terms = sort_terms(tokens)
    rank = {t: i for i, t in enumerate(terms)}
    term_of_posting = np.array([rank[t] for t in tokens], dtype=np.int64)[term_of_posting]
    offsets = np.zeros(len(terms) + 1, dtype=np.int64)
    np.cumsum(np.bincount(term_of_posting, minlength=len(terms)), out=offsets[1:])
    docs, tfs = group_by_term(term_of_posting, offsets, passages, impacts.astype(np.uint32))
    out = FolderWriter(folder, in_memory=len(docs) * 8 <= COMPOUND_BYTES)
    postings = write_postings(out, terms, offsets, docs, tfs, np.zeros(n, dtype=np.uint32), packed)
    built = {"terms": len(terms), "postings": len(docs), "scale": IMPACT_SCALE}
    finish_segment(out, {"model": model, "passages": n, **built, **postings})
    failpoint("after-impact")
    return built
