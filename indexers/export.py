"""Hugging Face checkpoints -> ONNX for Sift's runtime, with a parity check against PyTorch (the export extra:
torch==2.13.0 and transformers).

Kinds and what the ONNX graph computes:
- bi-encoder: last_hidden_state (the runtime pools);
- cross-encoder: logits of a sequence classifier (one relevance logit, or two classes);
- seq2seq: logits of the first decoder step from the decoder start token (monoT5 scoring needs no more);
- splade: masked-LM logits (the runtime applies log(1 + relu) and max pooling).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from engine.models import KINDS, ModelError


def _torch():
    try:
        import torch
        import transformers
    except ImportError:
        raise ModelError(
            "exporting needs torch and transformers: python3 -m pip install torch==2.13.0 transformers"
        ) from None
    return torch, transformers


def torch_module(kind: str, checkpoint: Path):
    """The PyTorch module to export, with plain tensor inputs and one output."""
    torch, transformers = _torch()
    loaders = {
        "bi-encoder": transformers.AutoModel,
        "cross-encoder": transformers.AutoModelForSequenceClassification,
        "splade": transformers.AutoModelForMaskedLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
    }
    if kind not in loaders:
        raise ModelError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    # eager attention exports as the plain MatMul-Softmax pattern that ONNX Runtime fuses into its Attention kernel
    model = loaders[kind].from_pretrained(checkpoint, attn_implementation="eager").eval()
    start = model.config.decoder_start_token_id if kind == "seq2seq" else None
    if kind == "seq2seq" and start is None:
        raise ModelError(f"{checkpoint}: the config has no decoder_start_token_id")

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule, so that its weights are exported as weights

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            if kind == "seq2seq":
                decoder = torch.full((input_ids.shape[0], 1), start, dtype=input_ids.dtype)
                out = self.model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder)
                return out.logits[:, 0]
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out[0] if kind == "bi-encoder" else out.logits

    return Exported().eval(), model.config


def export_onnx(
    checkpoint: str | Path, kind: str, out_dir: str | Path, quantize: bool = False, optimize: bool = False,
    keep_fp32: str = "",
) -> float:
    """Writes out_dir/model.onnx (and tokenizer.json when the checkpoint has one); returns the largest absolute
    difference between ONNX Runtime's and PyTorch's outputs on sample inputs. keep_fp32: when quantizing, nodes
    whose names match this regular expression stay fp32 (a fidelity-for-speed trade the speed benchmark measures)."""
    torch, _ = _torch()
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not (checkpoint / "config.json").exists():
        raise ModelError(f"{checkpoint}: not a Hugging Face checkpoint directory (no config.json)")
    out_dir.mkdir(parents=True, exist_ok=True)
    module, config = torch_module(kind, checkpoint)
    names = ["input_ids", "attention_mask"] + ([] if kind == "seq2seq" else ["token_type_ids"])
    vocab_size = _vocab_size(config)
    sample = _sample_inputs(vocab_size, names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["output"] = {0: "batch"} if kind in ("cross-encoder", "seq2seq") else {0: "batch", 1: "sequence"}
    fp32 = out_dir / ("model.fp32.onnx" if quantize or optimize else "model.onnx")
    with torch.no_grad():
        torch.onnx.export(
            module, tuple(torch.from_numpy(sample[n]) for n in names), str(fp32), input_names=names,
            output_names=["output"], dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
    if optimize or quantize:
        _optimize(fp32, out_dir / "model.onnx", config, quantize, optimize, keep_fp32)
        if fp32.exists() and fp32.name != "model.onnx":
            fp32.unlink()
    if (checkpoint / "tokenizer.json").exists():
        shutil.copyfile(checkpoint / "tokenizer.json", out_dir / "tokenizer.json")
    return parity(module, out_dir / "model.onnx", names, vocab_size)


def _vocab_size(config) -> int:
    """The input vocabulary (an encoder-decoder's config keeps it in its encoder's)."""
    return getattr(config, "vocab_size", None) or config.encoder.vocab_size


def _sample_inputs(vocab_size: int, names: list[str], batch: int = 3, length: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, min(vocab_size, 30000), size=(batch, length)).astype(np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    mask[1, length // 2 :] = 0  # one padded row: padding must not change the others
    sample = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: sample[n] for n in names}


def _optimize(source: Path, target: Path, config, quantize: bool, optimize: bool, keep_fp32: str) -> None:
    """Transformer fusions (attention, layer norm, GELU: ONNX Runtime's BERT optimizer) for BERT-family encoders,
    then int8 dynamic quantization of the weights if asked, per output channel (per tensor, all-MiniLM-L6-v2's
    vectors fell to cosine 0.94 of PyTorch's; per channel they keep 0.995)."""
    current = source
    if optimize and getattr(config, "model_type", "") in _BERT_FAMILY:
        from onnxruntime.transformers import optimizer

        fused = optimizer.optimize_model(
            str(source), model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
        )
        current = source.with_suffix(".fused.onnx")
        fused.save_model_to_file(str(current))
    if quantize:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = source.with_suffix(".int8.onnx")
        graph = onnx.load(str(current)).graph
        excluded = [n.name for n in graph.node if keep_fp32 and re.search(keep_fp32, n.name)]
        quantize_dynamic(str(current), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=excluded,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fmt: skip
        if current != source:
            current.unlink()
        current = quantized
    current.replace(target)


_BERT_FAMILY = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet")


def parity(module, onnx_path: Path, names: list[str], vocab_size: int) -> float:
    """Largest absolute difference between PyTorch and ONNX Runtime on sample inputs (padded positions of
    token-level outputs excluded: they are never read)."""
    import onnxruntime as ort

    torch, _ = _torch()
    sample = _sample_inputs(vocab_size, names, seed=1)
    with torch.no_grad():
        expected = module(*(torch.from_numpy(sample[n]) for n in names)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    found = session.run(None, sample)[0]
    if expected.ndim == 3:
        keep = sample["attention_mask"].astype(bool)
        expected, found = expected[keep], found[keep]
    return float(np.abs(expected - found).max())
