"""ExecuTorch programs for sparse fine-tuning: a training program, an inference program, the frozen prefix.

`export_executorch(model, layers, out_dir, ...)` writes, atomically (all or nothing):

- `prefix.pte`: the frozen prefix (the stages before the one holding the earliest selected layer) as an inference
  program, input → boundary tensor(s); absent when the selection starts in the first stage. A device runs it once
  per example and caches its outputs (`zest_edge.prefix_cache`), as with `prefix.onnx`;
- `training.pte`: the suffix with its loss, `(*boundary, labels) → (loss, logits)`, made by
  `torch.export.export` → `torch.export.experimental._export_forward_backward` → `executorch.exir.to_edge` →
  `to_executorch`; the runtime's `forward_backward` returns the loss and the gradients of the parameters that
  require them (the selected layers' weight and bias, the head), so backprop stops at the earliest one;
- `inference.pte`: the whole model in eval form, `(input, *trainable parameters) → logits`: the trained values
  come in as inputs (a device run's `trained.safetensors`), everything frozen is a constant of the program;
- `manifest.json`: the ORT export's manifest (`zest_edge.export.artifacts.build_manifest`) with `"backend":
  "executorch"`, the programs, their parameter order and the optimizer.

Policy: the programs run the model in eval form — every BatchNorm frozen (running statistics), Dropout off — so a
step is a pure function of parameters and batch and a resumed run is exact. Only SGD (with momentum and weight
decay, torch.optim.SGD semantics) is offered: ExecuTorch 1.5.1's Python bindings expose no AdamW. The batch axis
is static (the export's batch size; ExecuTorch plans memory for it): a shorter batch is padded and its padding
rows weigh 0 in the loss.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ZestError, first_line
from ..io import atomic_dir, atomic_write_bytes, sha256, write_json
from ..layers import traced_forward
from ..models import get_spec
from .artifacts import build_manifest, sparse_copy
from .manifest import EXECUTORCH_FILES, EXECUTORCH_PREFIX_FILE, INPUT_NAME, LABELS_NAME, zest_version
from .torch_export import Stages, io_names, model_name, static_same_padding

EXECUTORCH_PIN = "executorch==1.5.1"
CHECK_TOLERANCE = 1e-4


class TrainingProgram(Stages):
    """The suffix with its loss: `(*boundary, labels, weights) → (loss, logits)`, loss = Σ wᵢ·CEᵢ / Σ wᵢ (weights 1
    for real rows, 0 for the padding of a short batch: the mean cross-entropy of the real rows); the loss comes
    first, as ExecuTorch's forward-backward export requires."""

    def forward(self, *inputs):
        logits = super().forward(*inputs[:-2])
        weights = inputs[-1]
        loss = (F.cross_entropy(logits, inputs[-2], reduction="none") * weights).sum() / weights.sum()
        return loss, logits.detach()


class InferenceProgram(nn.Module):
    """The whole model with the trainable parameters as inputs: `(input, *params) → logits`."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.net, self.names = model, names

    def forward(self, x, *params):
        return torch.func.functional_call(self.net, dict(zip(self.names, params)), (x,))


def pad_by_concat(x, pads):
    """F.pad with zeros, as concatenation: its backward is a slice, where ExecuTorch's portable constant_pad_nd
    kernel (the backward of a pad) refuses the negative padding it would need. pads: (left, right, top, bottom)."""
    left, right, top, bottom = pads
    zeros = lambda h, w: x.new_zeros(x.shape[0], x.shape[1], h, w)  # noqa: E731
    if left or right:
        x = torch.cat([t for t in (zeros(x.shape[2], left) if left else None, x,
                                   zeros(x.shape[2], right) if right else None) if t is not None], dim=3)
    if top or bottom:
        x = torch.cat([t for t in (zeros(top, x.shape[3]) if top else None, x,
                                   zeros(bottom, x.shape[3]) if bottom else None) if t is not None], dim=2)
    return x


def import_exir():
    """executorch.exir and the training runtime, or one line saying how to install them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from executorch.version import __version__
            from executorch.exir import to_edge
            from executorch.extension.training import _load_for_executorch_for_training_from_buffer
    except Exception as e:  # ImportError, or a binary that does not load
        raise ZestError(f"ExecuTorch is not usable here ({first_line(e)}): pip install {EXECUTORCH_PIN}") from None
    return __version__, to_edge, _load_for_executorch_for_training_from_buffer


