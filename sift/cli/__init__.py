"""The `sift` command line: one module per command group, each registering its subcommands."""

from __future__ import annotations

import argparse
import os
import sys

from engine.errors import SiftError

EXIT_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    from sift import demo
    from sift.cli import benchmarks, indexing, modeling, searching, updating

    parser = argparse.ArgumentParser(
        prog="sift",
        description="Sift: build BM25, dense and learned sparse indexes from a corpus, search them, rerank, and "
        "evaluate runs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (indexing, updating, searching, modeling, benchmarks, demo):
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("sift: interrupted; nothing was committed", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`sift search ... | head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (SiftError, ValueError, OSError) as error:
        if os.environ.get("SIFT_DEBUG"):
            raise
        print(f"sift: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
