"""What the measurements ran on: CPU model, cores, threads, library versions, GPU and ORT providers."""
import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ort_cuda_unavailable() -> str | None:
    """Why ORT cannot train on CUDA here; None when its CUDA provider is built in."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime is not importable ({e})"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" in providers:
        return None
    return (f"onnxruntime {ort.__version__} here is a CPU build (providers: {', '.join(providers)}); "
            "install the onnxruntime-training CUDA build")


def machine_info(device: str) -> dict:
    import torch
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": device}
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
        info["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    if device == "cuda":
        try:
            info["gpu"] = torch.cuda.get_device_name(0)
        except Exception as e:  # no driver / no device: say so rather than fail the report
            info["gpu"] = f"unknown ({type(e).__name__})"
        info["cuda"] = torch.version.cuda
    from ..fused import backend_info
    info["fused_backend"] = backend_info(device)["backend"]
    return info
