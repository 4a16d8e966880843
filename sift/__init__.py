"""Sift's application layer: the embedding API (sift.open_index, below) and the `sift` command line.

Names are loaded on first use, so that `sift --help` does not pay for the engine's imports."""

from __future__ import annotations

__all__ = ["Document", "Index", "IndexWriter", "MergePolicy", "ShardedIndex", "ShardedWriter", "open_index"]


def __getattr__(name: str):
    if name in __all__:
        from sift import index

        return getattr(index, name)
    raise AttributeError(f"module 'sift' has no attribute {name!r}")
