"""End-to-end evaluation: is ZEST@k better than what a user would otherwise do? Every method trained the same way,
each at the learning rate that suits it.

`benchmark(config_path, out, resume=...)` reads a YAML config (configs/eval_*.yaml) and, for every seed, trains
    full            every parameter
    zest@k          top k of rank_task with the predictor (the shipped default, or the config's `predictor`)
    random@k        k layers drawn at random (random.Random(seed), as `finetune --random-k`)
    best-metric@k   top k of rank_task(metric=<config metric>) — the best single zero-shot metric
    rgn@k           top k by relative gradient norm ‖G‖/‖W‖ (the surgical fine-tuning baseline)
    largest@k       the k layers with the most parameters
    last@k          the last k layers in execution order
    head-only       the head alone
    contribution@k  the k layers with the highest single-layer accuracy in a contribution sweep (config
                    `contribution`: a sweep folder or one rows JSONL file; only when named)
with `zest_edge.training.finetune` and one Schedule for all, at every learning rate of `lr_grid` (`lr: x` is the
one-point grid [x]). Within a seed every method and lr sees the same training data, order and head init.

Select/test: the task's validation set (its `val_limit` subset drawn with the fixed SPLIT_SEED, so the same for
every run seed) is cut into two disjoint class-balanced halves (benchmark_stats.select_test_split). Runs train on
the train split; a run's final accuracy on "select" picks the lr, its accuracy on "test" is what is reported.
For each method (each k), the lr is chosen over all seeds: fewest diverged runs, then the best mean final select
accuracy, then the smaller lr (benchmark_stats.choose_lr). A run whose loss becomes non-finite is recorded as
diverged (select and test accuracy 0 wherever a number is needed) and the benchmark goes on. ZEST@k is then
compared with full, random@k, rgn@k, best-metric@k, largest@k and last@k by seed-paired differences of test
accuracy with 95% t-intervals (benchmark_results). The test half shares its examples across seeds, so the
intervals cover training randomness (data subset, head init, order, ranking batch, random draw), not test sampling.

Layout:
    out/plan.json                  the config (with the lr grid) and every run's selection, fixed before the first run
    out/runs/<method>/lr<lr>/seed<S>/  one finetune run folder each (config.json, metrics.json, trained.safetensors:
                                   metrics.json's val_acc is test-half accuracy) and outcome.json (zest-edge/
                                   benchmark-run: final select and test accuracy, or the divergence), written last
    out/results.json               format zest-edge/results version 2 (benchmark_results.summarize): every run's
                                   select/test accuracy, per method the chosen lr and test accuracy over seeds,
                                   the paired differences; rewritten after every run ("complete": false until the end)
    out/results.md, out/curves.png the tables and the test-accuracy curves of the chosen lr's runs
Resume: runs with an outcome are skipped, an interrupted one continues from its last finished epoch via
finetune(resume=True); an out folder of results version 1 is refused.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import Diverged, ZestError
from .benchmark_config import (LORA_METHODS, OUTCOME, jsonable, load_benchmark_config, method_labels, run_dir,
                               schedule)
from .benchmark_stats import SPLIT_SEED, select_test_split

PLAN_FORMAT, PLAN_VERSION = "zest-edge/benchmark-plan", 2


# ------------------------------------------------------------------------------------------------ tasks and selections

class Half(torch.utils.data.Dataset):
    """The examples `idx` of a labeled dataset, with its labels, classes and kind."""

    def __init__(self, base, idx: np.ndarray, name: str):
        self.base, self.idx = base, np.asarray(idx)
        self.labels = base.labels[self.idx]
        self.classes, self.num_classes, self.kind = base.classes, base.num_classes, base.kind
        self.spec = f"{base.spec} [{name} half]"

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.base[int(self.idx[i])]


class Tasks:
    """Training data loaded once per seed, the validation set once (drawn with SPLIT_SEED) and cut into its "select"
    and "test" halves; a fresh model (head initialised from the seed) for every use."""

    def __init__(self, cfg: dict):
        self.cfg, self.by_seed, self.halves = cfg, {}, None

    def get(self, seed: int, half: str = "test"):
        """The seed's task with `half` of the validation set as its val split."""
        from ..data import build_dataset
        from ..models import attach_spec, build_model
        from ..task import load_task
        c = self.cfg
        if seed not in self.by_seed:
            self.by_seed[seed] = load_task(c["model"], c["data"], weights=c["weights"], resolution=c["resolution"],
                                           limit=c["limit"], val_limit=c["val_limit"], seed=seed,
                                           data_root=c["data_root"], max_length=c["max_length"])
        task = self.by_seed[seed]
        if self.halves is None:
            val = build_dataset(c["data"], "val", preprocess=task.preprocess, limit=task.load_args["val_limit"],
                                seed=SPLIT_SEED, data_root=c["data_root"])
            self.halves = {name: Half(val, idx, name)
                           for name, idx in zip(("select", "test"), select_test_split(val.labels))}
        torch.manual_seed(seed)
        model = build_model(c["model"], num_classes=task.train.num_classes, weights=c["weights"])
        attach_spec(model, dataclasses.replace(model.zest_spec, preprocess=task.preprocess))
        return dataclasses.replace(task, model=model, val=self.halves[half])

    def split_info(self) -> dict:
        """The select/test cut as recorded in plan.json: its seed and each half's size and per-class counts."""
        return {"seed": SPLIT_SEED, **{name: {"examples": len(h), "per_class": np.bincount(
            h.labels, minlength=h.num_classes).tolist()} for name, h in self.halves.items()}}


