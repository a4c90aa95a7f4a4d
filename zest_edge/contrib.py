"""Contribution sweep (protocol v2): each layer alone + the head, fine-tuned; its score is the accuracy it reaches.

Protocol (`SweepConfig`, one YAML per combination in configs/corpus/):
1. Learning-rate probe: the head alone and `probe_layers` layers spread over depth train at every rate of
   `lr_grid`; the smallest rate whose mean score is within one SE of the best is used for the whole sweep
   (`chosen_lr`; a one-value grid skips the probe). Layer rows at another rate stay in the store but do not count.
2. Every candidate layer + the head trains for `epochs` with AdamW (or SGD), the rate decaying to 0 on a cosine
   over all steps, on cached stage inputs; the head is re-initialised with `train_seed` for each layer, which also
   fixes the data order, so layers differ only in which layer trains.
3. Score = mean validation accuracy over the last `score_epochs` epochs (averaging cuts epoch-to-epoch noise);
   the curve, the validation-loss curve and the binomial standard error of the score are kept with it.

The store is append-only JSONL (one fsynced row per finished job), one file per shard:
    sweep/rows.jsonl, or sweep/rows.shard-I-of-N.jsonl
Its first row is a header {"type": "header", "config": ..., "config_hash": ...}; then
{"type": "probe" | "layer", "layer": name, "lr": rate, "acc": score, "curve": [...], ...}. The head-only row has
layer "__head__". `load_sweep(dir)` merges every file. A run skips the jobs any store file in the folder holds
(a restart, another shard, or an unsharded run after shards); shards started together each run the probe (it is
deterministic, so they agree on the rate).

Stage inputs are pushed one stage further as the sweep moves past a stage, so the frozen prefix runs once per pass.
"""
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ZestError
from .training import Schedule, config_hash, make_optimizer
from .io import append_jsonl, read_jsonl, repair_jsonl
from .schema import parse
from .layers import layer_map
from .sparse import in_stage, sparsify
from .task import Task, load_task

HEAD = "__head__"
SWEEP_VERSION = 2


