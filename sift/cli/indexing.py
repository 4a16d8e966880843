"""`sift index` and `sift prune`: building an index and re-pruning it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sift.cli.common import Progress, add_bm25_options, positive_int

DEFAULT_DENSE_MODEL = "all-minilm-l6-v2-onnx-int8"  # ONNX as shipped: no torch needed
DEFAULT_SPLADE_MODEL = "splade-tiny"


def register(commands) -> None:
    index = commands.add_parser(
        "index",
        help="build an index from a corpus",
        description="Build an inverted index from CORPUS into INDEX_DIR and commit it atomically. A failed or "
        "interrupted run leaves INDEX_DIR as it was.",
    )
    index.add_argument("corpus", metavar="CORPUS", help="a BEIR folder, or a .jsonl[.gz], .tsv[.gz] or TREC file")
    index.add_argument("index_dir", metavar="INDEX_DIR")
    index.add_argument("--overwrite", action="store_true", help="replace an index already in INDEX_DIR")
    index.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    index.add_argument("--format", choices=("beir", "jsonl", "tsv", "trec"), help="default: detected from CORPUS")
    index.add_argument("--id-field", help="JSONL id field (default: the first of _id, id, docid, doc_id, docno)")
    index.add_argument(
        "--text-fields", default="title,text", help="JSONL fields indexed, comma-separated (default: title,text)"
    )
    index.add_argument(
        "--passage-window", type=int, default=0, metavar="TOKENS", help="split documents longer than this (0: never)"
    )
    index.add_argument("--passage-stride", type=int, default=0, metavar="TOKENS", help="default: the window")
    index.add_argument("--memory-mb", type=positive_int, default=512,
                       help="postings held in memory before a segment is flushed (512). The build's own memory "
                       "peaks at about 2.5x this (10M passages at 1024: 2.3-2.5 GiB, while merging); merging also "
                       "memory-maps the index files, whose pages the OS counts as resident until it reclaims them "
                       "(peak resident 10 GiB there)")  # fmt: skip
    index.add_argument(
        "--postings",
        choices=("packed", "raw"),
        default="packed",
        help="packed (default): bit-packed blocks, 4-6x smaller postings; raw: plain arrays, about 10%% faster",
    )
    index.add_argument(
        "--tokenizer", choices=("standard", "whitespace"), default="standard", help="standard: Unicode word breaks"
    )
    index.add_argument("--stemmer", default="porter", help="a Snowball algorithm (porter, english, ...) or none")
    index.add_argument(
        "--stopwords", default="lucene", help="lucene (English), none, or a file with one stop word a line"
    )
    index.add_argument("--no-lowercase", action="store_true", help="keep case")
    index.add_argument("--no-possessive", action="store_true",
                       help="keep English possessives (\"'s\"), which are stripped by default as Lucene does; with "
                       "--tokenizer whitespace --stemmer none --stopwords none, pre-tokenized ASCII text is then split "
                       "in compiled code (about 2x faster to index)")  # fmt: skip
    index.add_argument("--positions", action="store_true",
                       help="also store each term's positions in each passage, for phrase queries (\"heart failure\", "
                       '"heart failure"~2 with --syntax lucene); the index grows by about 2-4 bytes per token')
    index.add_argument("--field", action="append", default=[], metavar="NAME:TYPE",
                       help="a metadata field read from the records' key NAME and stored for filters (repeatable); "
                       "TYPE: keyword, keyword[] (several values), int, float, date (ISO 8601). A value that does "
                       "not fit its type makes a bad record")  # fmt: skip
    add_bm25_options(index, query_time=False)
    index.add_argument(
        "--dense",
        nargs="?",
        const=DEFAULT_DENSE_MODEL,
        metavar="MODEL",
        help=f"also encode every passage with a bi-encoder and build a faiss index (default: {DEFAULT_DENSE_MODEL}; "
        "installed on first use)",
    )
    index.add_argument(
        "--faiss",
        choices=("auto", "flat", "hnsw", "ivfpq"),
        default="auto",
        help="dense index type (auto: exact up to 200k passages, HNSW to 5M, IVF-PQ beyond)",
    )
    index.add_argument(
        "--splade",
        nargs="?",
        const=DEFAULT_SPLADE_MODEL,
        metavar="MODEL",
        help="also encode every passage with a SPLADE model into an impact index, searched by the BM25 kernels "
        f"(default: {DEFAULT_SPLADE_MODEL}; installed on first use)",
    )
    index.add_argument("--prune", metavar="ESTIMATOR:RATE", help="score every passage's quality without a query and "
                       "never index the lowest RATE of them (e.g. random:0.25, cdd:0.3; ESTIMATOR:>=SCORE for a "
                       "threshold); ESTIMATOR is random, length, stopwords, inr, cdd, dense-norm, splade-norm, pppl "
                       "or a model trained by `sift train quality`; scores are cached in INDEX_DIR/quality for "
                       "`sift prune`")  # fmt: skip
    index.add_argument("--shards", type=positive_int, metavar="N", help="partition the documents by a hash of their "
                       "id into N shards, each an ordinary index under INDEX_DIR/shards/, built in parallel and "
                       "searched as one index with exactly its scores (sift search, eval and serve take INDEX_DIR)")
    index.add_argument("--ray", metavar="ADDRESS", help="with --shards: build the shards as Ray tasks; auto joins "
                       "this machine's Ray cluster or, if there is none, starts a local one (one task per core); "
                       "or a cluster's address (host:port, ray://...). Needs the distributed extra")  # fmt: skip
    index.add_argument("--json", action="store_true", help="print the build report as one JSON line")
    index.add_argument("--quiet", action="store_true", help="no progress bar")

    prune = commands.add_parser("prune", help="re-prune an index at another rate from cached quality scores",
                                description="Rebuild INDEX_DIR from the corpus it was built from, leaving out the "
                                "lowest RATE of passages by ESTIMATOR; cached scores are reused (only passages the "
                                "cache lacks are scored) and dense and SPLADE indexes are re-encoded.")  # fmt: skip
    prune.add_argument("index_dir", metavar="INDEX_DIR")
    prune.add_argument("--estimator", required=True, help="random, length, stopwords, inr, cdd, dense-norm, "
                       "splade-norm, pppl, or a model trained by `sift train quality`")  # fmt: skip
    prune.add_argument("--rate", type=float, help="share of passages to leave out, 0 to below 1")
    prune.add_argument("--threshold", type=float, help="leave out passages scoring below this instead")
    prune.add_argument("--json", action="store_true", help="print the report as one JSON line")
    prune.add_argument("--memory-mb", type=positive_int, default=512, help="as for sift index (512)")
    prune.add_argument("--quiet", action="store_true", help="no progress bar")

    index.set_defaults(handler=_cmd_index)
    prune.set_defaults(handler=_cmd_prune)


def _cmd_index(args) -> int:
    from engine.analysis import AnalyzerConfig
    from engine.encoders import BiEncoder, SpladeEncoder
    from engine.fields import parse_field_spec
    from engine.sparse import BM25Params
    from indexers.corpus import CorpusReader, open_source
    from indexers.inverted import BuildOptions
    from indexers.quality import ESTIMATOR_MODELS
    from indexers.writer import IndexWriter
    from sift.cli.modeling import ensure_installed

    estimator = args.prune.partition(":")[0] if args.prune else None
    for model in (args.dense, args.splade, ESTIMATOR_MODELS.get(estimator)):
        if model:
            ensure_installed(model)
    text_fields = tuple(f.strip() for f in args.text_fields.split(",") if f.strip())
    fields = dict(parse_field_spec(spec) for spec in args.field)
    source = open_source(args.corpus, args.format, id_field=args.id_field, text_fields=text_fields, fields=fields)
    if args.stopwords == "lucene":
        stopwords = None
    elif args.stopwords == "none":
        stopwords = ()
    else:
        stopwords = tuple(w.strip() for w in Path(args.stopwords).read_text(encoding="utf-8").split() if w.strip())
    options = BuildOptions(
        analyzer=AnalyzerConfig(
            tokenizer=args.tokenizer,
            lowercase=not args.no_lowercase,
            possessives=not args.no_possessive,
            stopwords=stopwords,
            stemmer=None if args.stemmer == "none" else args.stemmer,
        ),
        bm25=BM25Params(k1=0.9 if args.k1 is None else args.k1, b=0.4 if args.b is None else args.b),
        passage_window=args.passage_window,
        passage_stride=args.passage_stride,
        memory_mb=args.memory_mb,
        postings=args.postings,
        overwrite=args.overwrite,
        fields=fields,
        positions=args.positions,
    )
    recorded = {"path": str(Path(source.path).resolve()), "format": source.format, "id_field": args.id_field,
                "text_fields": list(text_fields)}  # fmt: skip
    if args.shards or args.ray:
        return _index_sharded(args, source, options, recorded)
    reader = CorpusReader(source, skip_bad=args.skip_bad)
    with IndexWriter(args.index_dir, create=True, overwrite=args.overwrite) as writer:
        pruned, pruning = _plan_pruning(args, source, options)
        with Progress(source.size_bytes, reader, enabled=not args.quiet) as progress:
            report = writer.build_inverted(reader, options, recorded, progress.update, pruned, pruning)
        summary = {**report.to_dict(), **reader.skipped.to_dict()}
        if pruning:
            summary["pruning"] = pruning
        if args.dense:
            with _bar(args, report.passages, "encoding") as bar:
                summary["dense"] = writer.add_dense(BiEncoder(args.dense), args.faiss, on_progress=bar.update).to_dict()
        if args.splade:
            with _bar(args, report.passages, "encoding (SPLADE)") as bar:
                summary["splade"] = writer.add_impact(SpladeEncoder(args.splade), on_progress=bar.update).to_dict()
        summary["generation"] = report.generation = writer.commit()
    _warm_query_kernels(args.index_dir)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"indexed {report.documents:,} documents ({report.passages:,} passages) into {report.index_dir} "
            f"in {report.seconds:.1f}s ({summary['documents_per_second']:,} docs/s), generation {report.generation}"
        )
        if reader.skipped.total:
            print(f"skipped {reader.skipped.total:,} bad records: {dict(reader.skipped.counts)}")
            for example in reader.skipped.examples:
                print(f"  {example}")
        if args.dense:
            d = summary["dense"]
            print(f"dense: {d['passages']:,} passages encoded with {d['model']} ({d['passages_per_second']:,} "
                  f"passages/s), faiss {d['faiss']}")  # fmt: skip
        if args.splade:
            d = summary["splade"]
            print(f"splade: {d['passages']:,} passages encoded with {d['model']} ({d['passages_per_second']:,} "
                  f"passages/s), {d['postings']:,} impacts over {d['terms']:,} terms")  # fmt: skip
    return 0




def _index_sharded(args, source, options, recorded: dict) -> int:
    from tqdm import tqdm

    from indexers.sharded import build_sharded

    if not args.shards:
        raise ValueError("--ray builds the shards of a sharded index: pass --shards N too")
    pruned, pruning = _plan_pruning(args, source, options)  # scored in this process, over the whole corpus
    with tqdm(unit="tasks", desc="sharded build", file=sys.stderr, disable=True if args.quiet else None) as bar:
        report = build_sharded(source, args.index_dir, args.shards, options, recorded, args.skip_bad, args.ray,
                               on_progress=lambda done: bar.update(done - bar.n),
                               dense=(args.dense, args.faiss) if args.dense else None, splade=args.splade,
                               pruned=pruned, pruning=pruning)  # fmt: skip
    _warm_query_kernels(args.index_dir)
    summary = report.to_dict()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"indexed {report.documents:,} documents ({report.passages:,} passages) into {report.index_dir} as "
          f"{report.shards} shards in {report.seconds:.1f}s ({summary['documents_per_second']:,} docs/s), "
          f"generation {report.generation}")  # fmt: skip
    if report.skipped.total:
        print(f"skipped {report.skipped.total:,} bad records: {dict(report.skipped.counts)}")
        for example in report.skipped.examples:
            print(f"  {example}")
    return 0


def _warm_query_kernels(index_dir) -> None:
    """Runs one search per algorithm, so that numba compiles the kernels this index's searches need into its cache
    now (seconds, once per installation) rather than in the first `sift search` (which then takes about a second)."""
    from engine.index import open_index

    index = open_index(index_dir)
    index = index.shards[0] if hasattr(index, "shards") else index
    segment = next((s for s in index.segments if len(s.terms)), None)
    if segment is not None:
        for algorithm in ("exhaustive", "maxscore"):
            index.search([segment.terms[0]], 1, algorithm=algorithm)


def _bar(args, total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="passages", desc=description, file=sys.stderr, disable=True if args.quiet else None)


def _plan_pruning(args, source, options) -> tuple[set[str], dict | None]:
    """--prune: every passage scored (or read from the index's score cache) before anything is indexed."""
    if not args.prune:
        return set(), None
    from tqdm import tqdm

    from engine.format import QUALITY_FOLDER
    from indexers.corpus import CorpusReader
    from indexers.quality import CorpusPassages, PruneSpec, ScoreCache, plan_pruning

    spec = PruneSpec.parse(args.prune)
    stride = options.passage_stride or options.passage_window
    passages = CorpusPassages(CorpusReader(source, skip_bad=args.skip_bad), options.analyzer,
                              options.passage_window, stride)  # fmt: skip
    with tqdm(unit="passages", desc=f"quality ({spec.estimator})", file=sys.stderr,
              disable=True if args.quiet else None) as bar:  # fmt: skip
        return plan_pruning(passages, spec, ScoreCache(Path(args.index_dir) / QUALITY_FOLDER), bar.update)


def _cmd_prune(args) -> int:
    from tqdm import tqdm

    from indexers.quality import ESTIMATOR_MODELS, PruneSpec, reprune
    from sift.cli.modeling import ensure_installed

    if args.estimator in ESTIMATOR_MODELS:
        ensure_installed(ESTIMATOR_MODELS[args.estimator])

    if (args.rate is None) == (args.threshold is None):
        raise ValueError("give one of --rate (a share of passages) or --threshold (a score)")
    spec = PruneSpec.parse(f"{args.estimator}:{args.rate}" if args.rate is not None
                           else f"{args.estimator}:>={args.threshold}")  # fmt: skip
    with tqdm(unit="passages", desc=f"quality ({spec.estimator})", file=sys.stderr,
              disable=True if args.quiet else None) as bar:  # fmt: skip
        report, record, neural = reprune(args.index_dir, spec, bar.update, memory_mb=args.memory_mb)
    summary = {**report.to_dict(), "pruning": record, **neural}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"pruned {record['pruned']:,} of {record['passages']:,} passages by {spec.estimator} "
              f"({record['scored_now']:,} scored now, the rest from the cache); indexed {report.passages:,} "
              f"passages in {report.seconds:.1f}s into {args.index_dir}")  # fmt: skip
    return 0
