"""Shipping a fine-tuning job to a device, by stage:

    manifest.py      the artifacts folder's contract (names, files, versions); imports no torch
    torch_export.py  PyTorch → ONNX (training graph of a sparsified copy, inference graph)
    graph.py         ONNX rewriting (frozen BatchNorm, constant folding, parameter → initializer map)
    artifacts.py     export_artifacts: ORT Training artifacts + inference.onnx + manifest.json, atomically
    check.py         strict check of an inference ONNX file against PyTorch
    tensorrt.py      a TensorRT engine from an inference ONNX file

Names resolve lazily, so `from zest_edge.export import read_manifest` loads the manifest module alone.
"""
from importlib import import_module

_LAZY = {"export_artifacts": ".artifacts", "read_manifest": ".manifest"}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
