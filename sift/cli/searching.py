"""`sift search`, `eval`, `tune`, `compare` and `info`: reading an index."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sift.cli.common import add_bm25_options, bm25_params, positive_int


def register(commands) -> None:
    search = commands.add_parser(
        "search", help="search an index", description="Search INDEX_DIR with BM25 (default) or another pipeline."
    )
    search.add_argument("index_dir", metavar="INDEX_DIR")
    search.add_argument("query", metavar="QUERY")
    search.add_argument(
        "--pipeline", default="bm25", help="bm25 (default), dense, splade, hybrid, rrf(bm25,dense), dense(MODEL), ..."
    )
    search.add_argument("-k", type=_k_or_auto, default=10,
                        help='results to return (10), or "auto": Adaptive-k, cut where the scores of the best 100 '
                        "show their largest gap")  # fmt: skip
    search.add_argument("--typos", choices=("off", "auto"), default="off",
                        help="auto: a word the index does not hold is replaced by the held word one edit away that the "
                        "index holds most often, before any pipeline reads the query (plain syntax)")  # fmt: skip
    search.add_argument("--offset", type=int, default=0, metavar="N",
                        help="skip the first N results: the next page (ranks N+1 to N+k of the same ranking)")
    search.add_argument("--syntax", choices=("plain", "lucene"), default="plain",
                        help="plain (default): every character is text. lucene: +required -excluded, AND, OR, NOT, "
                        '(groups), term^2 boosts, "phrases"~N, term~1 fuzzy, title:word, text:"a phrase", as '
                        "Lucene's query parser reads them (bm25 pipeline)")  # fmt: skip
    search.add_argument("--fields", metavar="FIELD^BOOST,...",
                        help="where words without field: are searched, each field its own BM25 and the scores summed, "
                        "e.g. title^2,text (default: contents, title and text together, as Lucene's parity index); "
                        "title and text need an index built with --positions (bm25 pipeline)")  # fmt: skip
    search.add_argument("--documents", action="store_true", help="rank documents by their best passage")
    search.add_argument("--text", action="store_true", help="include each result's stored text and its snippet")
    search.add_argument("--snippets", action="store_true",
                        help="include each result's best-matching fragment, the query's words marked <mark>...</mark> "
                        "(stemmed forms count)")  # fmt: skip
    search.add_argument("--fragment-length", type=positive_int, default=200, metavar="CHARS",
                        help="snippet length in characters (200)")
    add_bm25_options(search)
    search.add_argument("--json", action="store_true", help="print one JSON object")
    search.add_argument("--filter", metavar="EXPRESSION",
                        help='only documents whose fields match, e.g. "year >= 2019 AND journal IN [Nature, Science]" '
                        "(=, !=, <, <=, >, >=, LOW TO HIGH, IN [...], EXISTS, NOT, AND, OR, parentheses); the "
                        "results are exactly the top k of the matching ones")  # fmt: skip

    evaluate = commands.add_parser(
        "eval",
        help="evaluate an index on judged queries",
        description="Run every query against INDEX_DIR and report nDCG@10, RR@10, R@100, R@1000 and AP with "
        "trec_eval semantics. Split indexes are evaluated as documents ranked by their best passage.",
    )
    evaluate.add_argument("index_dir", metavar="INDEX_DIR")
    evaluate.add_argument("--queries", required=True, help="qid<TAB>text per line")
    evaluate.add_argument("--qrels", required=True, help="TREC qrels: qid 0 docid grade")
    evaluate.add_argument(
        "--pipeline",
        default="bm25",
        help="bm25 (default), dense, splade, hybrid, hybrid(bm25,dense,alpha=0.5), rrf(A,B), or a pipeline file",
    )
    evaluate.add_argument("--run", metavar="OUT.trec", help="write the TREC run file here")
    evaluate.add_argument("--baseline", metavar="RUN.trec", help="paired t-test against this run")
    evaluate.add_argument("-k", "--depth", type=positive_int, default=1000, help="results per query (1000)")
    evaluate.add_argument("--threads", type=positive_int, help="search threads (default: all cores)")
    add_bm25_options(evaluate)
    evaluate.add_argument("--json", action="store_true", help="last line: one JSON object of the measures")

    tune = commands.add_parser(
        "tune",
        help="tune a hybrid pipeline's weight on judged training queries",
        description="Run the hybrid stage's inputs once on the training queries, choose the interpolation weight "
        "that maximizes nDCG@10 over a grid, and write a pipeline file that `--pipeline FILE` reads. Tune on a "
        "train split only: never on the queries you report.",
    )
    tune.add_argument("index_dir", metavar="INDEX_DIR")
    tune.add_argument("--queries", required=True, help="training queries: qid<TAB>text per line")
    tune.add_argument("--qrels", required=True, help="their TREC qrels")
    tune.add_argument("--pipeline", default="hybrid", help="a hybrid expression (hybrid)")
    tune.add_argument("--out", required=True, metavar="FILE.json", help="where the tuned pipeline goes")
    tune.add_argument("--json", action="store_true", help="print the pipeline file's contents as one JSON line")

    comparison = commands.add_parser(
        "compare", help="paired t-test between two runs", description="Compare two TREC runs on the same qrels."
    )
    comparison.add_argument("run_a", metavar="RUN_A")
    comparison.add_argument("run_b", metavar="RUN_B")
    comparison.add_argument("--qrels", required=True)
    comparison.add_argument("--json", action="store_true")

    info = commands.add_parser("info", help="describe an index")
    info.add_argument("index_dir", metavar="INDEX_DIR")
    info.add_argument("--json", action="store_true")

    serve = commands.add_parser(
        "serve",
        help="a local search service over an index",
        description="Serve INDEX_DIR over HTTP: /search (as sift search --json), /documents (writes, with an API "
        "key), /health, /stats, /metrics, the OpenAPI document at /openapi.json, interactive docs at /docs and a "
        "search page at /. Loopback only unless an API key is set; without a key the service is read-only. Needs "
        "the serve extra: pip install 'sift-engine[serve]'.",
    )
    serve.add_argument("index_dir", metavar="INDEX_DIR")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1; another needs a key)")
    serve.add_argument("--port", type=int, default=8765, help="(8765; 0: any free port)")
    serve.add_argument("--api-key", default=os.environ.get("SIFT_API_KEY"), metavar="KEY",
                       help="writes need Authorization: Bearer KEY (default: $SIFT_API_KEY; none: read-only)")
    serve.add_argument("--threads", type=positive_int, help="searches answered at once (default: 40)")
    serve.add_argument("--commit-interval", type=float, default=1.0, metavar="SECONDS",
                       help="writes with ?commit=auto are committed within this long (1)")  # fmt: skip
    serve.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--ray", metavar="ADDRESS", help="a sharded index's shards served by Ray actors: auto joins "
                       "this machine's Ray cluster or starts a local one; or a cluster's address (default: the shards "
                       "are searched in this process)")  # fmt: skip
    serve.add_argument("--replicas", type=positive_int, default=1, help="with --ray: actors per shard, requests "
                       "spread across them (1)")  # fmt: skip

    serve.set_defaults(handler=_cmd_serve)
    search.set_defaults(handler=_cmd_search)
    evaluate.set_defaults(handler=_cmd_eval)
    tune.set_defaults(handler=_cmd_tune)
    comparison.set_defaults(handler=_cmd_compare)
    info.set_defaults(handler=_cmd_info)


def _k_or_auto(text: str) -> int | str:
    return "auto" if text == "auto" else positive_int(text)


def _cmd_search(args) -> int:
    from engine.index import open_index
    from sift.answers import SearchRequest, answer

    index = open_index(args.index_dir)
    request = SearchRequest(args.query, args.k, args.offset, args.pipeline, args.filter, args.documents, args.syntax,
                            args.fields, args.typos, args.text, args.snippets, args.fragment_length)  # fmt: skip
    found = answer(index, request, bm25_params(index, args), args.algorithm)
    if args.json:
        print(json.dumps(found))
        return 0
    if not found["results"]:
        print("no results")
    for item in found["results"]:
        print(f"{item['rank']:>4}  {item['score']:9.4f}  {item['id']}")
        if "snippet" in item:
            print(f"      {item['snippet']}")
    return 0


def _cmd_serve(args) -> int:
    try:
        from sift.serve import serve
    except ImportError as missing:
        raise ValueError(f"sift serve needs the serve extra ({missing.name} is missing): "
                         "pip install 'sift-engine[serve]'") from None  # fmt: skip
    serve(args.index_dir, args.host, args.port, args.api_key, args.threads, args.commit_interval, args.log_level,
          args.ray, args.replicas)
    return 0


def _cmd_eval(args) -> int:
    from engine.evaluation import compare, evaluate, read_run, write_run
    from engine.index import open_index
    from engine.pipeline import Pipeline
    from indexers.corpus import read_qrels, read_queries

    index = open_index(args.index_dir)
    params = bm25_params(index, args)
    pipeline = Pipeline(index, args.pipeline, threads=args.threads, params=params, algorithm=args.algorithm)
    queries = read_queries(args.queries)
    qrels = read_qrels(args.qrels)
    started = time.perf_counter()
    results = pipeline.search([text for _, text in queries], args.depth)
    seconds = time.perf_counter() - started
    stages: dict[str, float] = {}
    for found in results:
        for stage, spent in found.timings.items():
            stages[stage] = stages.get(stage, 0.0) + spent
    run = {qid: {hit.id: hit.score for hit in hits} for (qid, _), hits in zip(queries, results)}
    if args.run:
        write_run(args.run, run, tag=f"sift-{args.pipeline}")
    evaluation = evaluate(run, qrels)
    report = {
        **evaluation.to_dict(),
        "pipeline": str(pipeline.stage),
        "k1": params.k1,
        "b": params.b,
        "search_seconds": round(seconds, 3),
        "stage_ms_per_query": {stage: round(1000 * spent / max(len(results), 1), 3) for stage, spent in stages.items()},
    }
    if args.baseline:
        report["baseline"] = compare(evaluate(read_run(args.baseline), qrels), evaluation).to_dict()
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in evaluation.to_dict().items():
            print(f"{name:<10} {value}")
        if args.baseline:
            b = report["baseline"]
            print(f"vs baseline: nDCG@10 {b['a']} -> {b['b']} (delta {b['delta']:+}, p = {b['p_value']})")
    return 0


def _cmd_tune(args) -> int:
    from engine.index import open_index
    from engine.pipeline import parse, tune_alpha
    from indexers.corpus import read_qrels, read_queries

    if not args.out.endswith(".json"):
        raise ValueError(f"--out {args.out}: a pipeline file must end in .json")
    index = open_index(args.index_dir)
    queries = read_queries(args.queries)
    stage, grid = tune_alpha(index, parse(args.pipeline), queries, read_qrels(args.qrels))
    best = max(value for _, value in grid)
    content = {
        "pipeline": str(stage),
        "tuned": {"measure": "nDCG@10", "value": best, "queries": str(args.queries), "qrels": str(args.qrels),
                  "grid": [[alpha, value] for alpha, value in grid]},
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(content, indent=1), encoding="utf-8")
    if args.json:
        print(json.dumps(content))
    else:
        print(f"{stage}: nDCG@10 {best} on {len(queries)} training queries; written to {args.out}")
    return 0


def _cmd_compare(args) -> int:
    from engine.evaluation import MEASURES, compare, evaluate, read_run
    from indexers.corpus import read_qrels

    qrels = read_qrels(args.qrels)
    a, b = evaluate(read_run(args.run_a), qrels), evaluate(read_run(args.run_b), qrels)
    rows = [compare(a, b, m).to_dict() for m in MEASURES]
    if args.json:
        print(json.dumps({"a": args.run_a, "b": args.run_b, "comparisons": rows}))
        return 0
    print(f"{'measure':<10} {'A':>8} {'B':>8} {'delta':>8} {'p':>10}")
    for row in rows:
        print(f"{row['measure']:<10} {row['a']:>8} {row['b']:>8} {row['delta']:>+8} {row['p_value']!s:>10}")
    return 0


def _cmd_info(args) -> int:
    from engine.index import open_index

    index = open_index(args.index_dir)
    manifest = index.manifest
    size = sum(f.stat().st_size for f in Path(args.index_dir).rglob("*") if f.is_file())
    info = {**index.stats(), "bytes": size, "analyzer": manifest["analyzer"], "bm25": manifest["bm25"],
            "passage_split": manifest["passages"], "source": manifest.get("source", {}),
            "dense": _neural_summary(manifest.get("dense", {})), "splade": _neural_summary(manifest.get("impact", {})),
            "pruning": manifest.get("pruning")}  # fmt: skip
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:<18} {value}")
    return 0


def _neural_summary(section: dict) -> dict:
    """Per model, its settings and how many segments it covers (not each segment's folder)."""
    return {model: {**entry, "segments": len(entry.get("segments", {}))} for model, entry in section.items()}
