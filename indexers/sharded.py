"""Building a sharded index (engine/sharded.py): documents partitioned by a stable hash of their id into N shards,
each an ordinary index, built in parallel as Ray tasks (or one after another in this process without Ray).

Two rounds of tasks, neither fed by a single reader:
1. partition: each task reads one span of the corpus (a line-aligned byte range of an uncompressed JSONL or TSV
   file; a whole file for gzip and TREC, which cannot be entered midway), checks its records as `sift index` does,
   and spills each document to its shard's file for that span;
2. build: each shard's task reads its spill files in span order (so the result never depends on scheduling),
   checks ids across spans, and builds and commits an ordinary index in the new shards folder.
The top-level manifest (sharded.json) is written last, by rename: a build that fails or is killed leaves the
former sharded index, or none. Every task only writes files of its own, under names a retry rewrites whole, so a
task Ray retries after a worker died gives the same result.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.encoders import BiEncoder, SpladeEncoder
from engine.format import (
    MANIFEST,
    QUALITY_FOLDER,
    STAGING_PREFIX,
    WriteLock,
    collect_garbage,
    commit_manifest,
    failpoint,
    fsync_path,
    live_folders,
    read_manifest,
    write_json,
)
from engine.reader import IndexReader
from engine.sharded import (
    SHARDED_FORMAT,
    SHARDED_MANIFEST,
    SHARDED_VERSION,
    connect_ray,
    is_sharded,
    read_sharded_manifest,
    shard_of,
)
from indexers.corpus import (
    CorpusError,
    CorpusReader,
    CorpusSource,
    Document,
    SkipReport,
    Span,
    corpus_spans,
    count_lines,
    line_numbered,
    splittable,
)
from indexers.inverted import BuildOptions
from indexers.writer import IndexExistsError, IndexWriter

MAX_SHARDS = 1000
_SPILL_BATCH = 1000  # documents per pickled batch in a spill file


@dataclass
class ShardedBuildReport:
    index_dir: Path
    shards: int
    documents: int = 0
    passages: int = 0
    seconds: float = 0.0
    generation: int = 0
    tasks: dict = field(default_factory=dict)  # per round: tasks run and their seconds
    skipped: SkipReport = field(default_factory=SkipReport)

    def to_dict(self) -> dict:
        return {"index_dir": str(self.index_dir), "shards": self.shards, "documents": self.documents,
                "passages": self.passages, "seconds": round(self.seconds, 3),
                "documents_per_second": round(self.documents / max(self.seconds, 1e-9)),
                "generation": self.generation, "tasks": self.tasks, **self.skipped.to_dict()}  # fmt: skip


def _unit_name(unit: int) -> str:
    return f"span-{unit:05d}"


def _partition(source: CorpusSource, span: Span | None, unit: int, shards: int, spill: Path, skip_bad: bool) -> dict:
    """Round 1: one span (or a whole file) read, checked, and spilled per shard. Returns its documents, what it
    skipped, and the first error when not skipping."""
    started = time.perf_counter()
    reader = CorpusReader(source, skip_bad, span)
    outputs, batches, temporary = {}, {}, []
    try:
        for doc in reader:
            shard = shard_of(doc.id, shards)
            batch = batches.setdefault(shard, [])
            batch.append((doc.id, doc.text, doc.title, doc.source, doc.fields))
            if len(batch) >= _SPILL_BATCH:
                _spill(outputs, temporary, spill, unit, shard, batch)
        for shard, batch in batches.items():
            if batch:
                _spill(outputs, temporary, spill, unit, shard, batch)
    except CorpusError as error:
        return {"unit": unit, "error": (str(error.path), error.line, error.problem)}
    finally:
        for f in outputs.values():
            f.close()
    for name in temporary:
        os.replace(spill / name, spill / name.removesuffix(".tmp"))
    return {"unit": unit, "documents": reader.documents, "skipped": reader.skipped,
            "seconds": time.perf_counter() - started}  # fmt: skip


def _spill(outputs: dict, temporary: list, spill: Path, unit: int, shard: int, batch: list) -> None:
    if shard not in outputs:
        name = f"{_unit_name(unit)}.shard-{shard:03d}.tmp"
        outputs[shard] = open(spill / name, "wb")
        temporary.append(name)
    pickle.dump(batch, outputs[shard], protocol=pickle.HIGHEST_PROTOCOL)
    batch.clear()


def _spilled(spill: Path, units: int, shard: int, skip_bad: bool, skipped: SkipReport):
    """A shard's documents in span order; an id seen in an earlier span is an error (or skipped)."""
    seen: set[str] = set()
    for unit in range(units):
        path = spill / f"{_unit_name(unit)}.shard-{shard:03d}"
        if not path.exists():
            continue
        with open(path, "rb") as f:
            while True:
                try:
                    batch = pickle.load(f)
                except EOFError:
                    break
                for doc_id, text, title, where, fields in batch:
                    if doc_id in seen:
                        file, _, line = where.rpartition(":")
                        error = CorpusError(file, int(line), f"duplicate id: {doc_id!r} appeared earlier in the corpus")
                        if not skip_bad:
                            raise error
                        skipped.add(error)
                        continue
                    seen.add(doc_id)
                    yield Document(doc_id, text, title, where, fields)


