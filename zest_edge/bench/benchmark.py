"""End-to-end evaluation: ZEST@k against full fine-tuning and the baselines, every method trained the same way.

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
with `zest_edge.training.finetune` and one Schedule for all. Layout:
    out/plan.json                  the config and every run's selection (fixed before the first run starts)
    out/runs/<method>/seed<S>/     one finetune run folder each (config.json, metrics.json, trained.safetensors)
    out/results.json               format zest-edge/results: per method, final val acc mean ± std over seeds,
                                   trainable params, median train-step ms, per-epoch val acc curve (epoch 0 = the
                                   untrained head); rewritten after every run ("complete": false until the end)
    out/results.md, out/curves.png the table and the val-accuracy curves (one line per method)
Resume: finished runs (all epochs in metrics.json) are skipped, an interrupted one continues from its last finished
epoch via finetune(resume=True).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

from ..errors import ZestError

FORMAT = "zest-edge/results"
VERSION = 1
METHODS = ("full", "zest", "random", "best-metric", "rgn", "largest", "last", "head-only", "contribution", "lora",
           "lora-zest")
K_METHODS = ("zest", "random", "best-metric", "rgn", "largest", "last", "contribution", "lora-zest")
LORA_METHODS = ("lora", "lora-zest")          # LoRA (rank `lora_r`) on every layer / on zest@k's layers


@dataclasses.dataclass
class BenchmarkConfig:
    """A benchmark YAML: its types are checked by zest_edge.schema, unknown settings refused."""
    # what to train on
    name: str | None = None
    model: str | None = None
    weights: str | None = None
    data: str | None = None
    data_root: str | None = None
    limit: int | None = None
    val_limit: int | None = None
    resolution: int | None = None
    max_length: int | None = None
    # how (one Schedule for every method)
    epochs: int = 3
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    bn: str = "frozen"
    cache: bool = True
    cache_limit_mb: int = 4096
    backend: str = "auto"
    threads: int | None = None
    # what to compare
    seeds: int | list[int] = dataclasses.field(default_factory=lambda: [0])
    k: int | list[int] = dataclasses.field(default_factory=lambda: [3, 5, 10])
    methods: str | list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    metric: str | None = None
    predictor: str | None = None
    contribution: str | None = None
    rank_batch_size: int = 32
    lora_r: int = 8
    # free text
    heldout_note: str | None = None
    notes: str | None = None
    sizing: str | None = None


def load_benchmark_config(path) -> dict:
    """The YAML config with defaults filled in and every value checked."""
    from ..config import load_config
    from ..schema import parse
    path = Path(path)
    cfg = dataclasses.asdict(parse(BenchmarkConfig, load_config(path, None), str(path), unknown="refuse"))
    for key in ("model", "data"):
        if not cfg[key]:
            raise ZestError(f"{path}: `{key}` is required")
    methods = cfg["methods"]
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ZestError(f"{path}: unknown method {unknown[0]!r}; choose from: {', '.join(METHODS)}")
    cfg["methods"] = list(dict.fromkeys(methods))
    seeds, ks = cfg["seeds"], cfg["k"]
    seeds = [seeds] if isinstance(seeds, int) else seeds
    ks = [ks] if isinstance(ks, int) else ks
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ZestError(f"{path}: `seeds` must be a list of integers")
    if not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ZestError(f"{path}: `k` must be a list of positive integers")
    cfg["seeds"], cfg["k"] = list(dict.fromkeys(seeds)), sorted(set(ks))
    if "best-metric" in cfg["methods"] and not cfg["metric"]:
        raise ZestError(f"{path}: method best-metric needs `metric` (a metric name, e.g. snip)")
    if cfg["contribution"]:
        cfg["contribution"] = str(_resolve(cfg["contribution"], path))
    elif "contribution" in cfg["methods"]:
        cfg["methods"].remove("contribution")          # only where a sweep is named
    schedule(cfg).check()
    return cfg


def _resolve(p, config_path: Path) -> Path:
    """A path as given if it exists from here, else relative to the config file's folder."""
    p = Path(p)
    if p.is_absolute() or p.exists():
        return p
    return config_path.parent / p


