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

Live changes to a committed index go through the same writer: `add` (an id that exists is replaced: upsert),
`delete`, `compact`. Added documents become new segments; deletions become per-segment files of the next
generation that also record what the deleted passages took from the statistics (engine/format.py: Deletions), so
that BM25 over the live passages equals a fresh build's. A tiered merge policy rewrites small or mostly deleted
segments at commit.

    with IndexWriter(path, timeout=5) as writer:
        writer.add(documents)
        writer.delete(["doc-7"])
        writer.commit()
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from engine.analysis import Analyzer, AnalyzerConfig
from engine.encoders import BiEncoder, SpladeEncoder
from engine.errors import SiftError
from engine.fields import coerce
from engine.format import (
    MANIFEST,
    NEURAL_KINDS,
    NO_DELETIONS,
    QUALITY_FOLDER,
    SEGMENT_PREFIX,
    STAGING_PREFIX,
    Deletions,
    Segment,
    WriteLock,
    collect_garbage,
    commit_manifest,
    failpoint,
    live_folders,
    merge_segments,
    publish_segment,
    read_manifest,
    write_deletions,
)
from engine.reader import IndexReader, indexed_text
from engine.sparse import BM25Params
from indexers.corpus import Document, Passage, split_passages
from indexers.inverted import BuildOptions, BuildReport, write_passages, write_segments
from indexers.neural import NeuralReport, Rows, encode_dense, encode_impact, gather_dense, gather_impact


class IndexExistsError(SiftError):
    """The target already holds an index (or other files) and overwriting was not asked for."""


