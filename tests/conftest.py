import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import settings

# No deadlines anywhere: the first example of a property test compiles numba kernels (seconds on a cold cache or a
# busy CPU), which is not what a deadline is meant to catch.
settings.register_profile("sift", deadline=None)
settings.load_profile("sift")

# the shared collections: $SHARED_DATA, else ../shared/data beside the checkout, wherever the checkout is
DATA = Path(os.environ.get("SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")

WORDS = (
    "search engine index query passage document ranking retrieval score term frequency inverse length "
    "vector dense sparse neural model quality prune segment block posting merge commit manifest cat dog "
    "fox jumps lazy quick brown river bank money water stream flows running runner runs ran"
).split()


def requires_data(collection: str):
    """Skips cleanly when the shared test collections are absent (as on a machine without ../shared)."""
    return pytest.mark.skipif(not (DATA / collection).is_dir(), reason=f"{DATA / collection} is absent")


def random_documents(count: int, seed: int = 0, min_words: int = 1, max_words: int = 40) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        words = [rng.choice(WORDS[: rng.randint(3, len(WORDS))]) for _ in range(rng.randint(min_words, max_words))]
        docs.append({"_id": f"d{i}", "title": rng.choice(["", "A title"]), "text": " ".join(words)})
    return docs


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", random_documents(300))


@pytest.fixture
def model_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFT_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def register_lookup_model(directory, name, kind, table, output, words):
    """A registered model whose output for token i is row i of table (an ONNX Gather), with a word-level
    tokenizer over words: small enough to check every number the runtime derives from it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as token_models

    from engine import models

    vocabulary = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], [output])],
        name,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", "sequence", table.shape[1]])],
        [numpy_helper.from_array(table, "table")],
    )  # fmt: skip
    directory.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), directory / "model.onnx")
    tokenizer = Tokenizer(token_models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(directory / "tokenizer.json"))
    models.register(directory, name, kind, max_length=16)
    return vocabulary
