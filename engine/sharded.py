"""A sharded index: documents split by a stable hash of their id into shards, each an ordinary index (built apart by
indexers/sharded.py, possibly on many machines), searched as one.

Layout: INDEX_DIR/sharded.json names the shards (INDEX_DIR/shards/NNN/ for the first build; a rebuild over an
existing sharded index writes shards.G/NNN and commits by replacing sharded.json, so a failed build leaves the
former one). BM25 over the shards scores exactly as one index over all their documents: every shard's searcher
takes N, the average length and each query term's document frequency from the whole collection (Collection, asked
of every shard at the query's first lookup of a term, then cached with the term), and exact score ties across
shards go by document id as they do across one index's segments.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from engine.analysis import Analyzer, AnalyzerConfig
from engine.errors import SiftError
from engine.format import IndexFormatError, failpoint, parse_meta
from engine.index import Index
from engine.query import query_terms, snippet
from engine.reader import ADAPTIVE_CANDIDATES, DocumentNotFoundError, Results, adaptive_k, locate
from engine.sparse import BM25Params

SHARDED_MANIFEST = "sharded.json"
SHARDED_FORMAT = "sift-sharded"
SHARDED_VERSION = 1


def shard_of(doc_id: str, shards: int) -> int:
    """The shard a document belongs to: a hash of its id that every process and machine computes alike (Python's
    hash() is salted per process)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def is_sharded(path: str | os.PathLike) -> bool:
    return (Path(path) / SHARDED_MANIFEST).is_file()


def read_sharded_manifest(path: str | os.PathLike) -> dict:
    file = Path(path) / SHARDED_MANIFEST
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: holds no sharded Sift index (no {SHARDED_MANIFEST})") from None
    manifest = parse_meta(file, raw)
    if manifest.get("format") != SHARDED_FORMAT:
        raise IndexFormatError(f"{file}: not a sharded Sift index manifest")
    if manifest.get("format_version") != SHARDED_VERSION:
        raise IndexFormatError(f"{file}: format version {manifest.get('format_version')} is not supported (this "
                               f"Sift reads version {SHARDED_VERSION}); rebuild the index")  # fmt: skip
    return manifest


class Collection:
    """BM25's statistics over every shard of a sharded index: what each shard's searcher scores with."""

    def __init__(self) -> None:
        self.shards: list[Index] = []  # filled once every shard is open

    @cached_property
    def scored_passages(self) -> int:
        return sum(shard.scored_passages for shard in self.shards)

    @cached_property
    def avgdl(self) -> float:
        tokens = sum(shard.tokens for shard in self.shards)
        return float(np.float32(tokens / max(self.scored_passages, 1)))

    def document_frequencies(self, terms: list[str]) -> np.ndarray:
        return np.sum([shard.bm25.document_frequencies(terms) for shard in self.shards], axis=0)


class _LocalShards:
    """The shards opened in this process."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.collection = Collection()
        self.indexes = [Index(path / folder, collection=self.collection, manifest=shard)
                        for folder, shard in zip(manifest["shards"], manifest["shard_manifests"])]  # fmt: skip
        self.collection.shards = self.indexes
        self.passages = [index.passages for index in self.indexes]

    def search(self, queries: list, k: int, options: dict, allow_partial: bool) -> list[list[Results | None]]:
        """Per shard, each query's top k there."""
        return [index.batch_search(queries, k, **options) for index in self.indexes]

    def call(self, shard: int, method: str, *args):
        return getattr(self.indexes[shard], method)(*args)

    def avgdl(self) -> float:
        return self.collection.avgdl

    def neural(self, kind: str, model: str | None, threads: int | None, queries: list, k: int, filter: str | None,
               allow_partial: bool) -> list[list[Results | None]]:  # fmt: skip
        searchers = self.__dict__.setdefault("_neural", {})
        if (kind, model) not in searchers:
            searchers[kind, model] = [_neural_searcher(index, kind, model, threads) for index in self.indexes]
        return [searcher.search_many(queries, k, filter=filter) for searcher in searchers[kind, model]]


def _neural_searcher(index: Index, kind: str, model: str | None, threads: int | None):
    from engine.neural import DenseSearcher, ImpactSearcher

    return (DenseSearcher if kind == "dense" else ImpactSearcher)(index, model, threads)


