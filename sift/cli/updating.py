"""`sift add`, `sift delete`, `sift compact` (changing a live index, one commit each) and `sift check`."""

from __future__ import annotations

import json
from pathlib import Path

from sift.cli.common import Progress, positive_int


def register(commands) -> None:
    add = commands.add_parser(
        "add",
        help="add or replace documents in an index",
        description="Add the documents of CORPUS to INDEX_DIR; a document whose id the index holds replaces it "
        "(upsert). Statistics stay exact: scores equal a fresh build of the documents the index then holds. One "
        "commit; a failure leaves the index as it was.",
    )
    add.add_argument("index_dir", metavar="INDEX_DIR")
    add.add_argument("corpus", metavar="CORPUS", help="a BEIR folder, or a .jsonl[.gz], .tsv[.gz] or TREC file")
    add.add_argument("--format", choices=("beir", "jsonl", "tsv", "trec"), help="default: detected from CORPUS")
    add.add_argument("--id-field", help="JSONL id field (default: the first of _id, id, docid, doc_id, docno)")
    add.add_argument("--text-fields", help="JSONL fields indexed, comma-separated (default: the index's)")
    add.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    add.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                     help="wait this long for another writer to finish (default: fail at once)")  # fmt: skip
    add.add_argument("--json", action="store_true", help='print {"added", "replaced", "generation"} as the last line')
    add.add_argument("--quiet", action="store_true", help="no progress bar")

    delete = commands.add_parser(
        "delete",
        help="delete documents from an index",
        description="Delete documents (all their passages) by id; ids the index lacks are reported, not fatal.",
    )
    delete.add_argument("index_dir", metavar="INDEX_DIR")
    delete.add_argument("ids", nargs="*", metavar="ID")
    delete.add_argument("--ids-file", metavar="FILE", help="more ids, one a line")
    delete.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="as for sift add")
    delete.add_argument("--json", action="store_true", help='print {"deleted", "missing", "generation"}')

    compact = commands.add_parser(
        "compact",
        help="merge an index's segments and drop deleted passages",
        description="Merge INDEX_DIR down to at most N segments, rewriting every segment with deleted passages. "
        "Results are the same before and after.",
    )
    compact.add_argument("index_dir", metavar="INDEX_DIR")
    compact.add_argument("--max-segments", type=positive_int, default=1, metavar="N", help="(1)")
    compact.add_argument("--wait", type=float, default=0, metavar="SECONDS", help="as for sift add")
    compact.add_argument("--json", action="store_true", help="print the index's segments after it as one JSON line")

    check = commands.add_parser(
        "check",
        help="verify every file of an index",
        description="Check every file of INDEX_DIR's last commit against the size and CRC32 written with it (as "
        "Lucene's CheckIndex), then open it. Opening an index checks sizes and small files only. Exits 1 and names "
        "the file when something is damaged.",
    )
    check.add_argument("index_dir", metavar="INDEX_DIR")
    check.add_argument("--json", action="store_true", help="print the report as one JSON line")

    check.set_defaults(handler=_cmd_check)
    add.set_defaults(handler=_cmd_add)
    delete.set_defaults(handler=_cmd_delete)
    compact.set_defaults(handler=_cmd_compact)


def _manifest(index_dir: str) -> dict:
    """The manifest of an index or of a sharded index (its analyzer, fields and source alike)."""
    from engine.format import read_manifest
    from engine.sharded import is_sharded, read_sharded_manifest

    return read_sharded_manifest(index_dir) if is_sharded(index_dir) else read_manifest(Path(index_dir))


def _cmd_add(args) -> int:
    from indexers.corpus import CorpusReader, open_source
    from indexers.sharded import open_writer

    manifest = _manifest(args.index_dir)
    recorded = manifest.get("source", {})
    text = args.text_fields.split(",") if args.text_fields else recorded.get("text_fields") or ["title", "text"]
    source = open_source(args.corpus, args.format, id_field=args.id_field or recorded.get("id_field"),
                         text_fields=tuple(f.strip() for f in text if f.strip()),
                         fields=manifest.get("fields") or {})  # fmt: skip
    reader = CorpusReader(source, skip_bad=args.skip_bad)
    with open_writer(args.index_dir, timeout=args.wait) as writer:
        with Progress(source.size_bytes, reader, enabled=not args.quiet) as progress:
            added, replaced = writer.add(_counting(reader, progress.update))
        generation = writer.commit()
    if args.json:
        print(json.dumps({"added": added, "replaced": replaced, "generation": generation}))
    else:
        print(f"added {added:,} documents and replaced {replaced:,} in {args.index_dir}, generation {generation}")
        if reader.skipped.total:
            print(f"skipped {reader.skipped.total:,} bad records: {dict(reader.skipped.counts)}")
    return 0


def _counting(documents, on_progress):
    for count, document in enumerate(documents, 1):
        if count % 1000 == 0:
            on_progress(count)
        yield document


def _cmd_delete(args) -> int:
    from indexers.sharded import open_writer

    ids = list(args.ids)
    if args.ids_file:
        path = Path(args.ids_file)
        ids += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError("no ids to delete: give them as arguments or with --ids-file")
    ids = list(dict.fromkeys(ids))
    with open_writer(args.index_dir, timeout=args.wait) as writer:
        missing = writer.delete(ids)
        generation = writer.commit()
    deleted = len(ids) - len(missing)
    if args.json:
        print(json.dumps({"deleted": deleted, "missing": missing, "generation": generation}))
    else:
        print(f"deleted {deleted:,} documents from {args.index_dir}, generation {generation}")
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10:,} more" if len(missing) > 10 else "")
            print(f"not in the index ({len(missing):,}): {shown}")
    return 0


def _cmd_compact(args) -> int:
    from engine.index import open_index
    from indexers.sharded import open_writer

    with open_writer(args.index_dir, timeout=args.wait) as writer:
        writer.compact(args.max_segments)
        generation = writer.commit()
    stats = open_index(args.index_dir).stats()
    summary = {"generation": generation, "segments": stats["segments"], "documents": stats["documents"],
               "passages": stats["passages"]}  # fmt: skip
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"compacted {args.index_dir} to {stats['segments']} segment(s), {stats['documents']:,} documents, "
              f"generation {generation}")  # fmt: skip
    return 0


def _cmd_check(args) -> int:
    from engine.format import check_index
    from engine.index import open_index

    report = check_index(Path(args.index_dir))
    index = open_index(args.index_dir)
    report.update(documents=index.documents, passages=index.live_passages, ok=True)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.index_dir}: ok, generation {report['generation']}: {report['files']:,} files in "
              f"{report['folders']} folders, {report['bytes_checked']:,} bytes checksummed")  # fmt: skip
    return 0
