"""The neural runtime with a tiny bi-encoder built here (an embedding table, mean pooled): the encoder against numpy,
dense indexes against brute force, fusion pipelines against their definition, and the registry's errors."""

import json

import numpy as np
import pytest

from conftest import random_documents, register_lookup_model, write_jsonl
from engine import models
from engine.encoders import BiEncoder
from engine.format import live_folders
from engine.index import open_index
from engine.neural import DenseSearcher
from engine.pipeline import Pipeline, PipelineError, parse
from indexers.corpus import CorpusReader, open_source
from indexers.inverted import BuildOptions
from indexers.writer import build_dense, build_impact, build_index

onnx = pytest.importorskip("onnx")
WORDS = [f"w{i}" for i in range(60)]
DIMENSION = 8


@pytest.fixture
def tiny_model(tmp_path, model_home):
    """A registered bi-encoder: token i -> row i of a random table; the runtime mean-pools and normalizes."""
    table = np.random.default_rng(0).normal(size=(len(WORDS) + 1, DIMENSION)).astype(np.float32)
    source = tmp_path / "tiny-source"
    vocabulary = register_lookup_model(source, "tiny", "bi-encoder", table, "last_hidden_state", WORDS)
    return vocabulary, table


def reference_vectors(texts, vocabulary, table, max_length=16):
    vectors = []
    for text in texts:
        ids = [vocabulary.get(t, 0) for t in text.split()][:max_length]
        v = table[ids].mean(axis=0) if ids else np.zeros(DIMENSION, dtype=np.float32)
        vectors.append(v / max(np.linalg.norm(v), 1e-12))
    return np.array(vectors, dtype=np.float32)


def test_encoder_mean_pools_and_does_not_depend_on_the_batch(tiny_model):
    vocabulary, table = tiny_model
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice([*WORDS, "unknown"], size=rng.integers(1, 30))) for _ in range(40)]
    encoder = BiEncoder("tiny")
    expected = reference_vectors(texts, vocabulary, table)
    for batch_size in (1, 7, 64):
        np.testing.assert_allclose(encoder.encode(texts, batch_size=batch_size), expected, atol=1e-5)


def build_corpus_index(tmp_path, count=300):
    rng = np.random.default_rng(2)
    records = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, size=rng.integers(3, 20)))}
               for i in range(count)]  # fmt: skip
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    build_index(CorpusReader(open_source(corpus)), tmp_path / "idx", BuildOptions())
    return records, tmp_path / "idx"


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_dense_search_finds_the_brute_force_top_k(tmp_path, tiny_model, kind):
    vocabulary, table = tiny_model
    records, index_dir = build_corpus_index(tmp_path)
    report = build_dense(index_dir, "tiny", faiss_kind=kind)
    assert report.passages == len(records) and report.built["faiss"] == kind
    index = open_index(index_dir)
    assert index.manifest["generation"] == 2 and "tiny" in index.manifest["dense"]
    passages = reference_vectors([r["text"] for r in records], vocabulary, table)
    queries = ["w1 w2 w3", "w40", "w7 w7 w59 w13"]
    found = DenseSearcher(index, "tiny").search_many(queries, k=10)
    for query, results in zip(queries, found):
        scores = passages @ reference_vectors([query], vocabulary, table)[0]
        best = np.sort(scores)[::-1][:10]
        np.testing.assert_allclose(results.scores, best, atol=1e-5)  # HNSW here is small enough to be exact
        assert all(abs(scores[int(r.id[1:])] - r.score) < 1e-5 for r in results)
    assert index.search("w1", 5) == open_index(index_dir).search("w1", 5)  # BM25 untouched


