"""ONNX Runtime Training artifacts for sparse fine-tuning: training/eval/optimizer models, checkpoint, inference model.

`export_artifacts(model, layers, out_dir, ...)` writes, atomically (all or nothing):

- `prefix.onnx`: the frozen prefix (the stages before the one holding the earliest selected layer) as an inference
  graph, input → boundary tensor(s); absent when the selection starts in the first stage. A device runs it once
  per example and caches its output, so nothing frozen is recomputed after the first epoch;
- `training_model.onnx`, `eval_model.onnx`, `optimizer_model.onnx`, `checkpoint`: made by
  `onnxruntime.training.artifacts.generate_artifacts` for the suffix (boundary in, cross-entropy loss out); only the
  selected layers' weight and bias and the head's parameters require gradients;
- `inference.onnx`: the whole model exported plainly in eval mode (BatchNorm folded by constant folding);
- `manifest.json` (`format: zest-edge/artifacts`): what a device run needs to know (input, preprocessing, classes,
  optimizer and its hyperparameters, trainable initializers) and the versions that made it.

Training-graph policy, the same as `zest_edge.sparse`: every BatchNorm is frozen (running statistics, never updated,
affine frozen), Dropout stays active. ORT would update the running statistics of any BatchNormalization node it
trains through, so each one is rewritten before artifact generation into `x * scale + shift` with constant,
non-trainable `scale = gamma / sqrt(var + eps)` and `shift = beta - mean * scale` (per channel). The selected convs
keep their own trainable initializers: nothing is folded into them.

Optimizers: AdamW runs ORT's `AdamWOptimizer` kernel switched to its PyTorch mode (`adam_mode=0`: weight decay before
the update, bias correction on the moments), so it matches `torch.optim.AdamW`; SGD is ORT's `SGDOptimizerV2`, plain
`w -= lr * g` (no momentum, no weight decay: on-device ORT has none, so asking for them is an error).
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ZestError, first_line
from ..io import atomic_dir, atomic_write_bytes, sha256, write_json, writing
from ..layers import traced_forward
from ..models import get_spec
from .graph import (OPSET, drop_unused_initializers, expose_saved_statistics, fix_eval_model, freeze_batchnorm,
                    gradient_nodes, map_initializers)
from .manifest import ARTIFACT_FILES, FORMAT_VERSION, INPUT_NAME, LABELS_NAME, OUTPUT_NAME, PREFIX_FILE, zest_version
from .torch_export import Stages, export_inference_onnx, export_prefix_onnx, export_training_onnx, quiet_native

OPTIMIZERS = ("adamw", "sgd")


def versions() -> dict:
    import onnx
    import onnxruntime
    return {"zest_edge": zest_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnx_opset": OPSET}


def sparse_copy(model: nn.Module, layers, bn: str = "frozen"):
    """The engine's view of a private copy of `model`: `sparsify` sets what trains and which BatchNorm is frozen,
    and leaves the copy in its training mode (frozen BN and the frozen prefix in eval, Dropout active elsewhere)."""
    from ..sparse import sparsify
    return sparsify(copy.deepcopy(model), layers, bn=bn)


def optimizer_block(kind: str, *, betas, eps, weight_decay, momentum):
    from onnxruntime.training import onnxblock
    if kind == "adamw":
        return onnxblock.optim.AdamW(betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if momentum or weight_decay:
        raise ZestError("ONNX Runtime's on-device SGD is plain `w -= lr * g`: it has no momentum or weight decay "
                        "(use --optimizer adamw, or momentum 0 and weight decay 0)")
    return onnxblock.optim.SGD()


def set_torch_adamw_mode(path: Path) -> None:
    """onnxblock builds AdamW in HuggingFace mode; switch the kernel to its PyTorch mode (adam_mode=0)."""
    import onnx
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        if node.op_type == "AdamWOptimizer":
            for a in node.attribute:
                if a.name == "adam_mode":
                    a.i = 0
    save_onnx(proto, path)



def export_artifacts(model: nn.Module, layers, out_dir, *, batch_size: int = 32, optimizer: str = "adamw",
                     lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.0,
                     betas: tuple = (0.9, 0.999), eps: float = 1e-8, bn: str = "frozen", split: bool = True,
                     preprocess=None, classes: list[str] | None = None, ranking: dict | None = None,
                     force: bool = False, extra_manifest: dict | None = None, finalize=None) -> dict:
    """Write ORT Training artifacts for training `layers` (+ the head; None = full fine-tuning) into `out_dir`.

    What trains and which BatchNorm is frozen follow `zest_edge.sparse.sparsify(model, layers, bn=bn)`. With
    `split` (the default) the frozen prefix — the stages before the one holding the earliest selected layer — is
    exported apart as `prefix.onnx`, an inference graph, and the training artifacts cover the suffix only (the
    boundary tensor in, loss out); a selection starting in the first stage has no prefix. `split=False` puts the
    whole model in the training graph. `inference.onnx` is always the whole model.
    `preprocess` (default: the model's) fixes the input the graphs are built for, e.g. a Task's resolution.
    `finalize(tmp_dir) -> dict`, if given, runs inside the atomic folder after the artifacts are written (e.g. to
    build a TensorRT engine from inference.onnx); its dict is merged into the manifest, its failure leaves nothing.
    Returns the manifest (also written as manifest.json). Nothing is left behind if anything fails."""
    spec = get_spec(model)
    optimizer = str(optimizer).lower()
    if optimizer not in OPTIMIZERS:
        raise ZestError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ZestError(f"learning rate must be a positive number, got {lr}")
    if batch_size < 1:
        raise ZestError(f"batch size must be at least 1, got {batch_size}")
    if weight_decay < 0 or not 0 <= momentum < 1 or eps <= 0 or not all(0 <= b < 1 for b in betas):
        raise ZestError("weight decay must be >= 0, momentum and betas in [0, 1), eps > 0")
    opt_block = optimizer_block(optimizer, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum)
    sm = sparse_copy(model, layers, bn=bn)
    if not split:
        sm.suffix, sm.prefix = sm.prefix + sm.suffix, []
    pre = preprocess or spec.preprocess
    example = pre.example(2)
    num_classes = int(traced_forward(model, example).shape[-1])
    if classes is not None and len(classes) != num_classes:
        raise ZestError(f"{len(classes)} class names given but the model's head has {num_classes} outputs")

    start = time.perf_counter()
    with atomic_dir(out_dir, force=force) as tmp:
        boundary, prefix = example, None
        if sm.prefix:
            proto, boundary = export_prefix_onnx(sm, example)
            save_onnx(proto, tmp / PREFIX_FILE)
            prefix = {"file": PREFIX_FILE, "stages": len(sm.prefix), "boundary": tensor_specs(proto.graph.output, boundary)}
        train = training_artifacts(sm, boundary, tmp, opt_block, optimizer)
        save_onnx(export_inference_onnx(model, example), tmp / "inference.onnx")
        from .check import check_inference_onnx
        check = check_inference_onnx(tmp / "inference.onnx", model, pre.example(2, seed=0))
        check.pop("path", None)
        manifest = build_manifest(model, sm, train, prefix=prefix, example=example, num_classes=num_classes,
                                  pre=pre, classes=classes, optimizer=optimizer, lr=lr, batch_size=batch_size,
                                  betas=betas, eps=eps, weight_decay=weight_decay, bn=bn, check=check, tmp=tmp)
        manifest["export_seconds"] = round(time.perf_counter() - start, 3)
        if ranking is not None:
            manifest["ranking"] = {k: ranking[k] for k in ("model", "ranked_by", "top_k", "selected") if k in ranking}
            manifest["ranking"]["layers"] = [{k: layer.get(k) for k in ("name", "rank", "score", "params")}
                                             for layer in ranking.get("layers", [])]
        manifest.update(extra_manifest or {})
        if finalize is not None:
            manifest.update(finalize(tmp) or {})
        write_json(tmp / "manifest.json", manifest)
    return manifest


def training_artifacts(sm, boundary, out: Path, opt_block, optimizer: str) -> dict:
    """ORT training/eval/optimizer models + checkpoint of the suffix; returns the names the manifest records."""
    import onnx
    proto, input_names = export_training_onnx(sm, boundary)
    params = [n for n, _ in sm.model.named_parameters()]
    trainable = [n for n, _ in sm.trainable]
    mapping = {n[len("net."):]: v for n, v in map_initializers(proto, Stages(sm.model, None),
                                                               ["net." + n for n in params]).items()}
    # a selected layer or head parameter whose tensor is not in the graph cannot train: say which
    for n in trainable:
        if n not in mapping:
            raise ZestError(f"layer {n.rpartition('.')[0]}: its parameter {n} is not an initializer of the exported "
                            "ONNX graph (the exporter inlined or changed it), so it cannot train on device")
    trained_bn = {mapping.get(f"{b}.weight") for b in sm.trained_bn} - {None}
    bn_constants = freeze_batchnorm(proto, keep=trained_bn)
    expose_saved_statistics(proto)
    live = {i.name for i in proto.graph.initializer}
    requires_grad = [mapping[n] for n in trainable]
    buffers = {"net." + n for n, _ in sm.model.named_buffers() if not n.endswith("num_batches_tracked")}
    frozen = sorted(({mapping[n] for n in params if n in mapping and n not in trainable} | buffers
                     | set(bn_constants)) & live - set(requires_grad))
    generate(proto, out, requires_grad, frozen, opt_block, get_spec(sm.model).name)
    if optimizer == "adamw":
        set_torch_adamw_mode(out / "optimizer_model.onnx")
    eval_proto = onnx.load(str(out / "eval_model.onnx"))
    if fix_eval_model(eval_proto):
        save_onnx(eval_proto, out / "eval_model.onnx")
    train_proto = onnx.load(str(out / "training_model.onnx"))
    if drop_unused_initializers(train_proto):
        save_onnx(train_proto, out / "training_model.onnx")
    return {"mapping": mapping, "requires_grad": requires_grad, "frozen": len(frozen), "inputs": input_names,
            "bn_rewritten": len(bn_constants) // 2, "gradient_nodes": len(gradient_nodes(train_proto))}


def tensor_specs(values_info, value) -> list[dict]:
    """[{name, shape (batch symbolic), dtype}] for graph inputs/outputs matching torch `value` (a tensor or tuple)."""
    values = value if isinstance(value, tuple) else (value,)
    return [{"name": vi.name, "shape": ["batch", *v.shape[1:]], "dtype": str(v.dtype).replace("torch.", "")}
            for vi, v in zip(values_info, values)]


def save_onnx(proto, path: Path) -> None:
    atomic_write_bytes(path, proto.SerializeToString())


def build_manifest(model, sm, train: dict, *, prefix, example, num_classes, pre, classes, optimizer, lr, batch_size,
                   betas, eps, weight_decay, bn, check, tmp: Path) -> dict:
    """manifest.json: what a device run needs (inputs, boundary, preprocessing, classes, optimizer) and provenance."""
    spec = get_spec(model)
    params = dict(model.named_parameters())
    trainable = [n for n, _ in sm.trainable]
    total = int(sum(p.numel() for p in params.values()))
    n_train = int(sum(params[n].numel() for n in trainable))
    mapping, head = train["mapping"], spec.head
    files = [f for f in (PREFIX_FILE, *ARTIFACT_FILES) if (tmp / f).exists()]
    return {
        "format": "zest-edge/artifacts", "version": FORMAT_VERSION,
        "model": spec.name, "weights": spec.weights,
        "selection": "full" if sm.full else "sparse",
        "selected_layers": [{"name": layer.name, "index": layer.index, "type": layer.type, "params": layer.params,
                             "initializers": {kind: mapping.get(f"{layer.name}.{kind}") for kind in ("weight", "bias")
                                              if f"{layer.name}.{kind}" in params}} for layer in sm.selected],
        "head": {"name": head, "initializers": {n: mapping[n] for n in trainable if n == head or n.startswith(head + ".")}},
        "prefix": prefix,
        "training_inputs": train["inputs"],
        "trainable_initializers": train["requires_grad"],
        "frozen_initializers": train["frozen"],
        "batchnorm": {"policy": "train" if sm.full else bn, "trained": sorted(sm.trained_bn),
                      "frozen_rewritten": train["bn_rewritten"],
                      "frozen_form": "x * scale + shift (constants from running statistics)"},
        "dropout": "active in training, off in eval and inference",
        "gradient_nodes": train["gradient_nodes"],
        "trainable_params": n_train, "total_params": total, "trainable_share": n_train / max(total, 1),
        "input": {"name": INPUT_NAME, "shape": ["batch", *example.shape[1:]],
                  "dtype": "int64" if example.dtype == torch.long else "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", num_classes]},
        "labels": {"name": LABELS_NAME, "dtype": "int64"},
        "preprocess": ({"kind": "text", "tokenizer_dir": pre.tokenizer_dir, "max_length": pre.max_length}
                       if pre.kind == "text" else
                       {"kind": "image", "resolution": pre.resolution, "mean": list(pre.mean), "std": list(pre.std)}),
        "num_classes": num_classes, "classes": list(classes) if classes is not None else None,
        "loss": "cross_entropy (mean)",
        "optimizer": {"kind": optimizer, "lr": lr, "batch_size": batch_size,
                      **({"betas": list(betas), "eps": eps, "weight_decay": weight_decay, "semantics": "torch.optim.AdamW"}
                         if optimizer == "adamw" else
                         {"momentum": 0.0, "weight_decay": 0.0, "semantics": "w -= lr * g"})},
        "inference_check": check,
        "files": {name: (tmp / name).stat().st_size for name in files},
        "sha256": {name: sha256(tmp / name) for name in files},
        "versions": versions(),
    }


def generate(proto, out: Path, requires_grad: list[str], frozen: list[str], opt_block, name: str) -> None:
    """onnxruntime.training.artifacts.generate_artifacts with a cross-entropy loss and `logits` as extra output."""
    from onnxruntime.training import artifacts as ort_artifacts
    try:
        with writing(out), warnings.catch_warnings(), quiet_native():      # a failed write is not ORT's fault
            warnings.simplefilter("ignore")
            ort_artifacts.generate_artifacts(
                proto, requires_grad=requires_grad, frozen_params=frozen,
                loss=ort_artifacts.LossType.CrossEntropyLoss, optimizer=opt_block, artifact_directory=str(out),
                additional_output_names=[OUTPUT_NAME])
    except ZestError:
        raise
    except Exception as e:
        raise ZestError(f"ONNX Runtime cannot build training artifacts for {name}: {first_line(e)}") from None

