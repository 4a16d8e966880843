"""The on-disk format: string tables, the document store, block maxima and segment merges."""

import json
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import random_documents, write_jsonl
from engine.format import (
    BLOCK_SIZE,
    DocStore,
    DocStoreWriter,
    Folder,
    FolderWriter,
    IndexFormatError,
    Segment,
    StringTable,
    compute_blocks,
    finish_segment,
    open_array,
    parse_meta,
    sort_terms,
    verify_files,
    write_json,
    write_strings,
)
from indexers.corpus import CorpusReader, open_source
from indexers.inverted import BuildOptions
from indexers.writer import build_index


@settings(max_examples=50, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=12), max_size=60), st.lists(st.text(max_size=12), max_size=10))
def test_string_table_finds_every_term_and_only_those(tmp_path_factory, terms, probes):
    directory = tmp_path_factory.mktemp("strings")
    ordered = sort_terms(terms)
    write_strings(FolderWriter(directory), "terms", ordered)
    table = StringTable(Folder(directory), "terms")
    assert len(table) == len(ordered) and table[:] == ordered
    for i, term in enumerate(ordered):
        assert table.find(term) == i
    for probe in probes:
        assert table.find(probe) == (ordered.index(probe) if probe in terms else -1)
    assert table.find_many([*probes, *ordered]).tolist() == [
        ordered.index(p) if p in terms else -1 for p in [*probes, *ordered]
    ]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="ab\0é\n", max_size=6), max_size=30), st.data())
def test_string_table_takes_any_strings_in_any_order(tmp_path_factory, strings, data):
    directory = tmp_path_factory.mktemp("take")
    write_strings(FolderWriter(directory), "ids", strings)
    table = StringTable(Folder(directory), "ids")
    picks = data.draw(st.lists(st.integers(0, len(strings) - 1), max_size=20)) if strings else []
    assert table.take(picks) == [strings[i] for i in picks]  # NUL inside a string takes the slow path


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=8), max_size=40, unique=True), st.lists(st.text(max_size=8), max_size=10))
def test_findable_string_table_finds_unsorted_ids(tmp_path_factory, ids, probes):
    directory = tmp_path_factory.mktemp("ids")
    write_strings(FolderWriter(directory), "docids", ids, findable=True)
    table = StringTable(Folder(directory), "docids", findable=True)
    assert table[:] == ids
    assert table.find_many([*ids, *probes]).tolist() == [ids.index(p) if p in ids else -1 for p in [*ids, *probes]]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["u1", "u2", "<u4", "<i8", ">i2", "<f4", "<f8", "|b1", "<U3", "<c16"]),
       st.lists(st.integers(0, 4), max_size=3), st.booleans())  # fmt: skip
def test_arrays_open_as_numpy_wrote_them(tmp_path_factory, dtype, shape, fortran):
    path = tmp_path_factory.mktemp("npy") / "a.npy"
    array = np.arange(int(np.prod(shape)), dtype=np.int64).astype(dtype).reshape(shape, order="F" if fortran else "C")
    np.save(path, array)
    opened = open_array(path)
    assert opened.dtype == array.dtype and opened.shape == array.shape and np.array_equal(opened, array)
    assert opened.flags.f_contiguous == array.flags.f_contiguous


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}\.(npy|blob)", fullmatch=True),
                       st.tuples(st.sampled_from(["<u4", "<i8", "|u1", "<f4"]), st.integers(0, 3000)), max_size=8),
       st.booleans(), st.integers(0, 40_000))  # fmt: skip
