"""Contribution sweep: for each layer alone, fine-tune it + the head and record the best validation accuracy.

The store is append-only JSONL (one fsynced row per finished layer), one file per shard:
    sweep/rows.jsonl, or sweep/rows.shard-I-of-N.jsonl
The first row of a file is a header {"type": "header", "config": ..., "config_hash": ...}; then
{"type": "layer", "layer": name, "acc": best val acc, "curve": [...], "seconds": s, "config_hash": h}.
A head-only row has layer "__head__". `load_sweep(dir)` merges every file. Restarting skips finished layers.

Prefix features are computed stage by stage: layers are visited in execution order and the cached input of the
current stage is pushed one stage further when the sweep moves past it, so the prefix runs once overall.
"""
import copy
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .errors import ZestError
from .finetune import Schedule, make_optimizer
from .io import append_jsonl, read_jsonl
from .layers import layer_map
from .sparse import sparsify
from .task import Task

HEAD = "__head__"


def sweep_config(task: Task, schedule: Schedule) -> dict:
    return {"task": task.describe(), "schedule": asdict(schedule)}


def shard_of(names: list[str], shard: tuple[int, int]) -> list[str]:
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ZestError(f"--shard must be I/N with 0 <= I < N, got {i}/{n}")
    return names[i::n]


def store_path(out: Path, shard: tuple[int, int]) -> Path:
    return out / ("rows.jsonl" if shard == (0, 1) else f"rows.shard-{shard[0]}-of-{shard[1]}.jsonl")


def load_sweep(out) -> dict:
    """{"config": header config, "rows": {layer: row}} merged over every store file in `out`."""
    from .finetune import config_hash
    out = Path(out)
    files = sorted(out.glob("rows*.jsonl"))
    if not files:
        raise ZestError(f"no sweep store (rows*.jsonl) in {out}")
    config, chash, rows = None, None, {}
    for f in files:
        for row in read_jsonl(f):
            if row.get("type") == "header":
                if chash is None:
                    config, chash = row["config"], row["config_hash"]
                elif row["config_hash"] != chash:
                    raise ZestError(f"{f} was made with a different configuration than the other store files")
            elif row.get("type") == "layer" and row.get("config_hash") == chash:
                rows[row["layer"]] = row
            else:
                raise ZestError(f"{f}: unexpected row {str(row)[:80]}")
    if config is not None and chash != config_hash(config):
        raise ZestError(f"sweep header in {out} is corrupt (hash mismatch)")
    return {"config": config, "rows": rows}


def train_one(task: Task, base_state: dict, layers: list[str], schedule: Schedule, feats, val_feats, seed: int) -> dict:
    """Fine-tune `layers` (+ head) from the base weights on cached stage inputs; best val acc and curve."""
    task.model.load_state_dict(base_state)
    sm = sparsify(task.model, layers, bn=schedule.bn)
    opt = make_optimizer([p for _, p in sm.trainable], schedule)
    (x_train, y_train), (x_val, y_val) = feats, val_feats
    torch.manual_seed(seed)
    curve, losses = [], []
    for epoch in range(schedule.epochs):
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        sm.train_mode()
        for start in range(0, len(order), schedule.batch_size):
            idx = order[start:start + schedule.batch_size]
            losses.append(sm.step(take(x_train, idx), y_train[idx], opt, features=True))
        sm.model.eval()
        with torch.no_grad():
            correct = sum((sm.forward_features(take(x_val, slice(s, s + 256))).argmax(1) == y_val[s:s + 256]).sum().item()
                          for s in range(0, len(y_val), 256))
        curve.append(correct / len(y_val))
    return {"acc": max(curve), "curve": curve, "final_loss": sum(losses[-5:]) / len(losses[-5:])}


def take(x, idx):
    return tuple(t[idx] for t in x) if isinstance(x, tuple) else x[idx]


def stage_inputs(dataset, batch_size: int = 64):
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.tensor(ys)


@torch.no_grad()
def advance(stage_fn, x, batch_size: int = 128):
    """Run one frozen stage over cached inputs (eval mode is set by the caller)."""
    n = len(x[0]) if isinstance(x, tuple) else len(x)
    outs = [stage_fn(take(x, slice(s, s + batch_size))) for s in range(0, n, batch_size)]
    return tuple(torch.cat(p) for p in zip(*outs)) if isinstance(outs[0], tuple) else torch.cat(outs)


def run_sweep(task: Task, schedule: Schedule, out, *, shard: tuple[int, int] = (0, 1), backend: str = "local",
              address: str | None = None, progress: bool = True) -> dict:
    """Sweep every candidate layer (this shard's slice) plus the head-only baseline; returns load_sweep(out)."""
    from .finetune import config_hash
    schedule.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = sweep_config(task, schedule)
    chash = config_hash(config)
    path = store_path(out, shard)
    rows = read_jsonl(path)
    if rows and rows[0].get("config_hash") != chash:
        raise ZestError(f"{path} holds a sweep with a different configuration; use another --out")
    if not rows:
        append_jsonl(path, {"type": "header", "config": config, "config_hash": chash})
    done = {r["layer"] for r in rows if r.get("type") == "layer"}
    names = shard_of([l.name for l in layer_map(task.model)] + [HEAD], shard)
    todo = [n for n in names if n not in done]
    if backend == "ray":
        from .contrib_ray import run_ray
        run_ray(task, schedule, todo, path, chash, address=address, progress=progress)
        return load_sweep(out)
    if backend != "local":
        raise ZestError(f"unknown backend {backend!r}; choose local or ray")
    sweep_layers(task, schedule, todo, lambda row: append_jsonl(path, {**row, "config_hash": chash}),
                 progress=progress, total=len(names), done=len(names) - len(todo))
    return load_sweep(out)


def sweep_layers(task: Task, schedule: Schedule, todo: list[str], emit, *, progress=True, total=None, done=0):
    """Train each layer in `todo` alone (+ head), calling emit(row) as each finishes."""
    from tqdm import tqdm
    base_state = copy.deepcopy(task.model.state_dict())
    stages = task.model.zest_spec.stages(task.model)
    owner = {}
    for i, (prefixes, _) in enumerate(stages):
        for name, _ in task.model.named_modules():
            if name in prefixes or name.startswith(tuple(p + "." for p in prefixes)):
                owner.setdefault(name, i)
    owner[HEAD] = owner[task.model.zest_spec.head]
    todo = sorted(todo, key=lambda n: (owner[n], n))
    x_train, y_train = stage_inputs(task.train)
    x_val, y_val = stage_inputs(task.val)
    at_stage = 0
    bar = tqdm(total=total or len(todo), initial=done, desc="layers", disable=not progress, unit="layer")
    for name in todo:
        task.model.load_state_dict(base_state)
        task.model.eval()
        while at_stage < owner[name]:
            fn = stages[at_stage][1]
            x_train, x_val = advance(fn, x_train), advance(fn, x_val)
            at_stage += 1
        start = time.perf_counter()
        result = train_one(task, base_state, [] if name == HEAD else [name], schedule,
                           (x_train, y_train), (x_val, y_val), seed=task.seed)
        emit({"type": "layer", "layer": name, **result, "seconds": round(time.perf_counter() - start, 3)})
        bar.update(1)
        bar.set_postfix(layer=name[-24:], acc=f"{result['acc']:.3f}")
    bar.close()
    task.model.load_state_dict(base_state)