def _build_shard(shard: int, spill: Path, units: int, directory: Path, options: BuildOptions, recorded: dict,
                 skip_bad: bool, neural: dict, pruning: tuple) -> dict:  # fmt: skip
    """Round 2: one shard's ordinary index, committed in its own folder (replaced whole if a retry finds one), with
    the dense and SPLADE parts neural asks for ({"dense": (model, faiss kind), "splade": model}) and without the
    passages pruning leaves out ((passage keys, how they were chosen))."""
    started = time.perf_counter()
    skipped = SkipReport()
    if not any((spill / f"{_unit_name(unit)}.shard-{shard:03d}").exists() for unit in range(units)):
        return {"shard": shard, "error": (str(directory), None, "no document of the corpus falls in this shard; "
                                          "build fewer shards")}  # fmt: skip
    try:
        with IndexWriter(directory, create=True, overwrite=True) as writer:
            documents = _spilled(spill, units, shard, skip_bad, skipped)
            pruned, how = pruning
            report = writer.build_inverted(documents, replace(options, overwrite=True), recorded, None, pruned, how)
            threads = neural.get("threads")  # a Ray task holds one core: one thread each, not one per core each
            if neural.get("dense"):
                model, faiss_kind = neural["dense"]
                writer.add_dense(BiEncoder(model, threads), faiss_kind)
            if neural.get("splade"):
                writer.add_impact(SpladeEncoder(neural["splade"], threads))
            failpoint("sharded-build-shard")
            generation = writer.commit()
    except CorpusError as error:
        return {"shard": shard, "error": (str(error.path), error.line, error.problem)}
    built = IndexReader(directory)
    return {"shard": shard, "documents": report.documents, "passages": report.passages, "generation": generation,
            "scored_passages": built.scored_passages, "tokens": built.tokens, "skipped": skipped,
            "seconds": time.perf_counter() - started}  # fmt: skip


class _Tasks:
    """Runs a round of tasks: as Ray tasks (one CPU each, retried by Ray if a worker dies) or in this process."""

    def __init__(self, ray_address: str | None) -> None:
        self.ray = None
        if ray_address is not None:
            self.ray = connect_ray(ray_address)

    def map(self, function: Callable, calls: list[tuple], on_done: Callable[[dict], None]) -> list[dict]:
        if self.ray is None:
            results = []
            for args in calls:
                results.append(function(*args))
                on_done(results[-1])
            return results
        remote = self.ray.remote(num_cpus=1, max_retries=3)(function)
        pending = {remote.remote(*args): i for i, args in enumerate(calls)}
        results: list = [None] * len(calls)
        waiting = list(pending)
        while waiting:
            done, waiting = self.ray.wait(waiting, num_returns=1)
            result = self.ray.get(done[0])
            results[pending[done[0]]] = result
            on_done(result)
        return results


