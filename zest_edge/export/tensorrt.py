"""Inference exports: a strict check of an inference ONNX file, and a TensorRT engine built from one.

`check_inference_onnx(path, model=None, example=None)` runs `onnx.checker` (full check) and strict shape inference
with data propagation, requires every tensor shape to be known (the dynamic batch axis may stay symbolic), and with
a PyTorch model compares its eval-mode outputs with onnxruntime's on `example`.

`build_engine(onnx_path, engine_path, fp16=..., workspace_gb=...)` uses TensorRT's public Python API: a Builder, a
network filled by the ONNX parser (explicit batch), one optimization profile spanning batch 1..max_batch for the
dynamic batch axis, the FP16 flag on request, `build_serialized_network`, and an atomic write of the plan.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ZestError
from ..io import atomic_write_bytes

TRT_MISSING = "TensorRT is not installed (pip install zest-edge[tensorrt] on a machine with an NVIDIA GPU)"


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
        raise ZestError(f"{path} is not a valid ONNX model: {str(e).strip().splitlines()[0]}") from None
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
        example = dummy_input(model, batch_size=2)
        if example.dtype != torch.long:
            example = torch.randn(example.shape, generator=torch.Generator().manual_seed(0))
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


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise ZestError(TRT_MISSING) from None
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        raise ZestError(f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible: engines are built on "
                        "the GPU they will run on")
    return trt


def build_engine(onnx_path, engine_path, *, fp16: bool = False, workspace_gb: float = 2.0, max_batch: int = 32,
                 opt_batch: int | None = None) -> dict:
    """Build a serialized TensorRT engine (plan) from an inference ONNX file; returns a small report."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ZestError(f"ONNX file not found: {onnx_path}")
    if workspace_gb <= 0 or max_batch < 1:
        raise ZestError("workspace must be positive and max batch at least 1")
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)   # the only mode from TensorRT 10 on
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ZestError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ZestError(f"TensorRT {trt.__version__} has no FP16 builder flag (use a strongly typed FP16 model)")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise ZestError(f"input {tensor.name} has dynamic dimensions other than the batch: {shape}")
        if shape and shape[0] < 0:
            dynamic = True
            rest = shape[1:]
            opt = opt_batch or max_batch
            profile.set_shape(tensor.name, (1, *rest), (opt, *rest), (max_batch, *rest))
    if dynamic:
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ZestError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    data = bytes(plan)
    atomic_write_bytes(engine_path, data)
    return {"engine": str(engine_path), "bytes": len(data), "fp16": fp16, "tensorrt": trt.__version__,
            "max_batch": max_batch, "inputs": [network.get_input(i).name for i in range(network.num_inputs)]}