def test_dense_index_survives_a_failed_rebuild_and_overwrite_drops_it(tmp_path, tiny_model, monkeypatch):
    _, index_dir = build_corpus_index(tmp_path)
    build_dense(index_dir, "tiny")
    before = json.loads((index_dir / "manifest.json").read_text())

    def broken(*args, **kwargs):
        raise RuntimeError("faiss failed")

    monkeypatch.setattr("indexers.neural.build_faiss", broken)
    with pytest.raises(RuntimeError):
        build_dense(index_dir, "tiny")
    assert json.loads((index_dir / "manifest.json").read_text()) == before
    folders = list(before["dense"]["tiny"]["segments"].values())
    assert folders and all((index_dir / folder / "faiss.index").exists() for folder in folders)
    assert not [p for p in index_dir.iterdir() if p.name.startswith(".staging-")]
    corpus = write_jsonl(tmp_path / "other.jsonl", random_documents(20))
    build_index(CorpusReader(open_source(corpus)), index_dir, BuildOptions(overwrite=True))
    assert "dense" not in open_index(index_dir).manifest
    assert not any((index_dir / folder).exists() for folder in folders)


def test_fusion_pipelines_follow_their_definitions(tmp_path, tiny_model):
    _, index_dir = build_corpus_index(tmp_path)
    build_dense(index_dir, "tiny")
    index = open_index(index_dir)
    query = "w3 w17 w44"
    bm25 = index.search(query, 1000)
    dense = DenseSearcher(index, "tiny").search(query, 1000)

    def min_max(s):
        s = np.asarray(s, dtype=np.float64)
        return (s - s.min()) / (s.max() - s.min())

    expected: dict[str, float] = {}
    for results, scores in ((bm25, 0.7 * min_max(bm25.scores)), (dense, 0.3 * min_max(dense.scores))):
        for hit_id, score in zip(results.ids, scores):
            expected[hit_id] = expected.get(hit_id, 0.0) + score
    top = sorted(expected.items(), key=lambda item: (-item[1], item[0]))[:10]
    fused = Pipeline(index, "hybrid(bm25,dense(tiny),alpha=0.3)").search([query], 10)[0]
    assert fused.ids == [i for i, _ in top]
    np.testing.assert_allclose(fused.scores, [s for _, s in top], rtol=1e-6)
    rrf = Pipeline(index, "rrf(bm25,dense)").search([query], 5)[0]
    ranks = {}
    for results in (bm25, dense):
        for rank, hit_id in enumerate(results.ids, 1):
            ranks[hit_id] = ranks.get(hit_id, 0.0) + 1 / (60 + rank)
    assert rrf.ids == [i for i, _ in sorted(ranks.items(), key=lambda item: (-item[1], item[0]))[:5]]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("bm26", "unknown stage 'bm26'"),
        ("hybrid(bm25)", "hybrid fuses two first stages"),
        ("hybrid(bm25,dense,beta=2)", "hybrid has no option 'beta'"),
        ("rrf(bm25,dense", "expected ',' or ')'"),
    ],
)
def test_pipeline_expressions_are_checked(expression, message):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(expression)


def test_pipelines_print_as_they_parse():
    assert str(parse("hybrid")) == "hybrid(bm25,dense)"
    assert str(parse("rrf(bm25, dense(all-minilm-l6-v2))")) == "rrf(bm25,dense(all-minilm-l6-v2))"


def test_registry_errors_are_actionable(tmp_path, model_home):
    with pytest.raises(models.ModelError, match="unknown model 'nope'"):
        models.resolve("nope")
    with pytest.raises(models.ModelError, match=r"missing model\.onnx"):
        models.register(tmp_path, "x", "bi-encoder")
    with pytest.raises(models.ModelError, match="unknown kind"):
        models.ModelConfig(name="x", kind="decoder")
    _, index_dir = build_corpus_index(tmp_path)
    from engine.neural import NeuralSearchError

    with pytest.raises(NeuralSearchError, match="no dense index"):
        DenseSearcher(open_index(index_dir))


