"""IndexWriter: the one owner of an index directory while it changes, as tantivy's and Lucene's.

A writer holds the directory's lock and one staging folder for as long as it is open. Everything it builds — BM25
segments, dense vectors and their faiss index, SPLADE impacts — is staged there as finished folders, and `commit()`
publishes all of it in one step: the folders are renamed into place and the next manifest replaces the last by
rename (engine/format.py). Closing a writer without committing, a failure anywhere, or a SIGKILL leaves the last
commit whole; what a dead writer left behind is garbage the next one removes.

    with IndexWriter(path, create=True, overwrite=True) as writer:
        writer.build_inverted(documents, options, source=...)
        writer.add_dense(BiEncoder("all-minilm-l6-v2-onnx-int8"))
        writer.commit()
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from engine.encoders import BiEncoder, SpladeEncoder
from engine.errors import SiftError
from engine.format import (
    MANIFEST,
    NEURAL_KINDS,
    QUALITY_FOLDER,
    SEGMENT_PREFIX,
    STAGING_PREFIX,
    Segment,
    WriteLock,
    collect_garbage,
    commit_manifest,
    failpoint,
    live_folders,
    read_manifest,
)
from indexers.corpus import Document
from indexers.inverted import BuildOptions, BuildReport, write_segments
from indexers.neural import NeuralReport, encode_dense, encode_impact


class IndexExistsError(SiftError):
    """The target already holds an index (or other files) and overwriting was not asked for."""


class IndexWriter:
    """Stages changes to one index and commits them together. create=True starts a new index (overwrite=True
    replaces one already there at commit); otherwise the index must exist and its components are kept unless
    rebuilt."""

    def __init__(self, index_dir: str | os.PathLike, create: bool = False, overwrite: bool = False) -> None:
        self.index_dir = Path(index_dir)
        self.create = create
        self._created = False
        if create:
            self._created = self._prepare_new(overwrite)
        elif not (self.index_dir / MANIFEST).exists():
            read_manifest(self.index_dir)  # raises the error that says what is missing
        self._lock = WriteLock(self.index_dir)
        self.staging = self.index_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        self.base: dict = {}
        self._inverted: tuple[list[Path], dict] | None = None
        self._neural: dict[str, dict[str, tuple[Path, dict]]] = {kind: {} for kind in NEURAL_KINDS}
        self.committed: int | None = None

    def _prepare_new(self, overwrite: bool) -> bool:
        """Checks a new index may be written here; returns whether the directory was created."""
        if not self.index_dir.exists():
            self.index_dir.mkdir(parents=True)
            return True
        if not self.index_dir.is_dir():
            raise IndexExistsError(f"{self.index_dir}: exists and is not a directory")
        if (self.index_dir / MANIFEST).exists():
            read_manifest(self.index_dir)
            if not overwrite:
                raise IndexExistsError(f"{self.index_dir}: already holds an index; pass --overwrite to replace it")
            return False
        ours = (SEGMENT_PREFIX, STAGING_PREFIX, "write.lock", f"{MANIFEST}.tmp", QUALITY_FOLDER)
        if [p.name for p in self.index_dir.iterdir() if not p.name.startswith(ours)]:
            raise IndexExistsError(f"{self.index_dir}: is not empty and holds no Sift index; choose another directory")
        return False

    def __enter__(self) -> IndexWriter:
        self._lock.__enter__()
        try:
            committed = (self.index_dir / MANIFEST).exists()
            self.base = read_manifest(self.index_dir) if committed else {}
            collect_garbage(self.index_dir, live_folders(self.base))
            self.staging.mkdir()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            shutil.rmtree(self.staging, ignore_errors=True)
            if self._created and self.committed is None and not (self.index_dir / QUALITY_FOLDER).exists():
                shutil.rmtree(self.index_dir, ignore_errors=True)  # quality scores stay: a rerun resumes them
        finally:
            self._lock.__exit__(*exc)

    # -- staging

    def build_inverted(
        self,
        documents: Iterable[Document],
        options: BuildOptions | None = None,
        source: dict | None = None,
        on_progress: Callable[[int], None] | None = None,
        pruned: Collection[str] = frozenset(),
        pruning: dict | None = None,
    ) -> BuildReport:
        """Stages BM25 segments of documents, replacing every passage of the index at commit. Passages whose key is
        in `pruned` are left out; `pruning` records how they were chosen. Dense and impact indexes not rebuilt in
        this writer are dropped at commit (their passage numbers would no longer match)."""
        options = options or BuildOptions()
        folders, report = write_segments(documents, self.staging / "inverted", options, on_progress, pruned)
        if not report.passages:
            where = (source or {}).get("path", "the corpus")
            raise SiftError(f"{where}: nothing to index (no document with text" + (", or every passage pruned)"
                            if pruned else ")"))  # fmt: skip
        settings = {
            "analyzer": options.analyzer.to_dict(),
            "bm25": {"k1": options.bm25.k1, "b": options.bm25.b, "length_norm": options.bm25.length_norm},
            "passages": {"window": options.passage_window, "stride": options.passage_stride or options.passage_window},
            "source": source or {},
        }
        if pruning:
            settings["pruning"] = pruning
        self._inverted = (folders, settings)
        report.index_dir = self.index_dir
        return report

    def segments(self) -> list[Segment]:
        """The passages the next commit will hold: the staged segments, or the committed ones."""
        if self._inverted is not None:
            return [Segment(folder) for folder in self._inverted[0]]
        if not self.base:
            raise SiftError(f"{self.index_dir}: no passages yet; build the inverted index first")
        return [Segment(self.index_dir / s["name"]) for s in self.base["segments"]]

    def add_dense(self, encoder: BiEncoder, faiss_kind: str = "auto", batch_size: int = 32,
                  on_progress: Callable[[int], None] | None = None) -> NeuralReport:  # fmt: skip
        """Stages a dense index of the passages with encoder's model (replacing that model's at commit)."""
        folder = self.staging / f"dense-{uuid.uuid4().hex[:8]}"
        report = encode_dense(self.segments(), encoder, folder, faiss_kind, batch_size, on_progress)
        self._neural["dense"][report.model] = (folder, {**report.built, "passages": report.passages})
        return report

    def add_impact(self, encoder: SpladeEncoder, batch_size: int = 8,
                   on_progress: Callable[[int], None] | None = None) -> NeuralReport:  # fmt: skip
        """Stages an impact index of the passages with encoder's learned sparse model."""
        folder = self.staging / f"impact-{uuid.uuid4().hex[:8]}"
        segments = self.segments()
        packed = not segments or segments[0].packed
        report = encode_impact(segments, encoder, folder, packed, batch_size, on_progress)
        entry = {"passages": report.passages, "scale": report.built["scale"], "postings": report.built["postings"]}
        self._neural["impact"][report.model] = (folder, entry)
        return report

    # -- the one commit

    def commit(self) -> int:
        """Publishes everything staged as the next generation; returns its number."""
        if self._inverted is None and not self.base:
            raise SiftError(f"{self.index_dir}: nothing to commit; build the inverted index first")
        generation = int(self.base.get("generation", 0)) + 1
        manifest = {k: v for k, v in self.base.items() if k not in ("format", "format_version", "committed")}
        if self._inverted is not None:
            folders, settings = self._inverted
            live = []
            for number, folder in enumerate(folders):
                name = f"{SEGMENT_PREFIX}{generation:06d}_{number:04d}"
                meta = Segment(folder).meta
                os.replace(folder, self.index_dir / name)
                live.append({"name": name, "passages": meta["passages"], "documents": meta["documents"],
                             "deletions": None})  # fmt: skip
            manifest = {**settings, "segments": live}
        for kind in NEURAL_KINDS:
            section = {} if self._inverted is not None else dict(manifest.get(kind, {}))
            for name, (folder, entry) in self._neural[kind].items():
                target = f"{SEGMENT_PREFIX}{kind}_{generation:06d}_{uuid.uuid4().hex[:6]}"
                os.replace(folder, self.index_dir / target)
                section[name] = {"folder": target, **entry}
            manifest.pop(kind, None)
            if section:
                manifest[kind] = section
        manifest["generation"] = generation
        failpoint("before-commit")
        commit_manifest(self.index_dir, manifest)
        self.committed = generation
        failpoint("after-commit")
        collect_garbage(self.index_dir, live_folders(manifest))
        return generation


