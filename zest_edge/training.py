"""The resumable fine-tuning run: a task, a selection, a schedule → run/ with metrics, trained weights, state.

run/config.json      what was asked (task, selection, schedule); a resume must ask the same
run/trained.safetensors  the trained parameters, optimizer state and RNG state after the last finished epoch
run/metrics.json     one record per finished epoch (format zest-edge/run)
run/adapter/         with LoRA: the adapter (LoRA factors + head) as PEFT's save_pretrained writes it
"""
import hashlib
import json
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import Diverged, ZestError, first_line
from .fused import FusedOptimizer
from .io import atomic_write_bytes, output_dir, read_json, write_json
from .schema import read_record
from .sparse import SparseModel, sparsify
from .task import Task

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class Schedule:
    epochs: int = 3
    lr: float = 0.01
    optimizer: str = "sgd"
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 0.0
    bn: str = "frozen"
    cache: bool = True            # cache the frozen prefix's output per example
    cache_limit_mb: int = 4096
    backend: str = "auto"         # fused update: auto | ext | torch

    def check(self) -> None:
        if self.epochs < 1:
            raise ZestError(f"--epochs must be at least 1, got {self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ZestError(f"unknown optimizer {self.optimizer!r}; choose from: {', '.join(OPTIMIZERS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ZestError(f"--lr must be a positive finite number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)) or not 0 <= self.momentum < 1:
            raise ZestError(f"--weight-decay must be a finite number >= 0 and momentum in [0, 1), got "
                            f"{self.weight_decay} and {self.momentum}")
        if self.batch_size < 1:
            raise ZestError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class RunTask:
    model: str


@dataclass
class RunConfigFile:
    """run/config.json as read back (its types checked by zest_edge.schema)."""
    KIND: ClassVar[str] = "run-config"
    task: RunTask
    layers: list[str] | None
    schedule: Schedule
    selection: dict = field(default_factory=dict)
    lora: dict | None = None


@dataclass
class RunEpoch:
    epoch: int
    train_loss: float
    val_acc: float
    val_acc_before: float


@dataclass
class RunFile:
    """run/metrics.json as read back."""
    KIND: ClassVar[str] = "run"
    layers: list[str]
    epochs: list[RunEpoch]


def make_optimizer(params, s: Schedule) -> FusedOptimizer:
    extra = dict(momentum=s.momentum) if s.optimizer == "sgd" else {}
    return FusedOptimizer(params, kind=s.optimizer, lr=s.lr, weight_decay=s.weight_decay, backend=s.backend, **extra)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class FeatureCache:
    """The frozen prefix's output for every example, computed once (prefix in eval mode, no autograd)."""

    def __init__(self, sm: SparseModel, dataset, batch_size: int):
        self.labels = torch.as_tensor(dataset.labels)
        chunks = []
        for start in range(0, len(dataset), batch_size):
            x = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
            out = sm.features(x)
            chunks.append(out if isinstance(out, tuple) else (out,))
        self.tensors = tuple(torch.cat(parts) for parts in zip(*chunks))

    @staticmethod
    def estimate_mb(sm: SparseModel, dataset) -> float:
        out = sm.features(dataset[0][0].unsqueeze(0))
        parts = out if isinstance(out, tuple) else (out,)
        return len(dataset) * sum(p.numel() * p.element_size() for p in parts) / 2**20

    def batch(self, idx):
        parts = tuple(t[idx] for t in self.tensors)
        return (parts if len(parts) > 1 else parts[0]), self.labels[idx]


class Batches:
    """Minibatches from a dataset or its feature cache; `features` says which the model gets."""

    def __init__(self, sm: SparseModel, dataset, batch_size: int, use_cache: bool):
        self.dataset, self.batch_size = dataset, batch_size
        self.cache = FeatureCache(sm, dataset, batch_size) if use_cache else None
        self.features = self.cache is not None

    def __len__(self):
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def iterate(self, order: torch.Tensor):
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.cache is not None:
                yield self.cache.batch(idx)
            else:
                xs, ys = zip(*(self.dataset[int(i)] for i in idx))
                yield torch.stack(xs), torch.tensor(ys)


@torch.no_grad()
def accuracy(sm: SparseModel, batches: Batches) -> float:
    was = sm.model.training
    sm.model.eval()
    correct = 0
    for x, y in batches.iterate(torch.arange(len(batches.dataset))):
        logits = sm.forward_features(x) if batches.features else sm(x)
        correct += (logits.argmax(1) == y).sum().item()
    sm.model.train(was)
    sm.train_mode()
    return correct / len(batches.dataset)


def run_config(task: Task, layers: list[str] | None, schedule: Schedule, selection: dict | None, lora=None) -> dict:
    return {"format": "zest-edge/run-config", "version": 1, "task": task.describe(), "layers": layers,
            "selection": selection or {}, "schedule": asdict(schedule), **({"lora": lora.to_dict()} if lora else {})}


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def bn_buffers(sm: SparseModel) -> dict[str, torch.Tensor]:
    """The running statistics of the BatchNorm modules that train (full fine-tuning, --bn train-selected): they
    change with training, so a checkpoint without them evaluates a different model."""
    modules = dict(sm.model.named_modules())
    return {f"{m}.{b}": t for m in sm.trained_bn for b, t in modules[m].named_buffers(recurse=False)}


def save_state(out: Path, sm: SparseModel, opt: FusedOptimizer, epoch: int) -> None:
    tensors = {f"param/{n}": p.detach().contiguous() for n, p in sm.trainable}
    tensors.update({f"buffer/{n}": t.detach().contiguous() for n, t in bn_buffers(sm).items()})
    tensors.update({f"opt/{k}": v.contiguous() for k, v in opt.state_tensors().items()})
    tensors["rng/torch"] = torch.get_rng_state()
    atomic_write_bytes(out / "trained.safetensors", save(tensors, metadata={"epoch": str(epoch), "format": "zest-edge/trained"}))


def load_trained(path: Path) -> tuple[dict, int]:
    """(tensors, epoch) from trained.safetensors; a corrupt file is a one-line error."""
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ZestError(f"checkpoint {path} is corrupt ({first_line(e)})") from None
    if meta.get("format") != "zest-edge/trained" or not str(meta.get("epoch", "")).isdigit():
        raise ZestError(f"{path} is not a zest-edge checkpoint")
    nonfinite = [k for k, t in tensors.items() if k.startswith("param/") and not torch.isfinite(t).all()]
    if nonfinite:
        raise ZestError(f"checkpoint {path} holds NaN or infinite values in {nonfinite[0][6:]}")
    return tensors, int(meta["epoch"])


def finetune(task: Task, layers: list[str] | None, schedule: Schedule, out, *, resume: bool = False,
             force: bool = False, selection: dict | None = None, progress: bool = True, lora=None) -> dict:
    """Train `layers` (+ head; None = everything) and write the run folder; returns the metrics record. `force` over
    a non-empty `out`: the new run is built in a temporary sibling that replaces `out` only when it has finished."""
    schedule.check()
    out = Path(out)
    config = run_config(task, layers, schedule, selection, lora)
    if lora is None:
        sm = sparsify(task.model, layers, bn=schedule.bn)
    else:               # a zest_edge.lora.LoraSpec: LoRA adapters on `layers` (None: every layer) + the head train
        from .lora import lora_sparsify
        sm = lora_sparsify(task.model, layers, lora, bn=schedule.bn)
    records, start_epoch, replace = [], 0, False
    if out.exists() and not out.is_dir():
        raise ZestError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if resume and (out / "config.json").exists():
            # `epochs` is where a run stops, not what it does (the lr is constant, each epoch's order is seeded by
            # its index): a resume may extend it, and 1 + 1 epochs equal a 2-epoch run.
            same = lambda c: config_hash({**c, "schedule": {k: v for k, v in c["schedule"].items() if k != "epochs"}})
            if same(read_record(out / "config.json", RunConfigFile)[0]) != same(config):
                raise ZestError(f"{out} holds a run with a different configuration; use another --out")
        elif not force:
            raise ZestError(f"output {out} exists and is not empty (use --resume to continue it or --force to replace it)")
        else:
            replace = True            # --force: the new run is built beside and replaces this one when it finishes
    opt = make_optimizer([p for _, p in sm.trainable], schedule)
    if resume and not replace and (out / "trained.safetensors").exists():
        tensors, start_epoch = load_trained(out / "trained.safetensors")
        restore_state(sm, tensors, out)
        opt.load_state_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("opt/")})
        torch.set_rng_state(tensors["rng/torch"])
        records = read_record(out / "metrics.json", RunFile)[0]["epochs"][:start_epoch]
    with output_dir(out, replace=replace, resumable=lambda d: (d / "trained.safetensors").exists()) as target:
        write_json(target / "config.json", config)
        train_epochs(task, sm, opt, schedule, target, records, start_epoch, progress)
    return read_json(out / "metrics.json", "run")


def train_epochs(task: Task, sm: SparseModel, opt, schedule: Schedule, out: Path, records: list, start_epoch: int,
                 progress: bool) -> None:
    """Epochs start_epoch+1..schedule.epochs; after each, trained.safetensors and metrics.json in `out`."""
    from tqdm import tqdm
    use_cache = schedule.cache and bool(sm.prefix)
    if use_cache and FeatureCache.estimate_mb(sm, task.train) + FeatureCache.estimate_mb(sm, task.val) > schedule.cache_limit_mb:
        print(f"note: feature cache would exceed {schedule.cache_limit_mb} MB; running the frozen prefix every step")
        use_cache = False
    t0 = time.perf_counter()
    train, val = Batches(sm, task.train, schedule.batch_size, use_cache), Batches(sm, task.val, schedule.batch_size, use_cache)
    cache_seconds = time.perf_counter() - t0
    initial_acc = records[0]["val_acc_before"] if records else accuracy(sm, val)
    for epoch in range(start_epoch, schedule.epochs):
        order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(task.seed * 1000 + epoch))
        losses, step_ms = [], []
        epoch_start = time.perf_counter()
        bar = tqdm(train.iterate(order), total=len(train), desc=f"epoch {epoch + 1}/{schedule.epochs}",
                   disable=None if progress else True, leave=False)     # None: off when stderr is no terminal
        for x, y in bar:
            s = time.perf_counter()
            losses.append(sm.step(x, y, opt, features=train.features))
            if not math.isfinite(losses[-1]):
                raise Diverged(f"training diverged: the loss became {losses[-1]} in epoch {epoch + 1}, step "
                                f"{len(losses)} (lower --lr)")
            step_ms.append((time.perf_counter() - s) * 1000)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        train_seconds = time.perf_counter() - epoch_start
        acc = accuracy(sm, val)
        records.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "val_acc": acc,
                        "val_acc_before": initial_acc, "train_seconds": round(train_seconds, 3),
                        "step_ms_median": round(sorted(step_ms)[len(step_ms) // 2], 3), "peak_rss_mb": round(peak_rss_mb(), 1)})
        save_state(out, sm, opt, epoch + 1)
        if sm.peft is not None:
            from .lora import ADAPTER_DIR, save_adapter
            save_adapter(sm, out / ADAPTER_DIR)
        record = metrics_record(sm, opt, records, use_cache, cache_seconds)
        write_json(out / "metrics.json", record)
        if progress:
            print(f"epoch {epoch + 1}/{schedule.epochs}: loss {records[-1]['train_loss']:.4f}  val acc {acc:.4f}  "
                  f"({train_seconds:.1f} s, step {records[-1]['step_ms_median']:.1f} ms)")


def metrics_record(sm: SparseModel, opt, epochs: list[dict], cached: bool, cache_seconds: float) -> dict:
    return {"format": "zest-edge/run", "version": 1, "layers": [l.name for l in sm.selected], "full": sm.full,
            "trainable_params": sm.trainable_count(), "total_params": sm.total_count(),
            "trainable_share": sm.trainable_count() / sm.total_count(), "optimizer_backend": opt.backend,
            "feature_cache": cached, "cache_seconds": round(cache_seconds, 3), "epochs": epochs,
            **({"lora": sm.lora.to_dict()} if sm.lora else {})}


def evaluate_run(task: Task, run_dir) -> float:
    """Validation accuracy of the task's model with a run's trained parameters merged in (the model keeps them)."""
    sm = load_run(task, run_dir)
    return accuracy(sm, Batches(sm, task.val, 64, use_cache=False))


def load_run(task: Task, run_dir) -> SparseModel:
    """The task's model with the run's trained parameters merged in (eval-ready); a LoRA run's adapter is loaded by
    PEFT and merged into the weights (head included)."""
    run_dir = Path(run_dir)
    _, config = read_record(run_dir / "config.json", RunConfigFile)
    if config.task.model != task.model_name:
        raise ZestError(f"{run_dir} was trained for {config.task.model}, not {task.model_name}")
    if config.lora:
        from .lora import ADAPTER_DIR, merge_adapter
        return sparsify(merge_adapter(task.model, run_dir / ADAPTER_DIR), config.layers, bn=config.schedule.bn)
    tensors, _ = load_trained(run_dir / "trained.safetensors")
    sm = sparsify(task.model, config.layers, bn=config.schedule.bn)
    restore_state(sm, tensors, run_dir)
    return sm


def restore_state(sm: SparseModel, tensors: dict, run_dir) -> None:
    """Copy a checkpoint's trained parameters and trained-BN running statistics into `sm`; either missing is an
    error naming it (a checkpoint from before BN statistics were saved cannot be evaluated faithfully)."""
    targets = {f"param/{n}": p for n, p in sm.trainable} | {f"buffer/{n}": t for n, t in bn_buffers(sm).items()}
    missing = [k for k in targets if k not in tensors]
    if missing:
        raise ZestError(f"checkpoint in {run_dir} lacks {missing[0].split('/', 1)[1]}"
                        + (" (BatchNorm running statistics)" if missing[0].startswith("buffer/") else ""))
    with torch.no_grad():
        for k, t in targets.items():
            t.copy_(tensors[k])
