"""A TensorRT engine built from an inference ONNX file (written against TensorRT's public Python API; TensorRT cannot
be installed on this project's machines, so this path says so in one line wherever it is asked for).

`build_engine(onnx_path, engine_path, fp16=..., workspace_gb=...)`: a Builder, a network filled by the ONNX parser
(explicit batch), one optimization profile spanning batch 1..max_batch for the dynamic batch axis, the FP16 flag on
request, `build_serialized_network`, and an atomic write of the plan.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ZestError
from ..io import atomic_write_bytes

TRT_MISSING = "TensorRT is not installed (pip install zest-edge[tensorrt] on a machine with an NVIDIA GPU)"


def import_tensorrt():
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
    trt = import_tensorrt()
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