def test_tuning_picks_the_best_weight_on_training_queries_and_writes_a_pipeline_file(tmp_path, tiny_model):
    from engine.evaluation import evaluate
    from engine.pipeline import tune_alpha

    records, index_dir = build_corpus_index(tmp_path)
    build_dense(index_dir, "tiny")
    index = open_index(index_dir)
    rng = np.random.default_rng(5)
    queries = [(f"q{i}", " ".join(rng.choice(WORDS, size=3))) for i in range(30)]
    qrels = {qid: {f"d{d}": 1 for d in rng.choice(len(records), size=4, replace=False)} for qid, _ in queries}
    stage, grid = tune_alpha(index, parse("hybrid(bm25,dense(tiny))"), queries, qrels, grid=(0.0, 0.3, 0.7, 1.0))
    assert [alpha for alpha, _ in grid] == [0.0, 0.3, 0.7, 1.0]
    for alpha, value in grid:  # each grid point is what the pipeline itself scores
        found = Pipeline(index, f"hybrid(bm25,dense(tiny),alpha={alpha})").search([t for _, t in queries], 1000)
        run = {qid: dict(zip(r.ids, r.scores.tolist())) for (qid, _), r in zip(queries, found)}
        assert evaluate(run, qrels).to_dict()["nDCG@10"] == value
    assert stage.options["alpha"] in [a for a, v in grid if v == max(v for _, v in grid)]
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"pipeline": str(stage)}))
    assert str(parse(str(path))) == str(stage)
    with pytest.raises(PipelineError, match="not a pipeline file"):
        (tmp_path / "bad.json").write_text("[]")
        parse(str(tmp_path / "bad.json"))


def test_complementary_mode_interleaves_without_duplicates(tmp_path, tiny_model):
    _, index_dir = build_corpus_index(tmp_path)
    build_dense(index_dir, "tiny")
    index = open_index(index_dir)
    query = "w5 w9"
    bm25, dense = index.search(query, 1000), DenseSearcher(index, "tiny").search(query, 1000)
    expected: list[str] = []
    for pair in zip(bm25.ids, dense.ids):
        for hit_id in pair:
            if hit_id not in expected:
                expected.append(hit_id)
    found = Pipeline(index, "cort(bm25,dense)").search([query], 12)[0]
    assert found.ids == expected[:12] and len(set(found.ids)) == 12


@pytest.fixture
def tiny_splade(tmp_path, model_home):
    """A registered SPLADE model: token i -> logits row i of a random table (shifted so that weights spread)."""
    size = len(WORDS) + 1
    table = (np.random.default_rng(3).normal(size=(size, size)) - 0.8).astype(np.float32)
    vocabulary = register_lookup_model(tmp_path / "splade-source", "tiny-splade", "splade", table, "logits", WORDS)
    return vocabulary, table


def reference_splade(text, vocabulary, table, max_length=16):
    ids = [vocabulary.get(t, 0) for t in text.split()][:max_length]
    return np.log1p(np.maximum(table[ids], 0)).max(axis=0)


def test_splade_encoder_max_pools_log_saturated_logits(tiny_splade):
    from engine.encoders import SpladeEncoder

    vocabulary, table = tiny_splade
    texts = ["w1 w2 w3", "w5", "w9 w9 w10 w11 w12 w13 w14", "w1 " * 30]
    names = {i: t for t, i in vocabulary.items()}
    for batch_size in (1, 2, 8):
        for text, weights in zip(texts, SpladeEncoder("tiny-splade").encode(texts, batch_size=batch_size)):
            expected = reference_splade(text, vocabulary, table)
            assert weights.keys() == {names[t] for t in np.flatnonzero(expected > 0)}
            assert all(abs(weights[names[t]] - expected[t]) < 1e-5 for t in np.flatnonzero(expected > 0))


