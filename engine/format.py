"""The on-disk index format: manifest, immutable segments, memory-mapped arrays, document store, atomic commit.

An index is a directory holding ``manifest.json`` and segment folders. Segments are written once, fsynced, and
never changed; a commit writes the next manifest under a temporary name, fsyncs it and renames it into place, so a
reader sees either the previous generation or the next one, never a half-written state. Folders not named by the
manifest (a crashed build's staging area, segments of an older generation) are garbage that the next writer removes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import mmap
import os
import re
import shutil
import signal
import threading
import time
import weakref
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numba
import numpy as np
import zstandard

from engine.codec import decode_all, encode, packed_postings, raw_postings
from engine.errors import SiftError
from engine.fields import Columns, merge_columns

FORMAT_NAME = "sift-index"
# 2: narrow integer files, document store blocks as JSON arrays; 3: document ids findable, a deletions slot
NEURAL_KINDS = ("dense", "impact")  # manifest sections: per model, its settings and a folder per segment
FORMAT_VERSION = 5  # 5: compound files, checksummed metadata; 4: dense and SPLADE parts per segment (3: per model)
READ_VERSIONS = (3, 4, 5)  # 3 only without neural parts
MANIFEST = "manifest.json"
LOCK = "write.lock"
STAGING_PREFIX = ".staging-"
SEGMENT_PREFIX = "seg_"
QUALITY_FOLDER = "quality"  # cached passage-quality scores; outlives generations (not a segment)
BLOCK_SIZE = 128  # postings per block of score maxima
STORE_BLOCK = 32  # passages per compressed document-store block
_MERGE_CHUNK = 1 << 23  # postings handled at once while merging or computing block maxima


class IndexFormatError(SiftError):
    """The directory is not a readable Sift index (missing, damaged or of another format version)."""


class IndexLockedError(SiftError):
    """Another process is writing to the index."""


def failpoint(name: str) -> None:
    """Crash-test hook: SIGKILLs this process at the named point when SIFT_FAILPOINT names it; only the first
    process to get there when SIFT_FAILPOINT_ONCE names a file (created then: a retried task then succeeds)."""
    if os.environ.get("SIFT_FAILPOINT") == name:
        once = os.environ.get("SIFT_FAILPOINT_ONCE")
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


def _disk_full_failpoint(path: Path) -> None:
    """Fault-test hook: SIFT_FAILPOINT=disk-full makes every index file write fail as a full disk does."""
    if os.environ.get("SIFT_FAILPOINT") == "disk-full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_OFFSETS = (np.uint32, np.int64)
# Files stored in the narrowest of these types that holds every value (the index is a third smaller than with fixed
# 32/64-bit integers); the kernels are compiled for each. Files not named keep their type.
_STORED_TYPES = {
    "terms.offsets.npy": _OFFSETS,
    "docids.offsets.npy": _OFFSETS,
    "store.offsets.npy": _OFFSETS,
    "postings.offsets.npy": _OFFSETS,
    "blocks.offsets.npy": _OFFSETS,
    "blocks.word.npy": _OFFSETS,
    "blocks.max_tf.npy": (np.uint16, np.uint32),
    "blocks.min_length.npy": (np.uint16, np.uint32),
    "lengths.npy": (np.uint16, np.uint32),
    "passages.part.npy": (np.uint8, np.uint32),
    "docids.order.npy": (np.uint32, np.int64),
    "positions.npy": (np.uint16, np.uint32),
    "positions.offsets.npy": _OFFSETS,
    "title.ends.npy": (np.uint16, np.uint32),
    "title.lengths.npy": (np.uint16, np.uint32),
}


def _stored_type(name: str, array: np.ndarray) -> np.dtype:
    choices = _STORED_TYPES.get(name)
    if choices is None or not array.size:
        return array.dtype
    largest = int(array.max())
    return np.dtype(next(t for t in choices if t is np.int64 or largest <= np.iinfo(t).max))


def write_array(path: Path, array: np.ndarray) -> None:
    """Not synced: the folder's finishing step makes its files durable (finish_segment packs or fsyncs them)."""
    _disk_full_failpoint(path)
    array = np.asarray(array)
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=_stored_type(path.name, array)), allow_pickle=False)


_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=][a-z]\d+)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), \}")


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, Fortran order, dtype, data offset) of an open .npy file. Headers as np.save writes them are read with
    one pattern (numpy's reader evaluates the header as Python, 50 us an array); anything else goes through it."""
    head = f.read(256)
    if head[:6] == b"\x93NUMPY" and head[6] in (1, 2):
        start = 10 if head[6] == 1 else 12
        size = int.from_bytes(head[8:start], "little")
        match = _NPY_HEADER.match(head, start, start + size)
        if match:
            shape = tuple(int(n) for n in match[3].split(b",") if n.strip())
            return shape, match[2] == b"True", np.dtype(match[1].decode()), start + size
    f.seek(0)
    npy = np.lib.format
    read_header = npy.read_array_header_1_0 if npy.read_magic(f) == (1, 0) else npy.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    return shape, fortran_order, dtype, f.tell()


def open_array(path: Path) -> np.ndarray:
    """A .npy file memory-mapped as a plain read-only ndarray (np.memmap's per-slice overhead dominates small reads,
    and np.load's mapping costs more than reading the header and mapping the file here: a commit opens dozens)."""
    try:
        with open(path, "rb") as f:
            shape, fortran_order, dtype, offset = _npy_header(f)
            count = math.prod(shape)
            if dtype.hasobject:
                raise ValueError("holds Python objects")
            size = os.fstat(f.fileno()).st_size
            if offset + count * dtype.itemsize > size:
                raise ValueError(f"{size} bytes, the array needs {offset + count * dtype.itemsize}")
            if not count:
                return np.zeros(shape, dtype=dtype)
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(buffer, dtype, count, offset).reshape(shape, order="F" if fortran_order else "C")
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: missing index file; the index is damaged") from None
    except (ValueError, EOFError, OSError) as e:
        raise IndexFormatError(f"{path}: damaged index file ({e})") from None


def _map_bytes(path: Path) -> bytes | mmap.mmap:
    if not path.exists():
        raise IndexFormatError(f"{path}: missing index file; the index is damaged")
    if not path.stat().st_size:
        return b""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def write_json(path: Path, data: dict) -> None:
    """Metadata as one line (json's C encoder: indenting is 10x slower), with a CRC32 of its own content."""
    _disk_full_failpoint(path)
    data = {key: value for key, value in data.items() if key != "checksum"}
    data["checksum"] = _json_checksum(data)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, ensure_ascii=False))
        f.flush()
        os.fsync(f.fileno())