def to_program(module: nn.Module, inputs: tuple, *, training: bool, what: str) -> bytes:
    """torch.export (strict, static shapes) → [forward-backward] → to_edge → to_executorch; the program's bytes."""
    from torch.export.experimental import _export_forward_backward
    _, to_edge, _ = import_exir()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(module, inputs, strict=True)
            if training:
                ep = _export_forward_backward(ep)
            return to_edge(ep).to_executorch().buffer
    except ZestError:
        raise
    except Exception as e:  # torch.export and exir raise many types
        raise ZestError(f"cannot export {model_name(module)} to ExecuTorch ({what}): {first_line(e)}") from None


def check_args(layers, *, optimizer: str, lr: float, momentum: float, weight_decay: float, batch_size: int, bn: str):
    if optimizer != "sgd":
        raise ZestError(f"the ExecuTorch backend trains with SGD only ({EXECUTORCH_PIN}'s bindings have no "
                        f"{optimizer}): use --optimizer sgd")
    if layers is None:
        raise ZestError("the ExecuTorch backend exports sparse selections (BatchNorm frozen); full fine-tuning "
                        "needs --backend ort")
    if bn != "frozen":
        raise ZestError("the ExecuTorch backend keeps every BatchNorm frozen (bn='frozen')")
    if not (lr > 0 and math.isfinite(lr)):
        raise ZestError(f"learning rate must be a positive number, got {lr}")
    if batch_size < 1:
        raise ZestError(f"batch size must be at least 1, got {batch_size}")
    if weight_decay < 0 or not 0 <= momentum < 1:
        raise ZestError("weight decay must be >= 0 and momentum in [0, 1)")


def export_executorch(model: nn.Module, layers, out_dir, *, batch_size: int = 32, optimizer: str = "sgd",
                      lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0, bn: str = "frozen",
                      split: bool = True, preprocess=None, classes: list[str] | None = None,
                      ranking: dict | None = None, force: bool = False, extra_manifest: dict | None = None) -> dict:
    """Write ExecuTorch programs for training `layers` (+ the head) into `out_dir`; returns the manifest.

    What trains follows `zest_edge.sparse.sparsify(model, layers)`; `split=False` puts the whole model in the
    training program (no prefix.pte). Each program is run once by the ExecuTorch runtime before it is kept: the
    training program's loss and gradients and the inference program's logits must match PyTorch. Nothing is left
    behind if anything fails."""
    optimizer = str(optimizer).lower()
    check_args(layers, optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
               batch_size=batch_size, bn=bn)
    version, _, _ = import_exir()
    sm = sparse_copy(model, layers, bn=bn)
    if not split:
        sm.suffix, sm.prefix = sm.prefix + sm.suffix, []
    sm.model.eval()                                  # frozen BN in inference form, Dropout off
    pre = preprocess or get_spec(model).preprocess
    example = pre.example(batch_size, seed=0)
    static_same_padding(sm.model, example, pad=pad_by_concat)
    num_classes = int(traced_forward(model, example).shape[-1])
    if classes is not None and len(classes) != num_classes:
        raise ZestError(f"{len(classes)} class names given but the model's head has {num_classes} outputs")
    names = [n for n, _ in sm.trainable]
    labels = torch.arange(batch_size) % num_classes
    weights = torch.ones(batch_size)

    start = time.perf_counter()
    with atomic_dir(out_dir, force=force) as tmp:
        boundary, prefix = example, None
        if sm.prefix:
            stages = Stages(sm.model, sm.prefix)
            with torch.no_grad():
                boundary = stages(example)
            atomic_write_bytes(tmp / EXECUTORCH_PREFIX_FILE,
                               to_program(stages, (example,), training=False, what="prefix"))
            values = boundary if isinstance(boundary, tuple) else (boundary,)
            prefix = {"file": EXECUTORCH_PREFIX_FILE, "stages": len(sm.prefix),
                      "boundary": [{"name": n, "shape": ["batch", *v.shape[1:]], "dtype": str(v.dtype).split(".")[-1]}
                                   for n, v in zip(io_names("boundary", boundary), values)]}
        bounds = boundary if isinstance(boundary, tuple) else (boundary,)
        train = TrainingProgram(sm.model, sm.suffix)
        atomic_write_bytes(tmp / "training.pte", to_program(train, (*bounds, labels, weights),
                                                            training=True, what="training program"))
        params = [p.detach() for _, p in sm.trainable]
        atomic_write_bytes(tmp / "inference.pte", to_program(InferenceProgram(sm.model, names), (example, *params),
                                                             training=False, what="inference program"))
        check = check_programs(tmp, sm, train, (*bounds, labels, weights), example, names)
        fqns = ["net." + n for n in names]
        frozen = sum(1 for _, p in sm.model.named_parameters() if not p.requires_grad)
        info = {"mapping": {n: "net." + n for n, _ in sm.model.named_parameters()}, "requires_grad": fqns,
                "frozen": frozen, "inputs": io_names("boundary", boundary) if sm.prefix else [INPUT_NAME],
                "bn_rewritten": 0, "gradient_nodes": check.pop("gradients")}
        manifest = build_manifest(model, sm, info, prefix=prefix, example=example, num_classes=num_classes, pre=pre,
                                  classes=classes, optimizer=optimizer, lr=lr, batch_size=batch_size, betas=(0, 0),
                                  eps=0, weight_decay=weight_decay, bn=bn, check=check, tmp=tmp)
        files = [f for f in (EXECUTORCH_PREFIX_FILE, *EXECUTORCH_FILES) if (tmp / f).exists()]
        manifest.update({
            "backend": "executorch",
            "programs": {"batch": batch_size,
                         "training": {"file": "training.pte", "inputs": [*info["inputs"], LABELS_NAME, "weights"],
                                      "outputs": ["loss", "logits"], "parameters": fqns},
                         "inference": {"file": "inference.pte", "inputs": [INPUT_NAME, *names], "outputs": ["logits"]}},
            "batchnorm": {"policy": "frozen", "trained": [], "frozen_form": "eval-mode BatchNorm (running statistics)"},
            "dropout": "off (the programs run the model in eval form)",
            "optimizer": {"kind": "sgd", "lr": lr, "batch_size": batch_size, "momentum": momentum, "dampening": 0.0,
                          "weight_decay": weight_decay, "nesterov": False, "semantics": "torch.optim.SGD"},
            "files": {name: (tmp / name).stat().st_size for name in files},
            "sha256": {name: sha256(tmp / name) for name in files},
            "versions": {"zest_edge": zest_version(), "torch": torch.__version__, "executorch": version},
            "export_seconds": round(time.perf_counter() - start, 3)})
        for key in ("trainable_initializers", "frozen_initializers"):
            manifest.pop(key, None)
        if ranking is not None:
            manifest["ranking"] = {k: ranking[k] for k in ("model", "ranked_by", "top_k", "selected") if k in ranking}
        manifest.update(extra_manifest or {})
        write_json(tmp / "manifest.json", manifest)
    return manifest


