"""The artifacts folder's contract, readable without torch or the exporter: names, files, versions, manifest.json.

An on-device runner imports this module and nothing else of `zest_edge.export`.
"""
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ZestError
from ..io import read_json
from ..schema import parse

FORMAT_VERSION = 2                # 2: the frozen prefix apart (prefix.onnx), training artifacts of the suffix
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LABELS_NAME = "labels"            # the input onnxblock's CrossEntropyLoss adds
ARTIFACT_FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint", "inference.onnx")
PREFIX_FILE = "prefix.onnx"       # present when the selection leaves a frozen prefix
BACKENDS = ("ort", "executorch")  # manifest["backend"]; absent means "ort"
EXECUTORCH_FILES = ("training.pte", "inference.pte")
EXECUTORCH_PREFIX_FILE = "prefix.pte"


def zest_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("zest-edge")
    except PackageNotFoundError:
        return "0+unknown"


def compatible_version(theirs: str, ours: str | None = None) -> bool:
    """Artifacts are readable by the same zest-edge major.minor release that wrote them."""
    ours = ours or zest_version()
    return str(theirs).split(".")[:2] == ours.split(".")[:2]


@dataclass
class ManifestOptimizer:
    kind: str
    lr: float
    batch_size: int


@dataclass
class ManifestInput:
    name: str
    shape: list
    dtype: str


@dataclass
class ArtifactsManifest:
    """The fields of manifest.json a device run reads (their types checked by zest_edge.schema)."""
    model: str
    num_classes: int
    preprocess: dict
    optimizer: ManifestOptimizer
    input: ManifestInput
    prefix: dict | None = None
    sha256: dict = field(default_factory=dict)


def read_manifest(artifacts_dir) -> dict:
    """The manifest of an artifacts folder, checked for format, format version and zest-edge version."""
    artifacts_dir = Path(artifacts_dir)
    if not artifacts_dir.is_dir():
        raise ZestError(f"artifacts folder not found: {artifacts_dir}")
    manifest = read_json(artifacts_dir / "manifest.json", "artifacts")
    if manifest.get("version") != FORMAT_VERSION:
        raise ZestError(f"{artifacts_dir} holds artifacts format version {manifest.get('version')!r}; this zest-edge "
                        f"reads version {FORMAT_VERSION} (re-export them with `zest-edge export`)")
    parse(ArtifactsManifest, manifest, str(artifacts_dir / "manifest.json"))
    theirs = (manifest.get("versions") or {}).get("zest_edge", "?")
    if not compatible_version(theirs):
        raise ZestError(f"{artifacts_dir} was written by zest-edge {theirs}, this is {zest_version()}: "
                        "re-export the artifacts with this version")
    backend = manifest.get("backend", "ort")
    if backend not in BACKENDS:
        raise ZestError(f"{artifacts_dir} names backend {backend!r}; this zest-edge runs {', '.join(BACKENDS)}")
    files = ARTIFACT_FILES if backend == "ort" else EXECUTORCH_FILES
    for name in list(files) + ([manifest["prefix"]["file"]] if manifest.get("prefix") else []):
        if not (artifacts_dir / name).exists():
            raise ZestError(f"{artifacts_dir} is incomplete: {name} is missing")
    return manifest
