"""Neural indexing over the passages of finished segments, into folders the IndexWriter commits
(indexers/writer.py):

- dense: encode every passage with a bi-encoder, store the vectors, build a faiss index over them;
- impact: encode every passage with a SPLADE model and store its term weights, quantized to integers, as the
  postings' tf of an inverted index in the segment format, searched by the BM25 kernels in linear mode.
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
    Segment,
    failpoint,
    file_checksums,
    finish_segment,
    fsync_path,
    pack_segment,
    sort_terms,
    write_json,
    write_postings,
)
from engine.reader import indexed_text
from indexers.inverted import group_by_term

FAISS_KINDS = ("auto", "flat", "hnsw", "ivfpq")
_ENCODE_CHUNK = 4096  # passages encoded between progress reports and vector flushes
IMPACT_SCALE = 100.0  # impact = round(weight * scale): SPLADE weights (0 to about 4) to two decimals


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


def choose_faiss(kind: str, passages: int) -> str:
    """auto: exact search up to 200k passages, HNSW to 5M, IVF-PQ beyond (memory)."""
    if kind not in FAISS_KINDS:
        raise NeuralIndexError(f"unknown faiss index {kind!r}; choose one of {', '.join(FAISS_KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if passages <= 200_000 else "hnsw" if passages <= 5_000_000 else "ivfpq"


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


def _passage_texts(segments: Sequence[Segment]) -> Iterator[str]:
    """Each passage's indexed text (title and text, as BM25 saw it), in internal passage order."""
    for segment in segments:
        for number in range(segment.passages):
            yield indexed_text(*segment.store.fields(number, "title", "text"))


def _passage_count(segments: Sequence[Segment]) -> int:
    n = sum(segment.passages for segment in segments)
    if not n:
        raise NeuralIndexError("the index has no passages to encode")
    return n


def encode_dense(
    segments: Sequence[Segment],
    encoder: BiEncoder,
    folder: Path,
    faiss_kind: str = "auto",
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> NeuralReport:
    """Encodes every passage of the segments into folder (vectors and a faiss index over them), not committed.
    `encoder` is anything with a name and BiEncoder's encode() (benchmarks pass one that reuses earlier vectors)."""
    import faiss

    started = time.perf_counter()
    n = _passage_count(segments)
    kind = choose_faiss(faiss_kind, n)
    folder.mkdir()
    vectors = None
    done = 0
    texts = _passage_texts(segments)
    while done < n:
        chunk = [t for _, t in zip(range(_ENCODE_CHUNK), texts)]
        encoded = encoder.encode(chunk, batch_size=batch_size, on_progress=on_progress)
        if vectors is None:
            vectors = np.lib.format.open_memmap(
                folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, encoded.shape[1])
            )
        vectors[done : done + len(chunk)] = encoded
        done += len(chunk)
    encode_seconds = time.perf_counter() - started
    vectors.flush()
    faiss.write_index(build_faiss(vectors, kind), str(folder / "faiss.index"))
    dimension = int(vectors.shape[1])
    del vectors
    for path in folder.iterdir():
        fsync_path(path)
    write_json(folder / "dense.json", {"model": encoder.name, "passages": n, "dimension": dimension, "faiss": kind,
                                       "files": file_checksums(folder, skip=("dense.json",))})  # fmt: skip
    fsync_path(folder)
    failpoint("after-dense")
    return NeuralReport(encoder.name, n, time.perf_counter() - started, encode_seconds,
                        {"dimension": dimension, "faiss": kind})  # fmt: skip


def quantize_impacts(weights: np.ndarray, scale: float = IMPACT_SCALE) -> np.ndarray:
    """Term weights -> integer impacts (0 where a weight rounds to nothing)."""
    return np.floor(np.asarray(weights, dtype=np.float64) * scale + 0.5).astype(np.uint32)


def encode_impact(
    segments: Sequence[Segment],
    encoder: SpladeEncoder,
    folder: Path,
    packed: bool = True,
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> NeuralReport:
    """Encodes every passage of the segments with a learned sparse model into an impact index in folder (in the
    segment format, packed like the BM25 postings), not committed."""
    started = time.perf_counter()
    n = _passage_count(segments)
    name = encoder.config.name
    folder.mkdir()
    term_ids, passages, impacts = _encode_impacts(segments, n, encoder, batch_size, on_progress)
    encode_seconds = time.perf_counter() - started
    used = np.unique(term_ids)
    terms = sort_terms(encoder.tokenizer.id_to_token(int(t)) for t in used)
    rank = np.zeros(int(used[-1]) + 1 if len(used) else 0, dtype=np.int64)
    position = {t: i for i, t in enumerate(terms)}
    rank[used] = [position[encoder.tokenizer.id_to_token(int(t))] for t in used]
    term_of_posting = rank[term_ids]
    offsets = np.zeros(len(terms) + 1, dtype=np.int64)
    np.cumsum(np.bincount(term_of_posting, minlength=len(terms)), out=offsets[1:])
    docs, tfs = group_by_term(term_of_posting, offsets, passages, impacts)
    write_postings(folder, terms, offsets, docs, tfs, np.zeros(n, dtype=np.uint32))
    finish_segment(folder, {"model": name, "passages": n, "terms": len(terms), "postings": len(docs),
                            "scale": IMPACT_SCALE})  # fmt: skip
    if packed:
        pack_segment(folder)
    failpoint("after-impact")
    return NeuralReport(name, n, time.perf_counter() - started, encode_seconds,
                        {"terms": len(terms), "postings": len(docs), "scale": IMPACT_SCALE})  # fmt: skip


def _encode_impacts(
    segments: Sequence[Segment], n: int, encoder: SpladeEncoder, batch_size: int,
    on_progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every passage's (vocabulary id, passage, impact) postings, passages ascending."""
    chunks = []
    done = 0
    texts = _passage_texts(segments)
    while done < n:
        chunk = [t for _, t in zip(range(_ENCODE_CHUNK), texts)]
        for number, (ids, weights) in enumerate(encoder.encode_ids(chunk, batch_size, on_progress), done):
            impacts = quantize_impacts(weights)
            kept = impacts > 0
            chunks.append((ids[kept], np.full(int(kept.sum()), number, dtype=np.uint32), impacts[kept]))
        done += len(chunk)
    return tuple(np.concatenate(parts) for parts in zip(*chunks))  # type: ignore[return-value]