def check_programs(folder: Path, sm, train: TrainingProgram, feed: tuple, example, names) -> dict:
    """Run the programs once in the ExecuTorch runtime against PyTorch: loss, gradients, prefix and inference
    outputs must agree within CHECK_TOLERANCE; returns the largest differences."""
    from ..executorch_runner import load_program, load_training
    module = load_training(folder / "training.pte")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss, _ = module.forward_backward("forward", feed)[:2]
    grads = module.named_gradients()
    for p in train.parameters():
        p.grad = None
    ref_loss, _ = train(*feed)
    ref_loss.backward()
    ref = dict(train.named_parameters())
    diffs = {"loss_max_abs_diff": abs(float(loss) - float(ref_loss.detach())),
             "gradient_max_abs_diff": max(float((ref[n].grad - g).abs().max()) for n, g in grads.items())}
    for p in train.parameters():
        p.grad = None
    with torch.no_grad():
        program = load_program(folder / "inference.pte")
        logits = program.forward((example, *[p.detach() for _, p in sm.trainable]))[0]
        diffs["inference_max_abs_diff"] = float((logits - sm.model(example)).abs().max())
    if set(grads) != {"net." + n for n in names}:
        raise ZestError(f"the ExecuTorch training program computes gradients for {sorted(grads)}, not for the "
                        f"selected parameters {names}")
    worst = max(diffs, key=diffs.get)
    if not diffs[worst] <= CHECK_TOLERANCE:
        raise ZestError(f"the ExecuTorch programs of {model_name(train)} disagree with PyTorch ({worst} "
                        f"{diffs[worst]:.3g} > {CHECK_TOLERANCE})")
    return {**diffs, "tolerance": CHECK_TOLERANCE, "gradients": len(grads), "runtime": "executorch pybindings"}