def schedule(cfg: dict):
    from ..training import Schedule
    try:
        return Schedule(epochs=int(cfg["epochs"]), lr=float(cfg["lr"]), optimizer=str(cfg["optimizer"]),
                        batch_size=int(cfg["batch_size"]), momentum=float(cfg["momentum"]),
                        weight_decay=float(cfg["weight_decay"]), bn=str(cfg["bn"]), cache=bool(cfg["cache"]),
                        cache_limit_mb=int(cfg["cache_limit_mb"]), backend=str(cfg["backend"]))
    except (TypeError, ValueError) as e:
        raise ZestError(f"benchmark config: bad schedule setting ({e})") from None


def method_labels(cfg: dict) -> list[tuple[str, str, int | None]]:
    """[(label, method, k)] in table order."""
    out = []
    for m in cfg["methods"]:
        if m in K_METHODS:
            out += [(f"{m}@{k}", m, k) for k in cfg["k"]]
        else:
            out.append((m, m, None))
    return out


# ------------------------------------------------------------------------------------------------ tasks and selections

class Tasks:
    """Datasets loaded once per seed; a fresh model (head initialised from the seed) for every use."""

    def __init__(self, cfg: dict):
        self.cfg, self.by_seed = cfg, {}

    def get(self, seed: int):
        import torch
        from ..models import attach_spec, build_model
        from ..task import load_task
        c = self.cfg
        if seed not in self.by_seed:
            self.by_seed[seed] = load_task(c["model"], c["data"], weights=c["weights"], resolution=c["resolution"],
                                           limit=c["limit"], val_limit=c["val_limit"], seed=seed,
                                           data_root=c["data_root"], max_length=c["max_length"])
        task = self.by_seed[seed]
        torch.manual_seed(seed)
        model = build_model(c["model"], num_classes=task.train.num_classes, weights=c["weights"])
        attach_spec(model, dataclasses.replace(model.zest_spec, preprocess=task.preprocess))
        return dataclasses.replace(task, model=model)


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

def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / label / f"seed{seed}"


def finished(path: Path, epochs: int) -> bool:
    from ..io import read_json
    try:
        return len(read_json(path / "metrics.json", "run")["epochs"]) >= epochs
    except (ZestError, KeyError, TypeError):
        return False


def make_plan(cfg: dict, tasks: Tasks, progress: bool) -> list[dict]:
    from tqdm import tqdm
    memo, runs = {}, []
    items = [(label, m, k, s) for s in cfg["seeds"] for label, m, k in method_labels(cfg)]
    for label, method, k, seed in tqdm(items, desc="selections", disable=not progress, leave=False):
        layers, how = select(method, k, seed, tasks, cfg, memo)
        runs.append({"label": label, "method": method, "k": k, "seed": seed, "layers": layers, "selection": how})
    return runs


