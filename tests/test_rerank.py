"""Rerankers: a tiny cross-encoder built here (each token adds its weight) against its definition, truncation that
keeps the query whole, pipelines with rerank stages and cascades, the score cache; and, with torch, exported
BertForSequenceClassification and T5ForConditionalGeneration models against PyTorch's own scores."""

import json

import numpy as np
import pytest

from conftest import write_jsonl
from engine import models
from engine.index import open_index
from engine.pipeline import Pipeline, PipelineError, parse
from indexers.corpus import CorpusReader, open_source
from indexers.inverted import BuildOptions
from indexers.writer import build_index

onnx = pytest.importorskip("onnx")
WORDS = [f"w{i}" for i in range(40)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>", "Query:", "Document:", "Relevant:", "▁true", "▁false"]
VOCABULARY = {token: i for i, token in enumerate(SPECIAL + WORDS)}


@pytest.fixture
def model_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFT_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def save_tokenizer(directory, seq2seq=False):
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as token_models

    tokenizer = Tokenizer(token_models.WordLevel(VOCABULARY, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if seq2seq:  # T5's convention: the input ends with </s>
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", VOCABULARY["</s>"])]
        )
    else:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", VOCABULARY["[CLS]"]), ("[SEP]", VOCABULARY["[SEP]"])],
        )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))


