"""The CLI contract: commands, flags, --json output, one-line errors with a non-zero exit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, random_documents, requires_data, write_jsonl
from sift.cli import main

ROOT = Path(__file__).resolve().parents[1]


def sift(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sift", *args], capture_output=True, text=True, env=env)


@pytest.fixture
def index_dir(tmp_path, corpus_file):
    assert main(["index", str(corpus_file), str(tmp_path / "idx"), "--quiet"]) == 0
    return tmp_path / "idx"


def test_search_json(index_dir, capsys):
    capsys.readouterr()
    assert main(["search", str(index_dir), "quick fox", "-k", "3", "--json", "--text"]) == 0
    output = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert output["query"] == "quick fox" and len(output["results"]) == 3
    assert {"id", "doc_id", "score", "rank", "text"} <= set(output["results"][0])
    assert [r["rank"] for r in output["results"]] == [1, 2, 3]


def test_eval_json_run_file_and_baseline(tmp_path, index_dir, capsys):
    (tmp_path / "q.tsv").write_text("1\tquick fox\n2\tmoney bank\n")
    (tmp_path / "qrels.txt").write_text("1 0 d1 1\n1 0 d5 1\n2 0 d7 2\n")
    args = ["eval", str(index_dir), "--queries", str(tmp_path / "q.tsv"), "--qrels", str(tmp_path / "qrels.txt")]
    assert main([*args, "--run", str(tmp_path / "run.trec"), "--json"]) == 0
    report = first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"nDCG@10", "RR@10", "R@100", "R@1000", "AP", "queries"} <= set(report)
    assert report["queries"] == 2
    assert (tmp_path / "run.trec").read_text().startswith("1 Q0 ")
    assert main([*args, "--baseline", str(tmp_path / "run.trec"), "--json", "--k1", "1.2"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["k1"] == 1.2 and "p_value" in report["baseline"]
    assert main([*args, "--run", str(tmp_path / "other.trec"), "--json", "--k1", "3", "--b", "1"]) == 0
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["compare", str(tmp_path / "run.trec"), str(tmp_path / "other.trec"), "--qrels",
                 str(tmp_path / "qrels.txt"), "--json"]) == 0  # fmt: skip
    comparisons = {c["measure"]: c for c in json.loads(capsys.readouterr().out.strip())["comparisons"]}
    assert {"nDCG@10", "AP"} <= set(comparisons)
    for measure in ("nDCG@10", "AP", "RR@10"):
        assert (comparisons[measure]["a"], comparisons[measure]["b"]) == (first[measure], other[measure])
        assert comparisons[measure]["delta"] == round(comparisons[measure]["b"] - comparisons[measure]["a"], 4)


def test_info(index_dir, capsys):
    capsys.readouterr()
    assert main(["info", str(index_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["passages"] == 300 and info["bm25"] == {"k1": 0.9, "b": 0.4, "length_norm": "lucene"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "{tmp}/missing", "q"], "no such index directory"),
        (["index", "{tmp}/bad.jsonl", "{tmp}/new"], "bad.jsonl:2: malformed JSON"),
        (["index", "{tmp}/nothing.jsonl", "{tmp}/new"], "no such file"),
        (["eval", "{tmp}/idx", "--queries", "{tmp}/q.tsv", "--qrels", "{tmp}/q.tsv"], "malformed qrels line"),
        (
            ["eval", "{tmp}/idx", "--queries", "{tmp}/q.tsv", "--qrels", "{tmp}/q.tsv", "--pipeline", "bm26"],
            "unknown stage 'bm26'",
        ),
        (["search", "{tmp}/idx", "q", "--b", "2"], "b must be between 0 and 1"),
        (["index", "{tmp}/empty.jsonl", "{tmp}/new"], "empty.jsonl: nothing to index"),
    ],
)
def test_errors_are_one_line_with_non_zero_exit(tmp_path, args, message):
    write_jsonl(tmp_path / "good.jsonl", random_documents(20))
    (tmp_path / "bad.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": \n')
    (tmp_path / "q.tsv").write_text("1\tquery\n")
    (tmp_path / "empty.jsonl").write_text("")
    assert sift("index", str(tmp_path / "good.jsonl"), str(tmp_path / "idx"), "--quiet").returncode == 0
    result = sift(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sift: error:") and message in lines[0], result.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("damaged", "how"),
    [("manifest.json", "garbage"), ("SEGMENT/segment.json", "truncate"), ("SEGMENT/segment.cfs", "truncate"),
     ("SEGMENT/segment.cfs", "garbage")],
)  # fmt: skip
def test_a_damaged_index_is_a_one_line_error_naming_the_file(tmp_path, corpus_file, damaged, how):
    assert sift("index", str(corpus_file), str(tmp_path / "idx"), "--quiet").returncode == 0
    segment = json.loads((tmp_path / "idx" / "manifest.json").read_text())["segments"][0]["name"]
    path = tmp_path / "idx" / damaged.replace("SEGMENT", segment)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if how == "truncate" else b"\x00garbage" * (len(data) // 8 + 1))
    result = sift("search", str(tmp_path / "idx"), "quick fox", "--text")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and str(path) in lines[0], result.stderr


def test_skip_bad_reports_a_summary(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n{"_id": "b"}\n')
    result = sift("index", str(tmp_path / "c.jsonl"), str(tmp_path / "idx"), "--skip-bad", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["documents"] == 1 and report["skipped"] == 2
    assert report["by_problem"] == {"duplicate id": 1, "empty text": 1}


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    result = sift("demo", "--dir", str(tmp_path / "demo"), "read a file line by line")
    assert result.returncode == 0, result.stderr
    assert "query: read a file line by line" in result.stdout
    assert (tmp_path / "demo" / "index" / "manifest.json").exists()


@pytest.mark.slow
@requires_data("scifact")
@pytest.mark.data
def test_cli_eval_on_scifact_matches_lucene(tmp_path):
    index = tmp_path / "scifact"
    assert sift("index", str(DATA / "scifact"), str(index), "--quiet").returncode == 0
    result = sift("eval", str(index), "--queries", str(DATA / "scifact" / "queries.test.tsv"),
                  "--qrels", str(DATA / "scifact" / "qrels.test.txt"), "--json")  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert abs(report["nDCG@10"] - 0.6789) <= 0.003 and report["queries"] == 300


def test_search_over_fields(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", [
        {"_id": "a", "title": "Heart failure", "text": "a stone river"},
        {"_id": "b", "title": "Stone river", "text": "heart failure, heart"},
    ])  # fmt: skip
    assert main(["index", str(corpus), str(tmp_path / "idx"), "--positions", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), 'title:"heart failure"', "--syntax", "lucene", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["results"]] == ["a"]
    assert main(["search", str(tmp_path / "idx"), "heart", "--fields", "text", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["results"]] == ["b"]
    failed = sift("search", str(tmp_path / "idx"), "heart", "--fields", "title^x")
    assert failed.returncode != 0 and "'x' is not a boost" in failed.stderr and len(failed.stderr.splitlines()) == 1


def test_no_possessive_keeps_possessives_and_equals_the_api_build(tmp_path, capsys):
    """`--no-possessive` reaches the analyzer: "john's" stays a term, and the index scores as the API's build with
    the same settings (the compiled whitespace path)."""
    from engine.analysis import AnalyzerConfig
    from engine.index import open_index
    from indexers.corpus import Document
    from indexers.writer import BuildOptions, build_index

    docs = [("a", "john's car is red"), ("b", "john car blue"), ("c", "the car's door")]
    write_jsonl(tmp_path / "c.jsonl", [{"_id": i, "text": t} for i, t in docs])
    flags = ["--tokenizer", "whitespace", "--stemmer", "none", "--stopwords", "none", "--quiet"]
    assert main(["index", str(tmp_path / "c.jsonl"), str(tmp_path / "cli"), *flags, "--no-possessive"]) == 0
    config = AnalyzerConfig(tokenizer="whitespace", possessives=False, stopwords=(), stemmer=None)
    build_index([Document(i, t) for i, t in docs], tmp_path / "api", BuildOptions(analyzer=config))
    cli, api = open_index(tmp_path / "cli"), open_index(tmp_path / "api")
    for query in ("john's", "car's door", "john"):
        found, expected = cli.search(query, 3), api.search(query, 3)
        assert found.ids == expected.ids and found.scores.tolist() == expected.scores.tolist()
    assert cli.search("john's", 3).ids == ["a"]
    assert main(["index", str(tmp_path / "c.jsonl"), str(tmp_path / "default"), *flags]) == 0
    assert set(open_index(tmp_path / "default").search("john's", 3).ids) == {"a", "b"}  # stripped: "john"
