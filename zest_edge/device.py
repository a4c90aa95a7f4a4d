"""The on-device runner: fine-tune from exported artifacts with ONNX Runtime Training only (no torch autograd).

`device_train(artifacts, train, val, epochs=..., batch_size=..., out_dir=...)` drives `onnxruntime.training.api`
(CheckpointState, Module, Optimizer) with numpy batches. When the export has a frozen prefix (`prefix.onnx`), each
example goes through it once and its output is cached for the later epochs (`zest_edge.prefix_cache`: in memory up
to `cache_mb`, memory-mapped files beyond), so epoch 1 pays for the prefix and the others do not. After every
epoch it saves the full training state
(parameters + optimizer moments) as `checkpoint.epoch<N>` (written to a temporary name, fsynced, renamed) and then
commits `progress.json` (epoch, checkpoint name and sha256, per-epoch metrics, seed): a kill at any point leaves the
last finished epoch resumable with `resume=True`. Each epoch's shuffle is `default_rng([seed, epoch])` and ORT's
Dropout is seeded per epoch, so an interrupted-and-resumed run ends with the same weights as an uninterrupted one.
At the end: `model_inference.onnx`, the whole trained model (prefix.onnx joined to the trained suffix exported by
`Module.export_model_for_inferencing`), and `metrics.json` (`format: zest-edge/device-run`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .errors import ZestError, first_line
from .device_run import CHECKPOINT_PREFIX, METRICS, PROGRESS, check_resume, epoch_record, run_metrics, train_epoch
from .export.manifest import OUTPUT_NAME, read_manifest
from .io import atomic_write_bytes, output_dir, sha256, write_json, writing
from .prefix_cache import TrainingInputs, default_cache_mb
from .schema import read_record

INFERENCE = "model_inference.onnx"


def _session_options():
    import onnxruntime as ort
    ort.set_default_logger_severity(3)    # ORT warns about initializers it prunes; nothing a user can act on
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


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
        raise ZestError(f"checkpoint {path} is corrupt ({first_line(e)})") from None


def device_datasets(manifest: dict, data_spec: str, *, limit: int | None = None, seed: int = 0,
                    data_root: str | None = None):
    """(train, val) of `data_spec` built with the manifest's preprocessing, checked against its classes."""
    from .data import Preprocess, build_dataset, default_val_limit
    pre = manifest["preprocess"]
    preprocess = (Preprocess(kind="text", tokenizer_dir=pre["tokenizer_dir"], max_length=pre["max_length"])
                  if pre["kind"] == "text" else
                  Preprocess(resolution=pre["resolution"], mean=tuple(pre["mean"]), std=tuple(pre["std"])))
    train = build_dataset(data_spec, "train", preprocess=preprocess, limit=limit, seed=seed, data_root=data_root)
    if train.num_classes != manifest["num_classes"]:
        raise ZestError(f"{data_spec} has {train.num_classes} classes but the artifacts were exported for "
                        f"{manifest['num_classes']}")
    val = build_dataset(data_spec, "val", preprocess=preprocess, limit=default_val_limit(limit, train.num_classes),
                        seed=seed, data_root=data_root)
    return train, val


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