def brute_force_impacts(records, query, vocabulary, table, k):
    """Every passage's quantized weights dotted with the query's, summed in float32 in the query's term order (as
    the kernels sum): the definition the impact index must reproduce."""
    from indexers.neural import IMPACT_SCALE, quantize_impacts

    impacts = np.array([quantize_impacts(reference_splade(r["text"], vocabulary, table)) for r in records])
    weights = reference_splade(query, vocabulary, table)
    scores = np.zeros(len(records), dtype=np.float32)
    for term in np.flatnonzero(weights > 0):
        scores += np.float32(weights[term] / IMPACT_SCALE) * impacts[:, term].astype(np.float32)
    candidates = np.flatnonzero(scores > 0)
    ids = np.array([records[i]["_id"].encode() for i in candidates])
    order = np.lexsort((ids, -scores[candidates]))[:k]  # exact ties by document id
    return [records[i]["_id"] for i in candidates[order]], scores[candidates[order]]


@pytest.mark.parametrize("postings", ["raw", "packed"])
def test_impact_index_finds_the_brute_force_top_k_with_every_algorithm(tmp_path, tiny_splade, postings):
    from engine.neural import ImpactSearcher
    from indexers.writer import build_impact

    vocabulary, table = tiny_splade
    rng = np.random.default_rng(2)
    records = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, size=rng.integers(3, 20)))}
               for i in range(600)]  # fmt: skip
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    build_index(CorpusReader(open_source(corpus)), tmp_path / "idx", BuildOptions(postings=postings))
    report = build_impact(tmp_path / "idx", "tiny-splade")
    from indexers.neural import quantize_impacts

    impacts = np.array([quantize_impacts(reference_splade(r["text"], vocabulary, table)) for r in records])
    assert report.passages == 600 and report.built["postings"] == np.count_nonzero(impacts)
    assert report.built["terms"] == np.count_nonzero(impacts.any(axis=0))
    index = open_index(tmp_path / "idx")
    searcher = ImpactSearcher(index)
    assert all(lists.packed == (postings == "packed") for lists in searcher.lists)
    for query in ["w1 w2 w3", "w40", "w7 w7 w59 w13 w22 w31", "nothing"]:
        for k in (1, 10, 1000):
            want_ids, want_scores = brute_force_impacts(records, query, vocabulary, table, k)
            weights = searcher.encoder.encode([query])[0]
            for algorithm in ("exhaustive", "maxscore"):
                passages, scores = searcher.search_weights(weights, k, algorithm)
                assert index.ids(passages)[0] == want_ids
                assert scores.tolist() == want_scores.tolist()
            assert searcher.search(query, k).ids == want_ids


def test_impact_and_dense_indexes_live_side_by_side(tmp_path, tiny_model, tiny_splade):
    from engine.neural import ImpactSearcher
    from indexers.writer import build_impact

    _, index_dir = build_corpus_index(tmp_path)
    build_impact(index_dir, "tiny-splade")
    build_dense(index_dir, "tiny")
    index = open_index(index_dir)
    assert set(index.manifest) >= {"dense", "impact"} and index.manifest["generation"] == 3
    assert all((index_dir / f).is_dir() for f in index.manifest["impact"]["tiny-splade"]["segments"].values())
    splade = ImpactSearcher(index).search("w3 w17", 10)
    assert Pipeline(index, "splade").search(["w3 w17"], 10)[0] == splade
    fused = Pipeline(index, "hybrid(bm25,splade,alpha=1.0)").search(["w3 w17"], 10)[0]
    assert fused.ids[:3] == splade.ids[:3]  # alpha weighs the second input


