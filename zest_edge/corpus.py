"""The corpus: one file per model–dataset combination with contribution scores and zero-shot metrics.

corpus/<name>.json = {"format": "zest-edge/combination", "version": 2, "model", "data", "sweep": sweep header,
  "lr": the probed rate, "probes": [probe rows], "head_acc", "head_se", "sweep_seconds", "metric_batches": [seeds],
  "layers": [{layer map fields, "contribution", "contribution_se", "curve", "val_loss_curve",
  "metrics": {first batch}, "metrics_by_batch": [{...} per batch]}]}
"""
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .contrib import HEAD, load_sweep
from .errors import ZestError
from .io import write_json
from .schema import read_record
from .metrics_file import metrics_record
from .task import Task


def combination_record(task: Task, sweep_dir, *, batch_size: int, batch_seeds: list[int]) -> dict:
    """Join a finished sweep with metrics from several minibatches (the first is the one the predictor uses)."""
    sweep = load_sweep(sweep_dir)
    records = [metrics_record(task, batch_size=batch_size, batch_seed=s) for s in batch_seeds]
    layers = records[0]["layers"]
    missing = [l["name"] for l in layers if l["name"] not in sweep["rows"]] + ([HEAD] if HEAD not in sweep["rows"] else [])
    if missing:
        raise ZestError(f"sweep in {sweep_dir} is unfinished: {len(missing)} layers missing (e.g. {missing[0]})")
    out = []
    for i, layer in enumerate(layers):
        row = sweep["rows"][layer["name"]]
        out.append({**layer, "contribution": row["acc"], "contribution_se": row["se"], "curve": row["curve"],
                    "val_loss_curve": row["val_loss_curve"],
                    "metrics_by_batch": [r["layers"][i]["metrics"] for r in records]})
    head = sweep["rows"][HEAD]
    jobs = list(sweep["rows"].values()) + sweep["probes"]
    return {"format": "zest-edge/combination", "version": 2, "model": task.model_name, "data": task.data_spec,
            "sweep": sweep["config"], "lr": sweep["lr"],
            "probes": [{k: p[k] for k in ("layer", "lr", "acc", "curve")} for p in sweep["probes"]],
            "head_acc": head["acc"], "head_se": head["se"],
            "sweep_seconds": round(sum(r["seconds"] for r in jobs), 1),
            "metric_batches": batch_seeds, "batch_size": batch_size, "metric_names": records[0]["metric_names"],
            "metric_seconds": [r["seconds"] for r in records], "layers": out}


@dataclass
class CombinationLayer:
    name: str
    contribution: float
    metrics: dict


@dataclass
class CombinationFile:
    """A corpus combination file as read back (its types checked by zest_edge.schema)."""
    KIND: ClassVar[str] = "combination"
    model: str
    data: str
    layers: list[CombinationLayer]


def combination_name(c: dict) -> str:
    """model/data@size/n<training examples>, e.g. efficientnet_lite0/fashion_mnist@64px/n2000 (the count where the
    sweep recorded it): combinations that differ only in training-set size are distinct."""
    task = c["sweep"]["task"]
    size = f"{task['resolution']}px" if "resolution" in task else f"{task['max_length']}tok"
    count = f"/n{task['train_examples']}" if "train_examples" in task else ""
    return f"{c['model']}/{c['data']}@{size}{count}"


def still_rising(c: dict, ses: float = 2.0) -> list[str] | None:
    """Layers whose accuracy still rose by more than `ses` standard errors over the last epoch (None without
    standard errors or curves): the protocol wants flat curves, and on a rising curve the score says how fast a layer
    learns more than where it ends."""
    if any("contribution_se" not in l or len(l.get("curve", [])) < 2 for l in c["layers"]):
        return None
    return [l["name"] for l in c["layers"] if l["curve"][-1] - l["curve"][-2] > ses * l["contribution_se"]]


def load_corpus(path) -> list[dict]:
    """Every combination file in a folder (or one file), checked."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ZestError(f"no combination files (*.json) in {path}")
    combos = []
    for f in files:
        c, _ = read_record(f, CombinationFile)
        if len(c["layers"]) < 2:
            raise ZestError(f"{f}: fewer than 2 layers")
        c["file"] = f.name
        combos.append(c)
    return combos


def write_combination(path, record: dict) -> None:
    write_json(path, record)


def pool_retests(corpus, combos: list[dict]) -> list[dict]:
    """The combinations, each retested one (corpus/retest/<same file name>) with its ground truth pooled: a layer's
    "contribution" is the mean of both sweeps (half the training-seed noise variance; its other fields stay the first
    sweep's), and "sweeps" keeps [first, retest] for the test-retest τ."""
    out = []
    for c in combos:
        path = Path(corpus) / "retest" / c["file"]
        if not path.is_file():
            out.append(c)
            continue
        again = load_corpus(path)[0]
        second = {l["name"]: l["contribution"] for l in again["layers"]}
        missing = [l["name"] for l in c["layers"] if l["name"] not in second]
        if missing:
            raise ZestError(f"{path}: retest lacks {len(missing)} of the combination's layers (e.g. {missing[0]})")
        layers = [{**l, "contribution": (l["contribution"] + second[l["name"]]) / 2} for l in c["layers"]]
        out.append({**c, "layers": layers, "sweeps": [c, again]})
    return out


def better_rate(c: dict, other: dict) -> dict:
    """`c` with each layer's "contribution" the higher of its own and its score in `other` (the same combination at
    another rate, corpus/rate_study/<same file>): the better-of-two-rates score."""
    at_other = {l["name"]: l["contribution"] for l in other["layers"]}
    lacking = [l["name"] for l in c["layers"] if l["name"] not in at_other]
    if lacking:
        raise ZestError(f"rate_study/{other['file']}: lacks {len(lacking)} of the combination's layers "
                        f"(e.g. {lacking[0]})")
    return {**c, "layers": [{**l, "contribution": max(l["contribution"], at_other[l["name"]])} for l in c["layers"]]}


def best_of_two_rates(corpus, combos: list[dict]) -> list[dict]:
    """The better-of-two-rates ground truth (a candidate protocol, README "One learning rate per combination"): the
    combinations (as `pool_retests` returns them, at the rate their probe chose), each layer's "contribution" the
    higher of its score there and at the other rate, corpus/rate_study/<same file> (pooled with rate_study/retest/).
    "sweeps" become the per-training-seed maxima [max(first, other first), max(retest, other retest)] where both
    rates were retested (the test-retest τ of this score), else are dropped (its ceiling is then estimated)."""
    studies = Path(corpus) / "rate_study"
    missing = [c["file"] for c in combos if not (studies / c["file"]).is_file()]
    if missing:
        raise ZestError(f"the better-of-two-rates ground truth needs {studies}/<file> for every combination: "
                        f"{len(missing)} lack one (e.g. {missing[0]}; sweep configs/corpus/rate_study/ or --exclude)")
    out = []
    for c in combos:
        other = pool_retests(studies, load_corpus(studies / c["file"]))[0]
        pooled = {k: v for k, v in better_rate(c, other).items() if k != "sweeps"}
        if "sweeps" in c and "sweeps" in other:
            pooled["sweeps"] = [better_rate(a, b) for a, b in zip(c["sweeps"], other["sweeps"])]
        out.append({**pooled, "rates": [c["lr"], other["lr"]]})
    return out