def contribution_order(path) -> list[str]:
    """Layers by single-layer accuracy, best first, from a sweep folder (rows*.jsonl), one JSONL file, or a
    corpus combination file (corpus/*.json)."""
    from ..io import read_jsonl
    path = Path(path)
    if path.is_dir():
        from ..contrib import load_sweep
        rows = list(load_sweep(path)["rows"].values())
    elif path.suffix == ".json":
        from ..corpus import load_corpus
        rows = [{"layer": l["name"], "acc": l["contribution"]} for l in load_corpus(path)[0]["layers"]]
    elif path.is_file():
        rows = read_jsonl(path)
    else:
        raise ZestError(f"contribution sweep not found: {path}")
    accs: dict[str, list[float]] = {}
    for row in rows:
        if not isinstance(row, dict) or "layer" not in row or "acc" not in row or row.get("type") not in (None, "layer"):
            continue
        if row["layer"] == "__head__":
            continue
        accs.setdefault(row["layer"], []).append(float(row["acc"]))
    if not accs:
        raise ZestError(f"{path} holds no contribution rows ({{\"layer\", \"acc\"}})")
    mean = {n: sum(v) / len(v) for n, v in accs.items()}
    return sorted(mean, key=lambda n: -mean[n])


def select(method: str, k: int | None, seed: int, tasks: Tasks, cfg: dict, memo: dict) -> tuple[list | None, dict]:
    """(layer names in execution order, or None for full; [] for head-only) and how they were chosen: every method
    goes through zest_edge.selection.select_layers (rankings are made once per seed at the largest k, then cut)."""
    from ..layers import layer_map
    from ..selection import select_layers
    task = tasks.get(seed)
    flag = f"{method}@{k}"
    if method == "contribution":
        if "contribution" not in memo:
            memo["contribution"] = contribution_order(cfg["contribution"])
        names = {l.name for l in layer_map(task.model)}
        order = [n for n in memo["contribution"] if n in names]
        if len(order) < k:
            raise ZestError(f"contribution@{k}: the sweep {cfg['contribution']} covers only {len(order)} layers "
                            f"of {cfg['model']}")
        chosen = select_layers(task, "layers", names=order[:k], flag=flag)
        return chosen.layers, {"method": method, "k": k, "sweep": cfg["contribution"]}
    if method == "lora":
        return None, {"method": "lora", "lora_r": int(cfg["lora_r"])}
    if method in ("zest", "best-metric", "rgn", "lora-zest"):
        from ..ranking import rank_task
        info = {"lora_r": int(cfg["lora_r"])} if method == "lora-zest" else {}
        method = "zest" if method == "lora-zest" else method        # the same ranking and layers as zest@k
        metric = {"best-metric": cfg["metric"], "rgn": "rgn"}.get(method)
        if (method, seed) not in memo:
            memo[method, seed] = rank_task(task, top_k=max(cfg["k"]), predictor=None if metric else cfg["predictor"],
                                           metric=metric, batch_size=int(cfg["rank_batch_size"]))
        chosen = select_layers(task, "ranking", ranking=memo[method, seed], k=k, flag=flag)
        return chosen.layers, {"method": method, "k": k, "ranked_by": memo[method, seed].get("ranked_by"), **info}
    chosen = select_layers(task, method, k=k, seed=seed, flag=flag)       # full, head-only, random, largest, last
    return chosen.layers, {**chosen.info, **({"seed": seed} if method == "random" else {})}


# ------------------------------------------------------------------------------------------------ running

def finished(path: Path, epochs: int) -> bool:
    """Whether the run folder holds all `epochs` in its metrics.json."""
    from ..io import read_json
    try:
        return len(read_json(path / "metrics.json", "run")["epochs"]) >= epochs
    except (ZestError, KeyError, TypeError):
        return False


