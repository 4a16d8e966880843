"""Live updates against tantivy's IndexWriter, on the same synthetic documents in the same run:

    python3 -m bench.updates --documents 200000        # pip install tantivy for the peer

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

    def _writer(self) -> IndexWriter:
        """What sift.Index.writer() gives an embedding application: one commit per block, the reader's segments
        reused."""
        return IndexWriter(self.path, commit_on_exit=True, reuse=self.index.segments)

    def commit(self, records: list[dict]) -> None:
        with self._writer() as writer:
            writer.add(Document(r["_id"], r["text"], fields={"year": r["year"]}) for r in records)

    def delete(self, ids: list[str]) -> None:
        with self._writer() as writer:
            writer.delete(ids)

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
    for make in (SiftEngine, TantivyEngine):
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
        "# Live updates: Sift against tantivy",
        "",
        f"Date: {report['date']}; {report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"tantivy {report['software'].get('tantivy')}. {report['documents']:,} synthetic documents (Zipfian words, "
        f"a `year` field of 1,000 values), {report['queries']} queries of 2-5 of their words, one thread. Commits "
        "add new documents (upserts); the deletion removes 10% of the documents; filtered searches keep 1%, 10% or "
        "50% of them. Ratios: Sift over tantivy (higher is better for Sift, except latencies).",
        "",
        "| metric | " + " | ".join(names) + (" | Sift ÷ tantivy |" if len(names) > 1 else " |"),
        "|---|" + "---|" * len(names) + ("---|" if len(names) > 1 else ""),
    ]
    for metric in metrics:
        values = [engines[n].get(metric) for n in names]
        ratio = ""
        if len(names) > 1 and values[0] and values[1]:
            ratio = f" {values[0] / values[1]:.2f}× |"
        lines.append(f"| {metric} | " + " | ".join(f"{v:,}" for v in values) + (" |" + ratio if ratio else " |"))
    lines += ["", "Lucene's IndexWriter and LanceDB were not run here (see the note on issue 14)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args(argv)
    publish("updates", run(args.documents, args.queries), render)


if __name__ == "__main__":
    main()
