"""`sift bench`: benchmarks run from a checkout of the repository (they are not installed)."""

from __future__ import annotations

from pathlib import Path

from sift.cli.common import positive_int


def register(commands) -> None:
    bench = commands.add_parser("bench", help="benchmarks against peer engines (see bench/README.md)")
    benches = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    first_stage = benches.add_parser(
        "first-stage",
        help="BM25 top-k speed against PISA, Lucene, bm25s and tantivy on identical input",
        description="Index one corpus with every engine from the same pre-tokenized terms, then time top-k "
        "retrieval on one thread and on all threads. Results go to bench/results/.",
    )
    first_stage.add_argument(
        "--corpus", default="scifact", help="a shared collection name, debian (Debian packages), synthetic:N, or a "
        "corpus file (JSONL or TSV, as sift index reads it)"
    )
    first_stage.add_argument("--query-file", type=Path, metavar="QUERIES.tsv",
                             help="queries (id<TAB>text) for --corpus; default: the collection's test queries, or "
                             "queries sampled from the corpus with a hard set of frequent terms")  # fmt: skip
    first_stage.add_argument(
        "--peers", default="sift,pisa-bmw,pisa-bmm,pyserini,bm25s,tantivy", help="comma-separated engines"
    )
    first_stage.add_argument("--k", default="10,1000", help="comma-separated depths (10,1000)")
    first_stage.add_argument("--threads", type=positive_int, help="threads for batch QPS (default: all cores)")
    first_stage.add_argument("--queries", type=positive_int, default=1000, help="at most this many queries")
    first_stage.add_argument("--json", action="store_true", help="last line: one JSON object")

    pruning = benches.add_parser(
        "pruning",
        help="static pruning sweep: nDCG@10 and TOST equivalence per quality estimator, rate and pipeline",
        description="For each quality estimator and pruning rate (0-60%), rebuild the index without the lowest-"
        "scoring passages and test each pipeline's nDCG@10 for equivalence with the unpruned index (TOST); index "
        "size and indexing time saved. Results go to bench/results/pruning-COLLECTION.md (and .json, .png).",
    )
    pruning.add_argument("--collection", required=True, help="a BEIR-layout folder or a shared collection's name")
    pruning.add_argument("--estimators", help="comma-separated (default: every built-in estimator); models trained "
                         "by `sift train quality` by name")  # fmt: skip
    pruning.add_argument("--rates", help="comma-separated shares (0.1,...,0.6)")
    pruning.add_argument("--pipelines", help="semicolon-separated (bm25;dense;hybrid(bm25,dense,alpha=0.5)); a "
                         "reranked one ends in '>> rerank:MODEL@DEPTH(mix=W)'")  # fmt: skip
    pruning.add_argument("--margin", type=float, help="equivalence margin as a share of unpruned nDCG@10 (0.05)")
    pruning.add_argument("--alpha", type=float, help="significance level of the two one-sided tests (0.05)")
    pruning.add_argument("--json", action="store_true", help="last line: one JSON object")

    bench.set_defaults(handler=_cmd_bench)


def _checkout_benchmark(name: str):
    """A benchmark module of the repository checkout in the working directory: benchmarks are developer tools, not
    installed with Sift (their results are written into the checkout)."""
    import importlib
    import sys
    from pathlib import Path

    from engine.errors import SiftError

    root = Path.cwd()
    if not (root / "bench" / f"{name}.py").is_file():
        raise SiftError(f"sift bench runs from a checkout of Sift's repository (benchmarks are not installed): run it "
                        f"in the repository's root, where bench/{name}.py is; {root} has none")  # fmt: skip
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"bench.{name}")


def _cmd_bench(args) -> int:
    if args.benchmark == "pruning":
        pruning = _checkout_benchmark("pruning")

        options = {"--estimators": args.estimators, "--rates": args.rates, "--pipelines": args.pipelines,
                   "--margin": None if args.margin is None else str(args.margin),
                   "--alpha": None if args.alpha is None else str(args.alpha)}  # fmt: skip
        argv = ["--collection", args.collection, *[x for k, v in options.items() if v for x in (k, v)]]
        return pruning.main(argv + (["--json"] if args.json else []))
    first_stage = _checkout_benchmark("first_stage")

    ks = [int(k) for k in args.k.split(",") if k.strip()]
    if not ks or min(ks) < 1 or max(ks) > 10_000:
        raise ValueError(f"--k takes depths from 1 to 10000, got {args.k!r}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    return first_stage.main(args.corpus, peers, ks, args.threads, args.queries, args.json, args.query_file)