def test_a_finished_folder_reads_back_whatever_its_layout(tmp_path_factory, members, in_memory, compound_bytes):
    """Members kept in memory or written as files, packed into a compound file or left as files (the size decides,
    whatever the writer expected): every member reads back as written."""
    directory = tmp_path_factory.mktemp("folder")
    out = FolderWriter(directory, in_memory=in_memory)
    written = {}
    for name, (dtype, length) in members.items():
        if name.endswith(".npy"):
            written[name] = (np.arange(length) * 7919 % 251).astype(dtype)
            out.array(name, written[name])
        else:
            written[name] = bytes(range(256)) * (length // 256) + b"x" * (length % 256)
            out.bytes(name, written[name])
    with patch("engine.format.COMPOUND_BYTES", compound_bytes):
        finish_segment(out, {"test": True})
    meta = json.loads((directory / "segment.json").read_text())
    size = sum(v.nbytes if isinstance(v, np.ndarray) else len(v) for v in written.values())
    headers = 128 * sum(name.endswith(".npy") for name in written)  # counted too where members were files
    if "compound" in meta:
        assert size <= compound_bytes and sorted(meta["files"]) == ["segment.cfs"]
    else:
        assert size + headers > compound_bytes and sorted(meta["files"]) == sorted(written)
    verify_files(directory, meta["files"], full=True)
    folder = Folder(directory, meta.get("compound"))
    for name, value in written.items():
        if name.endswith(".npy"):
            array = folder.array(name)
            assert array.dtype == value.dtype and np.array_equal(array, value)
        else:
            assert bytes(folder.bytes(name)) == value


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_metadata_with_any_byte_flipped_is_an_error_or_unchanged(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("meta") / "segment.json"
    meta = {"passages": 1054, "tokens": 73211, "files": {"segment.cfs": [40960, 123456789]}, "fields": {"y": "int"}}
    write_json(path, meta)
    raw = bytearray(path.read_bytes())
    assert parse_meta(path, bytes(raw)) == {**meta, "checksum": parse_meta(path, bytes(raw))["checksum"]}
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    try:
        damaged = parse_meta(path, bytes(raw))
    except IndexFormatError as error:
        assert str(path) in str(error)
    else:
        assert {k: v for k, v in damaged.items() if k != "checksum"} == meta  # whitespace only


def test_metadata_written_before_checksums_still_reads():
    older = json.dumps({"passages": 3, "files": {}}, indent=1).encode()
    assert parse_meta(Path("segment.json"), older) == {"passages": 3, "files": {}}
    with pytest.raises(IndexFormatError, match="checksum"):
        parse_meta(Path("segment.json"), json.dumps({"passages": 3, "files": {}}).encode())  # one line: must have one


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=100))
def test_document_store_round_trip(tmp_path_factory, texts):
    directory = tmp_path_factory.mktemp("store")
    writer = DocStoreWriter(directory)
    for i, text in enumerate(texts):
        writer.add_many([[str(i), i % 3, "", text]])
    writer.close(FolderWriter(directory))
    store = DocStore(Folder(directory))
    for i in reversed(range(len(texts))):  # any order: each read is one block
        assert store[i] == {"id": str(i), "part": i % 3, "title": "", "text": texts[i]}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=6), st.integers(0, 2**32 - 1))
def test_block_maxima_bound_every_block(dfs, seed):
    rng = np.random.default_rng(seed)
    n_docs = 400
    lengths = rng.integers(0, 1000, size=n_docs).astype(np.uint32)
    docs = np.concatenate([np.sort(rng.choice(n_docs, size=df, replace=False)) for df in dfs]).astype(np.uint32)
    tfs = rng.integers(1, 20, size=len(docs)).astype(np.uint32)
    offsets = np.concatenate([[0], np.cumsum(dfs)]).astype(np.int64)
    blocks = compute_blocks(docs, tfs, offsets, lengths)
    for term in range(len(dfs)):
        term_docs, term_tfs = docs[offsets[term] : offsets[term + 1]], tfs[offsets[term] : offsets[term + 1]]
        first, last = blocks.offsets[term], blocks.offsets[term + 1]
        assert last - first == -(-len(term_docs) // BLOCK_SIZE)
        for b, start in zip(range(first, last), range(0, len(term_docs), BLOCK_SIZE)):
            chunk = slice(start, start + BLOCK_SIZE)
            assert blocks.max_tf[b] == term_tfs[chunk].max()
            assert blocks.min_length[b] == lengths[term_docs[chunk]].min()
            assert blocks.last_doc[b] == term_docs[chunk][-1]


def segment_arrays(index_dir: Path) -> dict:
    (folder,) = [p for p in index_dir.iterdir() if p.name.startswith("seg_")]
    segment = Segment(folder)
    return {
        "terms": segment.terms[:],
        "doc_ids": segment.doc_ids[:],
        "store": [segment.store[i] for i in range(segment.passages)],
        **{
            name: np.asarray(getattr(segment, name)).tolist()
            for name in ("offsets", "docs", "tfs", "lengths", "passage_doc", "passage_part")
        },
        **{f"blocks.{k}": np.asarray(v).tolist() for k, v in vars(segment.blocks).items()},
        "meta": {k: v for k, v in segment.meta.items() if k not in ("block_size", "checksum")},
    }


def test_merged_segment_equals_a_single_flush(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", random_documents(12000, seed=8, max_words=60))
    one = build_index(CorpusReader(open_source(corpus)), tmp_path / "one", BuildOptions())
    many = build_index(CorpusReader(open_source(corpus)), tmp_path / "many", BuildOptions(memory_mb=1))
    assert one.segments_flushed == 1 and many.segments_flushed > 1
    assert segment_arrays(tmp_path / "one") == segment_arrays(tmp_path / "many")


def test_packed_segment_decodes_to_the_raw_postings(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", random_documents(3000, seed=4, max_words=60))
    build_index(CorpusReader(open_source(corpus)), tmp_path / "raw", BuildOptions())
    build_index(CorpusReader(open_source(corpus)), tmp_path / "packed", BuildOptions(postings="packed"))
    raw, packed = segment_arrays(tmp_path / "raw"), segment_arrays(tmp_path / "packed")
    assert packed.pop("meta").pop("postings") == "packed"
    raw.pop("meta")
    assert raw == packed
    (folder,) = [p for p in (tmp_path / "packed").iterdir() if p.name.startswith("seg_")]
    assert not (folder / "postings.docs.npy").exists()