@pytest.mark.slow
def test_cli_contract_for_models_dense_indexing_and_pipelines(tmp_path, tiny_model, tiny_splade, model_home):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "SIFT_MODELS": str(model_home)}

    def sift(*args):
        result = subprocess.run([sys.executable, "-m", "sift", *args], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    listed = sift("models", "list", "--json")
    assert listed["installed"]["tiny"]["kind"] == "bi-encoder" and "all-minilm-l6-v2" in listed["catalog"]
    rng = np.random.default_rng(4)
    records = [{"_id": f"d{i}", "text": " ".join(rng.choice(WORDS, size=8))} for i in range(50)]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    report = sift("index", str(corpus), str(tmp_path / "idx"), "--dense", "tiny", "--splade", "tiny-splade", "--quiet",
                  "--json")  # fmt: skip
    assert report["dense"]["model"] == "tiny" and report["dense"]["passages"] == 50
    assert report["splade"]["model"] == "tiny-splade" and report["splade"]["passages"] == 50
    (tmp_path / "q.tsv").write_text("q1\tw1 w2\nq2\tw3\n")
    (tmp_path / "qrels.txt").write_text("q1 0 d1 1\nq2 0 d2 1\n")
    from engine.evaluation import evaluate

    index = open_index(tmp_path / "idx")
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    for pipeline in ("dense", "splade", "hybrid", "rrf(bm25,dense(tiny))", "cort(bm25,dense)", "hybrid(bm25,splade)"):
        measured = sift("eval", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.tsv"), "--qrels",
                        str(tmp_path / "qrels.txt"), "--pipeline", pipeline, "--json")  # fmt: skip
        found = Pipeline(index, pipeline).search(["w1 w2", "w3"], 1000)
        expected = evaluate({q: dict(zip(r.ids, r.scores.tolist())) for q, r in zip(("q1", "q2"), found)}, qrels)
        assert {k: measured[k] for k in expected.to_dict()} == expected.to_dict(), pipeline
    found = sift("search", str(tmp_path / "idx"), "w1 w2", "--pipeline", "dense", "-k", "3", "--json")
    assert len(found["results"]) == 3


def test_vector_magnitude_quality_estimators_equal_direct_computations(tiny_model, tiny_splade):
    from indexers.quality import DenseNormEstimator, SpladeNormEstimator

    (vocabulary, table), (splade_vocabulary, splade_table) = tiny_model, tiny_splade
    texts = ["w1 w2 w3", "w4", "w5 w5 w6 w7"]
    dense = DenseNormEstimator("tiny").score(["a", "b", "c"], texts)
    expected = [np.linalg.norm(table[[vocabulary[w] for w in t.split()]].mean(axis=0)) for t in texts]
    np.testing.assert_allclose(dense, expected, rtol=1e-5)
    splade = SpladeNormEstimator("tiny-splade").score(["a", "b", "c"], texts)
    expected = [reference_splade(t, splade_vocabulary, splade_table).sum() for t in texts]
    np.testing.assert_allclose(splade, expected, rtol=1e-5)


def register_context_mlm(directory, name):
    """A masked LM whose logits at a token depend on the whole text: (E[token] + mean of E over the text) @ W, with a
    [MASK] token and [CLS]/[SEP] added around every text, so that masking one token changes every prediction."""
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as token_models

    vocabulary = {"[UNK]": 0, "[MASK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(len(vocabulary), DIMENSION)).astype(np.float32)
    output = rng.normal(size=(DIMENSION, len(vocabulary))).astype(np.float32)
    node = helper.make_node
    graph = helper.make_graph(
        [node("Gather", ["embeddings", "input_ids"], ["tokens"]),
         node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
         node("Unsqueeze", ["mask_float", "last_axis"], ["mask3"]),
         node("Mul", ["tokens", "mask3"], ["masked_tokens"]),
         node("ReduceSum", ["masked_tokens", "sequence_axis"], ["total"], keepdims=1),
         node("ReduceSum", ["mask3", "sequence_axis"], ["count"], keepdims=1),
         node("Div", ["total", "count"], ["context"]),
         node("Add", ["tokens", "context"], ["hidden"]),
         node("MatMul", ["hidden", "output"], ["logits"])],
        name,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", len(vocabulary)])],
        [numpy_helper.from_array(embeddings, "embeddings"), numpy_helper.from_array(output, "output"),
         numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "sequence_axis")],
    )  # fmt: skip
    directory.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), directory / "model.onnx")
    tokenizer = Tokenizer(token_models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])  # fmt: skip
    tokenizer.save(str(directory / "tokenizer.json"))
    models.register(directory, name, "splade", max_length=16)
    return vocabulary, embeddings, output