def build_index(
    documents: Iterable[Document],
    index_dir: str | os.PathLike,
    options: BuildOptions | None = None,
    source: dict | None = None,
    on_progress: Callable[[int], None] | None = None,
    pruned: Collection[str] = frozenset(),
    pruning: dict | None = None,
) -> BuildReport:
    """Indexes documents into index_dir and commits a new generation, or leaves the directory as it was."""
    options = options or BuildOptions()
    started = time.perf_counter()
    with IndexWriter(index_dir, create=True, overwrite=options.overwrite) as writer:
        report = writer.build_inverted(documents, options, source, on_progress, pruned, pruning)
        report.generation = writer.commit()
    report.seconds = time.perf_counter() - started
    return report


def build_dense(index_dir: str | os.PathLike, model: str = "all-minilm-l6-v2-onnx-int8", faiss_kind: str = "auto",
                batch_size: int = 32, threads: int | None = None, on_progress: Callable[[int], None] | None = None,
                encoder: BiEncoder | None = None) -> NeuralReport:  # fmt: skip
    """Adds (or replaces) the dense index of one model in a committed index."""
    with IndexWriter(index_dir) as writer:
        report = writer.add_dense(encoder or BiEncoder(model, threads=threads), faiss_kind, batch_size, on_progress)
        writer.commit()
    return report


def build_impact(index_dir: str | os.PathLike, model: str = "splade-tiny", batch_size: int = 8,
                 threads: int | None = None, on_progress: Callable[[int], None] | None = None) -> NeuralReport:
    """Adds (or replaces) the impact index of one learned sparse model in a committed index."""
    with IndexWriter(index_dir) as writer:
        report = writer.add_impact(SpladeEncoder(model, threads=threads), batch_size, on_progress)
        writer.commit()
    return report
