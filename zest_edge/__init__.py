"""zest-edge: zero-shot sparse fine-tuning for edge devices.

The Python API, one call per step (each imported on first use, so `import zest_edge` stays light):

    import zest_edge as ze
    task = ze.load_task("mobilenet_v2", "fashion_mnist", limit=2000)       # model + data + preprocessing
    ranking = ze.rank_task(task, top_k=5)                                 # metrics from one minibatch -> predictor
    chosen = ze.select_layers(task, "ranking", ranking=ranking)           # or "rank", "random", "layers", "full"...
    sm = ze.sparsify(task.model, chosen.layers)                           # only those (+ head) train
    record = ze.finetune(task, chosen.layers, ze.Schedule(epochs=3), "run/")
    ze.export_artifacts(task.model, chosen.layers, "artifacts/", preprocess=task.preprocess)
    ze.device_train("artifacts/", train_dataset, val_dataset, epochs=2, batch_size=32, out_dir="device_run/")
"""
import importlib
import logging

# onnxruntime.training imports torch.utils.cpp_extension, which warns on every CPU-only machine that it found no
# CUDA runtime; `zest-edge doctor` reports CUDA availability instead.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

_API = {
    "load_task": "task", "Task": "task",
    "rank_task": "ranking",
    "select_layers": "selection", "Selection": "selection",
    "sparsify": "sparse",
    "finetune": "training", "Schedule": "training",
    "export_artifacts": "export",
    "device_train": "device",
    "ZestError": "errors",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'zest_edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