def benchmark(config_path, out, *, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) every method × seed of the config into `out`; returns the results record."""
    from tqdm import tqdm
    from ..training import config_hash, finetune
    from ..io import read_json, write_json
    from ..lora import LoraSpec
    cfg = load_benchmark_config(config_path)
    out = Path(out)
    plan_path = out / "plan.json"
    if out.exists() and any(out.iterdir()) and not resume:
        raise ZestError(f"output {out} exists and is not empty (use --resume to continue it)")
    if resume and plan_path.exists():
        plan = read_json(plan_path, "benchmark-plan")
        if config_hash(plan["config"]) != config_hash(_jsonable(cfg)):
            raise ZestError(f"{out} holds a benchmark of a different config; use another --out")
    else:
        plan = None
    if cfg["threads"]:
        import torch
        torch.set_num_threads(int(cfg["threads"]))
    tasks = Tasks(cfg)
    if plan is None:
        plan = {"format": "zest-edge/benchmark-plan", "version": 1, "config": _jsonable(cfg),
                "config_file": str(config_path), "runs": make_plan(cfg, tasks, progress)}
        out.mkdir(parents=True, exist_ok=True)
        write_json(plan_path, plan)
    sched = schedule(cfg)
    start = time.perf_counter()
    bar = tqdm(plan["runs"], desc="benchmark", unit="run", disable=not progress)
    for run in bar:
        path = run_dir(out, run["label"], run["seed"])
        bar.set_postfix_str(f"{run['label']} seed {run['seed']}")
        if finished(path, sched.epochs):
            continue
        partial = path.exists() and (path / "config.json").exists()
        if path.exists() and not partial:
            import shutil
            shutil.rmtree(path)                         # killed before finetune wrote anything
        task = tasks.get(run["seed"])
        lora = LoraSpec(r=int(cfg["lora_r"])) if run["method"] in LORA_METHODS else None
        finetune(task, run["layers"], dataclasses.replace(sched), path, resume=partial,
                 selection={**run["selection"], "benchmark": run["label"]}, progress=False, lora=lora)
        write_json(out / "results.json", summarize(cfg, plan, out, complete=False))
    bar.close()
    record = summarize(cfg, plan, out, complete=True)
    record["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", record)
    from ..io import write_text
    from .benchmark_report import plot_curves, results_table
    write_text(out / "results.md", results_table(record))
    plot_curves(record, out / "curves.png")
    return record


def _jsonable(cfg: dict) -> dict:
    import json
    return json.loads(json.dumps(cfg))


# ------------------------------------------------------------------------------------------------ results

def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(cfg: dict, plan: dict, out: Path, complete: bool) -> dict:
    """Per method: final val acc mean ± std over seeds, params, median step ms, mean per-epoch curve."""
    from ..io import read_json
    methods = []
    for label, method, k in method_labels(cfg):
        runs = [r for r in plan["runs"] if r["label"] == label]
        recs, seeds, layers = [], [], {}
        for r in runs:
            path = run_dir(out, label, r["seed"])
            if not finished(path, int(cfg["epochs"])):
                continue
            recs.append(read_json(path / "metrics.json", "run"))
            seeds.append(r["seed"])
            layers[str(r["seed"])] = r["layers"]
        entry = {"method": label, "kind": method, "k": k, "seeds": seeds, "runs_done": len(recs),
                 "runs_planned": len(runs), "layers": layers,
                 "runs": [str(run_dir(Path("runs"), label, s)) for s in seeds]}
        if recs:
            finals = [rec["epochs"][-1]["val_acc"] for rec in recs]
            bests = [max(e["val_acc"] for e in rec["epochs"]) for rec in recs]
            curves = [[rec["epochs"][0]["val_acc_before"]] + [e["val_acc"] for e in rec["epochs"]] for rec in recs]
            n = min(len(c) for c in curves)
            curve_mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
            curve_std = [statistics.stdev(c[i] for c in curves) if len(curves) > 1 else 0.0 for i in range(n)]
            steps = [e["step_ms_median"] for rec in recs for e in rec["epochs"]]
            params = [rec["trainable_params"] for rec in recs]
            mean, std = _mean_std(finals)
            entry.update({
                "final_val_acc_mean": mean, "final_val_acc_std": std, "final_val_acc": finals,
                "best_val_acc_mean": statistics.fmean(bests), "val_acc_before_mean": curve_mean[0],
                "trainable_params": round(statistics.fmean(params)), "trainable_params_per_seed": params,
                "total_params": recs[0]["total_params"],
                "trainable_share": statistics.fmean(rec["trainable_share"] for rec in recs),
                "step_ms_median": statistics.median(steps), "feature_cache": any(rec["feature_cache"] for rec in recs),
                "curve_mean": curve_mean, "curve_std": curve_std})
        methods.append(entry)
    full = next((m for m in methods if m["kind"] == "full" and m.get("final_val_acc_mean") is not None), None)
    for m in methods:
        ok = full is not None and m.get("final_val_acc_mean") is not None
        m["delta_vs_full"] = m["final_val_acc_mean"] - full["final_val_acc_mean"] if ok else None
        m["speedup_vs_full"] = (full["step_ms_median"] / m["step_ms_median"]
                                if ok and m["step_ms_median"] else None)
    from .machine import cpu_model
    import torch
    return {"format": FORMAT, "version": VERSION, "complete": complete, "name": cfg.get("name"),
            "model": cfg["model"], "data": cfg["data"], "config": _jsonable(cfg),
            "schedule": dataclasses.asdict(schedule(cfg)),
            "machine": {"cpu": cpu_model(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
            "methods": methods}