def pseudo_log_likelihood(text, vocabulary, embeddings, output, max_tokens=16):
    """The definition: each token masked alone, its log-probability under the model, averaged over the tokens."""
    words = text.split()[: max_tokens - 2]
    ids = np.array([2, *(vocabulary.get(w, 0) for w in words), 3])
    total = 0.0
    for position in range(1, len(ids) - 1):
        masked = ids.copy()
        masked[position] = vocabulary["[MASK]"]
        tokens = embeddings[masked].astype(np.float64)
        logits = (tokens[position] + tokens.mean(axis=0)) @ output
        total += logits[ids[position]] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    return total / (len(ids) - 2) if len(ids) > 2 else -np.log(len(vocabulary))


def test_pseudo_perplexity_masks_every_token_once_as_the_definition_does(tmp_path, model_home):
    from indexers.quality import PseudoPerplexityEstimator

    vocabulary, embeddings, output = register_context_mlm(tmp_path / "mlm-source", "tiny-mlm")
    texts = ["w1 w2 w3", "w5", "w9 w9 w10 w11 w12 w13 w14", "w1 " * 30, "", "w40 w2 w7 w7 w3"]
    expected = [pseudo_log_likelihood(t, vocabulary, embeddings, output) for t in texts]
    exact = PseudoPerplexityEstimator("tiny-mlm", passes=16, batch_size=3).score(list("abcdef"), texts)
    assert np.allclose(exact, expected, atol=1e-5)
    strided = PseudoPerplexityEstimator("tiny-mlm", passes=2).score(list("abcdef"), texts)
    assert np.allclose(strided[[1, 4]], exact[[1, 4]], atol=1e-5)  # one token or none: nothing else to mask
    assert not np.allclose(strided[[0, 2, 3]], exact[[0, 2, 3]], atol=1e-3)  # two masked at once see less context


PRUNE_FAILPOINTS = ["after-flush", "merge", "after-dense", "after-impact", "before-commit", "before-manifest-rename"]