class ShardUnavailableError(SiftError):
    """A shard did not answer (its actors died, or the timeout passed)."""


class ShardActor:
    """One shard served by a Ray actor: an ordinary index scoring with the whole collection's N and average length
    (from the top-level manifest, given at construction, so that an actor Ray restarts after a crash scores alike)
    and each query term's df (given with every search)."""

    def __init__(self, path: str, manifest: dict, scored_passages: int, avgdl: float,
                 expected: tuple[int, int]) -> None:  # fmt: skip
        """manifest: the shard's commit that the sharded index's manifest names."""
        self.statistics = _GivenStatistics(scored_passages, avgdl)
        self.index = Index(path, collection=self.statistics, manifest=manifest)
        found = (self.index.scored_passages, self.index.tokens)
        if found != tuple(expected):
            raise IndexFormatError(f"{path}: holds {found[0]} scored passages and {found[1]} tokens, its sharded "
                                   f"manifest says {expected[0]} and {expected[1]}; the index is damaged")  # fmt: skip

    def passages(self) -> int:
        return self.index.passages

    def document_frequencies(self, terms: list[str]) -> np.ndarray:
        return self.index.bm25.document_frequencies(terms)

    def search(self, queries: list, k: int, options: dict, df: dict[str, int]) -> list[Results]:
        failpoint("shard-actor-search")
        self.statistics.df.update(df)
        return self.index.batch_search(queries, k, **options)

    def call(self, method: str, *args):
        return getattr(self.index, method)(*args)

    def neural(self, kind: str, model: str | None, threads: int | None, queries: list, k: int,
               filter: str | None) -> list[Results]:  # fmt: skip
        searchers = self.__dict__.setdefault("_neural", {})
        if (kind, model) not in searchers:
            searchers[kind, model] = _neural_searcher(self.index, kind, model, threads)
        return searchers[kind, model].search_many(queries, k, filter=filter)


class _GivenStatistics:
    def __init__(self, scored_passages: int, avgdl: float) -> None:
        self.scored_passages, self.avgdl, self.df = scored_passages, avgdl, {}

    def document_frequencies(self, terms: list[str]) -> np.ndarray:
        return np.array([self.df[term] for term in terms], dtype=np.int64)