class IndexWriter:
    """Stages changes to one index and commits them together. create=True starts a new index (overwrite=True
    replaces one already there at commit); otherwise the index must exist and its components are kept unless
    rebuilt."""

    def __init__(self, index_dir: str | os.PathLike, create: bool = False, overwrite: bool = False,
                 timeout: float = 0, merge_policy: MergePolicy | None = None, commit_on_exit: bool = False,
                 reuse: Sequence[Segment] = (), encoders: dict | None = None) -> None:  # fmt: skip
        """timeout: seconds to wait for another writer (0: fail at once). commit_on_exit: a `with` block that ends
        without an exception commits what is staged (an exception always rolls back). reuse: segments a reader of
        this index has open already (they are not mapped again). encoders: model name -> encoder for the index's
        dense and SPLADE parts when documents are added (default: the model of that name, loaded when needed)."""
        self.index_dir = Path(index_dir)
        self.create = create
        self._created = False
        if create:
            self._created = self._prepare_new(overwrite)
        elif not (self.index_dir / MANIFEST).exists():
            read_manifest(self.index_dir)  # raises the error that says what is missing
        self._lock = WriteLock(self.index_dir, timeout)
        self.staging = self.index_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        self.merge_policy = merge_policy or MergePolicy()
        self._reuse = list(reuse)
        self._encoders = dict(encoders or {})
        self.commit_on_exit = commit_on_exit
        self.base: dict = {}
        self.committed: int | None = None
        self._reader: IndexReader | None = None
        self._reset()

    def _reset(self) -> None:
        """Forgets everything staged: what a commit published or a rollback drops."""
        self._inverted: tuple[list[Path], dict] | None = None
        # kind -> model -> (a staged folder per segment of self.segments(), the manifest entry)
        self._neural: dict[str, dict[str, tuple[list[Path], dict]]] = {kind: {} for kind in NEURAL_KINDS}
        self._added: dict[str, Document] = {}  # upserts, by id, in the order given
        self._deleted: dict[int, set[int]] = {}  # base segment -> its passages deleted since the last commit
        self._compact_to: int | None = None
        self._segment_number = 0

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

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None and self.commit_on_exit and self.pending:
                self.commit()
        finally:
            self._close(kind, value, traceback)

    def _close(self, *exc) -> None:
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
            "fields": options.fields,
            "positions": options.positions,
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
        """Stages a dense index of every segment's passages with encoder's model (replacing that model's at
        commit); documents added later are encoded in their own segments."""
        reports, folders = [], []
        for segment in self._neural_segments():
            folders.append(self.staging / f"dense-{uuid.uuid4().hex[:8]}")
            reports.append(encode_dense(segment, encoder, folders[-1], faiss_kind, batch_size, on_progress))
        report = NeuralReport.combine(encoder.name, reports)
        self._neural["dense"][report.model] = (folders, {"faiss": faiss_kind, "dimension": report.built["dimension"]})
        self._encoders[report.model] = encoder
        return report

    def add_impact(self, encoder: SpladeEncoder, batch_size: int = 8,
                   on_progress: Callable[[int], None] | None = None) -> NeuralReport:  # fmt: skip
        """Stages an impact index of every segment's passages with encoder's learned sparse model."""
        reports, folders = [], []
        for segment in self._neural_segments():
            folders.append(self.staging / f"impact-{uuid.uuid4().hex[:8]}")
            reports.append(encode_impact(segment, encoder, folders[-1], segment.packed, batch_size, on_progress))
        report = NeuralReport.combine(encoder.config.name, reports)
        self._neural["impact"][report.model] = (folders, {"scale": report.built["scale"]})
        self._encoders[report.model] = encoder
        return report

    def _neural_segments(self) -> list[Segment]:
        if self._added or self._deleted or self._compact_to is not None:
            raise SiftError("this writer has staged added or deleted documents; commit them before building dense "
                            "or SPLADE parts")  # fmt: skip
        return self.segments()

    def _encoder(self, kind: str, model: str):
        if model not in self._encoders:
            self._encoders[model] = BiEncoder(model) if kind == "dense" else SpladeEncoder(model)
        return self._encoders[model]

    # -- live changes

    @property
    def reader(self) -> IndexReader:
        """The last commit, as this writer changes it."""
        if self._reader is None:
            if not self.base:
                raise SiftError(f"{self.index_dir}: no committed index to change; build it first (sift index)")
            self._reader = IndexReader(self.index_dir, reuse=self._reuse)
        return self._reader

    @property
    def pending(self) -> bool:
        """Whether anything is staged that a commit would publish."""
        return bool(self._inverted or any(self._neural.values()) or self._added or self._deleted
                    or self._compact_to is not None)  # fmt: skip

    def _check_live(self) -> None:
        if self._inverted is not None:
            raise SiftError("this writer is rebuilding the whole index; commit it before adding or deleting")
        if any(self._neural.values()):
            raise SiftError("this writer has staged dense or SPLADE parts; commit them before adding or deleting")

    def _delete_committed(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Stages the deletion of committed documents not deleted since (all their passages); returns, per id,
        whether it was found. One compiled lookup per segment for all the ids."""
        reader = self.reader
        found = np.zeros(len(doc_ids), dtype=bool)
        if not len(doc_ids):
            return found
        for i, segment in enumerate(reader.segments):
            local = np.asarray(segment.find_documents(doc_ids), dtype=np.int64)
            hits = np.flatnonzero(local >= 0)
            if not len(hits):
                continue
            passage_doc = np.asarray(segment.passage_doc)
            firsts = np.searchsorted(passage_doc, local[hits])
            ends = np.searchsorted(passage_doc, local[hits] + 1)
            live, staged = reader.live[i], self._deleted.get(i, set())
            for j, first, end in zip(hits.tolist(), firsts.tolist(), ends.tolist()):
                if (live is None or live[first]) and first not in staged:
                    staged = self._deleted.setdefault(i, staged)
                    staged.update(range(first, end))
                    found[j] = True
        return found

    def add(self, documents: Iterable[Document]) -> tuple[int, int]:
        """Stages documents; one whose id the index (or this writer) already holds replaces it. Returns (added,
        replaced). A bad document stages none of them."""
        self._check_live()
        fields = self.base.get("fields") or {}
        checked = []
        for doc in documents:
            where = f"{doc.source}: " if doc.source else ""
            if not (doc.text.strip() or doc.title.strip()):
                raise ValueError(f"{where}document {doc.id!r} has no title or text; nothing to index")
            if doc.fields:
                doc = dataclasses.replace(doc, fields=_checked_fields(doc, fields, where))
            checked.append(doc)
        added = replaced = 0
        for doc, committed in zip(checked, self._delete_committed([doc.id for doc in checked])):
            existed = self._added.pop(doc.id, None) is not None or bool(committed)
            self._added[doc.id] = doc
            replaced += existed
            added += not existed
        return added, replaced

    def delete(self, ids: Iterable[str]) -> list[str]:
        """Stages the deletion of documents (all their passages); returns the ids found nowhere."""
        self._check_live()
        ids = list(dict.fromkeys(ids))
        pending = [self._added.pop(doc_id, None) is not None for doc_id in ids]
        found = self._delete_committed(ids)
        return [doc_id for doc_id, was_pending, was_found in zip(ids, pending, found) if not (was_pending or was_found)]

    def compact(self, max_segments: int = 1) -> None:
        """Stages merging the index down to at most max_segments segments, dropping deleted passages."""
        if max_segments < 1:
            raise ValueError(f"max_segments must be at least 1, got {max_segments}")
        self._check_live()
        self._compact_to = max_segments

    def rollback(self) -> None:
        """Drops everything staged since the last commit."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir()
        self._reset()

    def _options(self) -> BuildOptions:
        """The committed index's settings, for the segments this writer adds."""
        manifest = self.base
        packed = all(segment.packed for segment in self.reader.segments[:1])
        return BuildOptions(
            analyzer=AnalyzerConfig.from_dict(manifest["analyzer"]), bm25=BM25Params(**manifest["bm25"]),
            passage_window=manifest["passages"]["window"], passage_stride=manifest["passages"]["stride"],
            postings="packed" if packed else "raw", fields=manifest.get("fields") or {},
            positions=bool(manifest.get("positions")),
        )  # fmt: skip

    def _deletions(self, segment: int, analyzer: Analyzer) -> Deletions:
        """A base segment's deletions after this commit: the committed ones plus those staged, with what the newly
        deleted passages take from the statistics (their stored text analyzed again, as indexing analyzed it)."""
        reader = self.reader
        before = reader.deletions[segment]
        seg = reader.segments[segment]
        new = np.array(sorted(self._deleted[segment]), dtype=np.int64)
        lengths = np.asarray(seg.lengths)[new]
        counts = np.zeros(len(seg.terms), dtype=np.int64)
        counts[before.term_ids] += before.term_counts
        if int(lengths.sum()) * _SCAN_TOKENS_PER_POSTING >= int(seg.offsets[-1]):
            counts += _postings_of(seg, new)
        else:
            counts += _analyzed_terms(seg, new, analyzer)
        touched = np.flatnonzero(counts)
        return Deletions(
            np.union1d(before.passages, new), touched, counts[touched], before.tokens + int(lengths.sum()),
            before.scored_passages + int(np.count_nonzero(lengths)),
            before.documents + len(np.unique(np.asarray(seg.passage_doc)[new])),
        )  # fmt: skip

    def _commit_live(self, generation: int) -> tuple[list[dict], dict[str, dict[str, dict[str, str]]]]:
        """Stages the next commit's segment list: base segments with their deletions, the added documents as new
        segments (their passages encoded by the index's dense and SPLADE models), and the merges the policy (or
        compact) asks for; moves them into place and returns their manifest entries and, per neural kind and
        model, each segment's folder (nothing is visible before the manifest names them)."""
        reader = self.reader
        options = self._options()
        analyzer = Analyzer(options.analyzer)
        models = [(kind, model) for kind in NEURAL_KINDS for model in self.base.get(kind, {})]
        planned: list[_Planned] = []
        for i, (entry, segment) in enumerate(zip(self.base["segments"], reader.segments)):
            deletions = reader.deletions[i]
            if i in self._deleted:
                deletions = self._deletions(i, analyzer)
                entry = {**entry, "deletions": f"{entry['name']}.del{generation:06d}"}
                write_deletions(self.staging / entry["deletions"], deletions)
            if segment.passages > len(deletions.passages):  # a wholly deleted segment leaves the index
                neural = {(kind, model): self.index_dir / self.base[kind][model]["segments"][entry["name"]]
                          for kind, model in models}  # fmt: skip
                planned.append(_Planned(entry, segment, deletions, staged=False, neural=neural))
        if self._added:
            stride = options.passage_stride or options.passage_window
            documents = (split_passages(doc, analyzer, options.passage_window, stride) for doc in self._added.values())
            for plan in self._stage_segments(documents, options, analyzer, generation):
                for kind, model in models:
                    plan.neural[kind, model] = self._encode(kind, model, plan.segment)
                planned.append(plan)
        failpoint("after-add")
        sizes = [(plan.live, plan.segment.passages) for plan in planned]
        groups = (self.merge_policy.compact(sizes, self._compact_to) if self._compact_to is not None
                  else self.merge_policy.choose(sizes))  # fmt: skip
        merged = {i for group in groups for i in group}
        kept = [plan for i, plan in enumerate(planned) if i not in merged]
        for group in groups:
            sources = [planned[i] for i in group]
            folder = self.staging / f"merge-{uuid.uuid4().hex[:8]}"
            merge_segments([plan.segment for plan in sources], folder, options.postings == "packed",
                           [plan.deletions.passages for plan in sources])  # fmt: skip
            merged = self._planned(folder, generation)
            for kind, model in models:
                rows = [(plan.neural[kind, model], plan.live_passages) for plan in sources]
                merged.neural[kind, model] = self._gather(kind, model, rows, merged.segment.packed)
            kept.append(merged)
        if groups:
            failpoint("merge")
        neural: dict[str, dict[str, dict[str, str]]] = {kind: {} for kind in NEURAL_KINDS}
        for plan in kept:
            name = plan.entry["name"]
            if plan.staged:
                publish_segment(plan.segment, self.index_dir / name)
            staged_deletions = self.staging / (plan.entry.get("deletions") or "-")
            if staged_deletions.exists():
                os.replace(staged_deletions, self.index_dir / plan.entry["deletions"])
            for (kind, model), folder in plan.neural.items():
                neural[kind].setdefault(model, {})[name] = self._publish(folder, name, kind)
        return [plan.entry for plan in kept], neural

    def _encode(self, kind: str, model: str, segment: Segment) -> Path:
        """A new segment's passages encoded by one of the index's models, into a staged folder."""
        folder = self.staging / f"{kind}-{uuid.uuid4().hex[:8]}"
        if kind == "dense":
            encode_dense(segment, self._encoder(kind, model), folder, self.base[kind][model].get("faiss", "auto"))
        else:
            encode_impact(segment, self._encoder(kind, model), folder, segment.packed)
        return folder

    def _gather(self, kind: str, model: str, rows: Rows, packed: bool) -> Path:
        """A merged segment's folder of one model, from the kept passages' folders (no encoding)."""
        folder = self.staging / f"{kind}-{uuid.uuid4().hex[:8]}"
        if kind == "dense":
            gather_dense(rows, folder, model, self.base[kind][model].get("faiss", "auto"))
        else:
            gather_impact(rows, folder, model, packed)
        return folder

    def _publish(self, folder: Path, segment_name: str, kind: str) -> str:
        """Moves a staged neural folder of a segment into place under a name tied to it; a committed one stays."""
        if folder.parent != self.staging:
            return folder.name
        name = f"{segment_name}.{kind}-{uuid.uuid4().hex[:8]}"
        os.replace(folder, self.index_dir / name)
        return name

    def _stage_segments(self, documents: Iterable[list[Passage]], options: BuildOptions, analyzer: Analyzer,
                        generation: int) -> list[_Planned]:  # fmt: skip
        folders, _ = write_passages(documents, self.staging / f"part-{uuid.uuid4().hex[:8]}",
                                    dataclasses.replace(options, merge=True), analyzer=analyzer)  # fmt: skip
        planned = [self._planned(folder, generation) for folder in folders]
        return [plan for plan in planned if plan.segment.passages]

    def _planned(self, folder: Path, generation: int) -> _Planned:
        """A staged segment folder, named for the commit that will publish it."""
        segment = Segment(folder)
        self._segment_number += 1
        name = f"{SEGMENT_PREFIX}{generation:06d}_{self._segment_number:04d}"
        entry = {"name": name, "passages": segment.passages, "documents": segment.meta["documents"],
                 "deletions": None}  # fmt: skip
        return _Planned(entry, segment, NO_DELETIONS, staged=True)

    # -- the one commit

    def commit(self, collect: bool = True) -> int:
        """Publishes everything staged as the next generation; returns its number. collect=False keeps the former
        generation's folders (a sharded index's commit removes them once every shard has committed)."""
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
        elif self._added or self._deleted or self._compact_to is not None:
            manifest["segments"], neural = self._commit_live(generation)
            for kind in NEURAL_KINDS:
                if kind in manifest:
                    manifest[kind] = {model: {**entry, "segments": neural[kind].get(model, {})}
                                      for model, entry in manifest[kind].items()}  # fmt: skip
        names = [s["name"] for s in manifest["segments"]]
        for kind in NEURAL_KINDS:
            section = {} if self._inverted is not None else dict(manifest.get(kind, {}))
            for model, (folders, entry) in self._neural[kind].items():
                published = {name: self._publish(folder, name, kind) for name, folder in zip(names, folders)}
                section[model] = {**entry, "segments": published}
            manifest.pop(kind, None)
            if section:
                manifest[kind] = section
        manifest["generation"] = generation
        failpoint("before-commit")
        commit_manifest(self.index_dir, manifest)
        self.committed = generation
        failpoint("after-commit")
        if collect:
            collect_garbage(self.index_dir, live_folders(manifest))
        self.base = read_manifest(self.index_dir)
        self._reuse = self._reader.segments if self._reader is not None else []
        self._reader = None
        self._reset()
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


def _checked_fields(doc: Document, fields: dict[str, str], where: str) -> dict:
    """A document's field values as the index's field types store them; ValueError says which does not fit."""
    checked = {}
    for name, value in doc.fields.items():
        if name not in fields:
            known = ", ".join(fields) or "none (declare them with sift index --field NAME:TYPE)"
            raise ValueError(f"{where}document {doc.id!r}: unknown field {name!r}; the index's fields: {known}")
        if value is not None:
            try:
                checked[name] = coerce(fields[name], value)
            except ValueError as e:
                raise ValueError(f"{where}document {doc.id!r}: field {name!r} ({fields[name]}): {e}") from None
    return checked


_SCAN_TOKENS_PER_POSTING = 8  # deleting more tokens than 1/8 of a segment's postings: scan them, do not re-analyze


def _analyzed_terms(segment: Segment, passages: np.ndarray, analyzer: Analyzer) -> np.ndarray:
    """Per term of the segment, how many of the passages hold it: their stored text analyzed again, as indexing
    analyzed it (cheap for a few passages)."""
    taken: dict[str, int] = {}
    for passage in passages.tolist():
        for term in set(analyzer.analyze(indexed_text(*segment.store.fields(passage, "title", "text")))):
            taken[term] = taken.get(term, 0) + 1
    terms = list(taken)
    ids = segment.terms.find_many(terms).astype(np.int64)
    if len(ids) and ids.min() < 0:
        raise SiftError(f"{segment.directory}: a stored passage holds terms its postings lack; the index is damaged")
    counts = np.zeros(len(segment.terms), dtype=np.int64)
    counts[ids] = [taken[t] for t in terms]
    return counts


def _postings_of(segment: Segment, passages: np.ndarray) -> np.ndarray:
    """Per term of the segment, how many of the passages hold it: one pass over its postings (cheap for many)."""
    chosen = np.zeros(segment.passages, dtype=np.int64)
    chosen[passages] = 1
    running = np.zeros(int(segment.offsets[-1]) + 1, dtype=np.int64)
    np.cumsum(chosen[np.asarray(segment.docs)], out=running[1:])
    offsets = np.asarray(segment.offsets, dtype=np.int64)
    return running[offsets[1:]] - running[offsets[:-1]]


@dataclasses.dataclass
class _Planned:
    """A segment of the commit being prepared: its manifest entry, its files (in place or staged), its deletions."""

    entry: dict
    segment: Segment
    deletions: Deletions
    staged: bool
    neural: dict[tuple[str, str], Path] = dataclasses.field(default_factory=dict)  # (kind, model) -> its folder

    @property
    def live(self) -> int:
        return self.segment.passages - len(self.deletions.passages)

    @property
    def live_passages(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.segment.passages), self.deletions.passages)


