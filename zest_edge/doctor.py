"""What is installed and which code paths are live: the answer to "why is this slow / missing?"."""
import platform


def report() -> dict:
    import torch
    from . import fused
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda available": torch.cuda.is_available(), "cpu threads": torch.get_num_threads()}
    ext = fused.backend_info()
    info["fused update"] = ext["backend"] + ("" if ext.get("extension_built") else f" (extension not built: {ext.get('reason')})")
    info["fused cuda kernels"] = ext.get("cuda_kernels")
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
        import onnxruntime.training  # noqa: F401
        info["ort training"] = "available"
    except ImportError as e:
        info["ort training"] = f"missing ({e})"
    try:
        import onnx
        info["onnx"] = f"{onnx.__version__} (IR {onnx.IR_VERSION})"
    except ImportError:
        info["onnx"] = "missing"
    try:
        import tensorrt
        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = "not installed (engine builds unavailable)"
    return info
