"""The benchmark's results record (format zest-edge/results, version 2) from its plan and its runs' outcomes.

    runs     every planned (method, k, lr, seed) run: status (pending | finished | diverged), final select and test
             accuracy (None when diverged or pending), so the lr choice can be audited
    methods  per method (label, e.g. zest@5): the lr chosen (benchmark_stats.choose_lr over the seeds that finished
             at every lr of the grid), each lr's mean select accuracy and divergences, and at the chosen lr: test
             accuracy per seed (a diverged run counts 0) with mean ± std, the mean test-accuracy curve (epoch 0 = the
             untrained head; diverged runs left out), trainable params, median train-step ms, Δ and speed-up vs full
    paired   per k, ZEST@k − each baseline present (full, random@k, rgn@k, best-metric@k, largest@k, last@k): test
             accuracy differences paired by seed, each method at its own chosen lr (benchmark_stats.paired_difference)
"""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from ..errors import ZestError
from .benchmark_config import OUTCOME, jsonable, method_labels, run_dir, schedule
from .benchmark_stats import choose_lr, paired_difference

FORMAT, VERSION = "zest-edge/results", 2
BASELINES = ("full", "random", "rgn", "best-metric", "largest", "last")


def _outcome(path: Path) -> dict | None:
    from ..io import read_json
    try:
        return read_json(path / OUTCOME, "benchmark-run")
    except ZestError:
        return None


def method_entry(label: str, method: str, k: int | None, cfg: dict, out: Path, runs: dict, layers: dict) -> dict:
    """One method's summary from its `runs` {(lr, seed): outcome or None} in `out` and `layers` {seed: selection}."""
    from ..io import read_json
    grid = cfg["lr_grid"]
    seeds = [s for s in cfg["seeds"] if all(runs.get((lr, s)) for lr in grid)]
    entry = {"method": label, "kind": method, "k": k, "seeds": seeds, "runs_planned": len(runs),
             "runs_done": sum(o is not None for o in runs.values()), "lr": None,
             "layers": {str(s): layers[s] for s in cfg["seeds"]}}
    if not seeds:
        return entry
    scores = {lr: [runs[lr, s]["select_acc"] for s in seeds] for lr in grid}
    lr = choose_lr(scores)
    chosen = [runs[lr, s] for s in seeds]
    ok = [(s, o) for s, o in zip(seeds, chosen) if o["status"] == "finished"]
    test = [o["test_acc"] if o["status"] == "finished" else 0.0 for o in chosen]
    entry.update({
        "lr": lr, "lr_scores": [{"lr": x, "select_acc_mean": statistics.fmean(0.0 if a is None else a for a in v),
                                 "diverged": sum(a is None for a in v)} for x, v in scores.items()],
        "test_acc": test, "test_acc_mean": statistics.fmean(test),
        "test_acc_std": statistics.stdev(test) if len(test) > 1 else 0.0,
        "select_acc_mean": statistics.fmean(0.0 if o["select_acc"] is None else o["select_acc"] for o in chosen),
        "diverged_seeds": [s for s, o in zip(seeds, chosen) if o["status"] == "diverged"],
        "runs": [str(run_dir(Path(), label, lr, s)) for s in seeds]})
    recs = [read_json(run_dir(out, label, lr, s) / "metrics.json", "run") for s, _ in ok]
    if recs:
        curves = [[rec["epochs"][0]["val_acc_before"]] + [e["val_acc"] for e in rec["epochs"]] for rec in recs]
        n = min(len(c) for c in curves)
        steps = [e["step_ms_median"] for rec in recs for e in rec["epochs"]]
        params = [rec["trainable_params"] for rec in recs]
        entry.update({
            "curve_mean": [statistics.fmean(c[i] for c in curves) for i in range(n)],
            "curve_std": [statistics.stdev(c[i] for c in curves) if len(curves) > 1 else 0.0 for i in range(n)],
            "trainable_params": round(statistics.fmean(params)), "trainable_params_per_seed": params,
            "total_params": recs[0]["total_params"],
            "trainable_share": statistics.fmean(rec["trainable_share"] for rec in recs),
            "step_ms_median": statistics.median(steps), "feature_cache": any(rec["feature_cache"] for rec in recs)})
    return entry


def paired(methods: list[dict], ks: list[int]) -> list[dict]:
    """ZEST@k − each baseline present, per k (see the module docstring)."""
    by = {m["method"]: dict(zip(m["seeds"], m["test_acc"])) for m in methods if m["lr"] is not None}
    out = []
    for k in ks:
        if f"zest@{k}" not in by:
            continue
        for base in BASELINES:
            other = "full" if base == "full" else f"{base}@{k}"
            diff = paired_difference(by[f"zest@{k}"], by[other]) if other in by else None
            if diff:
                out.append({"k": k, "method": f"zest@{k}", "baseline": other, **diff})
    return out


def summarize(cfg: dict, plan: dict, out: Path, complete: bool) -> dict:
    """The results record of `out` as it stands (see the module docstring)."""
    from .machine import cpu_model
    import torch
    outcomes = {(r["label"], r["lr"], r["seed"]): _outcome(run_dir(out, r["label"], r["lr"], r["seed"]))
                for r in plan["runs"]}
    runs = []
    for r in plan["runs"]:
        o = outcomes[r["label"], r["lr"], r["seed"]] or {"status": "pending", "select_acc": None, "test_acc": None}
        runs.append({"method": r["label"], "kind": r["method"], "k": r["k"], "lr": r["lr"], "seed": r["seed"],
                     "status": o["status"], "select_acc": o["select_acc"], "test_acc": o["test_acc"],
                     "layers": r["layers"], "path": str(run_dir(Path(), r["label"], r["lr"], r["seed"]))})
    methods = []
    for label, method, k in method_labels(cfg):
        mine = {(lr, s): o for (lab, lr, s), o in outcomes.items() if lab == label}
        layers = {r["seed"]: r["layers"] for r in plan["runs"] if r["label"] == label}
        methods.append(method_entry(label, method, k, cfg, out, mine, layers))
    full = next((m for m in methods if m["kind"] == "full" and m["lr"] is not None), None)
    for m in methods:
        ok = full is not None and m["lr"] is not None
        m["delta_vs_full"] = m["test_acc_mean"] - full["test_acc_mean"] if ok else None
        m["speedup_vs_full"] = (full["step_ms_median"] / m["step_ms_median"]
                                if ok and full.get("step_ms_median") and m.get("step_ms_median") else None)
    sched = dataclasses.asdict(schedule(cfg, cfg["lr_grid"][0]))
    sched.pop("lr")
    return {"format": FORMAT, "version": VERSION, "complete": complete, "name": cfg.get("name"),
            "model": cfg["model"], "data": cfg["data"], "config": jsonable(cfg), "lr_grid": cfg["lr_grid"],
            "schedule": sched,
            "machine": {"cpu": cpu_model(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
            "split": plan["split"], "methods": methods, "paired": paired(methods, cfg["k"]),
            "runs": runs}
