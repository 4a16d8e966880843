"""What a search answers, as one JSON-ready dict: shared by `sift search --json` and `sift serve`'s /search, so
that the two can never disagree."""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.index import Index
from engine.reader import ADAPTIVE_CANDIDATES, adaptive_k
from engine.sparse import BM25Params


@dataclass(frozen=True)
class SearchRequest:
    query: str
    k: int | str = 10  # or "auto": Adaptive-k
    offset: int = 0
    pipeline: str = "bm25"
    filter: str | None = None
    documents: bool = False
    syntax: str = "plain"
    fields: str | None = None
    typos: str = "off"
    text: bool = False  # each hit's stored title and text (and its snippet)
    snippets: bool = False
    fragment_length: int = 200


def answer(index: Index, request: SearchRequest, params: BM25Params | None = None, algorithm: str = "auto",
           pipeline=None) -> dict:  # fmt: skip
    """pipeline: the engine.pipeline.Pipeline for request.pipeline, when the caller keeps one (a service does)."""
    started = time.perf_counter()
    if request.offset < 0:
        raise ValueError(f"offset must be 0 or more, got {request.offset}")
    depth = ADAPTIVE_CANDIDATES if request.k == "auto" else request.k + request.offset
    query = request.query
    if request.typos == "auto":
        from engine.typos import correct

        if request.syntax != "plain":
            raise ValueError("typos auto corrects plain queries; in the lucene syntax write fuzzy terms, term~1")
        query = correct(index.bm25.analyzer, index.segments, request.query)
    if request.pipeline == "bm25":
        ranked = index.search(query, depth, params, request.documents, algorithm, request.filter, request.syntax,
                              fields=request.fields)  # fmt: skip
    else:
        if request.syntax != "plain" or request.fields:
            option = "fields" if request.fields else f"syntax {request.syntax}"
            raise ValueError(f"{option} works with the bm25 pipeline only, not {request.pipeline}")
        if pipeline is None:
            from engine.pipeline import Pipeline

            pipeline = Pipeline(index, request.pipeline, params=params, algorithm=algorithm)
        ranked = pipeline.search([query], depth, request.filter)[0]
    chosen = adaptive_k(ranked.scores) if request.k == "auto" else request.k + request.offset
    hits = ranked.head(chosen).page(request.offset)
    elapsed_ms = (time.perf_counter() - started) * 1000
    show_snippets = request.snippets or request.text
    fragments = (index.snippets(hits, query, request.syntax, request.fragment_length) if show_snippets
                 else [None] * len(hits))  # fmt: skip
    results = []
    for hit, fragment in zip(hits, fragments):
        item = hit.to_dict()
        if request.text or index.fields:
            record = index.fetch(hit.passage)
            if index.fields:
                item["fields"] = record["fields"]
            if request.text:
                item["title"], item["text"] = record.get("title", ""), record.get("text", "")
        if fragment is not None:
            item["snippet"] = fragment
        results.append(item)
    stages = {stage: round(seconds * 1000, 3) for stage, seconds in getattr(hits, "timings", {}).items()}
    extra = {"k_chosen": chosen} if request.k == "auto" else {}
    if query != request.query:
        extra["corrected"] = query
    return {"query": request.query, "k": request.k, **extra, "offset": request.offset, "syntax": request.syntax,
            "took_ms": round(elapsed_ms, 3), "stages_ms": stages, "results": results}  # fmt: skip