def _json_checksum(content: dict) -> int:
    """CRC32 of metadata without its checksum, in one canonical form."""
    content = {key: value for key, value in content.items() if key != "checksum"}
    return zlib.crc32(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def parse_meta(path: Path, raw: bytes) -> dict:
    """A metadata file's content, its checksum verified. Metadata written before format 5 has none and is indented
    over several lines; one-line metadata must carry a valid one. Damage is an IndexFormatError naming the file."""
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{path}: damaged ({e})") from None
    if not isinstance(meta, dict):
        raise IndexFormatError(f"{path}: damaged (not a JSON object)")
    older = b"\n" in raw.strip() and "checksum" not in meta
    if not older and meta.get("checksum") != _json_checksum(meta):
        raise IndexFormatError(f"{path}: damaged (its checksum does not match its content)")
    return meta


class FolderWriter:
    """A folder being written, its arrays and byte strings by name: each to a file of its own, or, in memory, for a
    folder expected to be small, so that finish_segment writes them as one compound file without creating a file
    per member (a one-document commit's segment). Files written into the folder directly (the document store)
    join either way."""

    def __init__(self, directory: Path, in_memory: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.members: dict[str, np.ndarray | bytes] | None = {} if in_memory else None
        self._scratch: dict[str, np.ndarray] = {}

    def array(self, name: str, array: np.ndarray) -> None:
        if self._scratch.get(name) is array:  # filled in place (scratch)
            if isinstance(array, np.memmap):
                array.flush()
            return
        if self.members is None:
            write_array(self.directory / name, array)
        else:
            array = np.asarray(array)
            self.members[name] = np.array(array, dtype=_stored_type(name, array), order="C")

    def bytes(self, name: str, data: bytes) -> None:
        if self.members is None:
            _disk_full_failpoint(self.directory / name)
            (self.directory / name).write_bytes(data)
        else:
            self.members[name] = bytes(data)

    def scratch(self, name: str, dtype, length: int) -> np.ndarray:
        """An array to fill in place that is the member `name` (a mapped file, or memory)."""
        if self.members is None:
            array = np.lib.format.open_memmap(self.directory / name, mode="w+", dtype=dtype, shape=(length,))
        else:
            array = self.members[name] = np.zeros(length, dtype=dtype)
        self._scratch[name] = array
        return array

    def remove(self, name: str) -> None:
        self._scratch.pop(name, None)
        if self.members is not None:
            self.members.pop(name, None)
        else:
            (self.directory / name).unlink()


# --- string tables -------------------------------------------------------------------------------------------------


def write_strings(out: FolderWriter, name: str, strings: Sequence[str], findable: bool = False) -> None:
    """Strings as one UTF-8 blob plus offsets: memory-mapped, no load cost on open. findable: also their order
    sorted by UTF-8 bytes (NAME.order.npy), so that StringTable.find_many finds unsorted strings."""
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    out.bytes(f"{name}.blob", b"".join(encoded))
    out.array(f"{name}.offsets.npy", offsets)
    if findable:
        order = sorted(range(len(encoded)), key=encoded.__getitem__)
        out.array(f"{name}.order.npy", np.asarray(order, dtype=np.uint32))


class StringTable(Sequence[str]):
    """Sorted (terms) or findable through an order file (document ids)."""

    def __init__(self, files: Folder, name: str, findable: bool = False) -> None:
        self._offsets = files.array(f"{name}.offsets.npy")
        self._blob = files.bytes(f"{name}.blob")
        self._order = files.array(f"{name}.order.npy") if findable else np.zeros(0, dtype=np.uint32)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.take(range(*i.indices(len(self))))
        return str(self._blob[self._offsets[i] : self._offsets[i + 1]], "utf-8")

    def take(self, indices, via: np.ndarray | None = None) -> list[str]:
        """Many strings at once: gathered into one NUL-separated buffer in compiled code and decoded by one call
        (3x faster than a decode per string at 1,000 strings). via: the strings are via[indices] (an array mapping
        indices to this table's rows, read in the same compiled call)."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.split(gather_strings(self._bytes, self._offsets, indices, NO_ROWS if via is None else via),
                          indices, via)  # fmt: skip

    def split(self, joined: np.ndarray, indices: np.ndarray, via: np.ndarray | None = None) -> list[str]:
        """The strings of gather_strings' output for these indices (and via), as take returns them."""
        if not len(indices):
            return []
        strings = joined.tobytes().decode("utf-8").split("\0")
        if len(strings) == len(indices):
            return strings
        blob = self._blob  # a string holds NUL itself: one at a time
        if via is not None:
            indices = np.asarray(via[indices], dtype=np.int64)
        return [str(blob[a:b], "utf-8") for a, b in zip(self._offsets[indices], self._offsets[indices + 1])]

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(bytes, offsets): what gather_strings reads."""
        return self._bytes, self._offsets

    @cached_property
    def _bytes(self) -> np.ndarray:
        return np.frombuffer(self._blob, dtype=np.uint8)

    def find_many(self, keys: Sequence[str]) -> np.ndarray:
        """Indexes of keys (-1 where absent): one compiled binary search for all of them."""
        encoded = [k.encode("utf-8") for k in keys]
        bounds = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=bounds[1:])
        joined = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return _find_sorted(self._bytes, self._offsets, self._order, joined, bounds)

    def find(self, key: str) -> int:
        """Index of key in a sorted table (sorted by UTF-8 bytes), or -1."""
        return int(self.find_many([key])[0])


NO_ROWS = np.zeros(0, dtype=np.uint32)  # gather_strings' rows when indices are the table's own


@numba.njit(nogil=True, cache=True)
def gather_strings(blob, offsets, indices, rows):
    """The bytes of the chosen strings (rows[indices], or indices when rows is empty), each followed by a NUL
    except the last."""
    size = max(len(indices) - 1, 0)
    for j in indices:
        i = rows[j] if len(rows) else j
        size += offsets[i + 1] - offsets[i]
    out = np.empty(size, dtype=np.uint8)
    at = 0
    for n, j in enumerate(indices):
        i = rows[j] if len(rows) else j
        if n:
            out[at] = 0
            at += 1
        for b in range(offsets[i], offsets[i + 1]):
            out[at] = blob[b]
            at += 1
    return out


@numba.njit(nogil=True, cache=True)
def _bytes_less(blob, start, end, keys, key_start, key_end):
    """blob[start:end] < keys[key_start:key_end], comparing unsigned bytes as Python compares bytes."""
    i, j = start, key_start
    while i < end and j < key_end:
        if blob[i] != keys[j]:
            return blob[i] < keys[j]
        i += 1
        j += 1
    return (end - start) < (key_end - key_start)


@numba.njit(nogil=True, cache=True)
def _find_sorted(blob, offsets, order, keys, key_bounds):
    """Binary search of each key among the strings taken in `order` (the strings' own order if it is empty)."""
    n = len(offsets) - 1
    ordered = len(order) > 0
    found = np.full(len(key_bounds) - 1, -1, dtype=np.int64)
    for j in range(len(key_bounds) - 1):
        ks, ke = key_bounds[j], key_bounds[j + 1]
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            at = order[mid] if ordered else mid
            if _bytes_less(blob, offsets[at], offsets[at + 1], keys, ks, ke):
                lo = mid + 1
            else:
                hi = mid
        if lo < n:
            at = order[lo] if ordered else lo
            if offsets[at + 1] - offsets[at] == ke - ks:
                same = True
                for i in range(ke - ks):
                    if blob[offsets[at] + i] != keys[ks + i]:
                        same = False
                        break
                if same:
                    found[j] = at
    return found


def sort_terms(terms: Iterable[str]) -> list[str]:
    """Sorted by UTF-8 bytes, the order StringTable.find expects."""
    return sorted(terms, key=lambda t: t.encode("utf-8"))


# --- document store ------------------------------------------------------------------------------------------------


STORE_FIELDS = ("id", "part", "title", "text")
_STORE_POSITION = {name: i for i, name in enumerate(STORE_FIELDS)}


class DocStoreWriter:
    """Appends passage records (rows of STORE_FIELDS) in zstandard-compressed blocks, each a JSON array of rows
    (one encoder call per block, not per passage), with an offset table."""

    def __init__(self, directory: Path) -> None:
        self._file = open(directory / "store.zst", "wb")
        self._compressor = zstandard.ZstdCompressor(level=3)
        self._pending: list[list] = []
        self._offsets = [0]

    def add_many(self, rows: list[list]) -> None:
        self._pending.extend(rows)
        while len(self._pending) >= STORE_BLOCK:
            self._write_block(self._pending[:STORE_BLOCK])
            del self._pending[:STORE_BLOCK]

    @property
    def aligned(self) -> bool:
        return not self._pending

    @property
    def bytes(self) -> int:
        """Compressed bytes written so far."""
        return self._offsets[-1]

    def add_raw_blocks(self, store: DocStore) -> None:
        """Appends whole compressed blocks of another store (used by merges; no recompression)."""
        if self._pending:
            raise ValueError("raw blocks can only be appended on a block boundary")
        offsets = store.offsets
        self._file.write(store.blob[: int(offsets[-1])])
        base = self._offsets[-1]
        self._offsets.extend(int(base + o) for o in offsets[1:])

    def _write_block(self, rows: list[list]) -> None:
        block = self._compressor.compress(json.dumps(rows, ensure_ascii=False).encode("utf-8"))
        self._file.write(block)
        self._offsets.append(self._offsets[-1] + len(block))

    def close(self, out: FolderWriter) -> None:
        """Finishes the store file, its offset table written into out."""
        if self._pending:
            self._write_block(self._pending)
            self._pending = []
        self._file.close()
        out.array("store.offsets.npy", np.asarray(self._offsets, dtype=np.int64))


class DocStore:
    """O(1) access to a passage record by its number within a segment: one block read and decompressed."""

    def __init__(self, files: Folder) -> None:
        self._files = files
        self.offsets = files.array("store.offsets.npy")
        self.blob = files.bytes("store.zst")
        self._cached_block: tuple[int, list[list]] = (-1, [])

    @property
    def path(self) -> Path:
        return self._files.directory / "store.zst"

    def row(self, passage: int) -> list:
        block, within = divmod(passage, STORE_BLOCK)
        cached_id, rows = self._cached_block
        if cached_id != block:
            raw = self.blob[self.offsets[block] : self.offsets[block + 1]]
            try:
                rows = json.loads(zstandard.ZstdDecompressor().decompress(raw))
            except (zstandard.ZstdError, ValueError) as e:
                raise IndexFormatError(f"{self.path}: damaged document store block {block} ({e})") from None
            self._cached_block = (block, rows)
        try:
            return rows[within]
        except IndexError:
            raise IndexFormatError(f"{self.path}: damaged document store (block {block} is short)") from None

    def __getitem__(self, passage: int) -> dict:
        return dict(zip(STORE_FIELDS, self.row(passage)))

    def fields(self, passage: int, *names: str) -> list:
        """The named fields of a passage's record (of STORE_FIELDS), in the order asked."""
        row = self.row(passage)
        return [row[_STORE_POSITION[name]] for name in names]


# --- segments ------------------------------------------------------------------------------------------------------


@dataclass
class PostingBlocks:
    """Per-block maxima: any BM25 (any k1, b, statistics) of a block is bounded by max tf at min length."""

    offsets: np.ndarray  # int64 [terms + 1]: a term's blocks are offsets[t]:offsets[t+1]
    max_tf: np.ndarray  # uint32 [blocks]
    min_length: np.ndarray  # uint32 [blocks]
    last_doc: np.ndarray  # uint32 [blocks]: the last passage of the block, for skipping


def compute_blocks(docs: np.ndarray, tfs: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> PostingBlocks:
    dfs = np.diff(offsets)
    per_term = (dfs + BLOCK_SIZE - 1) // BLOCK_SIZE
    block_offsets = np.zeros(len(dfs) + 1, dtype=np.int64)
    np.cumsum(per_term, out=block_offsets[1:])
    total = int(block_offsets[-1])
    max_tf = np.empty(total, dtype=np.uint32)
    min_length = np.empty(total, dtype=np.uint32)
    last_doc = np.empty(total, dtype=np.uint32)
    for t0, t1 in _term_chunks(offsets):
        p0, p1 = int(offsets[t0]), int(offsets[t1])
        b0, b1 = int(block_offsets[t0]), int(block_offsets[t1])
        if b0 == b1:
            continue
        counts = per_term[t0:t1]
        first_block = np.repeat(block_offsets[t0:t1], counts)
        starts = np.repeat(offsets[t0:t1], counts) + BLOCK_SIZE * (np.arange(b0, b1) - first_block) - p0
        ends = np.append(starts[1:], p1 - p0)
        chunk_docs = np.asarray(docs[p0:p1])
        max_tf[b0:b1] = np.maximum.reduceat(np.asarray(tfs[p0:p1]), starts)
        min_length[b0:b1] = np.minimum.reduceat(np.asarray(lengths)[chunk_docs], starts)
        last_doc[b0:b1] = chunk_docs[ends - 1]
    return PostingBlocks(block_offsets, max_tf, min_length, last_doc)


def _term_chunks(offsets: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive term ranges holding about _MERGE_CHUNK postings each, so memory stays bounded."""
    n_terms = len(offsets) - 1
    t0 = 0
    while t0 < n_terms:
        t1 = int(np.searchsorted(offsets, offsets[t0] + _MERGE_CHUNK, side="right")) - 1
        t1 = min(max(t1, t0 + 1), n_terms)
        yield t0, t1
        t0 = t1


def write_postings(
    out: FolderWriter, terms: Sequence[str], offsets: np.ndarray, docs: np.ndarray, tfs: np.ndarray,
    lengths: np.ndarray, packed: bool = False,
) -> dict:
    """Terms (sorted), postings (raw, or packed with the block codec) and their block maxima. docs/tfs may be
    out's scratch arrays, already in place. Returns what the segment's metadata must say about them."""
    write_strings(out, "terms", terms)
    out.array("postings.offsets.npy", offsets)
    if packed:
        for name, array in zip(PACKED_FILES, encode(docs, tfs, offsets)):
            out.array(f"{name}.npy", array)
    else:
        out.array("postings.docs.npy", docs)
        out.array("postings.tfs.npy", tfs)
    blocks = compute_blocks(docs, tfs, offsets, lengths)
    out.array("blocks.offsets.npy", blocks.offsets)
    out.array("blocks.max_tf.npy", blocks.max_tf)
    out.array("blocks.min_length.npy", blocks.min_length)
    out.array("blocks.last_doc.npy", blocks.last_doc)
    return {"postings": "packed"} if packed else {}


PACKED_FILES = ("postings.words", "blocks.word", "blocks.doc_width", "blocks.tf_width")
POSTINGS_FORMATS = ("raw", "packed")


COMPOUND = "segment.cfs"
COMPOUND_BYTES = 1 << 20  # a finished folder up to this size is packed into one file, checked whole at every open


def finish_segment(out: FolderWriter, meta: dict) -> None:
    """Makes a written folder durable and marks it finished: segment.json, written last, lists every file's size and
    checksum (a folder without it was never finished). A small folder's members are packed into one compound file,
    as Lucene's .cfs: a one-document commit then costs one fsync and one map instead of dozens."""
    directory = out.directory
    files = sorted(path for path in directory.iterdir() if path.is_file() and path.name != "segment.json")
    members: dict[str, np.ndarray | bytes] = dict(out.members or {})
    size = sum(path.stat().st_size for path in files) + sum(len(m) if isinstance(m, bytes) else m.nbytes
                                                             for m in members.values())  # fmt: skip
    if size <= COMPOUND_BYTES:
        for path in files:
            members[path.name] = open_array(path) if path.suffix == ".npy" else path.read_bytes()
        meta = {**meta, "compound": _write_compound(directory / COMPOUND, members)}
        for path in files:
            path.unlink()
    else:
        spill = FolderWriter(directory)
        for name, member in members.items():
            (spill.bytes if isinstance(member, bytes) else spill.array)(name, member)
        for path in directory.iterdir():
            if path.is_file():
                fsync_path(path)
    write_json(directory / "segment.json", {**meta, "files": file_checksums(directory)})
    fsync_path(directory)


_ALIGN = 64


def _write_compound(path: Path, members: dict[str, np.ndarray | bytes]) -> dict[str, list]:
    """Writes members into one synced file. Returns its table: per member, [offset, size] of its bytes, and for an
    array [offset, size, dtype, shape, Fortran order] of its data."""
    table: dict[str, list] = {}
    _disk_full_failpoint(path)
    with open(path, "wb") as out:
        for name in sorted(members):
            member = members[name]
            if isinstance(member, bytes):
                data, described = member, []
            else:
                fortran = bool(member.flags.f_contiguous and not member.flags.c_contiguous)
                data = member.tobytes(order="F" if fortran else "C")
                described = [member.dtype.str, list(member.shape), fortran]
            out.write(bytes(-out.tell() % _ALIGN))
            table[name] = [out.tell(), len(data), *described]
            out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return table


class Folder:
    """A finished folder's files by name: each a file of its own, or a member of the folder's compound file."""

    def __init__(self, directory: Path, members: dict[str, list] | None = None) -> None:
        self.directory = directory
        self.members = members
        self._compound = _map_bytes(directory / COMPOUND) if members is not None else b""

    def array(self, name: str) -> np.ndarray:
        if self.members is None:
            return open_array(self.directory / name)
        offset, size, dtype, shape, fortran = self._member(name)
        dtype = np.dtype(dtype)
        count = math.prod(shape)
        if count * dtype.itemsize != size:
            raise IndexFormatError(f"{self.directory / COMPOUND}: damaged table entry for {name}")
        if not count:
            return np.zeros(shape, dtype=dtype)
        return np.frombuffer(self._compound, dtype, count, offset).reshape(shape, order="F" if fortran else "C")

    def bytes(self, name: str) -> bytes | mmap.mmap | memoryview:
        if self.members is None:
            return _map_bytes(self.directory / name)
        offset, size = self._member(name)[:2]
        return memoryview(self._compound)[offset : offset + size] if size else b""

    def _member(self, name: str) -> list:
        entry = self.members.get(name) if self.members else None
        if entry is None:
            raise IndexFormatError(f"{self.directory / COMPOUND}: holds no {name}; the index is damaged")
        if entry[0] + entry[1] > len(self._compound):
            raise IndexFormatError(f"{self.directory / COMPOUND}: {name} lies past the file's end; the index is "
                                   "damaged")  # fmt: skip
        return entry


# --- checksums: damage is an error naming the file, never a wrong answer --------------------------------------------

VERIFY_AT_OPEN_BYTES = 1 << 20  # files up to this size are checksummed whenever they are opened; all by `sift check`


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def file_checksums(directory: Path, skip: tuple[str, ...] = ("segment.json",)) -> dict[str, list[int]]:
    """name -> [size, CRC32] of every file in a folder (as Lucene's footers: written once, checked on reading)."""
    return {path.name: [path.stat().st_size, _crc32(path)] for path in sorted(directory.iterdir())
            if path.is_file() and path.name not in skip}  # fmt: skip


def verify_files(directory: Path, files: dict | None, full: bool = False) -> int:
    """Checks the files a folder's metadata lists: sizes always, checksums of small files (of all with full=True).
    Returns the bytes checksummed; raises IndexFormatError naming the first damaged file."""
    checked = 0
    for name, (size, crc) in (files or {}).items():
        path = directory / name
        try:
            actual = path.stat().st_size
            if actual == size and (full or size <= VERIFY_AT_OPEN_BYTES):
                actual_crc = _crc32(path)
        except FileNotFoundError:
            raise IndexFormatError(f"{path}: missing index file; the index is damaged") from None
        if actual != size:
            raise IndexFormatError(f"{path}: {actual:,} bytes where {size:,} were written; the index is damaged")
        if full or size <= VERIFY_AT_OPEN_BYTES:
            if actual_crc != crc:
                raise IndexFormatError(f"{path}: checksum mismatch (the file changed after it was written); the "
                                       "index is damaged")  # fmt: skip
            checked += size
    return checked


class PostingLists:
    """Terms and their postings with block maxima, memory-mapped: what the kernels read. A segment adds passages to
    them; an impact index (learned sparse weights over the index's passages) is nothing more."""

    def __init__(self, directory: Path, meta_bytes: bytes | None = None) -> None:
        self.meta_bytes = _read_meta(directory) if meta_bytes is None else meta_bytes
        self.meta = parse_meta(directory / "segment.json", self.meta_bytes)
        verify_files(directory, self.meta.get("files"))
        self.files = files = Folder(directory, self.meta.get("compound"))
        self.terms = StringTable(files, "terms")
        self.offsets = files.array("postings.offsets.npy")
        self.packed = self.meta.get("postings") == "packed"
        self.blocks = PostingBlocks(
            files.array("blocks.offsets.npy"),
            files.array("blocks.max_tf.npy"),
            files.array("blocks.min_length.npy"),
            files.array("blocks.last_doc.npy"),
        )
        blocks = self.blocks  # the kernels' view of them (engine/sparse.search_segment)
        self.block_arrays = (blocks.offsets, blocks.max_tf, blocks.min_length, blocks.last_doc)
        # Every file is mapped now, at open: a later commit may delete this generation's files, and a reader must
        # keep answering from the commit it opened (mapped files outlive their names).
        if self.packed:
            self._raw = None
            self.postings = packed_postings(*(files.array(f"{name}.npy") for name in PACKED_FILES))
        else:
            self._raw = (files.array("postings.docs.npy"), files.array("postings.tfs.npy"))
            self.postings = raw_postings(*self._raw)  # the kernels' view (engine.codec)

    @property
    def directory(self) -> Path:
        return self.files.directory

    @cached_property
    def _decoded(self) -> tuple[np.ndarray, np.ndarray]:
        return decode_all(self.postings, self.offsets, self.blocks.last_doc)

    @property
    def docs(self) -> np.ndarray:
        """Passage ids of all postings; decoded in full for a packed segment (merges only)."""
        return self._decoded[0] if self._raw is None else self._raw[0]

    @property
    def tfs(self) -> np.ndarray:
        return self._decoded[1] if self._raw is None else self._raw[1]


def _read_meta(directory: Path) -> bytes:
    try:
        return (directory / "segment.json").read_bytes()
    except FileNotFoundError:
        raise IndexFormatError(f"{directory / 'segment.json'}: missing; the index is damaged") from None


class Segment(PostingLists):
    """A read-only, memory-mapped segment: postings, passage lengths, ids and the document store."""

    def __init__(self, directory: Path, meta_bytes: bytes | None = None) -> None:
        super().__init__(directory, meta_bytes)
        files = self.files
        self.lengths = files.array("lengths.npy")
        self.passage_doc = files.array("passages.doc.npy")
        self.passage_part = files.array("passages.part.npy")
        self.doc_ids = StringTable(files, "docids", findable=True)
        self.positions = files.array("positions.npy") if self.meta.get("positions") else None
        self.position_starts = files.array("positions.offsets.npy") if self.meta.get("positions") else None
        titled = self.meta.get("title_field")  # with positions: the title's positions come first, then the text's
        self.title_ends = files.array("title.ends.npy") if titled else None
        self.title_lengths = files.array("title.lengths.npy") if titled else None
        self.store = DocStore(files)
        self.columns = Columns(files, self.meta["fields"]) if self.meta.get("fields") else None

    def find_documents(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Each document's number in this segment, or -1: the document id -> segment map."""
        return self.doc_ids.find_many(doc_ids)

    @property
    def passages(self) -> int:
        return len(self.lengths)

    @cached_property
    def tie_keys(self) -> np.ndarray:
        """An int64 per passage ordering it by (document id, part), for exact score ties (IndexReader.tie_keys);
        computed once per open segment."""
        order = np.asarray(self.doc_ids._order, dtype=np.int64)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return (rank[np.asarray(self.passage_doc)] << 24) | np.asarray(self.passage_part, np.int64)

    @cached_property
    def total_tokens(self) -> int:
        return int(self.meta["tokens"])


_open_segments: weakref.WeakValueDictionary[str, Segment] = weakref.WeakValueDictionary()
_open_segments_lock = threading.Lock()


def open_segment(directory: Path) -> Segment:
    """A segment mapped once per process: every reader (and the writer that published it) shares its maps, so that a
    refresh after a small commit maps only what is new. A folder whose segment.json differs from the mapped one's
    holds another segment (an index rebuilt in place); its files are checked as at any open."""
    meta_bytes = _read_meta(directory)
    key = os.path.abspath(directory)
    with _open_segments_lock:
        segment = _open_segments.get(key)
    if segment is not None and segment.meta_bytes == meta_bytes:
        verify_files(directory, segment.meta.get("files"))
        return segment
    segment = Segment(directory, meta_bytes)
    with _open_segments_lock:
        _open_segments[key] = segment
    return segment


def publish_segment(segment: Segment, directory: Path) -> None:
    """Moves a finished segment's folder to its committed name; its maps stay valid and are shared from there."""
    os.replace(segment.directory, directory)
    segment.files.directory = directory
    with _open_segments_lock:
        _open_segments[os.path.abspath(directory)] = segment


@dataclass(frozen=True)
class Deletions:
    """A segment's deleted passages as of one commit, and what they take from the index statistics: written as a
    folder of its own for each generation that changes them (the segment itself never changes, as Lucene's .liv),
    so that N, average length and every df count live passages only."""

    passages: np.ndarray  # int64, sorted: the segment's deleted passage numbers
    term_ids: np.ndarray  # int64, sorted: the segment's term ids occurring in deleted passages
    term_counts: np.ndarray  # int64: deleted passages holding each of those terms (df to take away)
    tokens: int
    scored_passages: int
    documents: int

    def mask(self, passages: int) -> np.ndarray:
        """uint8 per passage of the segment: 1 live, 0 deleted (the kernels' mask)."""
        live = np.ones(passages, dtype=np.uint8)
        live[self.passages] = 0
        return live

    def df_taken(self, term_ids: np.ndarray) -> np.ndarray:
        """Per term id (-1: absent), the deleted passages that hold it."""
        term_ids = np.asarray(term_ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.term_ids, term_ids), max(len(self.term_ids) - 1, 0))
        hit = (term_ids >= 0) & (len(self.term_ids) > 0)
        if len(self.term_ids):
            hit &= self.term_ids[at] == term_ids
        return np.where(hit, self.term_counts[at] if len(self.term_counts) else 0, 0)


def write_deletions(directory: Path, deletions: Deletions) -> None:
    directory.mkdir(parents=True)
    write_array(directory / "deleted.npy", deletions.passages.astype(np.int64))
    write_array(directory / "deleted.terms.npy", deletions.term_ids.astype(np.int64))
    write_array(directory / "deleted.counts.npy", deletions.term_counts.astype(np.int64))
    for path in directory.iterdir():
        fsync_path(path)
    meta = {"passages": len(deletions.passages), "tokens": deletions.tokens,
            "scored_passages": deletions.scored_passages, "documents": deletions.documents,
            "files": file_checksums(directory, skip=("deletions.json",))}  # fmt: skip
    write_json(directory / "deletions.json", meta)
    fsync_path(directory)


def read_deletions(directory: Path) -> Deletions:
    path = directory / "deletions.json"
    try:
        meta = parse_meta(path, path.read_bytes())
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: missing; the index is damaged") from None
    verify_files(directory, meta.get("files"))
    passages = np.asarray(open_array(directory / "deleted.npy"), dtype=np.int64)
    if len(passages) != meta.get("passages"):
        raise IndexFormatError(f"{directory / 'deleted.npy'}: holds {len(passages)} passages, "
                               f"{path.name} says {meta.get('passages')}; the index is damaged")  # fmt: skip
    return Deletions(
        passages,
        np.asarray(open_array(directory / "deleted.terms.npy"), dtype=np.int64),
        np.asarray(open_array(directory / "deleted.counts.npy"), dtype=np.int64),
        int(meta["tokens"]), int(meta["scored_passages"]), int(meta["documents"]),
    )  # fmt: skip


NO_DELETIONS = Deletions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 0, 0)


def merge_segments(segments: Sequence[Segment], directory: Path, packed: bool = False,
                   deleted: Sequence[np.ndarray] | None = None) -> dict:  # fmt: skip
    """Rewrites several segments as one from their postings, without their deleted passages (deleted: per segment,
    its deleted passage numbers), the rest renumbered in segment order: the segment a fresh build of the live
    passages writes, at the cost of copying postings rather than analyzing text again. Returns its meta."""
    deleted = deleted if deleted is not None else [np.zeros(0, np.int64)] * len(segments)
    keeps = []
    for seg, gone in zip(segments, deleted):
        keep = np.ones(seg.passages, dtype=bool)
        keep[np.asarray(gone, dtype=np.int64)] = False
        keeps.append(keep)
    sources = sum(sum(size for size, _ in s.meta["files"].values()) for s in segments)
    out = FolderWriter(directory, in_memory=sources <= COMPOUND_BYTES)
    kept_df = [_kept_postings_per_term(seg, keep) for seg, keep in zip(segments, keeps)]
    vocabulary = sort_terms(set().union(*(seg.terms.take(np.flatnonzero(df)) for seg, df in zip(segments, kept_df))))
    position = {t: i for i, t in enumerate(vocabulary)}
    maps = [np.fromiter((position.get(t, -1) for t in s.terms[:]), dtype=np.int64, count=len(s.terms))
            for s in segments]  # fmt: skip
    df = np.zeros(len(vocabulary), dtype=np.int64)
    for mapping, counts in zip(maps, kept_df):
        present = mapping >= 0
        np.add.at(df, mapping[present], counts[present])
    offsets = np.zeros(len(vocabulary) + 1, dtype=np.int64)
    np.cumsum(df, out=offsets[1:])
    total = int(offsets[-1])
    docs = out.scratch("postings.docs.npy", np.uint32, total)
    tfs = out.scratch("postings.tfs.npy", np.uint32, total)
    already = np.zeros(len(vocabulary), dtype=np.int64)  # postings of each term placed by earlier segments
    base = 0
    with_positions = all(s.positions is not None for s in segments)
    moved = []  # with positions: per segment, (its postings kept, where each went)
    for seg, mapping, keep in zip(segments, maps, keeps):
        sources, destinations = [], []
        renumber = np.cumsum(keep) - 1 + base  # a kept passage's number in the merged segment
        for t0, t1 in _term_chunks(seg.offsets):
            p0, p1 = int(seg.offsets[t0]), int(seg.offsets[t1])
            chunk_docs = np.asarray(seg.docs[p0:p1])
            kept = np.flatnonzero(keep[chunk_docs])
            term = np.repeat(np.arange(t0, t1), np.diff(seg.offsets[t0 : t1 + 1]))[kept]  # ascending
            rank = np.arange(len(term)) - np.searchsorted(term, term)  # within its term, among kept postings
            target = mapping[term]
            destination = offsets[target] + already[target] + rank
            docs[destination] = renumber[chunk_docs[kept]]
            tfs[destination] = np.asarray(seg.tfs[p0:p1])[kept]
            already += np.bincount(target, minlength=len(already))
            if with_positions:
                sources.append(kept + p0)
                destinations.append(destination)
        if with_positions:
            moved.append((np.concatenate(sources or [np.zeros(0, np.int64)]),
                          np.concatenate(destinations or [np.zeros(0, np.int64)])))  # fmt: skip
        base += int(keep.sum())
    if with_positions:
        starts = np.zeros(total + 1, dtype=np.int64)
        np.cumsum(tfs, out=starts[1:])
        positions = np.empty(int(starts[-1]), dtype=np.uint32)
        for seg, (sources, destinations) in zip(segments, moved):
            copy_runs(seg.positions, np.asarray(seg.position_starts, dtype=np.int64), sources, positions, starts,
                      destinations)  # fmt: skip
        out.array("positions.npy", positions)
        out.array("positions.offsets.npy", starts)
    with_title_field = all(s.title_ends is not None for s in segments)
    if with_title_field:
        for file, name in (("title.ends.npy", "title_ends"), ("title.lengths.npy", "title_lengths")):
            kept = [np.asarray(getattr(s, name))[keep] for s, keep in zip(segments, keeps)]
            out.array(file, np.concatenate(kept).astype(np.uint32))
    lengths = np.concatenate([np.asarray(s.lengths)[keep] for s, keep in zip(segments, keeps)]).astype(np.uint32)
    live_docs = []  # per segment, its documents with a kept passage (a document's passages go together)
    passage_doc, doc_base = [], 0
    for seg, keep in zip(segments, keeps):
        doc_of = np.asarray(seg.passage_doc, dtype=np.int64)[keep]
        live = np.unique(doc_of)
        passage_doc.append(np.searchsorted(live, doc_of) + doc_base)
        live_docs.append(live)
        doc_base += len(live)
    out.array("lengths.npy", lengths)
    out.array("passages.doc.npy", np.concatenate(passage_doc).astype(np.uint32))
    out.array("passages.part.npy", np.concatenate([np.asarray(s.passage_part)[k] for s, k in zip(segments, keeps)]))
    write_strings(out, "docids", [d for s, live in zip(segments, live_docs) for d in s.doc_ids.take(live)],
                  findable=True)  # fmt: skip
    store = DocStoreWriter(directory)
    for s, keep in zip(segments, keeps):
        whole = bool(keep.all())
        if whole and store.aligned and (s.passages % STORE_BLOCK == 0 or s is segments[-1]):
            store.add_raw_blocks(s.store)
        else:
            store.add_many([s.store.row(i) for i in np.flatnonzero(keep).tolist()])
    store.close(out)
    fields = segments[0].meta.get("fields") or {}
    if fields:
        merge_columns(out, fields, [(s.columns, live) for s, live in zip(segments, live_docs)])
    failpoint("merge")
    postings = write_postings(out, vocabulary, offsets, docs, tfs, lengths, packed)
    del docs, tfs
    if packed:  # the raw postings were the codec's input only
        out.remove("postings.docs.npy")
        out.remove("postings.tfs.npy")
    meta = {
        "passages": len(lengths),
        "documents": doc_base,
        "tokens": int(lengths.sum(dtype=np.int64)),
        "scored_passages": int(np.count_nonzero(lengths)),
        "terms": len(vocabulary),
        "postings": total,
        "block_size": BLOCK_SIZE,
        **({"fields": fields} if fields else {}),
        **({"positions": True} if with_positions else {}),
        **({"title_field": True} if with_title_field else {}),
        **postings,
    }
    finish_segment(out, meta)
    return meta


@numba.njit(nogil=True, cache=True)
def copy_runs(source, source_starts, source_runs, target, target_starts, target_runs):
    """Copies run source_runs[j] of source (bounded by source_starts) to run target_runs[j] of target."""
    for j in range(len(source_runs)):
        start, end = source_starts[source_runs[j]], source_starts[source_runs[j] + 1]
        at = target_starts[target_runs[j]]
        for i in range(end - start):
            target[at + i] = source[start + i]


def copy_runs_reference(source, source_starts, source_runs, target, target_starts, target_runs) -> None:
    """copy_runs in numpy, for the tests."""
    for run, to in zip(source_runs.tolist(), target_runs.tolist()):
        size = source_starts[run + 1] - source_starts[run]
        target[target_starts[to] : target_starts[to] + size] = source[source_starts[run] : source_starts[run + 1]]


def _kept_postings_per_term(segment: Segment, keep: np.ndarray) -> np.ndarray:
    """Per term of the segment, its postings in kept passages."""
    if keep.all():
        return np.diff(np.asarray(segment.offsets)).astype(np.int64)
    counts = np.zeros(len(segment.terms), dtype=np.int64)
    for t0, t1 in _term_chunks(segment.offsets):
        p0, p1 = int(segment.offsets[t0]), int(segment.offsets[t1])
        term = np.repeat(np.arange(t0, t1), np.diff(segment.offsets[t0 : t1 + 1]))
        counts[t0:t1] = np.bincount(term[keep[np.asarray(segment.docs[p0:p1])]] - t0, minlength=t1 - t0)
    return counts


# --- manifest and commits ------------------------------------------------------------------------------------------


def read_manifest(index_dir: Path) -> dict:
    path = Path(index_dir) / MANIFEST
    if not Path(index_dir).is_dir():
        raise IndexFormatError(f"{index_dir}: no such index directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{index_dir}: holds no committed Sift index (no {MANIFEST})") from None
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{path}: unreadable manifest ({e})") from None
    if manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path}: not a Sift index manifest")
    neural = any(manifest.get(kind) for kind in NEURAL_KINDS)
    if manifest.get("format_version") == 3 and neural:
        raise IndexFormatError(f"{path}: its dense or SPLADE parts were written by an older Sift (one folder for the "
                               "whole index); rebuild the index with sift index ... --dense/--splade")  # fmt: skip
    if manifest.get("format_version") not in READ_VERSIONS:
        raise IndexFormatError(
            f"{path}: format version {manifest.get('format_version')} is not supported "
            f"(this Sift reads version {FORMAT_VERSION}); rebuild the index"
        )
    if manifest["format_version"] >= 4 and manifest.get("checksum") != _json_checksum(manifest):
        raise IndexFormatError(f"{path}: damaged manifest (its checksum does not match its content)")
    return manifest


def commit_manifest(index_dir: Path, manifest: dict) -> None:
    """The one atomic step of every change: the new manifest replaces the old by rename."""
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest, "committed": time.time()}
    temporary = index_dir / f"{MANIFEST}.tmp"
    write_json(temporary, manifest)
    failpoint("before-manifest-rename")
    os.replace(temporary, index_dir / MANIFEST)
    fsync_path(index_dir)


class WriteLock:
    """One writer per index at a time (advisory flock; released by the OS if the process dies). timeout: seconds to
    wait for another writer to finish (0: fail at once)."""

    def __init__(self, index_dir: Path, timeout: float = 0) -> None:
        self.index_dir = index_dir
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> WriteLock:
        self._fd = os.open(self.index_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    waited = f" (waited {self.timeout:g} s)" if self.timeout else ""
                    message = f"{self.index_dir}: another process is writing to this index{waited}"
                    raise IndexLockedError(message) from None
                time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def check_index(index_dir: Path) -> dict:
    """Every file of the last commit against the size and checksum written with it, then every folder opened: what
    `sift check` runs (as Lucene's CheckIndex). Raises IndexFormatError naming the first damaged file."""
    manifest = read_manifest(index_dir)
    files = checked = 0
    for folder in live_folders(manifest):
        directory = index_dir / folder
        for meta_name in ("segment.json", "deletions.json", "dense.json"):
            if (directory / meta_name).exists():
                path = directory / meta_name
                listed = parse_meta(path, path.read_bytes()).get("files")
                if listed is None:
                    raise IndexFormatError(f"{directory / meta_name}: lists no checksums (written by an older Sift); "
                                           "rebuild the index to check it")  # fmt: skip
                checked += verify_files(directory, listed, full=True)
                files += len(listed) + 1
                break
        else:
            raise IndexFormatError(f"{directory}: missing or unfinished folder; the index is damaged")
    return {"index": str(index_dir), "generation": manifest["generation"], "folders": len(live_folders(manifest)),
            "files": files, "bytes_checked": checked}  # fmt: skip


def live_folders(manifest: dict) -> list[str]:
    """Every folder a manifest names: its segments and their deletions, its dense and its impact indexes."""
    neural = [folder for kind in NEURAL_KINDS for entry in manifest.get(kind, {}).values()
              for folder in entry["segments"].values()]  # fmt: skip
    segments = manifest.get("segments", [])
    return [s["name"] for s in segments] + [s["deletions"] for s in segments if s.get("deletions")] + neural


def collect_garbage(index_dir: Path, live_segments: Iterable[str]) -> None:
    """Removes folders the manifest does not name: crashed staging areas and older generations' segments."""
    live = set(live_segments)
    for path in index_dir.iterdir():
        ours = path.name.startswith((SEGMENT_PREFIX, STAGING_PREFIX))
        if ours and path.is_dir() and path.name not in live:
            shutil.rmtree(path, ignore_errors=True)
