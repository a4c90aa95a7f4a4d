"""ONNX Runtime Training artifacts for sparse fine-tuning: training/eval/optimizer models, checkpoint, inference model.

`export_artifacts(model, layers, out_dir, ...)` writes, atomically (all or nothing):

- `training_model.onnx`, `eval_model.onnx`, `optimizer_model.onnx`, `checkpoint`: made by
  `onnxruntime.training.artifacts.generate_artifacts` with a cross-entropy loss; only the selected layers' weight and
  bias and the head's parameters require gradients, so the gradient graph stops at the earliest selected layer;
- `inference.onnx`: the model exported plainly in eval mode (BatchNorm folded by constant folding);
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

import contextlib
import copy
import io
import math
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ZestError
from ..io import atomic_dir, write_json
from ..layers import Layer
from ..models import get_spec

FORMAT_VERSION = 1
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LABELS_NAME = "labels"            # the input onnxblock's CrossEntropyLoss adds
ARTIFACT_FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint", "inference.onnx")
OPTIMIZERS = ("adamw", "sgd")
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ------------------------------------------------------------------------------------------------ versions

def zest_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("zest-edge")
    except PackageNotFoundError:
        return "0+unknown"


def versions() -> dict:
    import onnx
    import onnxruntime
    return {"zest_edge": zest_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnx_opset": OPSET}


def compatible_version(theirs: str, ours: str | None = None) -> bool:
    """Artifacts are readable by the same zest-edge major.minor release that wrote them."""
    ours = ours or zest_version()
    return str(theirs).split(".")[:2] == ours.split(".")[:2]


# ------------------------------------------------------------------------------------------------ selection

def layer_names(layers) -> list[str] | None:
    """Names from names or Layer objects; None stays None (full fine-tuning)."""
    if layers is None:
        return None
    return [layer.name if isinstance(layer, Layer) else str(layer) for layer in layers]


def sparse_copy(model: nn.Module, layers, bn: str = "frozen"):
    """The engine's view of a private copy of `model`: `sparsify` sets what trains and which BatchNorm is frozen,
    and leaves the copy in its training mode (frozen BN and the frozen prefix in eval, Dropout active elsewhere)."""
    from ..sparse import sparsify
    return sparsify(copy.deepcopy(model), layer_names(layers), bn=bn)


# ------------------------------------------------------------------------------------------------ export

def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception, without ORT's `/path/file.cc:123 Class::method(args...) ` prefix."""
    text = str(e).strip() or type(e).__name__
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text)
    m = re.match(r"^\S+\.(?:cc|cpp|h):\d+ .*?\)\s+(\S.*)$", line)
    return m.group(1) if m else line


