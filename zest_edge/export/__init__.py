"""Shipping a fine-tuning job to a device: ONNX Runtime Training artifacts and TensorRT engines."""
from .onnx_training import export_artifacts, read_manifest

__all__ = ["export_artifacts", "read_manifest"]
