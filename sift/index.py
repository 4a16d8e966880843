"""The embedding API: an index that searches (engine) and takes changes (indexers' writer).

    import sift

    index = sift.open_index("idx")
    with index.writer() as writer:          # commits when the block ends, rolls back on an exception
        writer.add([sift.Document("d1", "new text", title="A title")])
        writer.delete(["d2"])
    index = index.refresh()                 # the newest commit; unchanged segments stay mapped
    index.search("new text", k=10)
"""

from __future__ import annotations

import os

from engine import index as engine_index
from engine import sharded as engine_sharded
from indexers.corpus import Document
from indexers.sharded import ShardedWriter
from indexers.writer import IndexWriter, MergePolicy

__all__ = ["Document", "Index", "IndexWriter", "MergePolicy", "ShardedIndex", "ShardedWriter", "open_index"]


class Index(engine_index.Index):
    """One commit of an index, searchable from many threads, and the way to change it."""

    def writer(self, timeout: float = 0, merge_policy: MergePolicy | None = None) -> IndexWriter:
        """The index's one writer (a context manager: it commits when the block ends without an exception and rolls
        back when one is raised). timeout: seconds to wait for another writer (0: fail at once)."""
        return IndexWriter(self.path, timeout=timeout, merge_policy=merge_policy, commit_on_exit=True,
                           reuse=self.segments)


class ShardedIndex(engine_sharded.ShardedIndex):
    """One commit of a sharded index (sift index --shards N), searchable from many threads, and the way to change
    it: each document goes to its shard, a commit publishes every shard's changes at once."""

    def writer(self, timeout: float = 0) -> ShardedWriter:
        return ShardedWriter(self.path, timeout=timeout, commit_on_exit=True)


def open_index(path: str | os.PathLike, ray: str | None = None, **sharded) -> Index | ShardedIndex:
    """The newest commit of the index at path (a sharded index too: ray and sharded as engine.index.open_index)."""
    if engine_sharded.is_sharded(path):
        return ShardedIndex(path, ray, **sharded)
    if ray is not None or sharded:
        return engine_index.open_index(path, ray, **sharded)  # the error that says why
    return Index(path)
