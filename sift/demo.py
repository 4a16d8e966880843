"""`sift demo`: end to end on a corpus any machine has, the docstrings of the Python standard library (read with ast,
nothing imported)."""

from __future__ import annotations

import ast
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from sift.cli.common import Progress, snippet

_SKIPPED_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo"}


def stdlib_docstrings(root: Path | None = None, min_words: int = 5) -> Iterator[dict]:
    """Yields {"_id", "title", "text"} for every module, class and function docstring, in a stable order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(f for f in files if f.endswith(".py")):
            path = Path(directory) / name
            module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, OSError):
                continue
            yield from _docstrings(tree, module, min_words)


def _docstrings(tree: ast.Module, module: str, min_words: int) -> Iterator[dict]:
    stack: list[tuple[ast.AST, str]] = [(tree, module)]
    while stack:
        node, name = stack.pop(0)
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc.split()) >= min_words:
            yield {"_id": name, "title": name, "text": doc}
        for child in ast.iter_child_nodes(node):
            definition = isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            if definition and (not child.name.startswith("_") or child.name == "__init__"):
                stack.append((child, f"{name}.{child.name}"))


def write_demo_corpus(path: str | os.PathLike) -> int:
    """Writes the corpus as JSONL (ids made unique) and returns the number of documents."""
    seen: set[str] = set()
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in stdlib_docstrings():
            if record["_id"] in seen:
                continue
            seen.add(record["_id"])
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def register(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="index the Python standard library's docstrings and search them",
        description="End to end on a corpus every machine has: write the demo corpus, index it, run queries.",
    )
    demo.add_argument("--dir", default="demo", help="where the corpus and index go (./demo)")
    demo.add_argument("queries", nargs="*", metavar="QUERY", help="queries to run (a few examples by default)")
    demo.set_defaults(handler=_cmd_demo)


DEMO_QUERIES = ("read a file line by line", "parse command line arguments", "compress data with gzip")


def _cmd_demo(args) -> int:
    from engine.index import open_index
    from indexers.corpus import CorpusReader, open_source
    from indexers.inverted import BuildOptions
    from indexers.writer import build_index

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "stdlib-docstrings.jsonl"
    count = write_demo_corpus(corpus)
    print(f"wrote {count:,} standard-library docstrings to {corpus}")
    reader = CorpusReader(open_source(corpus))
    progress = Progress(corpus.stat().st_size, reader, enabled=True)
    with progress:
        report = build_index(reader, directory / "index", BuildOptions(overwrite=True), on_progress=progress.update)
    print(f"indexed {report.documents:,} documents in {report.seconds:.1f}s into {report.index_dir}")
    index = open_index(report.index_dir)
    for query in args.queries or DEMO_QUERIES:
        print(f"\nquery: {query}")
        for hit in index.search(query, 3):
            print(f"{hit.rank:>4}  {hit.score:7.3f}  {hit.id}")
            print(f"      {snippet(index.fetch(hit.passage)['text'], 100)}")
    print(f'\ntry: sift search {report.index_dir} "your query" --text')
    return 0