class _RayShards:
    """The shards served by Ray actors, `replicas` per shard (requests go round the replicas). A query's terms are
    analyzed here, their collection df gathered from every shard the first time a term is seen (a first round),
    then every shard searched with them (the second)."""

    def __init__(self, path: Path, manifest: dict, address: str, replicas: int, timeout: float) -> None:
        self.ray = connect_ray(address)
        self.timeout = timeout
        statistics = manifest["statistics"]
        self.scored_passages = sum(statistics["scored_passages"])
        self._avgdl = float(np.float32(sum(statistics["tokens"]) / max(self.scored_passages, 1)))
        actor = self.ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, max_concurrency=8,
                                scheduling_strategy="SPREAD")(
            ShardActor
        )
        expected = zip(statistics["scored_passages"], statistics["tokens"])
        self.actors = [[actor.remote(str(path / folder), shard, self.scored_passages, self._avgdl, counts)
                        for _ in range(replicas)]
                       for folder, shard, counts in zip(manifest["shards"], manifest["shard_manifests"], expected)]
        self._turn = itertools.count()
        self.passages = [answer[0] for answer in self._gather([[a.passages.remote()] for a in self._pick()], False)]
        self.config = AnalyzerConfig.from_dict(manifest["analyzer"])
        self._local = threading.local()
        self._df: dict[str, int] = {}
        self._df_lock = threading.Lock()

    def avgdl(self) -> float:
        return self._avgdl

    def _pick(self) -> list:
        turn = next(self._turn)
        return [replicas[turn % len(replicas)] for replicas in self.actors]

    def _gather(self, refs: list[list], allow_partial: bool) -> list[list | None]:
        """ray.get per shard within the timeout; a shard that fails or does not answer is an error naming it, or
        None with allow_partial."""
        flat = [ref for shard in refs for ref in shard]
        ready, _ = self.ray.wait(flat, num_returns=len(flat), timeout=self.timeout)
        ready = set(ready)
        answers: list[list | None] = []
        for shard, shard_refs in enumerate(refs):
            try:
                if not all(ref in ready for ref in shard_refs):
                    raise ShardUnavailableError(f"shard {shard} did not answer within {self.timeout:g} s")
                answers.append(self.ray.get(shard_refs))
            except (ShardUnavailableError, self.ray.exceptions.RayError) as error:
                if not allow_partial:
                    reason = error if isinstance(error, ShardUnavailableError) else type(error).__name__
                    raise ShardUnavailableError(f"shard {shard} ({self.actors[shard][0]}) is unavailable: {reason}; "
                                                "pass allow_partial=True for the other shards' results") from None
                answers.append(None)
        return answers

    def _analyzer(self) -> Analyzer:
        analyzer = getattr(self._local, "analyzer", None)
        if analyzer is None:
            analyzer = self._local.analyzer = Analyzer(self.config)
        return analyzer

    def search(self, queries: list, k: int, options: dict, allow_partial: bool) -> list[list[Results | None]]:
        analyzer = self._analyzer()
        terms = [analyzer.analyze(q) if isinstance(q, str) else list(q) for q in queries]
        wanted = {term for query in terms for term in query}
        with self._df_lock:
            missing = sorted(wanted - self._df.keys())
        partial_df = {}
        if missing:
            counts = self._gather([[a.document_frequencies.remote(missing)] for a in self._pick()], allow_partial)
            total = np.sum([c[0] for c in counts if c is not None], axis=0)
            if all(c is not None for c in counts):
                with self._df_lock:
                    self._df.update(zip(missing, total.tolist()))
            else:  # partial results: these terms' df from the shards that answered, never kept
                partial_df = dict(zip(missing, total.tolist()))
        with self._df_lock:
            df = {term: partial_df[term] if term in partial_df else self._df[term] for term in wanted}
        answers = self._gather([[a.search.remote(terms, k, options, df)] for a in self._pick()], allow_partial)
        return [answer[0] if answer is not None else [None] * len(queries) for answer in answers]

    def neural(self, kind: str, model: str | None, threads: int | None, queries: list, k: int, filter: str | None,
               allow_partial: bool) -> list[list[Results | None]]:  # fmt: skip
        refs = [[a.neural.remote(kind, model, threads, queries, k, filter)] for a in self._pick()]
        return [answer[0] if answer is not None else [None] * len(queries)
                for answer in self._gather(refs, allow_partial)]  # fmt: skip

    def call(self, shard: int, method: str, *args):
        replicas = self.actors[shard]
        return self._gather([[replicas[next(self._turn) % len(replicas)].call.remote(method, *args)]], False)[0][0]


def connect_ray(address: str):
    """Ray, connected: address "auto" joins the cluster this machine belongs to (RAY_ADDRESS, or one started with
    `ray start`) and, when there is none, starts a local one in this process; any other address must answer."""
    try:
        import ray
    except ImportError:
        raise SiftError("Ray is not installed: pip install 'sift-engine[distributed]'") from None
    if ray.is_initialized():
        return ray
    options = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
    if address != "auto":
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SiftError(f"cannot reach the Ray cluster at {address}: {e}") from None
        return ray
    try:
        ray.init(address="auto", **options)
    except (ConnectionError, RuntimeError, ValueError):
        ray.init(num_cpus=os.cpu_count() or 1, **options)
    return ray