def static_same_padding(model: nn.Module, example: torch.Tensor) -> int:
    """Give timm's dynamic 'SAME'-padding convs (Conv2dSame) the constant padding of the fixed input size, so the
    exported graph has a plain Pad instead of a Shape/Ceil/Max chain that shape inference cannot follow. The
    module keeps its parameters (and names); only its forward changes. `model` must be a private copy."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import pad_same_arg
    except ImportError:
        return 0
    convs = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dSame)}
    if not convs:
        return 0
    sizes = {}
    def record(name):
        def hook(mod, inp):
            sizes.setdefault(name, tuple(inp[0].shape[-2:]))
        return hook
    hooks = [m.register_forward_pre_hook(record(name)) for name, m in convs.items()]
    modes = {m: m.training for m in model.modules()}     # per module: frozen BN must stay in eval
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for h in hooks:
            h.remove()
    for name, m in convs.items():
        if name not in sizes:
            continue
        pads = [int(v) for v in pad_same_arg(list(sizes[name]), list(m.weight.shape[-2:]), list(m.stride),
                                             list(m.dilation))]

        def forward(self, x, pads=pads):
            return torch.nn.functional.conv2d(torch.nn.functional.pad(x, pads), self.weight, self.bias, self.stride,
                                              0, self.dilation, self.groups)
        m.forward = forward.__get__(m)
    return len(sizes)


def _torch_export(model: nn.Module, example: torch.Tensor, *, train: bool, what: str):
    """TorchScript-export `model` (a private copy) to an in-memory ModelProto; failures become a one-line error."""
    import onnx
    buf = io.BytesIO()
    static_same_padding(model, example)
    text = example.dtype == torch.long
    # tracing runs one forward: BatchNorm in training mode updates its running statistics on the dummy input,
    # and the exporter would ship those; keep the originals to put back into the graph
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    grad_mode = torch.enable_grad() if train else torch.no_grad()
    try:
        with warnings.catch_warnings(), quiet_native((1, 2)), grad_mode:
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), buf, dynamo=False, export_params=True, opset_version=OPSET,
                do_constant_folding=not train, keep_initializers_as_inputs=False,
                training=torch.onnx.TrainingMode.PRESERVE if train else torch.onnx.TrainingMode.EVAL,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except ZestError:
        raise
    except Exception as e:  # torch raises many types: UnsupportedOperatorError, RuntimeError, SymbolicValueError...
        raise ZestError(f"cannot export {get_spec(model).name} to ONNX ({what}{', token ids' if text else ''}): "
                        f"{_first_line(e)}") from None
    proto = onnx.load_from_string(buf.getvalue())
    from onnx import numpy_helper
    for i, init in enumerate(proto.graph.initializer):
        if init.name in buffers:
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(buffers[init.name].numpy(), init.name))
    return proto


def export_training_onnx(sm, example: torch.Tensor):
    """The forward graph to train from, exported from a sparsified copy left in the engine's training mode: Dropout
    active, frozen BatchNorm in inference form, trained BatchNorm (full fine-tuning) in training form."""
    sm.train_mode()
    return _torch_export(sm.model, example, train=True, what="training graph")


def export_inference_onnx(model: nn.Module, example: torch.Tensor):
    """The plain inference model (eval mode, BatchNorm folded), with small constant subgraphs folded too."""
    m = copy.deepcopy(model).eval()
    proto = _torch_export(m, example, train=False, what="inference graph")
    fold_small_constants(proto)
    return proto


NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                    "Bernoulli", "Dropout"}


def fold_small_constants(proto, limit: int = 4096) -> int:
    """Evaluate nodes whose inputs are all small constants (the exporter leaves chains like
    ConstantOfShape/Concat/Reshape/Slice computing Pad's pads), so shape inference sees constant values."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if int(np.prod(i.dims)) <= limit}
    keep, folded = [], 0
    for node in proto.graph.node:
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in NONDETERMINISTIC
                    and all(i in consts for i in node.input if i)
                    and not any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute))
        if foldable:
            try:
                outs = ReferenceEvaluator(node, opsets={"": opset}).run(
                    None, {i: consts[i] for i in node.input if i})
            except Exception:
                outs = None
            if outs is not None and len(outs) == len(node.output) and all(
                    isinstance(o, np.ndarray) and o.size <= limit for o in outs):
                for name, value in zip(node.output, outs):
                    consts[name] = value
                    proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
                folded += 1
                continue
        keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    drop_unused_initializers(proto)
    return folded


def map_initializers(proto, model: nn.Module, names: list[str]) -> dict[str, str]:
    """torch parameter name -> the ONNX initializer holding it (same name, else the unique tensor of equal value,
    possibly transposed as the exporter does for MatMul). Missing ones are left out."""
    from onnx import numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    params = dict(model.named_parameters())
    found, by_shape = {}, None
    for n in names:
        p = params[n].detach().cpu().numpy()
        if n in inits:
            found[n] = n
            continue
        if by_shape is None:   # decode lazily: most names match directly
            by_shape = {}
            for i in proto.graph.initializer:
                by_shape.setdefault(tuple(i.dims), []).append(i.name)
        hits = []
        for shape, transposed in ((p.shape, False), (p.shape[::-1], True)):
            if transposed and p.ndim != 2:
                continue
            for cand in by_shape.get(tuple(shape), []):
                arr = numpy_helper.to_array(inits[cand])
                if np.array_equal(arr.T if transposed else arr, p) and cand not in found.values():
                    hits.append(cand)
        if len(set(hits)) == 1:
            found[n] = hits[0]
    return found