def evaluate_onnx(path, dataset, batch_size: int = 64) -> float:
    """Top-1 accuracy of an inference ONNX model on `dataset` with a plain onnxruntime.InferenceSession."""
    import onnxruntime as ort
    path = Path(path)
    if not path.is_file():
        raise ZestError(f"ONNX model not found: {path}")
    try:
        sess = ort.InferenceSession(str(path), _session_options(), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ZestError(f"cannot load {path}: {first_line(e)}") from None
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


@dataclass
class DeviceProgress:
    """progress.json of a device run as read back (its types checked by zest_edge.schema)."""
    KIND: ClassVar[str] = "device-progress"
    epoch: int
    checkpoint: str
    sha256: str
    model: str
    batch_size: int
    seed: int
    lr: float
    epochs: list[dict]
    training_model_sha256: str | None = None


def check_out(out: Path, resume: bool, force: bool) -> dict | None:
    """Check the output folder (no side effects); returns the progress record to resume from, or None."""
    if out.exists() and not out.is_dir():
        raise ZestError(f"output {out} exists and is not a folder")
    entries = list(out.iterdir()) if out.exists() else []
    if resume and (out / PROGRESS).exists():
        return read_record(out / PROGRESS, DeviceProgress)[0]
    if entries and not force:
        if resume:
            raise ZestError(f"output {out} holds no {PROGRESS} to resume from and is not empty (use --force to "
                            "start over there)")
        raise ZestError(f"output {out} exists and is not empty (use --resume to continue that run, or --force to "
                        "start over)")
    return None


def _save_epoch(out: Path, state, epoch: int, progress: dict) -> None:
    """Checkpoint to a temporary name, fsync, rename; then commit progress.json; then drop older checkpoints."""
    from onnxruntime.training.api import CheckpointState
    name = f"{CHECKPOINT_PREFIX}{epoch}"
    tmp = out / f".{name}.tmp"
    with writing(out / name, tmp, native=True):
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
                 cache: bool = True, cache_mb: int | None = None, augment: bool = False,
                 progress_bar: bool = True, on_epoch=None, echo=print) -> dict:
    """Train from exported artifacts for `epochs` epochs; returns the metrics record (also metrics.json). ORT
    Training artifacts run here; an ExecuTorch export (manifest backend "executorch") runs in
    `zest_edge.executorch_runner` under the same checks, resume rules and metrics.

    `cache`: keep the frozen prefix's outputs after their first computation (`cache_mb`, default a quarter of RAM
    up to 4 GiB, in memory; beyond it memory-mapped files under out_dir/.prefix-cache). `augment`: random
    horizontal flips of the training images, which turns the cache off (a flipped image has other prefix outputs)."""
    import onnxruntime as ort
    from onnxruntime.training.api import Module, Optimizer

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
    if not (lr > 0 and np.isfinite(lr)):
        raise ZestError(f"learning rate must be a positive number, got {lr}")
    cache_mb = default_cache_mb() if cache_mb is None else cache_mb
    if cache_mb < 0:
        raise ZestError(f"--cache-mb must be 0 or more, got {cache_mb}")
    if out.resolve() == art.resolve():
        raise ZestError("the output folder must not be the artifacts folder")
    if manifest.get("backend") == "executorch":
        from .executorch_runner import train_executorch
        return train_executorch(art, manifest, dataset_train, dataset_val, out, prior=check_out(out, resume, force),
                                owned=_owned, epochs=epochs, batch_size=batch_size, seed=seed, lr=lr, cache=cache,
                                cache_mb=cache_mb, augment=augment, progress_bar=progress_bar, on_epoch=on_epoch,
                                echo=echo)
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "prefix.onnx"):
        want = (manifest.get("sha256") or {}).get(name)
        if want and sha256(art / name) != want:
            raise ZestError(f"{art / name} is corrupt (its sha256 does not match the manifest)")

    prior = check_out(out, resume, force)
    settings = {"artifacts": str(art.resolve()), "model": manifest["model"],
                "training_model_sha256": (manifest.get("sha256") or {}).get("training_model.onnx"),
                "batch_size": batch_size, "seed": seed, "lr": lr}
    if prior is not None:
        check_resume(out, prior, settings)
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
        raise ZestError(f"checkpoint does not fit the training model in {art}: {first_line(e)}") from None
    optimizer.set_learning_rate(lr)
    # only now is the folder made: a refused run leaves none behind. --force over an earlier run builds the new one
    # beside it (with the files that are not a device run's) and swaps it in when it has finished.
    replace = prior is None and out.is_dir() and any(out.iterdir())
    with output_dir(out, replace=replace, keep=lambda entry: not _owned(entry),
                    resumable=lambda d: (d / PROGRESS).exists()) as target:
        progress = {"format": "zest-edge/device-progress", **settings, "epochs": records,
                    "shuffle": "numpy default_rng([seed, epoch]).permutation; ort.set_seed(seed * 100003 + epoch)"}
        budget = [cache_mb]
        inputs = {which: TrainingInputs(art, manifest, data, which=which, cache_dir=target / ".prefix-cache",
                                        budget=budget, cache=cache, session_options=_session_options(),
                                        augment=augment and which == "train")
                  for which, data in (("train", dataset_train), ("val", dataset_val))}
        if augment and manifest.get("prefix"):
            echo("note: augmentation is on, so the prefix runs for every example in every epoch (no cache)")
        n_train = len(dataset_train)

        for epoch in range(start_epoch + 1, epochs + 1):
            order = np.random.default_rng([seed, epoch]).permutation(n_train)
            ort.set_seed(seed * 100003 + epoch)
            module.train()
            done = train_epoch(inputs["train"], order, batch_size, epoch=epoch, epochs=epochs,
                               rng=np.random.default_rng([seed, epoch, 1]), forward=lambda x, y: module(*x, y),
                               update=lambda: (optimizer.step(), module.lazy_reset_grad()), progress_bar=progress_bar)
            cached = done.pop("cached")
            record = epoch_record(epoch, **done, val=_evaluate(module, inputs["val"], batch_size),
                                  prefix="none" if not manifest.get("prefix") else "cached" if cached else "computed")
            records.append(record)
            progress["epochs"] = records
            _save_epoch(target, state, epoch, progress)
            if on_epoch is not None:
                on_epoch(record)

        export_inference(module, art, manifest, target / INFERENCE)
        inference_acc = evaluate_onnx(target / INFERENCE, dataset_val, batch_size)
        metrics = run_metrics(manifest, settings, records, resumed_from=start_epoch if prior is not None else None,
                              inference=INFERENCE, inference_acc=inference_acc, prefix=inputs["train"].describe(),
                              runtime="onnxruntime.training.api " + ort.__version__)
        write_json(target / METRICS, metrics)
        return metrics