def additive_model(tmp_path, name, seed, max_length=32):
    """A registered cross-encoder whose logit is the sum of its tokens' weights ([PAD] weighs 0)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).normal(size=(len(VOCABULARY), 1)).astype(np.float32)
    weights[0] = 0
    graph = helper.make_graph(
        [helper.make_node("Gather", ["weights", "input_ids"], ["per_token"]),
         helper.make_node("ReduceSum", ["per_token", "axis"], ["logits"], keepdims=0)],
        name,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")],
    )  # fmt: skip
    source = tmp_path / f"{name}-source"
    save_tokenizer(source)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source / "model.onnx")
    models.register(source, name, "cross-encoder", max_length=max_length)
    return weights[:, 0]


def additive_score(weights, query, passage, max_length=32):
    query_ids = [VOCABULARY.get(t, 1) for t in query.split()]
    passage_ids = [VOCABULARY.get(t, 1) for t in passage.split()][: max_length - 3 - len(query_ids)]
    ids = [VOCABULARY["[CLS]"], *query_ids, VOCABULARY["[SEP]"], *passage_ids, VOCABULARY["[SEP]"]]
    return float(weights[ids].sum(dtype=np.float32))


def test_cross_encoder_scores_follow_the_model_and_truncate_only_the_passage(tmp_path, model_home):
    from engine.rerank import load_reranker

    weights = additive_model(tmp_path, "add", seed=0)
    rng = np.random.default_rng(1)
    passages = [" ".join(rng.choice(WORDS, size=rng.integers(1, 60))) for _ in range(50)]
    query = "w1 w2 w3 w4 w5"
    expected = [additive_score(weights, query, p) for p in passages]
    for batch_size, bucketing in ((1, True), (7, False), (64, True)):
        reranker = load_reranker("add", batch_size=batch_size, bucketing=bucketing)
        np.testing.assert_allclose(reranker.score(query, passages), expected, atol=1e-5)
    ids, types = reranker.encode_pairs(query, ["w9 " * 100])[0]
    assert len(ids) == 32 and ids[1:6] == [VOCABULARY[w] for w in query.split()]  # the query kept whole
    assert types == [0] * 7 + [1] * 25


def test_the_score_cache_scores_each_pair_once(tmp_path, model_home, monkeypatch):
    from engine.rerank import CachedScorer, load_reranker

    additive_model(tmp_path, "add", seed=0)
    model = load_reranker("add")
    scored = []
    original = model.score
    monkeypatch.setattr(model, "score", lambda q, p: scored.extend(p) or original(q, p))
    reranker = CachedScorer(model)
    first = reranker.score("w1", ["w2", "w3"])
    again = reranker.score("w1", ["w3", "w2", "w4"])
    assert scored == ["w2", "w3", "w4"]
    assert again[:2].tolist() == first[::-1].tolist()


def corpus_index(tmp_path, count=200):
    rng = np.random.default_rng(2)
    records = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, size=rng.integers(3, 20)))}
               for i in range(count)]  # fmt: skip
    build_index(CorpusReader(open_source(write_jsonl(tmp_path / "c.jsonl", records))), tmp_path / "idx",
                BuildOptions())  # fmt: skip
    return {r["_id"]: r["text"] for r in records}, open_index(tmp_path / "idx")


def expected_rerank(first_stage, texts, weights, query, depth):
    head = first_stage.ids[:depth]
    scores = [additive_score(weights, query, texts[i]) for i in head]
    order = sorted(range(len(head)), key=lambda j: -scores[j])  # stable: ties keep the first stage's order
    return [head[j] for j in order] + first_stage.ids[depth:]


def test_rerank_stages_and_cascades_in_pipelines(tmp_path, model_home):
    small = additive_model(tmp_path, "small", seed=3)
    large = additive_model(tmp_path, "large", seed=4)
    texts, index = corpus_index(tmp_path)
    query = "w3 w17 w22"
    bm25 = index.search(query, 50)
    found = Pipeline(index, "bm25 >> rerank:small@20").search([query], 50)[0]
    assert found.ids == expected_rerank(bm25, texts, small, query, 20)
    assert np.all(np.diff(found.scores) <= 0)
    assert set(found.timings) == {"bm25", "rerank:small@20"}
    cascade = Pipeline(index, "bm25 >> rerank:small@20 >> rerank:large@5").search([query], 10)[0]
    after_small = Pipeline(index, "bm25 >> rerank:small@20").search([query], 50)[0]
    assert cascade.ids == expected_rerank(after_small, texts, large, query, 5)[:10]
    assert len(cascade.timings) == 3
    mixed = Pipeline(index, "bm25 >> rerank:small@20(mix=1.0)").search([query], 20)[0]
    assert mixed.ids == bm25.ids[:20]  # all weight on the first stage: its order back


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("bm25 >> rerank:x", "expected a later stage like rerank:MODEL@DEPTH"),
        ("bm25 >> rerank:x@0", "depth must be at least 1"),
        ("bm25 >> rerank:x@10(mix=2)", "mix must be between 0 and 1"),
        ("bm25 >> dense", "expected a later stage"),
    ],
)
def test_later_stages_are_checked(expression, message):
    with pytest.raises(PipelineError, match=message):
        parse(expression)


def test_pipelines_with_reranking_print_as_they_parse():
    assert str(parse("hybrid >> rerank:ce@100")) == "hybrid(bm25,dense) >> rerank:ce@100"
    assert str(parse("bm25>>rerank:a@100>>rerank:b@10(mix=0.3)")) == "bm25 >> rerank:a@100 >> rerank:b@10(mix=0.3)"


def test_only_reranking_models_rerank(tmp_path, model_home):
    from engine.rerank import load_reranker

    source = tmp_path / "bi"
    save_tokenizer(source)
    (source / "model.onnx").write_bytes(b"")
    models.register(source, "bi", "bi-encoder")
    with pytest.raises(models.ModelError, match="not a reranker"):
        load_reranker("bi")


# --- models users bring: exported from PyTorch, scored as PyTorch scores them -------------------------------------


def torch_modules():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


def export_and_register(tmp_path, model, name, kind, seq2seq=False, **settings):
    from indexers.export import export_onnx

    checkpoint = tmp_path / f"{name}-checkpoint"
    model.save_pretrained(checkpoint)
    save_tokenizer(checkpoint, seq2seq=seq2seq)
    assert export_onnx(checkpoint, kind, tmp_path / f"{name}-onnx") < 1e-4
    models.register(tmp_path / f"{name}-onnx", name, kind, max_length=64, **settings)


def sample_pairs():
    rng = np.random.default_rng(5)
    query = "w1 w7 w30"
    return query, [" ".join(rng.choice(WORDS, size=rng.integers(1, 25))) for _ in range(20)]


@pytest.mark.slow
@pytest.mark.parametrize("labels", [1, 2])
def test_monobert_scores_equal_pytorch(tmp_path, model_home, labels):
    torch, transformers = torch_modules()
    from engine.rerank import load_reranker

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCABULARY), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                     num_labels=labels)  # fmt: skip
    model = transformers.BertForSequenceClassification(config).eval()
    export_and_register(tmp_path, model, "mono-bert", "cross-encoder")
    query, passages = sample_pairs()
    got = load_reranker("mono-bert", batch_size=8).score(query, passages)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tmp_path / "mono-bert-checkpoint" / "tokenizer.json"))
    expected = []
    with torch.no_grad():
        for passage in passages:
            encoding = tokenizer.encode(query, passage)
            logits = model(input_ids=torch.tensor([encoding.ids]),
                           token_type_ids=torch.tensor([encoding.type_ids])).logits[0]  # fmt: skip
            expected.append(float(logits[0] if labels == 1 else torch.log_softmax(logits, -1)[1]))
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
def test_monot5_scores_equal_pytorch(tmp_path, model_home):
    torch, transformers = torch_modules()
    from engine.rerank import load_reranker

    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=len(VOCABULARY), d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                   num_heads=2, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=VOCABULARY["</s>"])  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    export_and_register(tmp_path, model, "mono-t5", "seq2seq", seq2seq=True)
    query, passages = sample_pairs()
    got = load_reranker("mono-t5", batch_size=8).score(query, passages)
    true, false = VOCABULARY["▁true"], VOCABULARY["▁false"]
    expected = []
    with torch.no_grad():
        for passage in passages:
            words = f"Query: {query} Document: {passage} Relevant:".split()
            ids = torch.tensor([[VOCABULARY[w] for w in words] + [VOCABULARY["</s>"]]])
            logits = model(input_ids=ids, decoder_input_ids=torch.tensor([[0]])).logits[0, 0]
            expected.append(float(torch.log_softmax(logits[[true, false]], -1)[0]))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    reranker = load_reranker("mono-t5")
    reranker.max_length = 12
    ids, _ = reranker.encode_pairs(query, ["w9 " * 30])[0]
    assert ids == [VOCABULARY[w] for w in ["Query:", "w1", "w7", "w30", "Document:", "w9", "w9", "w9", "w9", "w9",
                                           "Relevant:", "</s>"]]  # fmt: skip


@pytest.mark.slow
def test_cli_runs_reranking_pipelines(tmp_path, model_home):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    additive_model(tmp_path, "add", seed=0)
    corpus_index(tmp_path)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "SIFT_MODELS": str(model_home)}
    (tmp_path / "q.tsv").write_text("q1\tw1 w2\nq2\tw3 w9\n")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 1\n")

    def sift(*args):
        result = subprocess.run([sys.executable, "-m", "sift", *args], capture_output=True, text=True, env=env)
        return result.returncode, result.stdout, result.stderr

    code, out, err = sift("eval", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.tsv"), "--qrels",
                          str(tmp_path / "qrels.txt"), "--pipeline", "bm25 >> rerank:add@100", "--json")  # fmt: skip
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["pipeline"] == "bm25 >> rerank:add@100" and set(report["stage_ms_per_query"]) == {
        "bm25", "rerank:add@100"}
    code, out, err = sift("search", str(tmp_path / "idx"), "w1 w2", "--pipeline", "bm25 >> rerank:add@10", "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 10 and "rerank:add@10" in json.loads(out)["stages_ms"]
    code, _, err = sift("eval", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.tsv"), "--qrels",
                        str(tmp_path / "qrels.txt"), "--pipeline", "bm25 >> rerank:missing@100")  # fmt: skip
    assert code != 0 and "unknown model 'missing'" in err and "Traceback" not in err


def test_rerank_benchmark_agrees_with_the_pipeline_and_with_precomputed_scores(tmp_path, model_home, monkeypatch):
    """bench.rerank on a tiny collection: its figures are what the pipeline gives, and scores exported, computed
    elsewhere and read back give the same table."""
    import bench.rerank as bench_rerank
    from engine.evaluation import evaluate
    from engine.rerank import load_reranker

    additive_model(tmp_path, "add", seed=0)
    _, index = corpus_index(tmp_path)
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    rng = np.random.default_rng(8)
    queries = [(f"q{i}", " ".join(rng.choice(WORDS, size=3))) for i in range(12)]
    (data / "queries.test.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries))
    (data / "qrels.test.txt").write_text("".join(f"q{i} 0 d{d} 1\n" for i in range(12) for d in rng.choice(200, 3)))
    monkeypatch.setattr(bench_rerank, "DATA", tmp_path / "data")
    validation = {"tiny": (data / "queries.test.tsv", data / "qrels.test.txt")}
    report = bench_rerank.run({"tiny": tmp_path / "idx"}, ["bm25"], ["add"], 20, validation, None)
    qrels = {f"q{i}": {} for i in range(12)}
    for line in (data / "qrels.test.txt").read_text().splitlines():
        qid, _, doc, grade = line.split()
        qrels[qid][doc] = int(grade)
    found = Pipeline(index, "bm25 >> rerank:add@20").search([t for _, t in queries], 1000)
    expected = evaluate({q: dict(zip(r.ids, r.scores.tolist())) for (q, _), r in zip(queries, found)}, qrels)
    row = next(r for r in report["results"] if r["pipeline"] == "bm25 >> rerank:add@20")
    assert row["nDCG@10"] == round(expected.means["nDCG@10"], 4)
    bench_rerank.export_pairs({"tiny": tmp_path / "idx"}, ["bm25"], 20, {}, tmp_path / "pairs")
    record = json.loads((tmp_path / "pairs" / "tiny.json").read_text())
    reranker = load_reranker("add")
    scores = [reranker.score(record["queries"][qi], [record["passages"][str(p)]])[0] for qi, p in record["pairs"]]
    np.save(tmp_path / "pairs" / "tiny.add.npy", np.array(scores, dtype=np.float32))
    again = bench_rerank.run({"tiny": tmp_path / "idx"}, ["bm25"], ["add"], 20, {}, tmp_path / "pairs")
    assert again["precomputed_max_difference"]["add"] < 1e-6
    assert [r["nDCG@10"] for r in again["results"]][:2] == [r["nDCG@10"] for r in report["results"]][:2]


def test_a_pipeline_reranks_with_pair_scores_cached_across_runs(tmp_path, model_home):
    """bench.pruning's cache: the same ranking as the model itself, and a second run from the saved file scores
    only pairs it has not seen."""
    from bench.pruning import cached_reranker

    additive_model(tmp_path, "small", seed=3)
    _, index = corpus_index(tmp_path)
    queries = ["w3 w17 w22", "w5 w6"]
    expected = Pipeline(index, "bm25 >> rerank:small@20").search(queries, 30)
    cached = cached_reranker("small", tmp_path / "pairs.json")
    found = Pipeline(index, "bm25 >> rerank:small@20", scorers={"small": cached}).search(queries, 30)
    assert [r.ids for r in found] == [r.ids for r in expected] and cached.scored == 40
    cached.save()
    again = cached_reranker("small", tmp_path / "pairs.json")
    found = Pipeline(index, "bm25 >> rerank:small@25", scorers={"small": again}).search(queries, 30)
    assert again.scored == 10 and [r.ids for r in found] == [
        r.ids for r in Pipeline(index, "bm25 >> rerank:small@25").search(queries, 30)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cross-encoder", "seq2seq"])
def test_pair_scores_from_the_pytorch_checkpoint_equal_the_onnx_rerankers(tmp_path, model_home, kind):
    """bench.score_pairs, the GPU step behind bench.rerank --pairs, run here on the CPU."""
    import json
    import shutil

    torch, transformers = torch_modules()
    from bench.score_pairs import main as score_pairs
    from engine.rerank import load_reranker

    torch.manual_seed(0)
    if kind == "seq2seq":
        config = transformers.T5Config(vocab_size=len(VOCABULARY), d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                       num_heads=2, decoder_start_token_id=0, pad_token_id=0,
                                       eos_token_id=VOCABULARY["</s>"])  # fmt: skip
        model = transformers.T5ForConditionalGeneration(config).eval()
    else:
        config = transformers.BertConfig(vocab_size=len(VOCABULARY), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                         num_labels=2)  # fmt: skip
        model = transformers.BertForSequenceClassification(config).eval()
    export_and_register(tmp_path, model, "ranker", kind, seq2seq=kind == "seq2seq")
    shutil.copytree(tmp_path / "ranker-checkpoint", model_home / "ranker" / "checkpoint")
    query, passages = sample_pairs()
    queries = [query, "w2 w3"]
    pairs = [[q, p] for q in range(2) for p in range(0, len(passages), 1 + q)]
    record = {"queries": queries, "passages": {str(i): t for i, t in enumerate(passages)}, "pairs": pairs}
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "c.json").write_text(json.dumps(record))
    score_pairs(["--pairs", str(tmp_path / "pairs"), "--model", "ranker", "--device", "cpu", "--batch-size", "4"])
    found = np.load(tmp_path / "pairs" / "c.ranker.npy")
    onnx = load_reranker("ranker")
    expected = [onnx.score(queries[q], [passages[p]])[0] for q, p in pairs]
    np.testing.assert_allclose(found, expected, atol=1e-4)


def test_a_bundled_model_installs_from_sift_itself_without_any_package(tmp_path, model_home, monkeypatch):
    shipped = tmp_path / "bundled" / "shipped-ce"
    save_tokenizer(shipped)
    additive_model(tmp_path, "reference", seed=3)
    (shipped / "model.onnx").write_bytes((model_home / "reference" / "model.onnx").read_bytes())
    models.write_config(shipped, models.ModelConfig(name="shipped-ce", kind="cross-encoder", max_length=32))
    monkeypatch.setattr(models, "BUNDLED_DIR", tmp_path / "bundled")
    monkeypatch.setitem(models.CATALOG, "shipped-ce", models.CatalogEntry("test", {"kind": "cross-encoder"},
                                                                          bundled=True))
    monkeypatch.setattr(models, "_ensure_packages", lambda entry: pytest.fail("a bundled model needs no package"))
    target = models.install("shipped-ce")
    assert sorted(p.name for p in target.iterdir()) == ["model.onnx", models.CONFIG_FILE, "tokenizer.json"]
    assert models.resolve("shipped-ce") == target
    from engine.rerank import load_reranker

    pairs = ["w1 w2", "w3 w4 w5"]
    assert np.array_equal(load_reranker("shipped-ce").score("w7", pairs), load_reranker("reference").score("w7", pairs))
    monkeypatch.setitem(models.CATALOG, "lost-ce", models.CatalogEntry("test", {"kind": "cross-encoder"}, bundled=True))
    with pytest.raises(models.ModelError, match="should ship with Sift"):
        models.install("lost-ce")


@pytest.mark.slow
def test_the_shipped_cross_encoder_prefers_the_passage_that_answers(model_home):
    """The model in engine/bundled, as a fresh installation gets it: relevant passages over BM25-similar ones."""
    from engine.rerank import load_reranker

    models.install("scifact-ce")
    reranker = load_reranker("scifact-ce")
    query = "Vitamin D deficiency is associated with an increased risk of tuberculosis."
    passages = [
        "We measured serum 25-hydroxyvitamin D in 300 patients with active pulmonary tuberculosis and 300 matched "
        "controls. Low vitamin D concentrations were associated with a higher risk of active tuberculosis.",
        "Vitamin D is a fat-soluble vitamin. Tuberculosis is a disease. This editorial announces the journal's new "
        "section on vitamins and on infectious diseases, and invites submissions.",
        "The risk of hip fracture in elderly women was studied in a cohort from Sweden over twenty years.",
    ]
    scores = reranker.score(query, passages)
    assert scores[0] > scores[1] > scores[2]


def test_sift_rerank_reranks_any_run_as_the_pipeline_stage_does(tmp_path, model_home, capsys):
    """A run written by one command, reranked by sift rerank from the corpus file or from the index, equals the
    pipeline's bm25 >> rerank run; with --mix as well."""
    from engine.evaluation import read_run
    from sift.cli import main

    additive_model(tmp_path, "add", seed=0)
    corpus_index(tmp_path)
    (tmp_path / "q.tsv").write_text("q1\tw1 w2\nq2\tw3 w9\nq3\tw4 w5 w6\n")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 1\nq3 0 d3 1\n")
    evaluate = ["eval", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.tsv"), "--qrels",
                str(tmp_path / "qrels.txt"), "-k", "50"]  # fmt: skip
    assert main([*evaluate, "--run", str(tmp_path / "bm25.trec")]) == 0
    for mix in (None, 0.3):
        stage = "rerank:add@20" + (f"(mix={mix})" if mix else "")
        assert main([*evaluate, "--pipeline", f"bm25 >> {stage}", "--run", str(tmp_path / "pipeline.trec")]) == 0
        expected = read_run(tmp_path / "pipeline.trec")
        for source in (["--index", str(tmp_path / "idx")], ["--corpus", str(tmp_path / "c.jsonl")]):
            out = tmp_path / "reranked.trec"
            assert main(["rerank", str(tmp_path / "bm25.trec"), "--queries", str(tmp_path / "q.tsv"), *source,
                         "--model", "add", "--depth", "20", "--out", str(out), "--qrels", str(tmp_path / "qrels.txt"),
                         *(["--mix", str(mix)] if mix else []), "--json"]) == 0  # fmt: skip
            found = read_run(out)
            assert {q: list(d) for q, d in found.items()} == {q: list(d) for q, d in expected.items()}
            assert all(np.allclose(list(found[q].values()), list(expected[q].values()), atol=1e-5) for q in found)
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 nosuch 1 3.0 x\n")
    assert main(["rerank", str(bad), "--queries", str(tmp_path / "q.tsv"), "--index", str(tmp_path / "idx"),
                 "--model", "add", "--out", str(tmp_path / "x.trec")]) == 1  # fmt: skip
    assert "holds no passage 'nosuch'" in capsys.readouterr().err
