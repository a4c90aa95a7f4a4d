"""The on-device runner for ExecuTorch exports: fine-tune with the ExecuTorch runtime (no torch autograd, no exporter).

`train_executorch(...)` is what `zest_edge.device.device_train` runs when the manifest says `"backend":
"executorch"`; its checks, shuffle, resume rules and metrics.json match the ONNX Runtime path:

- `prefix.pte` (if any) runs once per example and its outputs are cached (`zest_edge.prefix_cache`);
- `training.pte`'s `forward_backward` gives the loss, the logits and the gradients of the trained parameters;
- the SGD update (torch.optim.SGD semantics: weight decay, momentum, dampening 0) is applied in place to the
  program's parameter tensors. ExecuTorch 1.5.1's own SGD keeps its momentum inside the C++ optimizer, where it
  can be neither saved nor restored, so the momentum lives here, beside the parameters;
- after every epoch parameters and momentum go to `checkpoint.epoch<N>` (safetensors, written atomically) and then
  `progress.json` records its sha256: a kill leaves the last finished epoch resumable, and the programs are pure
  functions of parameters and batch (eval form, no Dropout), so a resumed run ends with the same weights;
- at the end `trained.safetensors` (the trained parameters by model name) and `model_inference.pte` (a copy of the
  export's inference program, which takes them as inputs), and metrics.json.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .device_run import CHECKPOINT_PREFIX, METRICS, PROGRESS, check_resume, epoch_record, run_metrics, train_epoch
from .errors import ZestError, first_line
from .io import atomic_write_bytes, output_dir, sha256, write_json
from .prefix_cache import TrainingInputs

PIN = "executorch==1.5.1"
TRAINED = "trained.safetensors"
INFERENCE = "model_inference.pte"


def runtime():
    """(executorch version, training loader, program loader); a failing import is one line naming the fix."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from executorch.version import __version__
            from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer
            from executorch.extension.training import _load_for_executorch_for_training_from_buffer
    except Exception as e:  # ImportError, or a native library that does not load
        raise ZestError(f"the ExecuTorch runtime does not load ({first_line(e)}): pip install {PIN}") from None
    return __version__, _load_for_executorch_for_training_from_buffer, _load_for_executorch_from_buffer


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ZestError(f"cannot read {path}: {e.strerror or e}") from None