def _evaluate(module, inputs: TrainingInputs, batch_size: int) -> tuple[float, float]:
    module.eval()
    loss_sum = correct = 0.0
    for x, y in inputs.batches(np.arange(len(inputs.labels)), batch_size):
        loss, logits = module(*x, y)
        loss_sum += float(loss) * len(y)
        correct += int((logits.argmax(-1) == y).sum())
    return loss_sum / len(inputs.labels), correct / len(inputs.labels)


def export_inference(module, art: Path, manifest: dict, path: Path) -> None:
    """The whole trained model as one inference ONNX: the trained suffix, joined after prefix.onnx if there is one."""
    import onnx
    from onnx import compose
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path, tmp, native=True):
        module.export_model_for_inferencing(str(tmp), [OUTPUT_NAME])
    with writing(path, tmp):
        if not manifest.get("prefix"):
            os.replace(tmp, path)
            return
        suffix, prefix = onnx.load(str(tmp)), onnx.load(str(art / manifest["prefix"]["file"]))
        prefix.ir_version = suffix.ir_version = max(prefix.ir_version, suffix.ir_version)
        names = [b["name"] for b in manifest["prefix"]["boundary"]]
        whole = compose.merge_models(compose.add_prefix(prefix, "prefix/", rename_inputs=False),
                                     compose.add_prefix(suffix, "suffix/"),
                                     io_map=[(f"prefix/{n}", f"suffix/{n}") for n in names])
        for node in whole.graph.node:               # the output keeps its plain name (add_prefix renames edges)
            node.output[:] = [OUTPUT_NAME if o == f"suffix/{OUTPUT_NAME}" else o for o in node.output]
        whole.graph.output[0].name = OUTPUT_NAME
        atomic_write_bytes(path, whole.SerializeToString())
        tmp.unlink()