def _check_target(index_dir: Path, overwrite: bool) -> tuple[int, str | None]:
    """(the new generation, the former shards folder to remove after the commit). Refuses to replace an index
    without overwrite, or to write into a folder that holds something else."""
    if not index_dir.exists():
        return 1, None
    if not index_dir.is_dir():
        raise IndexExistsError(f"{index_dir}: exists and is not a directory")
    if is_sharded(index_dir):
        former = read_sharded_manifest(index_dir)
        if not overwrite:
            raise IndexExistsError(f"{index_dir}: already holds a sharded index; pass --overwrite to replace it")
        return former["generation"] + 1, former["root"]
    if (index_dir / MANIFEST).exists():
        read_manifest(index_dir)
        if not overwrite:
            raise IndexExistsError(f"{index_dir}: already holds an index; pass --overwrite to replace it")
        return 1, None
    ours = (STAGING_PREFIX, "write.lock", QUALITY_FOLDER)  # quality: scores cached by --prune before the build
    if [p.name for p in index_dir.iterdir() if not p.name.startswith(ours)]:
        raise IndexExistsError(f"{index_dir}: is not empty and holds no Sift index; choose another directory")
    return 1, None


def build_sharded(source: CorpusSource, index_dir: str | os.PathLike, shards: int, options: BuildOptions,
                  recorded: dict | None = None, skip_bad: bool = False, ray_address: str | None = None,
                  on_progress: Callable[[int], None] | None = None, dense: tuple[str, str] | None = None,
                  splade: str | None = None, pruned: Collection[str] = frozenset(),
                  pruning: dict | None = None) -> ShardedBuildReport:  # fmt: skip
    """Builds and commits a sharded index of `shards` shards from source. ray_address: None builds in this process,
    one task after another; "auto" or a cluster's address runs the tasks on Ray. on_progress: called with the
    number of tasks finished so far (of spans + shards). dense: (model, faiss kind) and splade: a model, encoded in
    each shard's task (a faiss kind "auto" is chosen by each shard's size). pruned: keys of passages left out (as
    build_inverted takes them, chosen over the whole corpus), each shard given its own; pruning: how."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
    started = time.perf_counter()
    index_dir = Path(index_dir)
    generation, former_root = _check_target(index_dir, options.overwrite)
    created = not index_dir.exists()
    index_dir.mkdir(parents=True, exist_ok=True)
    report = ShardedBuildReport(index_dir, shards, generation=generation)
    staging = index_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    root = "shards" if generation == 1 else f"shards.{generation}"
    committed = False
    try:
        with WriteLock(index_dir):
            shutil.rmtree(index_dir / root, ignore_errors=True)  # a crashed build's, never a committed one's
            staging.mkdir()
            tasks = _Tasks(ray_address)
            workers = int(tasks.ray.cluster_resources().get("CPU", 1)) if tasks.ray else 1
            finished = 0

            def done(_: dict) -> None:
                nonlocal finished
                finished += 1
                if on_progress:
                    on_progress(finished)

            if splittable(source):
                spans = corpus_spans(source, max(2 * workers, shards))
                counts = tasks.map(count_lines, [(span,) for span in spans], lambda _: None)
                units: list[Span | None] = list(line_numbered(spans, counts))
            else:
                units = [None]  # the whole corpus, read by one task
            report.tasks["spans"] = len(units)
            partitioned = tasks.map(_partition, [(source, span, i, shards, staging, skip_bad)
                                                 for i, span in enumerate(units)], done)  # fmt: skip
            _raise_first(partitioned)
            for result in partitioned:
                report.skipped.merge(result["skipped"])
            report.tasks["partition_seconds"] = round(sum(r["seconds"] for r in partitioned), 3)
            options = replace(options, overwrite=True)
            by_shard: dict[int, set[str]] = {}
            for key in pruned:  # "docid#part": a passage goes where its document goes
                by_shard.setdefault(shard_of(key.rpartition("#")[0], shards), set()).add(key)
            built = tasks.map(_build_shard, [(shard, staging, len(units), index_dir / root / f"{shard:03d}", options,
                                              recorded or {}, skip_bad,
                                              {"dense": dense, "splade": splade, "threads": 1 if tasks.ray else None},
                                              (by_shard.get(shard, frozenset()), pruning))
                                             for shard in range(shards)], done)  # fmt: skip
            _raise_first(built)
            report.tasks["build_seconds"] = round(sum(r["seconds"] for r in built), 3)
            for result in built:
                report.skipped.merge(result["skipped"])
                report.documents += result["documents"]
                report.passages += result["passages"]
            shard_manifest = read_manifest(index_dir / root / "000")
            manifest = {
                "format": SHARDED_FORMAT,
                "format_version": SHARDED_VERSION,
                "generation": generation,
                "root": root,
                "shards": [f"{root}/{shard:03d}" for shard in range(shards)],
                "shard_manifests": [read_manifest(index_dir / root / f"{shard:03d}") for shard in range(shards)],
                # what BM25 over the shards needs besides df (a shard's own passages and tokens): Ray actors read it
                "statistics": {"scored_passages": [result["scored_passages"] for result in built],
                               "tokens": [result["tokens"] for result in built],
                               "documents": [result["documents"] for result in built]},
                "partition": {"hash": "blake2b-64 of the UTF-8 id, modulo shards", "shards": shards},
                "analyzer": shard_manifest["analyzer"],
                "bm25": shard_manifest["bm25"],
                "passages": shard_manifest["passages"],
                "fields": shard_manifest.get("fields") or {},
                "dense": {model: {k: v for k, v in entry.items() if k != "segments"}
                          for model, entry in shard_manifest.get("dense", {}).items()},
                "impact": {model: {k: v for k, v in entry.items() if k != "segments"}
                           for model, entry in shard_manifest.get("impact", {}).items()},
                "documents": report.documents,
                "source": recorded or {},
                "committed": time.time(),
            }
            _commit_sharded(index_dir, manifest)
            committed = True
            _remove_former(index_dir, former_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not committed:
            shutil.rmtree(index_dir / root, ignore_errors=True)
            if created:
                shutil.rmtree(index_dir, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def _commit_sharded(index_dir: Path, manifest: dict) -> None:
    """The one atomic step of a sharded build or change: the new sharded manifest replaces the old by rename."""
    temporary = index_dir / f"{SHARDED_MANIFEST}.tmp"
    write_json(temporary, {**manifest, "committed": time.time()})
    failpoint("before-sharded-manifest-rename")
    os.replace(temporary, index_dir / SHARDED_MANIFEST)
    fsync_path(index_dir)


class ShardedWriter:
    """Live changes to a sharded index: each document added, replaced or deleted in the shard its id hashes to.

    A commit commits the changed shards keeping their former segments, then replaces the sharded manifest (which
    names each shard's commit and the statistics BM25 and Ray actors read), then removes what no commit names.
    Readers open the shard commits the sharded manifest names, so until its rename they, and a crash, see the
    former commit whole; a writer opened after a crash first puts each shard back to the commit named there (the
    crashed commit's folders are then collected)."""

    def __init__(self, index_dir: str | os.PathLike, timeout: float = 0, commit_on_exit: bool = False) -> None:
        """timeout: seconds to wait for another writer (0: fail at once). commit_on_exit: a `with` block that ends
        without an exception commits what is staged (an exception always rolls back)."""
        self.index_dir = Path(index_dir)
        self.commit_on_exit = commit_on_exit
        self.manifest = read_sharded_manifest(self.index_dir)  # the error that says what is missing, if anything
        self._lock = WriteLock(self.index_dir, timeout)
        self._timeout = timeout
        self.writers: dict[int, IndexWriter] = {}

    def __enter__(self) -> ShardedWriter:
        self._lock.__enter__()
        try:
            self.manifest = read_sharded_manifest(self.index_dir)
            for folder, named in zip(self.manifest["shards"], self.manifest["shard_manifests"]):
                if read_manifest(self.index_dir / folder)["generation"] != named["generation"]:
                    commit_manifest(self.index_dir / folder, {k: v for k, v in named.items() if k != "checksum"})
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind, value, traceback) -> None:
        exc = (kind, value, traceback)
        try:
            if kind is None and self.commit_on_exit and self.pending:
                self.commit()
        except BaseException:
            exc = (None, None, None)
            self._close(exc)
            raise
        self._close(exc)

    def _close(self, exc: tuple) -> None:
        try:
            for writer in self.writers.values():
                writer.__exit__(*exc)
        finally:
            self.writers = {}
            self._lock.__exit__(*exc)

    def _writer(self, shard: int) -> IndexWriter:
        if shard not in self.writers:
            writer = IndexWriter(self.index_dir / self.manifest["shards"][shard], timeout=self._timeout)
            self.writers[shard] = writer.__enter__()
        return self.writers[shard]

    def _by_shard(self, items, key) -> dict[int, list]:
        shards: dict[int, list] = {}
        for item in items:
            shards.setdefault(shard_of(key(item), len(self.manifest["shards"])), []).append(item)
        return dict(sorted(shards.items()))

    def add(self, documents) -> tuple[int, int]:
        """Adds documents, replacing those whose ids the index holds; returns (added, replaced)."""
        added = replaced = 0
        for shard, chosen in self._by_shard(documents, lambda doc: doc.id).items():
            a, r = self._writer(shard).add(chosen)
            added, replaced = added + a, replaced + r
        return added, replaced

    def delete(self, ids) -> list[str]:
        """Deletes documents by id; returns the ids the index did not hold."""
        missing = []
        for shard, chosen in self._by_shard(ids, lambda doc_id: doc_id).items():
            missing += self._writer(shard).delete(chosen)
        return missing

    def compact(self, max_segments: int = 1) -> None:
        for shard in range(len(self.manifest["shards"])):
            self._writer(shard).compact(max_segments)

    @property
    def pending(self) -> bool:
        return any(writer.pending for writer in self.writers.values())

    def rollback(self) -> None:
        for writer in self.writers.values():
            writer.rollback()

    def commit(self) -> int:
        """Publishes every staged change at once; returns the sharded index's new generation."""
        changed = [shard for shard, writer in self.writers.items() if writer.pending]
        if not changed:
            return self.manifest["generation"]
        manifest = {**self.manifest, "generation": self.manifest["generation"] + 1}
        shard_manifests = list(manifest["shard_manifests"])
        statistics = {name: list(values) for name, values in manifest["statistics"].items()}
        for shard in changed:
            self.writers[shard].commit(collect=False)
            directory = self.index_dir / manifest["shards"][shard]
            shard_manifests[shard] = read_manifest(directory)
            reader = IndexReader(directory, manifest=shard_manifests[shard])
            statistics["scored_passages"][shard], statistics["tokens"][shard] = reader.scored_passages, reader.tokens
            statistics["documents"][shard] = reader.documents
        failpoint("sharded-after-shard-commits")
        manifest.update(shard_manifests=shard_manifests, statistics=statistics, documents=sum(statistics["documents"]))
        _commit_sharded(self.index_dir, manifest)
        for shard in changed:
            collect_garbage(self.index_dir / manifest["shards"][shard], live_folders(shard_manifests[shard]))
        self.manifest = manifest
        return manifest["generation"]


def open_writer(index_dir: str | os.PathLike, timeout: float = 0) -> IndexWriter | ShardedWriter:
    """The writer of an index or of a sharded index, whichever index_dir holds."""
    return ShardedWriter(index_dir, timeout) if is_sharded(index_dir) else IndexWriter(index_dir, timeout=timeout)


def _raise_first(results: list[dict]) -> None:
    """The first error in corpus order, as sift index reports it (file, line, problem)."""
    for result in results:
        if "error" in result:
            path, line, problem = result["error"]
            raise CorpusError(path, line, problem)


def _remove_former(index_dir: Path, former_root: str | None) -> None:
    """After the commit: the replaced sharded index's shards, or an ordinary index's files the new one replaced."""
    if former_root:
        shutil.rmtree(index_dir / former_root, ignore_errors=True)
    if (index_dir / MANIFEST).exists():
        folders = live_folders(read_manifest(index_dir))
        (index_dir / MANIFEST).unlink()
        for folder in folders:
            shutil.rmtree(index_dir / folder, ignore_errors=True)
