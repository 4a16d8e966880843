"""First-stage engines behind one small interface, fed identical pre-tokenized input.

Every engine receives the same terms: Sift's analyzer runs once, and each distinct term becomes a surrogate token
("t" + number) that every tokenizer keeps as it is (no stemming, no stop words, nothing to split or lower-case), so
only the engines differ. A corpus yields (id, tokens joined by spaces) and may stream from disk (10M passages do not
fit in memory as Python lists); queries are lists of tokens.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine.analysis import AnalyzerConfig
from engine.index import open_index
from engine.sparse import BM25Params, choose_algorithm
from indexers.corpus import Document
from indexers.inverted import BuildOptions
from indexers.writer import build_index

PEERS = ("sift", "pisa-bmw", "pisa-bmm", "pyserini", "bm25s", "tantivy")


class PeerUnavailable(RuntimeError):
    pass


class Corpus:
    """Passages as (id, surrogate tokens joined by spaces): held in memory, or read from a TSV file on each pass."""

    def __init__(self, passages: list[tuple[str, str]] | None = None, path: Path | None = None, size: int = 0):
        self._passages, self._path = passages, path
        self._size = len(passages) if passages is not None else size

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if self._passages is not None:
            yield from self._passages
            return
        with open(self._path, encoding="utf-8") as f:
            for line in f:
                passage_id, _, text = line.rstrip("\n").partition("\t")
                yield passage_id, text

    def ids(self) -> list[str]:
        return [passage_id for passage_id, _ in self]

    @staticmethod
    def write(passages: Iterable[tuple[str, str]], path: Path) -> int:
        count = 0
        with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as f:
            for passage_id, text in passages:
                f.write(f"{passage_id}\t{text}\n")
                count += 1
        path.with_suffix(".tmp").replace(path)
        return count


class Engine:
    """One engine over one corpus: build once, then search single queries or batches."""

    name: str
    same_bm25 = True  # computes Lucene's BM25 with k1=0.9, b=0.4, so per-rank scores can be compared

    def build(self, corpus: Corpus, work: Path) -> float | None:
        """Builds the index under work; returns the seconds it took (None: reused another engine's)."""
        raise NotImplementedError

    def index_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def search(self, query: list[str], k: int) -> list[tuple[str, float]]:
        raise NotImplementedError

    def batch(self, queries: Sequence[list[str]], k: int, threads: int) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda q: self.search(q, k), queries))


class SiftEngine(Engine):
    name = "sift"

    def __init__(self, algorithm: str = "auto") -> None:
        self.algorithm = algorithm

    def build(self, corpus, work):
        self.path = work / "sift"
        shutil.rmtree(self.path, ignore_errors=True)
        # what Lucene's WhitespaceAnalyzer does with the same tokens: split on whitespace, nothing else
        plain = AnalyzerConfig(tokenizer="whitespace", lowercase=False, possessives=False, stopwords=(), stemmer=None)
        options = BuildOptions(analyzer=plain)
        started = time.perf_counter()
        build_index((Document(i, text) for i, text in corpus), self.path, options)
        seconds = time.perf_counter() - started
        self.index = open_index(self.path)
        return seconds

    def search(self, query, k):
        return self.index.search(query, k, algorithm=self.algorithm).pairs()

    def search_internal(self, query, k, algorithm):
        return self.index.search_passages(query, k, BM25Params(), algorithm)

    def batch(self, queries, k, threads):
        self.index.batch_search(queries, k, threads=threads, algorithm=self.algorithm)

    def algorithms_served(self, queries, k) -> dict[str, int]:
        """How many (query, segment) searches each kernel served under this engine's algorithm."""
        searcher = self.index.bm25
        served: Counter = Counter()
        for query in queries:
            plan = searcher.plan(query)
            for term_ids, postings in zip(plan.term_ids, plan.postings):
                if postings:
                    served[choose_algorithm(self.algorithm, postings, k, int((term_ids >= 0).sum()))] += 1
        return dict(served)


