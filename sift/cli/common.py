"""What every command group shares: argument types, BM25 options, the progress bar, snippets."""

from __future__ import annotations

import argparse
import sys
import time


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_bm25_options(parser: argparse.ArgumentParser, query_time: bool = True) -> None:
    parser.add_argument("--k1", type=float, help="BM25 k1 (default: the index's, 0.9 unless set at index time)")
    parser.add_argument("--b", type=float, help="BM25 b (default: the index's, 0.4 unless set at index time)")
    if query_time:
        parser.add_argument(
            "--algorithm",
            choices=("auto", "maxscore", "exhaustive"),
            default="auto",
            help="query processing; all return the same results (auto: MaxScore where lists are long for k)",
        )


def bm25_params(index, args):
    from engine.sparse import BM25Params

    defaults = index.default_params
    return BM25Params(
        k1=defaults.k1 if args.k1 is None else args.k1,
        b=defaults.b if args.b is None else args.b,
        length_norm=defaults.length_norm,
    )




class Progress:
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




def snippet(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