class ShardedIndex:
    """One commit of a sharded index, with the search, batch_search, fetch and texts of an Index (engine/index.py).
    Passage numbers are global: shard s's passage p is bases[s] + p. Safe to search from many threads.

    ray: None searches the shards in this process; "auto" or a cluster's address serves each shard from Ray actors
    (`replicas` per shard, restarted by Ray if they die, a task retried on the restarted actor); a shard that does
    not answer within `timeout` seconds is a ShardUnavailableError naming it, or with allow_partial=True the other
    shards' hits, the results' `missing` listing the shards left out (their scores are exact if the query's terms
    were seen while every shard answered; else those terms' df counts the answering shards only)."""

    def __init__(self, path: str | os.PathLike, ray: str | None = None, replicas: int = 1, timeout: float = 30.0,
                 allow_partial: bool = False) -> None:  # fmt: skip
        self.path = Path(path)
        self.manifest = read_sharded_manifest(self.path)
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        if ray is None:
            self._shards: _LocalShards | _RayShards = _LocalShards(self.path, self.manifest)
        else:
            self._shards = _RayShards(self.path, self.manifest, ray, replicas, timeout)
        self.allow_partial = allow_partial
        self._options = {"ray": ray, "replicas": replicas, "timeout": timeout, "allow_partial": allow_partial}
        self.bases = np.cumsum([0, *self._shards.passages])
        self.split_passages = bool(self.manifest["passages"].get("window"))

    @property
    def shards(self) -> list[Index]:
        """The shards' indexes, when they are searched in this process."""
        if not isinstance(self._shards, _LocalShards):
            raise SiftError("the shards are served by Ray actors, not opened in this process")
        return self._shards.indexes

    @property
    def default_params(self) -> BM25Params:
        return BM25Params(**self.manifest["bm25"])

    @property
    def fields(self) -> dict[str, str]:
        return self.manifest.get("fields") or {}

    @property
    def passages(self) -> int:
        return int(self.bases[-1])

    # -- search

    def search(self, query: str | Sequence[str], k: int | str = 10, params: BM25Params | None = None,
               documents: bool = False, algorithm: str = "auto", filter: str | None = None, syntax: str = "plain",
               offset: int = 0, typos: str = "off",
               fields: str | dict[str, float] | None = None) -> Results:  # fmt: skip
        """As Index.search, over every shard; the lucene syntax, fields and typos are not supported yet."""
        if syntax != "plain" or fields is not None or typos != "off":
            option = "fields" if fields is not None else "typos" if typos != "off" else f"syntax {syntax}"
            raise SiftError(f"{self.path}: {option} is not supported on a sharded index yet (plain BM25 queries, "
                            "filters, k, offset and documents are)")  # fmt: skip
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, got {offset}")
        if k == "auto":
            ranked = self.search(query, ADAPTIVE_CANDIDATES, params, documents, algorithm, filter)
            return ranked.head(adaptive_k(ranked.scores)).page(offset)
        if not isinstance(k, int) or isinstance(k, bool):
            raise ValueError(f'k must be a whole number or "auto", got {k!r}')
        return self.batch_search([query], k + offset, params, documents, 1, algorithm, filter)[0].page(offset)

    def batch_search(self, queries: Sequence[str | Sequence[str]], k: int = 10, params: BM25Params | None = None,
                     documents: bool = False, threads: int | None = None, algorithm: str = "auto",
                     filter: str | None = None) -> list[Results]:  # fmt: skip
        """Many queries at once, in order; each shard scores them on its pool of threads."""
        options = {"params": params, "documents": documents, "threads": threads, "algorithm": algorithm,
                   "filter": filter}  # fmt: skip
        per_shard = self._shards.search(list(queries), k, options, self.allow_partial)
        return [self._merge([found[i] for found in per_shard], k) for i in range(len(queries))]

    def neural_searcher(self, kind: str, model: str | None = None, threads: int | None = None) -> _ShardedNeural:
        """A dense ("dense") or SPLADE ("splade") first stage over every shard, as engine.neural's searchers are
        over one index (what pipelines use)."""
        built = self.manifest.get("dense" if kind == "dense" else "impact") or {}
        if not built:
            flag = "--dense" if kind == "dense" else "--splade"
            raise SiftError(f"{self.path}: no {kind} index; build the shards with: sift index ... --shards N {flag}")
        if model is not None and model not in built:
            raise SiftError(f"{self.path}: no {kind} index for {model!r}; it has: {', '.join(built)}")
        return _ShardedNeural(self, "dense" if kind == "dense" else "splade", model, threads)

    def _merge(self, found: list[Results | None], k: int) -> Results:
        """The best k of the shards' own top k: by score, exact ties by (document id, part) as within one index."""
        keys = []
        for shard, results in enumerate(found):
            if results is None:
                continue
            parts = [int(i.rpartition("#")[2]) if i != doc else 0 for i, doc in zip(results.ids, results.doc_ids)]
            for j, (score, doc_id, part) in enumerate(zip(results.scores.tolist(), results.doc_ids, parts)):
                keys.append((-score, doc_id.encode("utf-8"), part, shard, j))
        keys.sort()
        best = [(found[shard], shard, j) for *_, shard, j in keys[:k]]
        merged = Results([r.ids[j] for r, _, j in best], [r.doc_ids[j] for r, _, j in best],
                         np.array([r.scores[j] for r, _, j in best], dtype=np.float32),
                         np.array([r.passages[j] + self.bases[shard] for r, shard, j in best], dtype=np.int64))
        merged.missing = [shard for shard, results in enumerate(found) if results is None]
        return merged

    # -- stored passages

    def _locate(self, passages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, passage number within it) of global passage numbers."""
        return locate(self.bases, passages)

    def passage_number(self, passage_id: str) -> int:
        """The global number of a document id (its first passage) or of "docid#n"."""
        doc_id, _, part = passage_id.rpartition("#")
        for name in [passage_id] + ([doc_id] if doc_id and part.isdigit() else []):
            shard = shard_of(name, len(self.bases) - 1)
            try:
                return int(self._shards.call(shard, "passage_number", passage_id)) + int(self.bases[shard])
            except DocumentNotFoundError:
                continue
        raise DocumentNotFoundError(f"{self.path}: no document or passage {passage_id!r}")

    def document_passages(self, doc_id: str) -> np.ndarray:
        shard = shard_of(doc_id, len(self.bases) - 1)
        return self._shards.call(shard, "document_passages", doc_id) + self.bases[shard]

    def fetch(self, passage: int | str) -> dict:
        number = self.passage_number(passage) if isinstance(passage, str) else passage
        shards, local = self._locate(np.array([number]))
        return self._shards.call(int(shards[0]), "fetch", int(local[0]))

    def texts(self, passages: np.ndarray) -> list[str]:
        shards, local = self._locate(passages)
        texts = [""] * len(local)
        for shard in np.unique(shards).tolist():
            where = np.flatnonzero(shards == shard)
            for i, text in zip(where.tolist(), self._shards.call(shard, "texts", local[where])):
                texts[i] = text
        return texts

    def snippets(self, hits: Results, query: str, syntax: str = "plain", length: int = 200) -> list[str]:
        analyzer = Analyzer(AnalyzerConfig.from_dict(self.manifest["analyzer"]))
        terms, memo = query_terms(query, analyzer, syntax), {}
        return [snippet(text, terms, analyzer, length, memo=memo) for text in self.texts(hits.passages)]

    # -- the commit

    def stats(self) -> dict:
        shards = [self._shards.call(shard, "stats") for shard in range(len(self.bases) - 1)]
        return {
            "passages": sum(s["passages"] for s in shards),
            "documents": sum(s["documents"] for s in shards),
            "deleted_passages": sum(s["deleted_passages"] for s in shards),
            "deleted_documents": sum(s["deleted_documents"] for s in shards),
            "avgdl": self._shards.avgdl(),
            "segments": sum(s["segments"] for s in shards),
            "shards": len(shards),
            "shard_sizes": [
                {"folder": folder, "passages": s["passages"], "documents": s["documents"]}
                for folder, s in zip(self.manifest["shards"], shards)
            ],
            "generation": self.manifest["generation"],
        }

    def refresh(self) -> ShardedIndex:
        """The newest commit: self when nothing newer was committed."""
        if read_sharded_manifest(self.path)["generation"] == self.manifest["generation"]:
            return self
        return type(self)(self.path, **self._options)


class _ShardedNeural:
    """A dense or SPLADE first stage over every shard: each shard's exact top k (of its live, matching passages),
    merged by score with ties by document id, as one index merges its segments."""

    def __init__(self, index: ShardedIndex, kind: str, model: str | None, threads: int | None) -> None:
        self.index, self.kind, self.model, self.threads = index, kind, model, threads

    def search_many(self, queries: Sequence[str], k: int = 10, filter: str | None = None) -> list[Results]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        per_shard = self.index._shards.neural(self.kind, self.model, self.threads, list(queries), k, filter,
                                              self.index.allow_partial)  # fmt: skip
        return [self.index._merge([found[i] for found in per_shard], k) for i in range(len(queries))]