def _bn_rank(proto) -> dict[str, int]:
    """Rank of each BatchNormalization input, from shape inference."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(proto)
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def freeze_batchnorm(proto, keep: set[str] = frozenset()) -> list[str]:
    """Rewrite every BatchNormalization node (except those whose scale initializer is in `keep`: BN that trains)
    into Mul/Add with constant scale/shift; returns the new initializer names (non-trainable). Removes the BN
    initializers no other node reads."""
    import onnx
    from onnx import helper, numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    ranks = None
    new_nodes, created, replaced = [], [], set()
    for node in proto.graph.node:
        if node.op_type != "BatchNormalization" or node.input[1] in keep:
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, gamma, beta, mean, var = node.input[:5]
        missing = [n for n in (gamma, beta, mean, var) if n not in inits]
        if missing:
            raise ZestError(f"BatchNorm node {node.name} reads {missing[0]}, which is not a constant initializer")
        if ranks is None:
            ranks = _bn_rank(proto)
        rank = ranks.get(x)
        if rank is None or rank < 2:
            raise ZestError(f"cannot freeze BatchNorm node {node.name}: the rank of its input is unknown")
        if attrs.get("training_mode", 0):
            raise ZestError(f"internal error: frozen BatchNorm {gamma} was exported in training mode")
        g, b, mu, v = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in (gamma, beta, mean, var))
        eps = float(attrs.get("epsilon", 1e-5))
        scale = g / np.sqrt(v + eps)
        shift = b - mu * scale
        bshape = (-1,) + (1,) * (rank - 2)
        base = gamma[:-len(".weight")] if gamma.endswith(".weight") else node.name.strip("/").replace("/", ".")
        s_name, t_name = f"{base}.frozen_bn_scale", f"{base}.frozen_bn_shift"
        for name, arr in ((s_name, scale), (t_name, shift)):
            proto.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32).reshape(bshape), name))
            created.append(name)
        mid = f"{node.output[0]}_frozen_bn_scaled"
        new_nodes.append(helper.make_node("Mul", [x, s_name], [mid], name=f"{node.name}_frozen_mul"))
        new_nodes.append(helper.make_node("Add", [mid, t_name], [node.output[0]], name=f"{node.name}_frozen_add"))
        used_outputs = {o for n in proto.graph.node for o in n.input} | {o.name for o in proto.graph.output}
        extra = [o for o in node.output[1:] if o and o in used_outputs]
        if extra:
            raise ZestError(f"BatchNorm node {node.name} exposes its batch statistics ({extra[0]}); cannot freeze it")
        replaced.update((gamma, beta, mean, var))
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    still_used = {i for n in proto.graph.node for i in n.input}
    keep = [i for i in proto.graph.initializer if i.name not in replaced or i.name in still_used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    onnx.checker.check_model(proto)
    return created


def expose_saved_statistics(proto) -> int:
    """ORT's LayerNormalization gradient reads the node's optional Mean and InvStdDev outputs, which the exporter
    leaves off: name them so the gradient builder can wire them."""
    added = 0
    for node in proto.graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"{node.output[0]}_saved_mean", f"{node.output[0]}_saved_inv_std"])
            added += 1
    return added


def fix_eval_model(proto) -> int:
    """An eval model needs plain inference BatchNormalization nodes (one output, training_mode=0: generate_artifacts
    only flips the attribute) and no initializer left unused (Dropout's training flag, which it unhooks)."""
    fixed = 0
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization" and (len(node.output) > 1 or any(
                a.name == "training_mode" and a.i for a in node.attribute)):
            for a in node.attribute:
                if a.name == "training_mode":
                    a.i = 0
            del node.output[1:]
            fixed += 1
    return fixed + drop_unused_initializers(proto)


def drop_unused_initializers(proto) -> int:
    """Remove initializers and Constant nodes no node reads (ORT warns about each when it loads the model)."""
    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    dead = [n for n in proto.graph.node if n.op_type == "Constant" and not set(n.output) & used]
    for node in dead:
        proto.graph.node.remove(node)
    unused = [i for i in proto.graph.initializer if i.name not in used]
    for init in unused:
        proto.graph.initializer.remove(init)
    return len(unused) + len(dead)


def gradient_nodes(proto) -> list:
    """Nodes of the gradient graph in a training model (ORT names them `..._Grad/...` and types them `*Grad`)."""
    return [n for n in proto.graph.node if n.op_type.endswith("Grad") or "_Grad/" in n.name or n.name.endswith("_Grad")]


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
    onnx.save(proto, str(path))


def example_input(pre, batch_size: int = 2) -> torch.Tensor:
    """Zeros of the shape `pre` produces (token id 1 for text), as `zest_edge.layers.dummy_input`."""
    if pre.kind == "text":
        return torch.ones(batch_size, pre.max_length, dtype=torch.long)
    return torch.zeros(batch_size, 3, pre.resolution, pre.resolution)


