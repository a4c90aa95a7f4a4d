"""What a device run records, the same for every runtime (ONNX Runtime in device.py, ExecuTorch in
executorch_runner.py): its file names, the resume check, and metrics.json."""
import numpy as np

from .errors import ZestError

PROGRESS = "progress.json"
METRICS = "metrics.json"
CHECKPOINT_PREFIX = "checkpoint.epoch"
RESUME_KEYS = ("model", "training_model_sha256", "batch_size", "seed", "lr")


def check_resume(out, prior: dict, settings: dict) -> None:
    """Refuse to resume a run made with other artifacts or settings, naming the first difference."""
    changed = [k for k in RESUME_KEYS if prior.get(k) != settings[k]]
    if changed:
        k = changed[0]
        if k == "training_model_sha256":
            raise ZestError(f"cannot resume {out}: it was run from other artifacts (a different export)")
        raise ZestError(f"cannot resume {out}: it was run with {k}={prior.get(k)!r}, now {settings[k]!r}")


def run_metrics(manifest: dict, settings: dict, records: list[dict], *, resumed_from: int | None, inference: str,
                inference_acc: float, prefix: str, runtime: str, **extra) -> dict:
    """The metrics.json record of a finished device run."""
    steps = [r["mean_step_ms"] for r in records]
    return {
        "format": "zest-edge/device-run", "version": 1,
        "model": manifest["model"], "artifacts": settings["artifacts"], "selection": manifest.get("selection"),
        "selected_layers": [layer["name"] for layer in manifest.get("selected_layers", [])],
        "trainable_params": manifest["trainable_params"],
        "optimizer": {**manifest["optimizer"], "lr": settings["lr"]}, "batch_size": settings["batch_size"],
        "seed": settings["seed"], "epochs": records,
        "train_loss": [r["train_loss"] for r in records],
        "val_accuracy": [r["val_accuracy"] for r in records],
        "epoch_seconds": [r["epoch_seconds"] for r in records],
        "mean_step_ms": float(np.mean(steps)) if steps else None,
        "final_val_accuracy": records[-1]["val_accuracy"] if records else None,
        "inference_model": inference, **extra, "inference_val_accuracy": inference_acc,
        "resumed_from_epoch": resumed_from, "prefix": prefix, "runtime": runtime,
    }


def epoch_record(epoch: int, *, loss_sum: float, correct: int, seen: int, val: tuple[float, float], seconds: float,
                 step_times: list[float], prefix: str) -> dict:
    """One finished epoch as progress.json and metrics.json list it."""
    return {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "val_loss": val[0], "val_accuracy": val[1], "epoch_seconds": round(seconds, 3),
            "mean_step_ms": round(1000 * float(np.mean(step_times)), 3), "steps": len(step_times), "prefix": prefix}


def train_epoch(inputs, order, batch_size: int, *, epoch: int, epochs: int, rng, forward, update,
                progress_bar: bool) -> dict:
    """One epoch over `inputs` (a prefix_cache.TrainingInputs) in `order`: `forward(x, y) -> (loss, logits)` then,
    if the loss is finite, `update()`; a non-finite loss stops with one line. Returns the sums epoch_record takes."""
    import time

    from tqdm import tqdm
    t0 = time.perf_counter()
    loss_sum = correct = seen = 0
    step_times = []
    cached = inputs.store is not None and inputs.store.complete()
    bar = tqdm(total=-(-len(order) // batch_size), desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
               disable=None if progress_bar else True)   # None: off when stderr is not a terminal
    try:
        for x, y in inputs.batches(order, batch_size, rng=rng):
            s0 = time.perf_counter()
            loss, logits = forward(x, y)
            loss = float(loss)
            if not np.isfinite(loss):
                raise ZestError(f"training diverged: the loss became {loss} in epoch {epoch}, step "
                                f"{len(step_times) + 1} (lower --lr)")
            update()
            step_times.append(time.perf_counter() - s0)
            loss_sum += loss * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    finally:
        bar.close()
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "step_times": step_times,
            "seconds": time.perf_counter() - t0, "cached": cached}