class Loaded:
    """A loaded program together with its bytes: the runtime reads the buffer in place, so it must outlive the
    module (a freed buffer crashes the runtime)."""

    def __init__(self, module, buffer: bytes):
        self.module, self.buffer = module, buffer

    def __getattr__(self, name):
        attr = getattr(self.module, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except RuntimeError as e:       # the runtime's failures (a kernel check, a bad input) are RuntimeErrors
                raise ZestError(f"the ExecuTorch runtime failed in {name}: {first_line(e)}") from None
        return call


def load_training(path) -> Loaded:
    """A TrainingModule for a training .pte (forward_backward, named_gradients, named_parameters)."""
    _, load, _ = runtime()
    data = _read(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Loaded(load(data), data)
        except Exception as e:
            raise ZestError(f"cannot load {path}: {first_line(e)}") from None


def load_program(path) -> Loaded:
    """An ExecuTorch module for an inference .pte (`.forward(tuple of tensors) -> list of tensors`)."""
    _, _, load = runtime()
    data = _read(path)
    try:
        return Loaded(load(data), data)
    except Exception as e:
        raise ZestError(f"cannot load {path}: {first_line(e)}") from None


def padded(array: np.ndarray, batch: int):
    """`array` as a torch tensor of exactly `batch` rows (zero rows appended); the programs' batch axis is static."""
    import torch
    if len(array) > batch:
        raise ZestError(f"a batch of {len(array)} exceeds the {batch} the programs were exported for")
    if len(array) < batch:
        array = np.concatenate([array, np.zeros((batch - len(array), *array.shape[1:]), dtype=array.dtype)])
    return torch.from_numpy(np.ascontiguousarray(array))


def program_runner(path, batch: int):
    """A .pte inference program as a callable x (numpy) -> list of numpy outputs (a prefix_cache prefix runner)."""
    program = load_program(path)
    return lambda x: [t.numpy()[:len(x)] for t in program.forward((padded(x, batch),))]


class Trainer:
    """training.pte, its parameters (live tensors of the program) and the SGD momentum."""

    def __init__(self, path, manifest: dict):
        self.module = load_training(path)
        self.batch = manifest["programs"]["batch"]
        self.opt = manifest["optimizer"]
        self.names = manifest["programs"]["training"]["parameters"]
        self.momentum: dict = {}

    def forward_backward(self, inputs: list, y: np.ndarray):
        """(loss, logits) as numpy; the gradients stay in the module. A short batch is padded with rows of weight 0."""
        weights = (np.arange(self.batch) < len(y)).astype(np.float32)
        feed = tuple(padded(a, self.batch) for a in (*inputs, y, weights))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss, logits = self.module.forward_backward("forward", feed)[:2]
        return float(loss), logits.numpy()[:len(y)]

    def params(self) -> dict:
        """The program's parameter tensors by name (writing them changes the program's weights)."""
        return self.module.named_parameters()

    def step(self, lr: float) -> None:
        """One torch.optim.SGD step (dampening 0, no Nesterov) on the last forward_backward's gradients."""
        import torch
        grads = self.module.named_gradients()
        momentum, decay = float(self.opt["momentum"]), float(self.opt["weight_decay"])
        with torch.no_grad():
            for name, p in self.params().items():
                g = grads[name]
                if decay:
                    g = g.add(p, alpha=decay)
                if momentum:
                    buf = self.momentum.get(name)
                    if buf is None:
                        buf = self.momentum[name] = g.clone()
                    else:
                        buf.mul_(momentum).add_(g)
                    g = buf
                p.add_(g, alpha=-lr)

    def state(self) -> dict:
        return {**{f"param/{n}": p.clone() for n, p in self.params().items()},
                **{f"momentum/{n}": b.clone() for n, b in self.momentum.items()}}

    def load_state(self, tensors: dict) -> None:
        params = self.params()
        missing = [n for n in params if f"param/{n}" not in tensors]
        if missing:
            raise ZestError(f"checkpoint lacks the parameter {missing[0]} of the training program")
        for n, p in params.items():
            if tensors[f"param/{n}"].shape != p.shape:
                raise ZestError(f"checkpoint parameter {n} has shape {tuple(tensors[f'param/{n}'].shape)}, the "
                                f"program {tuple(p.shape)}")
            p.copy_(tensors[f"param/{n}"])
        self.momentum = {k[len("momentum/"):]: v.clone() for k, v in tensors.items() if k.startswith("momentum/")}


def read_checkpoint(path: Path, expected_sha: str | None) -> dict:
    """A safetensors checkpoint, its sha256 checked first; anything wrong is one line saying it is corrupt."""
    from safetensors.torch import load
    if not path.is_file():
        raise ZestError(f"checkpoint {path} is missing")
    if expected_sha is not None and sha256(path) != expected_sha:
        raise ZestError(f"checkpoint {path} is corrupt (its sha256 does not match the one recorded with it)")
    try:
        return load(path.read_bytes())
    except Exception as e:
        raise ZestError(f"checkpoint {path} is corrupt ({first_line(e)})") from None


def save_epoch(out: Path, trainer: Trainer, epoch: int, progress: dict) -> None:
    """Checkpoint (atomic), then progress.json (the commit point), then older checkpoints go."""
    from safetensors.torch import save
    name = f"{CHECKPOINT_PREFIX}{epoch}"
    atomic_write_bytes(out / name, save(trainer.state()))
    progress.update(epoch=epoch, checkpoint=name, sha256=sha256(out / name))
    write_json(out / PROGRESS, progress)
    for old in out.glob(f"{CHECKPOINT_PREFIX}*"):
        if old.name != name:
            old.unlink(missing_ok=True)


def train_executorch(art: Path, manifest: dict, dataset_train, dataset_val, out: Path, *, prior: dict | None, owned,
                     epochs: int, batch_size: int, seed: int, lr: float, cache: bool, cache_mb: int, augment: bool,
                     progress_bar: bool = True, on_epoch=None, echo=print) -> dict:
    """Train from an ExecuTorch export (the caller has checked data, epochs, lr and the output folder: `prior` is the
    progress to resume from or None, `owned(path)` says which files an earlier device run wrote)."""
    version = runtime()[0]
    if batch_size > manifest["programs"]["batch"]:
        raise ZestError(f"batch size {batch_size} exceeds the {manifest['programs']['batch']} the programs were "
                        f"exported for (re-export with --batch-size {batch_size})")
    for name, want in (manifest.get("sha256") or {}).items():
        if sha256(art / name) != want:
            raise ZestError(f"{art / name} is corrupt (its sha256 does not match the manifest)")
    settings = {"artifacts": str(art.resolve()), "model": manifest["model"], "backend": "executorch",
                "training_model_sha256": manifest["sha256"]["training.pte"], "batch_size": batch_size, "seed": seed,
                "lr": lr}
    if prior is not None:
        check_resume(out, prior, settings)
        saved = read_checkpoint(out / prior["checkpoint"], prior.get("sha256"))
        start_epoch, records = int(prior["epoch"]), list(prior.get("epochs", []))
    else:
        saved, start_epoch, records = None, 0, []
    trainer = Trainer(art / "training.pte", manifest)
    prefix = manifest.get("prefix")
    runner = program_runner(art / prefix["file"], manifest["programs"]["batch"]) if prefix else None
    replace = prior is None and out.is_dir() and any(out.iterdir())
    mine = lambda entry: owned(entry) or entry.name in (TRAINED, INFERENCE)  # noqa: E731
    with output_dir(out, replace=replace, keep=lambda entry: not mine(entry)) as target:
        progress = {"format": "zest-edge/device-progress", **settings, "epochs": records,
                    "shuffle": "numpy default_rng([seed, epoch]).permutation"}
        budget = [cache_mb]
        inputs = {which: TrainingInputs(art, manifest, data, which=which, cache_dir=target / ".prefix-cache",
                                        budget=budget, cache=cache, augment=augment and which == "train",
                                        prefix_runner=runner)
                  for which, data in (("train", dataset_train), ("val", dataset_val))}
        if augment and prefix:
            echo("note: augmentation is on, so the prefix runs for every example in every epoch (no cache)")
        # the program hands out its parameter tensors after its first run: run it once on one validation batch
        first, y0 = next(inputs["val"].batches(np.arange(min(batch_size, len(dataset_val))), batch_size))
        trainer.forward_backward(first, y0)
        if saved is not None:
            trainer.load_state(saved)
        n_train = len(dataset_train)
        for epoch in range(start_epoch + 1, epochs + 1):
            order = np.random.default_rng([seed, epoch]).permutation(n_train)
            done = train_epoch(inputs["train"], order, batch_size, epoch=epoch, epochs=epochs,
                               rng=np.random.default_rng([seed, epoch, 1]), forward=trainer.forward_backward,
                               update=lambda: trainer.step(lr), progress_bar=progress_bar)
            cached = done.pop("cached")
            record = epoch_record(epoch, **done, val=evaluate(trainer, inputs["val"], batch_size),
                                  prefix="none" if not prefix else "cached" if cached else "computed")
            records.append(record)
            progress["epochs"] = records
            save_epoch(target, trainer, epoch, progress)
            if on_epoch is not None:
                on_epoch(record)

        trained = save_trained(target, trainer, manifest)
        atomic_write_bytes(target / INFERENCE, _read(art / "inference.pte"))
        inference_acc = evaluate_inference(target / INFERENCE, trained, manifest, dataset_val, batch_size)
        metrics = run_metrics(manifest, settings, records, resumed_from=start_epoch if prior is not None else None,
                              inference=INFERENCE, inference_weights=TRAINED, inference_acc=inference_acc,
                              prefix=inputs["train"].describe(), runtime="executorch " + version)
        write_json(target / METRICS, metrics)
    return metrics


def evaluate(trainer: Trainer, inputs: TrainingInputs, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy through the training program (its gradients are computed and left unused)."""
    loss_sum = correct = 0.0
    for x, y in inputs.batches(np.arange(len(inputs.labels)), batch_size):
        loss, logits = trainer.forward_backward(x, y)
        loss_sum += loss * len(y)
        correct += int((logits.argmax(-1) == y).sum())
    return loss_sum / len(inputs.labels), correct / len(inputs.labels)


def save_trained(out: Path, trainer: Trainer, manifest: dict) -> dict:
    """trained.safetensors: the trained parameters under their model names (the inference program's inputs)."""
    from safetensors.torch import save
    names = manifest["programs"]["inference"]["inputs"][1:]
    params = trainer.params()
    trained = {n: params["net." + n].clone().contiguous() for n in names}
    atomic_write_bytes(out / TRAINED, save(trained))
    return trained


def evaluate_inference(path: Path, trained: dict, manifest: dict, dataset, batch_size: int) -> float:
    """Top-1 accuracy of the inference program fed the trained parameters."""
    program = load_program(path)
    params = tuple(trained[n] for n in manifest["programs"]["inference"]["inputs"][1:])
    inputs = TrainingInputs(path.parent, {**manifest, "prefix": None}, dataset, which="val", cache_dir=None,
                            budget=[0], cache=False)
    correct = 0
    for (x,), y in inputs.batches(np.arange(len(dataset)), batch_size):
        logits = program.forward((padded(x, manifest["programs"]["batch"]), *params))[0].numpy()[:len(y)]
        correct += int((logits.argmax(-1) == y).sum())
    return correct / len(dataset)