@dataclass
class SweepConfig:
    """Everything that fixes a sweep's result (the store's header hash covers all but `note` and `data_root`)."""
    model: str
    data: str
    weights: str | None = None
    resolution: int | None = None
    max_length: int | None = None
    limit: int = 2000
    val_limit: int = 2000
    seed: int = 0                       # data subset and split
    train_seed: int | None = None       # head init and data order (default: seed); another value = a retest
    optimizer: str = "adamw"
    lr_grid: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    probe_layers: int = 3
    epochs: int = 4
    score_epochs: int = 2
    batch_size: int = 32
    weight_decay: float = 0.0
    metric_batches: int = 3
    metric_batch_size: int = 32
    data_root: str | None = None
    note: str | None = None

    @classmethod
    def from_dict(cls, cfg: dict, where: str) -> "SweepConfig":
        """Build from a YAML mapping; unknown keys and wrong types are one-line errors naming `where`."""
        sweep = parse(cls, cfg, where, unknown="refuse")
        for key in ("model", "data"):
            if not getattr(sweep, key):
                raise ZestError(f"{where}: {key} is required")
        sweep.check(where)
        return sweep

    def check(self, where: str = "sweep config") -> None:
        if not self.lr_grid or not all(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in self.lr_grid):
            raise ZestError(f"{where}: lr_grid must be a list of positive learning rates, got {self.lr_grid!r}")
        if not 1 <= self.score_epochs <= self.epochs:
            raise ZestError(f"{where}: score_epochs must be between 1 and epochs ({self.epochs}), got {self.score_epochs}")
        if self.probe_layers < 0:
            raise ZestError(f"{where}: probe_layers must be 0 or more, got {self.probe_layers}")
        try:
            self.schedule(self.lr_grid[0]).check()
        except ZestError as e:
            raise ZestError(f"{where}: {e}") from None

    def schedule(self, lr: float) -> Schedule:
        return Schedule(epochs=self.epochs, lr=lr, optimizer=self.optimizer, batch_size=self.batch_size,
                        weight_decay=self.weight_decay)

    def load_task(self) -> Task:
        return load_task(self.model, self.data, weights=self.weights, resolution=self.resolution, limit=self.limit,
                         val_limit=self.val_limit, seed=self.seed, data_root=self.data_root, max_length=self.max_length)

    def seed_for_training(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    def header(self, task: Task) -> dict:
        protocol = {k: v for k, v in asdict(self).items()
                    if k in ("optimizer", "lr_grid", "probe_layers", "epochs", "score_epochs", "batch_size",
                             "weight_decay")}
        return {"format": "zest-edge/sweep", "version": SWEEP_VERSION, "task": task.describe(),
                "train_seed": self.seed_for_training(), "protocol": {**protocol, "lr_schedule": "cosine"}}


def shard_of(names: list, shard: tuple[int, int]) -> list:
    i, n = shard
    return names[i::n]


def check_shard(shard: tuple[int, int]) -> None:
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ZestError(f"--shard must be I/N with 0 <= I < N, got {i}/{n}")


def store_path(out: Path, shard: tuple[int, int]) -> Path:
    return out / ("rows.jsonl" if shard == (0, 1) else f"rows.shard-{shard[0]}-of-{shard[1]}.jsonl")


def load_sweep(out) -> dict:
    """{"config": header, "lr": chosen rate or None, "probes": [rows], "rows": {layer: row}} over every store file."""
    out = Path(out)
    files = sorted(out.glob("rows*.jsonl"))
    if not files:
        raise ZestError(f"no sweep store (rows*.jsonl) in {out}")
    config, chash, rows, probes = None, None, {}, {}
    for f in files:
        for row in read_jsonl(f):
            kind = row.get("type")
            if kind == "header":
                if chash is None:
                    config, chash = row["config"], row["config_hash"]
                elif row["config_hash"] != chash:
                    raise ZestError(f"{f} was made with a different configuration than the other store files")
            elif kind in ("layer", "probe") and row.get("config_hash") == chash:
                (rows if kind == "layer" else probes)[(row["layer"], row["lr"]) if kind == "probe" else row["layer"]] = row
            else:
                raise ZestError(f"{f}: unexpected row {str(row)[:80]}")
    if config is not None and chash != config_hash(config):
        raise ZestError(f"sweep header in {out} is corrupt (hash mismatch)")
    lr = chosen_lr(config, list(probes.values())) if config else None
    if config and len(config["protocol"]["lr_grid"]) > 1:     # layer rows at another rate do not count
        rows = {name: row for name, row in rows.items() if row["lr"] == lr}
    return {"config": config, "rows": rows, "probes": list(probes.values()), "lr": lr}


def probe_names(names: list[str], count: int) -> list[str]:
    """The head plus `count` layers spread evenly over depth (execution order)."""
    if count <= 0 or not names:
        return [HEAD]
    picks = sorted({round((i + 1) * (len(names) + 1) / (count + 1)) - 1 for i in range(count)})
    return [HEAD] + [names[min(max(p, 0), len(names) - 1)] for p in picks]


def chosen_lr(config: dict, probes: list[dict]) -> float | None:
    """The smallest grid rate whose mean probe score is within one standard error (the probes' mean binomial SE)
    of the best mean; None until every probe is in.

    Not simply the best: a rate too high for some layers turns the sweep into a ranking of tolerance to that rate
    (AdamW at 0.01 drove EfficientNet-Lite1's projection convs to 0.82–0.87 on Animal-MNIST where 0.003 gave 0.93,
    below head-only), and which of two rates within the noise wins is a coin toss between sweeps."""
    grid = config["protocol"]["lr_grid"]
    if len(grid) == 1:
        return grid[0]
    by_lr = {lr: [p["acc"] for p in probes if p["lr"] == lr] for lr in grid}
    wanted = config.get("probe_count")
    if wanted is None or any(len(v) < wanted for v in by_lr.values()):
        return None
    mean = {lr: sum(v) / len(v) for lr, v in by_lr.items()}
    se = sum(p["se"] for p in probes) / len(probes)
    return min(lr for lr in grid if mean[lr] >= max(mean.values()) - se)


def reset_head(model, seed: int) -> None:
    head = dict(model.named_modules())[model.zest_spec.head]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in head.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


def train_one(task: Task, base_state: dict, layers: list[str], schedule: Schedule, feats, val_feats, seed: int,
              score_epochs: int) -> dict:
    """Fine-tune `layers` (+ a head initialised by `seed`) on cached stage inputs; score, curves, standard error."""
    task.model.load_state_dict(base_state)
    reset_head(task.model, seed)
    sm = sparsify(task.model, layers, bn=schedule.bn)
    opt = make_optimizer([p for _, p in sm.trainable], schedule)
    (x_train, y_train), (x_val, y_val) = feats, val_feats
    torch.manual_seed(seed)
    curve, loss_curve, losses = [], [], []
    steps = schedule.epochs * math.ceil(len(y_train) / schedule.batch_size)
    for epoch in range(schedule.epochs):
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        sm.train_mode()
        for start in range(0, len(order), schedule.batch_size):
            idx = order[start:start + schedule.batch_size]
            for group in opt.param_groups:
                group["lr"] = schedule.lr * 0.5 * (1 + math.cos(math.pi * len(losses) / steps))
            losses.append(sm.step(take(x_train, idx), y_train[idx], opt, features=True))
        sm.model.eval()
        with torch.no_grad():
            logits = torch.cat([sm.forward_features(take(x_val, slice(s, s + 256))) for s in range(0, len(y_val), 256)])
        curve.append((logits.argmax(1) == y_val).float().mean().item())
        loss_curve.append(F.cross_entropy(logits, y_val).item())
    score = sum(curve[-score_epochs:]) / score_epochs
    if not math.isfinite(loss_curve[-1]):
        raise ZestError(f"training {layers or 'the head'} diverged (validation loss {loss_curve[-1]}); lower the lr")
    final_loss = sum(losses[-5:]) / len(losses[-5:])
    finite = lambda v: v if math.isfinite(v) else None        # rows are strict JSON: an early inf loss is null
    return {"acc": score, "se": math.sqrt(score * (1 - score) / len(y_val)), "best": max(curve), "curve": curve,
            "val_loss_curve": [finite(v) for v in loss_curve], "final_loss": finite(final_loss)}


def take(x, idx):
    return tuple(t[idx] for t in x) if isinstance(x, tuple) else x[idx]


def stage_inputs(dataset):
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.tensor(ys)


@torch.no_grad()
def advance(stage_fn, x, batch_size: int = 128):
    """Run one frozen stage over cached inputs (eval mode is set by the caller)."""
    n = len(x[0]) if isinstance(x, tuple) else len(x)
    outs = [stage_fn(take(x, slice(s, s + batch_size))) for s in range(0, n, batch_size)]
    return tuple(torch.cat(p) for p in zip(*outs)) if isinstance(outs[0], tuple) else torch.cat(outs)


def run_sweep(sweep: SweepConfig, out, *, shard: tuple[int, int] = (0, 1), backend: str = "local",
              address: str | None = None, progress: bool = True, task: Task | None = None) -> dict:
    """Probe the learning rate, then sweep every candidate layer (this shard's slice) plus the head alone.

    Returns load_sweep(out). `task` may be passed when already built from `sweep`."""
    check_shard(shard)
    if backend not in ("local", "ray"):
        raise ZestError(f"unknown backend {backend!r}; choose local or ray")
    if backend == "ray":
        from .ray_jobs import require_ray
        require_ray()                       # before the store is created
    sweep.check()
    task = task or sweep.load_task()
    names = [l.name for l in layer_map(task.model)]
    config = {**sweep.header(task), "probe_count": len(probe_names(names, sweep.probe_layers))}
    chash = config_hash(config)
    out = Path(out)
    path = store_path(out, shard)
    for f in sorted(out.glob("rows*.jsonl")):               # this shard's file and the others': one sweep, or refuse
        first = read_jsonl(f)[:1]
        if first and first[0].get("config_hash") != chash:
            raise ZestError(f"{f} holds a sweep with a different configuration; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    repair_jsonl(path)
    header = None if read_jsonl(path) else {"type": "header", "config": config, "config_hash": chash}

    def emit(row=None):
        """Append a row (None: the header alone). The header goes in just before this store file's first row, so a
        run with nothing left to do (an unsharded run after its shards) leaves no empty file behind."""
        nonlocal header
        if header:
            append_jsonl(path, header)
            header = None
        if row is not None:
            append_jsonl(path, {**row, "config_hash": chash})

    if not any(out.glob("rows*.jsonl")):
        emit()                              # a fresh sweep: its store starts now
    run = run_jobs_ray if backend == "ray" else run_jobs_local
    kw = dict(address=address) if backend == "ray" else {}
    if len(sweep.lr_grid) > 1:
        done = {(p["layer"], p["lr"]) for p in load_sweep(out)["probes"]}      # every store file: shards share work
        probes = [(n, lr) for lr in sweep.lr_grid for n in probe_names(names, sweep.probe_layers)]
        run(sweep, task, [j for j in probes if j not in done], emit, "probe", progress=progress, **kw)
    swept = load_sweep(out)                 # after the probe: its rate (a one-value grid's rate) and the rows done
    lr = swept["lr"]
    if progress and len(sweep.lr_grid) > 1:
        print(f"learning rate {lr:g} (the smallest within one SE of the best mean probe score over {sweep.lr_grid})")
    done = set(swept["rows"])
    todo = [(n, lr) for n in shard_of(names + [HEAD], shard) if n not in done]
    run(sweep, task, todo, emit, "layer", progress=progress, **kw)
    return load_sweep(out)


def run_jobs_local(sweep: SweepConfig, task: Task, jobs: list, emit, kind: str, *, progress: bool = True) -> None:
    """Train each (layer, lr) job alone (+ head) in execution order, calling emit(row) as each finishes."""
    from tqdm import tqdm
    base_state = copy.deepcopy(task.model.state_dict())
    stages = task.model.zest_spec.stages(task.model)
    owner = {}
    for i, (prefixes, _) in enumerate(stages):
        for name, _ in task.model.named_modules():
            if in_stage(name, prefixes):
                owner.setdefault(name, i)
    owner[HEAD] = owner[task.model.zest_spec.head]
    jobs = sorted(jobs, key=lambda j: (owner[j[0]], j[0], j[1]))
    x_train, y_train = stage_inputs(task.train)
    x_val, y_val = stage_inputs(task.val)
    at_stage = 0
    bar = tqdm(total=len(jobs), desc=f"{kind}s", disable=not progress or not jobs, unit="job")
    for name, lr in jobs:
        task.model.load_state_dict(base_state)
        task.model.eval()
        while at_stage < owner[name]:
            fn = stages[at_stage][1]
            x_train, x_val = advance(fn, x_train), advance(fn, x_val)
            at_stage += 1
        start = time.perf_counter()
        result = train_one(task, base_state, [] if name == HEAD else [name], sweep.schedule(lr), (x_train, y_train),
                           (x_val, y_val), sweep.seed_for_training(), sweep.score_epochs)
        emit({"type": kind, "layer": name, "lr": lr, **result, "seconds": round(time.perf_counter() - start, 3)})
        bar.update(1)
        bar.set_postfix(layer=name[-24:], acc=f"{result['acc']:.3f}")
    bar.close()
    task.model.load_state_dict(base_state)


def _one_job(sweep: dict, job: tuple, kind: str) -> dict:
    """A Ray worker: rebuild the task from the config and run one job (one torch thread)."""
    torch.set_num_threads(1)
    config = SweepConfig(**sweep)
    rows = []
    run_jobs_local(config, config.load_task(), [tuple(job)], rows.append, kind, progress=False)
    return rows[0]


def run_jobs_ray(sweep: SweepConfig, task: Task, jobs: list, emit, kind: str, *, address: str | None = None,
                 progress: bool = True) -> None:
    from .ray_jobs import map_unordered
    map_unordered(_one_job, [(asdict(sweep), job, kind) for job in jobs], emit, address=address,
                  desc=f"{kind}s (ray)", progress=progress)