def make_plan(cfg: dict, tasks: Tasks, progress: bool) -> list[dict]:
    """Every run in order: seed, method, lr (a method's selection is made once per seed, for all lrs)."""
    from tqdm import tqdm
    memo, runs = {}, []
    items = [(label, m, k, s) for s in cfg["seeds"] for label, m, k in method_labels(cfg)]
    for label, method, k, seed in tqdm(items, desc="selections", disable=not progress, leave=False):
        layers, how = select(method, k, seed, tasks, cfg, memo)
        runs += [{"label": label, "method": method, "k": k, "lr": lr, "seed": seed, "layers": layers,
                  "selection": how} for lr in cfg["lr_grid"]]
    return runs


def open_plan(cfg: dict, out: Path, resume: bool) -> dict | None:
    """The plan of a resumed `out` (None for a fresh one); refuses a non-empty `out` without `resume`, another
    config's plan and a plan of results version 1."""
    from ..io import read_json
    from ..training import config_hash
    plan_path = out / "plan.json"
    if out.exists() and any(out.iterdir()) and not resume:
        raise ZestError(f"output {out} exists and is not empty (use --resume to continue it)")
    if not (resume and plan_path.exists()):
        return None
    plan = read_json(plan_path, "benchmark-plan")
    if plan.get("version") != PLAN_VERSION:
        raise ZestError(f"{out} holds a benchmark of results version {plan.get('version')} (one lr, no select/test "
                        f"split), which this version cannot resume; use another --out")
    if config_hash(plan["config"]) != config_hash(jsonable(cfg)):
        raise ZestError(f"{out} holds a benchmark of a different config; use another --out")
    return plan


def run_one(run: dict, path: Path, tasks: Tasks, cfg: dict) -> dict:
    """Train (or continue) one planned run into `path` and return its outcome record, written there last."""
    import shutil
    from ..io import read_json, write_json
    from ..lora import LoraSpec
    from ..training import evaluate_run, finetune
    sched = schedule(cfg, run["lr"])
    outcome = {"format": "zest-edge/benchmark-run", "version": 1, "label": run["label"], "lr": run["lr"],
               "seed": run["seed"]}
    if not finished(path, sched.epochs):
        partial = path.exists() and (path / "config.json").exists()
        if path.exists() and not partial:
            shutil.rmtree(path)                         # killed before finetune wrote anything
        lora = LoraSpec(r=int(cfg["lora_r"])) if run["method"] in LORA_METHODS else None
        try:
            finetune(tasks.get(run["seed"]), run["layers"], sched, path, resume=partial,
                     selection={**run["selection"], "benchmark": run["label"]}, progress=False, lora=lora)
        except Diverged as e:
            outcome.update({"status": "diverged", "select_acc": None, "test_acc": None, "error": str(e)})
    if "status" not in outcome:
        outcome.update({"status": "finished", "select_acc": evaluate_run(tasks.get(run["seed"], "select"), path),
                        "test_acc": read_json(path / "metrics.json", "run")["epochs"][-1]["val_acc"]})
    path.mkdir(parents=True, exist_ok=True)             # a run diverging in its first epoch leaves no folder
    write_json(path / OUTCOME, outcome)
    return outcome


def benchmark(config_path, out, *, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) every method × lr × seed of the config into `out`; returns the results record."""
    from tqdm import tqdm
    from ..io import write_json, write_text
    from .benchmark_report import plot_curves, results_table
    from .benchmark_results import summarize
    cfg = load_benchmark_config(config_path)
    out = Path(out)
    plan = open_plan(cfg, out, resume)
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    tasks = Tasks(cfg)
    if plan is None:
        runs = make_plan(cfg, tasks, progress)
        plan = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "config": jsonable(cfg),
                "config_file": str(config_path), "split": tasks.split_info(), "runs": runs}
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "plan.json", plan)
    start = time.perf_counter()
    bar = tqdm(plan["runs"], desc="benchmark", unit="run", disable=not progress)
    for run in bar:
        path = run_dir(out, run["label"], run["lr"], run["seed"])
        bar.set_postfix_str(f"{run['label']} lr {run['lr']:g} seed {run['seed']}")
        if (path / OUTCOME).exists():
            continue
        run_one(run, path, tasks, cfg)
        write_json(out / "results.json", summarize(cfg, plan, out, complete=False))
    bar.close()
    record = summarize(cfg, plan, out, complete=True)
    record["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", record)
    write_text(out / "results.md", results_table(record))
    plot_curves(record, out / "curves.png")
    return record

