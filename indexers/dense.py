"""Dense indexing: encode every passage of a committed index with a bi-encoder, store the vectors, build a faiss
index over them, and commit them into the index's manifest as one more generation."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.encoders import BiEncoder
from engine.errors import SiftError
from engine.format import (
    SEGMENT_PREFIX,
    STAGING_PREFIX,
    WriteLock,
    collect_garbage,
    commit_manifest,
    fsync_path,
    live_folders,
    write_json,
)
from engine.index import open_index

FAISS_KINDS = ("auto", "flat", "hnsw", "ivfpq")
_ENCODE_CHUNK = 4096  # passages encoded between progress reports and vector flushes


class DenseIndexError(SiftError):
    pass


@dataclass
class DenseReport:
    model: str
    passages: int
    dimension: int
    faiss: str
    seconds: float
    encode_seconds: float

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "passages": self.passages,
            "dimension": self.dimension,
            "faiss": self.faiss,
            "seconds": round(self.seconds, 3),
            "passages_per_second": round(self.passages / self.encode_seconds, 1) if self.encode_seconds else None,
        }


def choose_faiss(kind: str, passages: int) -> str:
    """auto: exact search up to 200k passages, HNSW to 5M, IVF-PQ beyond (memory)."""
    if kind not in FAISS_KINDS:
        raise DenseIndexError(f"unknown faiss index {kind!r}; choose one of {', '.join(FAISS_KINDS)}")
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


def _passage_texts(index) -> Iterator[str]:
    """Each passage's indexed text (title and text, as BM25 saw it), in internal passage order."""
    for segment in index.segments:
        for number in range(segment.passages):
            row = segment.store.row(number)
            title, text = row[2], row[3]
            yield f"{title} {text}" if title else text


def build_dense(
    index_dir: str | os.PathLike,
    model: str = "all-minilm-l6-v2",
    faiss_kind: str = "auto",
    batch_size: int = 32,
    threads: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DenseReport:
    """Adds (or replaces) the dense index of one model; a failure leaves the index as it was."""
    index_dir = Path(index_dir)
    started = time.perf_counter()
    encoder = BiEncoder(model, threads=threads)
    name = encoder.name
    staging = index_dir / f"{STAGING_PREFIX}dense-{uuid.uuid4().hex[:12]}"
    with WriteLock(index_dir):
        index = open_index(index_dir)
        manifest = index.manifest
        n = index.passages
        kind = choose_faiss(faiss_kind, n)
        try:
            staging.mkdir()
            vectors = None
            done = 0
            texts = _passage_texts(index)
            encode_started = time.perf_counter()
            while done < n:
                chunk = [t for _, t in zip(range(_ENCODE_CHUNK), texts)]
                encoded = encoder.encode(chunk, batch_size=batch_size, on_progress=on_progress)
                if vectors is None:
                    vectors = np.lib.format.open_memmap(
                        staging / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, encoded.shape[1])
                    )
                vectors[done : done + len(chunk)] = encoded
                done += len(chunk)
            encode_seconds = time.perf_counter() - encode_started
            if vectors is None:
                raise DenseIndexError(f"{index_dir}: the index has no passages to encode")
            vectors.flush()
            import faiss

            faiss.write_index(build_faiss(vectors, kind), str(staging / "faiss.index"))
            dimension = int(vectors.shape[1])
            del vectors
            write_json(staging / "dense.json", {"model": name, "passages": n, "dimension": dimension, "faiss": kind})
            for path in staging.iterdir():
                fsync_path(path)
            generation = int(manifest["generation"]) + 1
            folder = f"{SEGMENT_PREFIX}dense_{generation:06d}_{uuid.uuid4().hex[:6]}"
            os.replace(staging, index_dir / folder)
            dense = dict(manifest.get("dense", {}))
            dense[name] = {"folder": folder, "dimension": dimension, "faiss": kind, "passages": n}
            updated = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "committed")}
            commit_manifest(index_dir, {**updated, "generation": generation, "dense": dense})
            collect_garbage(index_dir, live_folders({**manifest, "dense": dense}))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return DenseReport(name, n, dimension, kind, time.perf_counter() - started, encode_seconds)
