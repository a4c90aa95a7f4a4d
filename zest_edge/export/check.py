"""A strict check of an inference ONNX file: `onnx.checker` (full), strict shape inference with data propagation,
every tensor shape known (the dynamic batch axis may stay symbolic), and, given a PyTorch model, the same outputs
as it in onnxruntime."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ZestError, first_line


def _shape_known(vi, batch: set[str]) -> bool:
    """Every dim a number, or an expression of the batch symbol only (e.g. `batch`, `12*batch`)."""
    t = vi.type
    if not t.HasField("tensor_type"):
        return True                      # sequences/maps: not shape-checked
    if not t.tensor_type.HasField("shape"):
        return False
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            continue
        if d.HasField("dim_param") and set(re.findall(r"[A-Za-z_]\w*", d.dim_param)) <= batch and batch:
            continue
        return False
    return True


def infer_all_shapes(proto):
    """ONNX's strict shape inference with data propagation, then ORT's symbolic shape inference for what it cannot
    follow (Shape→Gather→Slice chains on static axes); the latter's failure leaves ONNX's result."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        return SymbolicShapeInference.infer_shapes(proto, auto_merge=False, guess_output_rank=False) or inferred
    except Exception:
        return inferred


def check_inference_onnx(path, model=None, example=None, *, rtol: float = 1e-3, atol: float = 1e-4) -> dict:
    """Check an inference model: valid, every shape known (the batch axis may be symbolic), and, given a PyTorch
    model, the same outputs as it on `example` (default: its dummy input of batch 2). Raises ZestError otherwise."""
    import onnx
    path = Path(path)
    if not path.is_file():
        raise ZestError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        inferred = infer_all_shapes(proto)
    except Exception as e:  # onnx raises ValidationError, InferenceError, DecodeError...
        raise ZestError(f"{path} is not a valid ONNX model: {first_line(e)}") from None
    g = inferred.graph
    batch = {d.dim_param for vi in g.input for d in vi.type.tensor_type.shape.dim[:1] if d.HasField("dim_param")}
    unknown = [vi.name for vi in list(g.value_info) + list(g.output) if not _shape_known(vi, batch)]
    produced = {o for n in g.node for o in n.output if o}
    described = {vi.name for vi in list(g.value_info) + list(g.output) + list(g.input)}
    unknown += sorted(produced - described - {i.name for i in g.initializer})
    if unknown:
        raise ZestError(f"{path}: {len(unknown)} tensor shapes cannot be inferred, e.g. {unknown[0]!r}")
    report = {"path": str(path), "nodes": len(g.node), "opset": max(o.version for o in proto.opset_import
                                                                    if o.domain in ("", "ai.onnx")),
              "shapes_known": True}
    if model is None:
        return report
    import copy

    import onnxruntime as ort
    import torch

    from ..layers import dummy_input
    if example is None:
        example = dummy_input(model, batch_size=2, seed=0)
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = net(example).numpy()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: example.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    agree = float((got.argmax(-1) == expected.argmax(-1)).mean())
    report.update(max_abs_diff=diff, argmax_agreement=agree)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=rtol, atol=atol):
        raise ZestError(f"{path}: onnxruntime and PyTorch disagree (max |diff| {diff:.3g}, "
                        f"tolerance {atol:g} + {rtol:g}·|y|)")
    return report
