"""Training rerankers from a tiny random BERT (the real runs start from all-MiniLM-L6-v2): both kinds learn a task
that can be learned, are exported and registered, score through ONNX Runtime as their PyTorch checkpoint does, and
the same seed gives the same model. Needs torch and transformers; skipped without them."""

import json

import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnx")

from engine.rerank import load_reranker  # noqa: E402
from indexers.train import Recipe, train, train_and_register, write_examples  # noqa: E402

WORDS = [f"w{i}" for i in range(40)]
VOCABULARY = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "true", "false", "gold", *WORDS])}


@pytest.fixture
def model_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFT_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


@pytest.fixture
def tiny_base(tmp_path):
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as token_models

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(VOCABULARY), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)  # fmt: skip
    base = tmp_path / "base"
    transformers.BertModel(config).save_pretrained(base)
    tokenizer = Tokenizer(token_models.WordLevel(VOCABULARY, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", VOCABULARY["[CLS]"]), ("[SEP]", VOCABULARY["[SEP]"])],
    )  # fmt: skip
    tokenizer.save(str(base / "tokenizer.json"))
    return base


def examples(count, seed):
    """Relevant passages hold the word "gold"; the negatives never do."""
    rng = np.random.default_rng(seed)

    def text(gold):
        words = list(rng.choice(WORDS, size=rng.integers(4, 12)))
        if gold:
            words.insert(int(rng.integers(0, len(words))), "gold")
        return " ".join(words)

    return [{"query": " ".join(rng.choice(WORDS, size=3)), "positives": [text(True)],
             "negatives": [text(False) for _ in range(6)]} for _ in range(count)]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "loss"), [("cross-encoder", "monot5"), ("seq2seq", "monot5"),
                                            ("seq2seq", "listwise")])  # fmt: skip
def test_trained_rerankers_learn_export_and_register(tmp_path, model_home, tiny_base, kind, loss):
    path = tmp_path / "examples.jsonl"
    write_examples(path, examples(60, seed=1))
    recipe = Recipe(kind, epochs=5, negatives=3, pool=6, max_length=32, learning_rate=2e-3, decoder_layers=1,
                    freeze_embeddings=False, seq2seq_loss=loss)  # a random base's embeddings are nothing to keep
    target, report = train_and_register("tiny-ranker", recipe, examples_path=path, quiet=True, base=tiny_base)
    assert report["parity_max_abs_difference"] < 1e-4
    config = json.loads((target / "sift-model.json").read_text())
    assert config["kind"] == kind and config["extra"]["training"]["queries"] == 60
    reranker = load_reranker("tiny-ranker")
    held_out = examples(40, seed=2)
    wins = 0
    for example in held_out:
        scores = reranker.score(example["query"], example["positives"] + example["negatives"])
        wins += int(scores[0] > scores[1:].max())
    assert wins >= 30, f"the positive ranked first for only {wins} of 40 held-out queries"
    if kind == "cross-encoder":  # ONNX Runtime scores as the PyTorch checkpoint does
        model = transformers.BertForSequenceClassification.from_pretrained(target / "checkpoint").eval()
        example = held_out[0]
        pairs = reranker.encode_pairs(example["query"], example["positives"])
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([pairs[0][0]]), token_type_ids=torch.tensor([pairs[0][1]])).logits
        assert abs(float(expected[0, 0]) - float(reranker.score(example["query"], example["positives"])[0])) < 1e-4


@pytest.mark.slow
def test_training_is_reproducible(tmp_path, tiny_base):
    recipe = Recipe("cross-encoder", epochs=1, negatives=2, pool=6, max_length=32, learning_rate=1e-3)
    data = examples(12, seed=3)
    train(data, recipe, tiny_base, tmp_path / "a", quiet=True)
    train(data, recipe, tiny_base, tmp_path / "b", quiet=True)
    a = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "a").state_dict()
    b = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    base = transformers.BertModel.from_pretrained(tiny_base).state_dict()
    for name, frozen in (("word_embeddings", True), ("position_embeddings", False)):
        assert torch.equal(a[f"bert.embeddings.{name}.weight"], base[f"embeddings.{name}.weight"]) == frozen


@pytest.mark.slow
def test_quality_model_trains_without_queries_and_prunes_by_its_scores(tmp_path, model_home, tiny_base):
    from engine.rerank import QUALITY_TEMPLATE
    from indexers.quality import PruneSpec, estimator

    path = tmp_path / "examples.jsonl"
    write_examples(path, [{**e, "query": ""} for e in examples(60, seed=4)])
    recipe = Recipe("seq2seq", epochs=5, negatives=3, pool=6, max_length=32, learning_rate=2e-3, decoder_layers=1,
                    freeze_embeddings=False, seq2seq_loss="listwise", template=QUALITY_TEMPLATE)  # fmt: skip
    target, report = train_and_register("tiny-quality", recipe, examples_path=path, quiet=True, base=tiny_base)
    assert report["parity_max_abs_difference"] < 1e-4
    assert json.loads((target / "sift-model.json").read_text())["extra"]["template"] == QUALITY_TEMPLATE
    assert PruneSpec.parse("tiny-quality:0.2") == PruneSpec("tiny-quality", rate=0.2)
    held_out = examples(40, seed=5)
    good = [e["positives"][0] for e in held_out]
    bad = [e["negatives"][0] for e in held_out]
    scores = estimator("tiny-quality").score([str(i) for i in range(80)], good + bad)
    assert (scores[:40] > scores[40:]).mean() >= 0.75
    # a smaller student with one of the two encoder layers, taught to reproduce those scores on a corpus
    data = tmp_path / "corpus"
    data.mkdir()
    corpus = [text for e in examples(60, seed=6) for text in (e["positives"][0], *e["negatives"][:2])]
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(corpus)))  # fmt: skip
    student = Recipe("seq2seq", epochs=20, max_length=32, learning_rate=2e-3, groups_per_step=16,
                     template=QUALITY_TEMPLATE, freeze_embeddings=False, distill_from="tiny-quality",
                     encoder_layers=1)  # fmt: skip
    target, report = train_and_register("tiny-student", student, data_dir=data, quiet=True)
    assert report["parity_max_abs_difference"] < 1e-4 and report["pairs"] == 20 * len(corpus)
    assert json.loads((target / "checkpoint" / "config.json").read_text())["encoder"]["num_hidden_layers"] == 1
    taught = estimator("tiny-quality").score([str(i) for i in range(80)], good + bad)
    learned = estimator("tiny-student").score([str(i) for i in range(80)], good + bad)
    assert stats.spearmanr(taught, learned).statistic > 0.8
    assert (learned[:40] > learned[40:]).mean() >= 0.75


def test_groups_are_one_size_even_where_a_pool_is_short():
    from indexers.train import Recipe, _groups

    examples = [{"query": "q1", "positives": ["p"], "negatives": ["n1"]},
                {"query": "q2", "positives": ["p"], "negatives": [f"n{i}" for i in range(9)]}]  # fmt: skip
    groups = _groups(examples, Recipe("cross-encoder", negatives=3), np.random.default_rng(0))
    assert sorted(len(texts) for _, texts in groups) == [4, 4]
    assert all(texts[0] == "p" and "p" not in texts[1:] for _, texts in groups)