def random_like(example: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if example.dtype == torch.long:
        x = torch.randint(1, 1000, example.shape, generator=g)
        x[:, example.shape[1] * 3 // 4:] = 0          # some padding
        return x
    return torch.randn(example.shape, generator=g)


def _count(model: nn.Module, names) -> int:
    params = dict(model.named_parameters())
    return int(sum(params[n].numel() for n in names))


def export_artifacts(model: nn.Module, layers, out_dir, *, batch_size: int = 32, optimizer: str = "adamw",
                     lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.0,
                     betas: tuple = (0.9, 0.999), eps: float = 1e-8, bn: str = "frozen",
                     preprocess=None, classes: list[str] | None = None, ranking: dict | None = None,
                     force: bool = False, extra_manifest: dict | None = None, finalize=None) -> dict:
    """Write ORT Training artifacts for training `layers` (+ the head; None = full fine-tuning) into `out_dir`.

    What trains and which BatchNorm is frozen follow `zest_edge.sparse.sparsify(model, layers, bn=bn)`.
    `preprocess` (default: the model's) fixes the input the graphs are built for, e.g. a Task's resolution.
    `finalize(tmp_dir) -> dict`, if given, runs inside the atomic folder after the artifacts are written (e.g. to
    build a TensorRT engine from inference.onnx); its dict is merged into the manifest, its failure leaves nothing.
    Returns the manifest (also written as manifest.json). Nothing is left behind if anything fails."""
    import onnx

    from ..device import sha256
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
    trainable = [n for n, _ in sm.trainable]
    pre = preprocess or spec.preprocess
    example = example_input(pre, batch_size=2)
    modes = {m: m.training for m in model.modules()}      # restored per module (frozen BN stays in eval)
    try:
        model.eval()
        with torch.no_grad():
            num_classes = int(model(example).shape[-1])
    finally:
        for m, mode in modes.items():
            m.training = mode
    if classes is not None and len(classes) != num_classes:
        raise ZestError(f"{len(classes)} class names given but the model's head has {num_classes} outputs")

    start = time.perf_counter()
    with atomic_dir(out_dir, force=force) as tmp:
        proto = export_training_onnx(sm, example)
        params = [n for n, _ in model.named_parameters()]
        mapping = map_initializers(proto, model, params)
        # a selected layer or head parameter whose tensor is not in the graph cannot train: say which
        for n in trainable:
            if n not in mapping:
                raise ZestError(f"layer {n.rpartition('.')[0]}: its parameter {n} is not an initializer of the "
                                "exported ONNX graph (the exporter inlined or changed it), so it cannot train on "
                                "device")
        trained_bn = {mapping.get(f"{b}.weight") for b in sm.trained_bn} - {None}
        bn_constants = freeze_batchnorm(proto, keep=trained_bn)
        expose_saved_statistics(proto)
        live = {i.name for i in proto.graph.initializer}
        requires_grad = [mapping[n] for n in trainable]
        buffers = [n for n, _ in model.named_buffers() if not n.endswith("num_batches_tracked")]
        frozen = sorted(({mapping[n] for n in params if n in mapping and n not in trainable}
                         | {b for b in buffers if b in live} | set(bn_constants)) & live - set(requires_grad))
        generate(proto, tmp, requires_grad, frozen, opt_block, spec.name)
        if optimizer == "adamw":
            set_torch_adamw_mode(tmp / "optimizer_model.onnx")
        eval_path = tmp / "eval_model.onnx"
        eval_proto = onnx.load(str(eval_path))
        if fix_eval_model(eval_proto):
            onnx.save(eval_proto, str(eval_path))
        del eval_proto
        train_path = tmp / "training_model.onnx"
        train_proto = onnx.load(str(train_path))
        if drop_unused_initializers(train_proto):
            onnx.save(train_proto, str(train_path))
        n_grad = len(gradient_nodes(train_proto))
        del train_proto
        onnx.save(export_inference_onnx(model, example), str(tmp / "inference.onnx"))
        from .tensorrt import check_inference_onnx
        check = check_inference_onnx(tmp / "inference.onnx", model, random_like(example))
        check.pop("path", None)
        export_seconds = time.perf_counter() - start

        total = _count(model, params)
        n_train = _count(model, trainable)
        named = dict(model.named_parameters())
        sel_records = [{"name": layer.name, "index": layer.index, "type": layer.type, "params": layer.params,
                        "initializers": {kind: mapping.get(f"{layer.name}.{kind}") for kind in ("weight", "bias")
                                         if f"{layer.name}.{kind}" in named}}
                       for layer in sm.selected]
        head = spec.head
        manifest = {
            "format": "zest-edge/artifacts", "version": FORMAT_VERSION,
            "model": spec.name, "weights": spec.weights,
            "selection": "full" if sm.full else "sparse",
            "selected_layers": sel_records,
            "head": {"name": head, "initializers": {n: mapping[n] for n in trainable
                                                     if n == head or n.startswith(head + ".")}},
            "trainable_initializers": requires_grad,
            "frozen_initializers": len(frozen),
            "batchnorm": {"policy": "train" if sm.full else bn, "trained": sorted(sm.trained_bn),
                          "frozen_rewritten": len(bn_constants) // 2,
                          "frozen_form": "x * scale + shift (constants from running statistics)"},
            "dropout": "active in training, off in eval and inference",
            "gradient_nodes": n_grad,
            "trainable_params": n_train, "total_params": total, "trainable_share": n_train / max(total, 1),
            "parameters": {"trainable": n_train, "total": total},     # the same, as zest_edge.profile reads it
            "input": {"name": INPUT_NAME, "shape": ["batch", *example.shape[1:]],
                      "dtype": "int64" if example.dtype == torch.long else "float32"},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", num_classes]},
            "labels": {"name": LABELS_NAME, "dtype": "int64"},
            "preprocess": ({"kind": "text", "tokenizer_dir": pre.tokenizer_dir, "max_length": pre.max_length}
                           if pre.kind == "text" else
                           {"kind": "image", "resolution": pre.resolution, "mean": list(pre.mean),
                            "std": list(pre.std)}),
            "num_classes": num_classes, "classes": list(classes) if classes is not None else None,
            "loss": "cross_entropy (mean)",
            "optimizer": {"kind": optimizer, "lr": lr, "batch_size": batch_size,
                          **({"betas": list(betas), "eps": eps, "weight_decay": weight_decay,
                              "semantics": "torch.optim.AdamW"}
                             if optimizer == "adamw" else
                             {"momentum": 0.0, "weight_decay": 0.0, "semantics": "w -= lr * g"})},
            "inference_check": check,
            "files": {name: (tmp / name).stat().st_size for name in ARTIFACT_FILES},
            "sha256": {name: sha256(tmp / name) for name in ARTIFACT_FILES},
            "export_seconds": round(export_seconds, 3),
            "versions": versions(),
        }
        if ranking is not None:
            manifest["ranking"] = {k: ranking[k] for k in ("model", "ranked_by", "top_k", "selected") if k in ranking}
            manifest["ranking"]["layers"] = [{k: layer.get(k) for k in ("name", "rank", "score", "params")}
                                             for layer in ranking.get("layers", [])]
        if extra_manifest:
            manifest.update(extra_manifest)
        if finalize is not None:
            manifest.update(finalize(tmp) or {})
        write_json(tmp / "manifest.json", manifest)
    return manifest


@contextlib.contextmanager
def quiet_native(fds=(2,)):
    """Silence what native code prints on these file descriptors (ORT's graph-transformer log, the TorchScript
    exporter's IR dump on failure); yields a callable returning the captured text."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with tempfile.TemporaryFile() as sink:
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        captured = []
        try:
            yield lambda: captured[0] if captured else ""
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, orig in saved.items():
                os.dup2(orig, fd)
                os.close(orig)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def generate(proto, out: Path, requires_grad: list[str], frozen: list[str], opt_block, name: str) -> None:
    """onnxruntime.training.artifacts.generate_artifacts with a cross-entropy loss and `logits` as extra output."""
    from onnxruntime.training import artifacts as ort_artifacts
    try:
        with warnings.catch_warnings(), quiet_native():
            warnings.simplefilter("ignore")
            ort_artifacts.generate_artifacts(
                proto, requires_grad=requires_grad, frozen_params=frozen,
                loss=ort_artifacts.LossType.CrossEntropyLoss, optimizer=opt_block, artifact_directory=str(out),
                additional_output_names=[OUTPUT_NAME])
    except Exception as e:
        raise ZestError(f"ONNX Runtime cannot build training artifacts for {name}: {_first_line(e)}") from None


def read_manifest(artifacts_dir) -> dict:
    """The manifest of an artifacts folder, checked for format, format version and zest-edge version."""
    from ..io import read_json
    artifacts_dir = Path(artifacts_dir)
    if not artifacts_dir.is_dir():
        raise ZestError(f"artifacts folder not found: {artifacts_dir}")
    manifest = read_json(artifacts_dir / "manifest.json", "artifacts")
    if manifest.get("version") != FORMAT_VERSION:
        raise ZestError(f"{artifacts_dir} holds artifacts format version {manifest.get('version')!r}; this zest-edge "
                        f"reads version {FORMAT_VERSION} (re-export them with `zest-edge export`)")
    theirs = (manifest.get("versions") or {}).get("zest_edge", "?")
    if not compatible_version(theirs):
        raise ZestError(f"{artifacts_dir} was written by zest-edge {theirs}, this is {zest_version()}: "
                        "re-export the artifacts with this version")
    for name in ARTIFACT_FILES:
        if not (artifacts_dir / name).exists():
            raise ZestError(f"{artifacts_dir} is incomplete: {name} is missing")
    return manifest