@pytest.mark.slow
def test_sigkill_at_every_failpoint_of_prune_leaves_the_previous_commit_whole(tmp_path, tiny_model, tiny_splade,
                                                                              model_home):  # fmt: skip
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from engine.neural import DenseSearcher, ImpactSearcher

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "SIFT_MODELS": str(model_home)}
    rng = np.random.default_rng(7)
    records = [{"_id": f"d{i}", "text": " ".join(rng.choice(WORDS, size=rng.integers(3, 40)))} for i in range(4000)]
    write_jsonl(tmp_path / "c.jsonl", records)
    index_dir = tmp_path / "idx"

    def sift(*args, failpoint=None, cwd=tmp_path):
        return subprocess.run([sys.executable, "-m", "sift", *args], capture_output=True, text=True,
                              env={**env, "SIFT_FAILPOINT": failpoint or ""}, cwd=cwd)  # fmt: skip

    def state():
        index = open_index(index_dir)
        queries = ["w1 w2", "w30 w31 w32", "w59"]
        return (index.manifest["generation"], index.passages, [index.search(q, 20).pairs() for q in queries],
                [DenseSearcher(index).search(q, 20).pairs() for q in queries],
                [ImpactSearcher(index).search(q, 20).pairs() for q in queries])  # fmt: skip

    built = sift("index", "c.jsonl", "idx", "--dense", "tiny", "--splade", "tiny-splade", "--prune", "random:0.1",
                 "--quiet")  # fmt: skip
    assert built.returncode == 0, built.stderr
    before = state()
    assert before[1] == 3600
    for failpoint in PRUNE_FAILPOINTS:
        killed = sift("prune", str(index_dir), "--estimator", "length", "--rate", "0.3", "--memory-mb", "1", "--quiet",
                      failpoint=failpoint)  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, (failpoint, killed.stderr)
        assert state() == before, failpoint
    # the corpus was named by a relative path: prune works from any directory
    done = sift("prune", str(index_dir), "--estimator", "length", "--rate", "0.3", "--memory-mb", "1", "--quiet",
                cwd=tmp_path.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    generation, passages, *_ = state()
    assert (generation, passages) == (before[0] + 1, 2800)
    index = open_index(index_dir)
    names = [s["name"] for s in index.manifest["segments"]]
    for kind, model in (("dense", "tiny"), ("impact", "tiny-splade")):
        assert list(index.manifest[kind][model]["segments"]) == names
    assert not [p for p in index_dir.iterdir() if p.name.startswith(".staging")]
    assert {p.name for p in index_dir.iterdir() if p.is_dir()} == {"quality", *live_folders(index.manifest)}


def test_dense_and_impact_document_ranking_return_k_documents_when_the_index_has_them(tmp_path, tiny_model,
                                                                                       tiny_splade):  # fmt: skip
    from engine.neural import ImpactSearcher
    from indexers.writer import build_impact

    vocabulary, table = tiny_model
    rng = np.random.default_rng(9)
    records = [{"_id": f"d{i}", "text": " ".join(rng.choice(WORDS, size=int(rng.integers(8, 60))))} for i in range(40)]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    build_index(CorpusReader(open_source(corpus)), tmp_path / "idx", BuildOptions(passage_window=4))
    build_dense(tmp_path / "idx", "tiny", faiss_kind="flat")
    build_impact(tmp_path / "idx", "tiny-splade")
    index = open_index(tmp_path / "idx")
    assert index.passages > 4 * index.documents
    texts = index.texts(np.arange(index.passages))
    passage_scores = reference_vectors(texts, vocabulary, table) @ reference_vectors(["w1 w2 w3"], vocabulary, table)[0]
    _, doc_ids = index.ids(np.arange(index.passages))
    best: dict[str, float] = {}
    for doc_id, score in zip(doc_ids, passage_scores.tolist()):
        best[doc_id] = max(best.get(doc_id, -np.inf), score)
    expected = sorted(best, key=lambda d: -best[d])
    for k in (5, 30, 40, 60):
        found = DenseSearcher(index).search("w1 w2 w3", k)
        assert found.ids == expected[:k]  # ties are unlikely with random vectors
        splade = ImpactSearcher(index).search("w1 w2 w3", k)
        assert len(splade) == min(k, index.documents) and len(set(splade.ids)) == len(splade)


def test_stages_compose_in_python_as_expressions_build_them(tmp_path, tiny_model):
    from engine.pipeline import BM25, STAGES, CoRT, Dense, Interpolate, register_stage

    _, index_dir = build_corpus_index(tmp_path)
    build_dense(index_dir, "tiny")
    index = open_index(index_dir)
    queries = ["w1 w2 w3", "w40", "w7 w7 w59 w13"]
    bm25, dense = BM25(index), Dense(index)
    assert (bm25 + dense).search(queries, 20) == Pipeline(index, "hybrid").search(queries, 20)
    assert (bm25 | dense).search(queries, 20) == Pipeline(index, "rrf(bm25,dense)").search(queries, 20)
    assert ((bm25 + dense) % 5).search(queries, 20) == Pipeline(index, "hybrid").search(queries, 5)
    assert CoRT(bm25, dense).search(queries, 9) == Pipeline(index, "cort").search(queries, 9)
    assert str(Interpolate(bm25, dense, 0.3)) == str(parse("hybrid(bm25,dense,alpha=0.3)"))
    register_stage("lexical", lambda spec, context: BM25(context.index))  # a new stage name: one registration
    try:
        assert Pipeline(index, "hybrid(lexical,dense)").search(queries, 20) == (bm25 + dense).search(queries, 20)
    finally:
        del STAGES["lexical"]
    with pytest.raises(PipelineError, match="unknown stage 'lexical'"):
        parse("lexical")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_every_first_stage_returns_exactly_the_top_k_of_the_filtered_passages(tmp_path, tiny_model, tiny_splade,
                                                                               kind):  # fmt: skip
    rng = np.random.default_rng(5)
    records = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, size=rng.integers(3, 20))),
                "group": ["red", "blue", "green"][i % 3], "n": i} for i in range(300)]  # fmt: skip
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    fields = {"group": "keyword", "n": "int"}
    build_index(CorpusReader(open_source(corpus, fields=fields)), tmp_path / "idx", BuildOptions(fields=fields))
    build_dense(tmp_path / "idx", "tiny", faiss_kind=kind)
    build_impact(tmp_path / "idx", "tiny-splade")
    index = open_index(tmp_path / "idx")
    expression = "group IN [red, green] AND n >= 40"
    allowed = {r["_id"] for r in records if r["group"] in ("red", "green") and r["n"] >= 40}
    query = "w3 w17 w44 w7"
    for stage in ("bm25", "dense(tiny)", "splade(tiny-splade)", "hybrid(bm25,dense(tiny),alpha=0.3)"):
        everything = Pipeline(index, stage).search([query], 1000)[0]
        expected = [hit_id for hit_id in everything.ids if hit_id in allowed]
        if stage.startswith("hybrid"):  # fusion normalizes over its inputs: compare with fusing filtered inputs
            assert set(Pipeline(index, stage).search([query], 10, expression)[0].ids) <= allowed
            continue
        found = Pipeline(index, stage).search([query], 10, expression)[0]
        assert found.ids == expected[:10], stage
        assert found.scores.tolist() == [s for i, s in everything.pairs() if i in allowed][:10]
    assert index.fetch("d41")["fields"] == {"group": "green", "n": 41}


