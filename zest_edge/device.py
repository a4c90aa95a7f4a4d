"""The on-device runner: fine-tune from exported artifacts with ONNX Runtime Training only (no torch autograd).

`device_train(artifacts, train, val, epochs=..., batch_size=..., out_dir=...)` drives `onnxruntime.training.api`
(CheckpointState, Module, Optimizer) with numpy batches. After every epoch it saves the full training state
(parameters + optimizer moments) as `checkpoint.epoch<N>` (written to a temporary name, fsynced, renamed) and then
commits `progress.json` (epoch, checkpoint name and sha256, per-epoch metrics, seed): a kill at any point leaves the
last finished epoch resumable with `resume=True`. Each epoch's shuffle is `default_rng([seed, epoch])` and ORT's
Dropout is seeded per epoch, so an interrupted-and-resumed run ends with the same weights as an uninterrupted one.
At the end: `model_inference.onnx` (`Module.export_model_for_inferencing`) and `metrics.json`
(`format: zest-edge/device-run`).
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from .errors import ZestError
from .io import read_json, write_json

PROGRESS = "progress.json"
METRICS = "metrics.json"
INFERENCE = "model_inference.onnx"
CHECKPOINT_PREFIX = "checkpoint.epoch"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _session_options():
    import onnxruntime as ort
    ort.set_default_logger_severity(3)    # ORT warns about initializers it prunes; nothing a user can act on
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


def _ort_message(e: BaseException) -> str:
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return line.split("] : ", 1)[-1] if "] : " in line else line


def load_checkpoint(path: Path, expected_sha: str | None = None):
    """A CheckpointState; a missing, altered or unreadable file is a one-line error saying the checkpoint is corrupt."""
    from onnxruntime.training.api import CheckpointState
    if not path.is_file():
        raise ZestError(f"checkpoint {path} is missing")
    if expected_sha is not None and sha256(path) != expected_sha:
        raise ZestError(f"checkpoint {path} is corrupt (its sha256 does not match the one recorded with it)")
    try:
        return CheckpointState.load_checkpoint(str(path))
    except Exception as e:
        raise ZestError(f"checkpoint {path} is corrupt ({_ort_message(e)})") from None


def batches_of(dataset, order: np.ndarray, batch_size: int, dtype):
    """(x, y) numpy batches in `order`; dataset items are (tensor or array, int label)."""
    for start in range(0, len(order), batch_size):
        items = [dataset[int(i)] for i in order[start:start + batch_size]]
        x = np.stack([np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x, _ in items]).astype(dtype, copy=False)
        y = np.fromiter((int(label) for _, label in items), dtype=np.int64, count=len(items))
        yield x, y


def check_dataset(manifest: dict, dataset, which: str) -> None:
    n = manifest["num_classes"]
    if getattr(dataset, "num_classes", n) != n:
        raise ZestError(f"the {which} data has {dataset.num_classes} classes but the artifacts were exported for {n}")
    if len(dataset) == 0:
        raise ZestError(f"the {which} data is empty")
    x, _ = dataset[0]
    shape = list(np.asarray(x.numpy() if hasattr(x, "numpy") else x).shape)
    want = list(manifest["input"]["shape"][1:])
    if shape != want:
        raise ZestError(f"{which} examples have shape {shape} but the artifacts expect {want} "
                        "(build the data with the manifest's preprocessing)")


def _dtype(manifest: dict):
    return np.int64 if manifest["input"]["dtype"] == "int64" else np.float32


def evaluate_onnx(path, dataset, batch_size: int = 64) -> float:
    """Top-1 accuracy of an inference ONNX model on `dataset` with a plain onnxruntime.InferenceSession."""
    import onnxruntime as ort
    path = Path(path)
    if not path.is_file():
        raise ZestError(f"ONNX model not found: {path}")
    try:
        sess = ort.InferenceSession(str(path), _session_options(), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ZestError(f"cannot load {path}: {_ort_message(e)}") from None
    inp = sess.get_inputs()[0]
    dtype = np.int64 if "int64" in inp.type else np.float32
    correct = 0
    for x, y in batches_of(dataset, np.arange(len(dataset)), batch_size, dtype):
        logits = sess.run(None, {inp.name: x})[0]
        correct += int((logits.argmax(-1) == y).sum())
    return correct / len(dataset)


def _owned(path: Path) -> bool:
    name = path.name
    return (name in (PROGRESS, METRICS, INFERENCE) or name.startswith(CHECKPOINT_PREFIX)
            or (name.startswith(".") and name.endswith(".tmp")))


def check_out(out: Path, resume: bool, force: bool) -> dict | None:
    """Check the output folder (no side effects); returns the progress record to resume from, or None."""
    if out.exists() and not out.is_dir():
        raise ZestError(f"output {out} exists and is not a folder")
    entries = list(out.iterdir()) if out.exists() else []
    if resume and (out / PROGRESS).exists():
        return read_json(out / PROGRESS, "device-progress")
    if entries and not force:
        if resume:
            raise ZestError(f"output {out} holds no {PROGRESS} to resume from and is not empty (use --force to "
                            "start over there)")
        raise ZestError(f"output {out} exists and is not empty (use --resume to continue that run, or --force to "
                        "start over)")
    return None


def start_out(out: Path) -> None:
    """A fresh run: remove what an earlier device run wrote there (--force), nothing else; create the folder."""
    if out.exists():
        for entry in out.iterdir():
            if entry.is_file() and _owned(entry):
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _save_epoch(out: Path, state, epoch: int, progress: dict) -> None:
    """Checkpoint to a temporary name, fsync, rename; then commit progress.json; then drop older checkpoints."""
    from onnxruntime.training.api import CheckpointState
    name = f"{CHECKPOINT_PREFIX}{epoch}"
    tmp = out / f".{name}.tmp"
    CheckpointState.save_checkpoint(state, str(tmp), include_optimizer_state=True)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / name)
    progress.update(epoch=epoch, checkpoint=name, sha256=sha256(out / name))
    write_json(out / PROGRESS, progress)           # the commit point
    for old in out.glob(f"{CHECKPOINT_PREFIX}*"):
        if old.name != name:
            old.unlink(missing_ok=True)


def device_train(artifacts_dir, dataset_train, dataset_val, *, epochs: int, batch_size: int, out_dir,
                 resume: bool = False, force: bool = False, seed: int = 0, lr: float | None = None,
                 progress_bar: bool = True, on_epoch=None) -> dict:
    """Train from ORT Training artifacts for `epochs` epochs; returns the metrics record (also metrics.json)."""
    import onnxruntime as ort
    from onnxruntime.training.api import Module, Optimizer
    from tqdm import tqdm

    from .export.onnx_training import OUTPUT_NAME, read_manifest
    art = Path(artifacts_dir)
    out = Path(out_dir)
    manifest = read_manifest(art)
    if epochs < 1:
        raise ZestError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ZestError(f"batch size must be at least 1, got {batch_size}")
    check_dataset(manifest, dataset_train, "training")
    check_dataset(manifest, dataset_val, "validation")
    lr = float(manifest["optimizer"]["lr"] if lr is None else lr)
    if not lr > 0:
        raise ZestError(f"learning rate must be positive, got {lr}")
    if out.resolve() == art.resolve():
        raise ZestError("the output folder must not be the artifacts folder")
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx"):
        want = (manifest.get("sha256") or {}).get(name)
        if want and sha256(art / name) != want:
            raise ZestError(f"{art / name} is corrupt (its sha256 does not match the manifest)")

    prior = check_out(out, resume, force)
    settings = {"artifacts": str(art.resolve()), "model": manifest["model"],
                "training_model_sha256": (manifest.get("sha256") or {}).get("training_model.onnx"),
                "batch_size": batch_size, "seed": seed, "lr": lr}
    if prior is not None:
        changed = [k for k in ("model", "training_model_sha256", "batch_size", "seed", "lr")
                   if prior.get(k) != settings[k]]
        if changed:
            k = changed[0]
            if k == "training_model_sha256":
                raise ZestError(f"cannot resume {out}: it was run from other artifacts (a different export)")
            raise ZestError(f"cannot resume {out}: it was run with {k}={prior.get(k)!r}, now {settings[k]!r}")
        state = load_checkpoint(out / prior["checkpoint"], prior.get("sha256"))
        start_epoch, records = int(prior["epoch"]), list(prior.get("epochs", []))
    else:
        state = load_checkpoint(art / "checkpoint", (manifest.get("sha256") or {}).get("checkpoint"))
        start_epoch, records = 0, []
    try:
        module = Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"),
                        session_options=_session_options())
        optimizer = Optimizer(str(art / "optimizer_model.onnx"), module)
    except Exception as e:
        raise ZestError(f"checkpoint does not fit the training model in {art}: {_ort_message(e)}") from None
    optimizer.set_learning_rate(lr)
    if prior is None:
        start_out(out)                           # only now: a refused run leaves no folder behind
    progress = {"format": "zest-edge/device-progress", **settings, "epochs": records,
                "shuffle": "numpy default_rng([seed, epoch]).permutation; ort.set_seed(seed * 100003 + epoch)"}
    dtype = _dtype(manifest)
    n_train = len(dataset_train)
    steps_per_epoch = -(-n_train // batch_size)

    for epoch in range(start_epoch + 1, epochs + 1):
        order = np.random.default_rng([seed, epoch]).permutation(n_train)
        ort.set_seed(seed * 100003 + epoch)
        module.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0
        step_times = []
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                   disable=None if progress_bar else True)   # None: off when stderr is not a terminal
        try:
            for x, y in batches_of(dataset_train, order, batch_size, dtype):
                s0 = time.perf_counter()
                loss, logits = module(x, y)
                optimizer.step()
                module.lazy_reset_grad()
                step_times.append(time.perf_counter() - s0)
                loss_sum += float(loss) * len(y)
                correct += int((logits.argmax(-1) == y).sum())
                seen += len(y)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        finally:
            bar.close()
        train_seconds = time.perf_counter() - t0
        val_loss, val_acc = _evaluate(module, dataset_val, batch_size, dtype)
        record = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "val_loss": val_loss, "val_accuracy": val_acc, "epoch_seconds": round(train_seconds, 3),
                  "mean_step_ms": round(1000 * float(np.mean(step_times)), 3), "steps": len(step_times)}
        records.append(record)
        progress["epochs"] = records
        _save_epoch(out, state, epoch, progress)
        if on_epoch is not None:
            on_epoch(record)

    tmp = out / f".{INFERENCE}.tmp"
    module.export_model_for_inferencing(str(tmp), [OUTPUT_NAME])
    os.replace(tmp, out / INFERENCE)
    inference_acc = evaluate_onnx(out / INFERENCE, dataset_val, batch_size)
    steps = [r["mean_step_ms"] for r in records]
    metrics = {
        "format": "zest-edge/device-run", "version": 1,
        "model": manifest["model"], "artifacts": str(art.resolve()), "selection": manifest.get("selection"),
        "selected_layers": [layer["name"] for layer in manifest.get("selected_layers", [])],
        "trainable_params": manifest["trainable_params"],
        "optimizer": {**manifest["optimizer"], "lr": lr}, "batch_size": batch_size, "seed": seed,
        "epochs": records,
        "train_loss": [r["train_loss"] for r in records],
        "val_accuracy": [r["val_accuracy"] for r in records],
        "epoch_seconds": [r["epoch_seconds"] for r in records],
        "mean_step_ms": float(np.mean(steps)) if steps else None,
        "final_val_accuracy": records[-1]["val_accuracy"] if records else None,
        "inference_model": INFERENCE, "inference_val_accuracy": inference_acc,
        "resumed_from_epoch": start_epoch if prior is not None else None,
        "runtime": "onnxruntime.training.api " + ort.__version__,
    }
    write_json(out / METRICS, metrics)
    return metrics


def _evaluate(module, dataset, batch_size: int, dtype) -> tuple[float, float]:
    module.eval()
    loss_sum = correct = 0.0
    for x, y in batches_of(dataset, np.arange(len(dataset)), batch_size, dtype):
        loss, logits = module(x, y)
        loss_sum += float(loss) * len(y)
        correct += int((logits.argmax(-1) == y).sum())
    return loss_sum / len(dataset), correct / len(dataset)