@dataclasses.dataclass(frozen=True)
class MergePolicy:
    """Tiered merging, after Lucene's TieredMergePolicy: segments are grouped in tiers of similar size (those below
    `floor_passages`, then powers of `segments_per_tier` above it, so that small commits never merge into a big
    segment's rewrite); a tier holding `segments_per_tier` segments is merged into one,
    and a segment whose deleted share passes `max_deleted_share` is rewritten without them. A commit never rewrites
    more than `max_merge_passages` live passages (bigger merges are compact()'s)."""

    segments_per_tier: int = 10
    floor_passages: int = 2_000
    max_merge_passages: int = 2_000_000
    max_deleted_share: float = 0.3

    def choose(self, sizes: list[tuple[int, int]]) -> list[list[int]]:
        """sizes: (live, total passages) per segment; returns groups of segment numbers to merge."""
        expunge = [i for i, (live, total) in enumerate(sizes)
                   if total and (total - live) / total > self.max_deleted_share and live <= self.max_merge_passages]
        groups = [[i] for i in expunge]
        tiers: dict[int, list[int]] = {}
        for i, (live, _) in enumerate(sizes):
            if i not in expunge:
                tier = 0 if live < self.floor_passages else 1 + int(
                    math.log(live / self.floor_passages, self.segments_per_tier) + 1e-9)
                tiers.setdefault(tier, []).append(i)
        for members in tiers.values():
            members.sort(key=lambda i: sizes[i][0])
            while len(members) >= self.segments_per_tier:
                group, members = members[: self.segments_per_tier], members[self.segments_per_tier :]
                if sum(sizes[i][0] for i in group) <= self.max_merge_passages:
                    groups.append(sorted(group))
        return groups

    @staticmethod
    def compact(sizes: list[tuple[int, int]], max_segments: int) -> list[list[int]]:
        """Groups of consecutive segments, at most max_segments of them and of similar live size; every segment
        with deletions is rewritten."""
        total = sum(live for live, _ in sizes)
        groups: list[list[int]] = []
        current: list[int] = []
        filled = 0
        for i, (live, _) in enumerate(sizes):
            current.append(i)
            filled += live
            if filled >= total * (len(groups) + 1) / max_segments and len(groups) < max_segments - 1:
                groups.append(current)
                current = []
        if current:
            groups.append(current)
        return [g for g in groups if len(g) > 1 or sizes[g[0]][0] < sizes[g[0]][1]]