class PisaEngine(Engine):
    """PISA through pyterrier-pisa's native module, called directly (no pandas in the timed path)."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.name = {"block_max_wand": "pisa-bmw", "block_max_maxscore": "pisa-bmm"}[algorithm]

    def build(self, corpus, work):
        try:
            import pyterrier_pisa
        except ImportError as e:
            raise PeerUnavailable(f"pyterrier-pisa is not installed ({e})") from None
        self.path = work / "pisa"
        seconds = None  # both PISA algorithms share one index; it is built (and timed) once
        if not (self.path / "pt_meta.json").exists():
            started = time.perf_counter()
            index = pyterrier_pisa.PisaIndex(str(self.path), text_field="text", stemmer="none", stops="none", threads=1)
            index.index({"docno": i, "text": text} for i, text in corpus)
            seconds = time.perf_counter() - started
        index = pyterrier_pisa.PisaIndex(str(self.path), stemmer="none", stops="none", threads=1)
        self._retriever = index.bm25(k1=0.9, b=0.4, query_algorithm=self.algorithm, threads=1)
        self._pisathon = pyterrier_pisa._pisathon
        return seconds

    def _retrieve(self, queries, k, threads):
        n = len(queries) * k
        qidx, docnos = np.empty(n, dtype=np.int32), np.empty(n, dtype=object)
        ranks, scores = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.float32)
        size = self._pisathon.retrieve(
            self._retriever._ctxt, self.algorithm, [(i, " ".join(q)) for i, q in enumerate(queries)], k=k,
            threads=threads, query_weighted=0, pretokenised=False, result_qidxs=qidx, result_docnos=docnos,
            result_ranks=ranks, result_scores=scores,
        )  # fmt: skip
        return qidx[:size], docnos[:size], scores[:size]

    def search(self, query, k):
        _, docnos, scores = self._retrieve([query], k, 1)
        return list(zip(docnos.tolist(), scores.tolist()))

    def batch(self, queries, k, threads):
        self._retrieve(list(queries), k, threads)


class LuceneEngine(Engine):
    """Lucene 9.9.1 (pyserini's Anserini jar) on pre-tokenized text, searched through pyjnius as pyserini does."""

    name = "pyserini"

    def build(self, corpus, work):
        from bench import lucene

        try:
            jnius = lucene._jnius()
        except lucene.LuceneUnavailable as e:
            raise PeerUnavailable(str(e)) from None
        self.path = work / "lucene"
        collection = work / "lucene-input"
        shutil.rmtree(self.path, ignore_errors=True)
        collection.mkdir(parents=True, exist_ok=True)
        with open(collection / "docs.jsonl", "w", encoding="utf-8") as f:
            for i, text in corpus:
                f.write(json.dumps({"id": i, "contents": text}) + "\n")
        seconds = lucene.build(collection, self.path, threads=1, pretokenized=True)
        self._searcher = lucene.Searcher(self.path)
        self._searcher.use_analyzer(jnius.autoclass("org.apache.lucene.analysis.core.WhitespaceAnalyzer")())
        return seconds

    def index_bytes(self):
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def search(self, query, k):
        return self._searcher.search(" ".join(query), k)


_BM25S_MOST_PASSAGES = 2_000_000


class Bm25sEngine(Engine):
    name = "bm25s"

    def build(self, corpus, work):
        try:
            import bm25s
        except ImportError as e:
            raise PeerUnavailable(f"bm25s is not installed ({e})") from None
        if len(corpus) > _BM25S_MOST_PASSAGES:
            raise PeerUnavailable(
                f"bm25s takes the corpus as Python lists of tokens: {len(corpus):,} passages would not fit in memory"
            )
        self.path = work / "bm25s"
        self._ids = corpus.ids()
        docs = [text.split() for _, text in corpus]  # bm25s's input, made before its clock starts
        started = time.perf_counter()
        self._retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene", backend="numba")
        self._retriever.index(docs, show_progress=False)
        seconds = time.perf_counter() - started
        shutil.rmtree(self.path, ignore_errors=True)
        self._retriever.save(str(self.path))
        return seconds

    def _retrieve(self, queries, k, threads):
        known = self._retriever.vocab_dict
        cleaned = [[t for t in q if t in known] or [next(iter(known))] for q in queries]
        k = min(k, len(self._ids))
        return self._retriever.retrieve(cleaned, k=k, n_threads=threads, show_progress=False)

    def search(self, query, k):
        docs, scores = self._retrieve([query], k, 1)
        return [(self._ids[d], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]

    def batch(self, queries, k, threads):
        self._retrieve(list(queries), k, threads)


class TantivyEngine(Engine):
    name = "tantivy"
    same_bm25 = False  # tantivy's BM25 is fixed at k1=1.2, b=0.75

    def build(self, corpus, work):
        try:
            import tantivy
        except ImportError as e:
            raise PeerUnavailable(f"tantivy is not installed ({e})") from None
        self.path = work / "tantivy"
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("body", stored=False, tokenizer_name="whitespace")
        builder.add_text_field("docno", stored=True, tokenizer_name="raw")
        started = time.perf_counter()
        self._index = tantivy.Index(builder.build(), path=str(self.path))
        writer = self._index.writer(heap_size=512 * 2**20, num_threads=1)
        for i, text in corpus:
            writer.add_document(tantivy.Document(docno=i, body=text))
        writer.commit()
        writer.wait_merging_threads()
        seconds = time.perf_counter() - started
        self._index.reload()
        self._searcher = self._index.searcher()
        return seconds

    def search(self, query, k):
        parsed = self._index.parse_query(" ".join(query), ["body"])
        hits = self._searcher.search(parsed, k).hits
        return [(self._searcher.doc(address)["docno"][0], score) for score, address in hits]


def make(name: str) -> Engine:
    if name == "sift":
        return SiftEngine()
    if name == "pisa-bmw":
        return PisaEngine("block_max_wand")
    if name == "pisa-bmm":
        return PisaEngine("block_max_maxscore")
    if name == "pyserini":
        return LuceneEngine()
    if name == "bm25s":
        return Bm25sEngine()
    if name == "tantivy":
        return TantivyEngine()
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
