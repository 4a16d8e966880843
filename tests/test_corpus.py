import gzip
import json

import pytest

from engine.analysis import Analyzer
from indexers.corpus import (
    CorpusError,
    CorpusReader,
    Document,
    detect_format,
    open_source,
    read_qrels,
    read_queries,
    split_passages,
)


def read_all(path, fmt=None, skip_bad=False, **options):
    reader = CorpusReader(open_source(path, fmt, **options), skip_bad=skip_bad)
    return list(reader), reader


def test_beir_folder_gzipped(tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"_id": "a", "title": "T", "text": "body"}) + "\n")
        f.write(json.dumps({"_id": "b", "title": "", "text": "more"}) + "\n")
    docs, reader = read_all(folder)
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "T", "body"), ("b", "", "more")]
    assert reader.bytes_read == (folder / "corpus.jsonl.gz").stat().st_size


def test_jsonl_with_configured_fields(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"pid": 7, "body": "x y", "extra": "z"}) + "\n")
    docs, _ = read_all(path, id_field="pid", text_fields=("body", "extra"))
    assert (docs[0].id, docs[0].text, docs[0].title) == ("7", "x y z", "")


def test_tsv_and_trec(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("1\tfirst passage\n2\tsecond\n")
    assert [(d.id, d.text) for d in read_all(tsv)[0]] == [("1", "first passage"), ("2", "second")]
    trec = tmp_path / "c.trec"
    trec.write_text(
        "<DOC>\n<DOCNO> FT-1 </DOCNO>\n<HEADLINE>Big &amp; news</HEADLINE>\n<TEXT>\nSome text.\n</TEXT>\n</DOC>\n"
        "<DOC><DOCNO>FT-2</DOCNO><TEXT>one line</TEXT></DOC>\n"
    )
    assert [(d.id, d.text) for d in read_all(trec)[0]] == [("FT-1", "Big & news Some text."), ("FT-2", "one line")]


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": \n', 2, "malformed JSON"),
        (b'{"_id": "a", "text": "ok"}\n{"text": "no id"}\n', 2, "missing id"),
        (b'{"_id": "a", "text": "ok"}\n\n{"_id": "a", "text": "again"}\n', 3, "duplicate id"),
        (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n', 2, "invalid UTF-8"),
        (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "title": " ", "text": ""}\n', 2, "empty text"),
        (b'{"_id": "a", "text": ["not", "a string"]}\n', 1, "malformed record"),
    ],
)
def test_bad_records_name_file_line_and_problem(tmp_path, content, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(CorpusError) as caught:
        read_all(path)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}:{line}: {problem}")
    docs, reader = read_all(path, skip_bad=True)
    assert reader.skipped.total == 1
    assert len(docs) == reader.documents


def test_bad_tsv_and_trec(tmp_path):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("1\tok\nno tab here\n")
    with pytest.raises(CorpusError, match=r"c.tsv:2: malformed line"):
        read_all(tsv)
    trec = tmp_path / "c.trec"
    trec.write_text("<DOC>\n<TEXT>no docno</TEXT>\n</DOC>\n")
    with pytest.raises(CorpusError, match=r"c.trec:1: missing id"):
        read_all(trec)


def test_format_detection(tmp_path):
    assert detect_format(tmp_path) == "beir"
    for name, fmt in [("a.jsonl.gz", "jsonl"), ("a.tsv", "tsv"), ("a.trec", "trec")]:
        (tmp_path / name).write_text("")
        assert detect_format(tmp_path / name) == fmt
    (tmp_path / "a.bin").write_text("")
    with pytest.raises(CorpusError, match="pass --format"):
        detect_format(tmp_path / "a.bin")
    with pytest.raises(CorpusError, match="no such file"):
        open_source(tmp_path / "missing.jsonl")


def test_passages_overlap_and_cover_every_token():
    analyzer = Analyzer()
    text = " ".join(f"w{i}" for i in range(23))
    passages = split_passages(Document("d", text, "Title"), analyzer, window=10, stride=6)
    assert [p.text.split()[0] for p in passages] == ["w0", "w6", "w12", "w18"]
    assert passages[-1].text.endswith("w22")
    assert all(len(p.text.split()) <= 10 for p in passages)
    assert {p.title for p in passages} == {"Title"} and [p.part for p in passages] == [0, 1, 2, 3]
    assert len(split_passages(Document("d", "short text", ""), analyzer, 10, 5)) == 1


def test_queries_and_qrels(tmp_path):
    (tmp_path / "q.tsv").write_text("1\tfirst query\n2\tsecond\n")
    assert read_queries(tmp_path / "q.tsv") == [("1", "first query"), ("2", "second")]
    (tmp_path / "qrels.txt").write_text("1 0 d1 1\n1 0 d2 0\n2 0 d3 2\n")
    assert read_qrels(tmp_path / "qrels.txt") == {"1": {"d1": 1, "d2": 0}, "2": {"d3": 2}}
    (tmp_path / "bad.txt").write_text("1 0 d1 1\n1 0 d1 x\n")
    with pytest.raises(CorpusError, match=r"bad\.txt:2: malformed qrels line"):
        read_qrels(tmp_path / "bad.txt")