def test_sharded_dense_splade_and_fusions_equal_one_index(tmp_path, tiny_model, tiny_splade):
    """Shards built with dense and SPLADE parts: dense, SPLADE, hybrid and RRF top k over the shards (each shard's
    exact top k, merged by score) equal one index's, ids and scores, filtered too."""
    from engine.pipeline import Pipeline
    from engine.sharded import ShardedIndex
    from indexers.corpus import CorpusReader, open_source
    from indexers.inverted import BuildOptions
    from indexers.sharded import build_sharded

    rng = np.random.default_rng(5)
    records = [{"_id": f"p{i}", "text": " ".join(rng.choice(WORDS[: rng.integers(5, 60)], rng.integers(1, 12))),
                "year": int(rng.integers(2000, 2020))} for i in range(400)]  # fmt: skip
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    source = open_source(corpus, fields={"year": "int"})
    options = BuildOptions(fields={"year": "int"})
    build_index(CorpusReader(source), tmp_path / "one", options)
    build_dense(tmp_path / "one", "tiny", faiss_kind="flat")
    build_impact(tmp_path / "one", "tiny-splade")
    build_sharded(source, tmp_path / "sharded", 3, options, dense=("tiny", "flat"), splade="tiny-splade")
    one, sharded = open_index(tmp_path / "one"), open_index(tmp_path / "sharded")
    assert isinstance(sharded, ShardedIndex)
    queries = [" ".join(rng.choice(WORDS, 3)) for _ in range(30)]
    for expression in ("dense", "splade", "hybrid", "rrf(bm25,dense)"):
        for filter in (None, "year >= 2010"):
            want = Pipeline(one, expression).search(queries, 10, filter)
            got = Pipeline(sharded, expression).search(queries, 10, filter)
            assert [r.pairs() for r in got] == [r.pairs() for r in want], (expression, filter)
