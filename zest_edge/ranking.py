"""Ranking: one minibatch → metrics → scores → ranked layers and a top-k selection (ranking.json)."""
from pathlib import Path

import numpy as np

from .errors import ZestError
from .layers import check_top_k
from .metrics import METRICS
from .metrics_file import metrics_record
from .predictor import Predictor
from .task import Task

DEFAULT_PREDICTOR = Path(__file__).parent / "predictors" / "default.json"


def load_predictor(path=None) -> Predictor:
    path = Path(path) if path else DEFAULT_PREDICTOR
    if not path.is_file():
        raise ZestError(f"predictor not found: {path}" + (" (the default predictor ships with the package; "
                                                           "reinstall zest-edge)" if path == DEFAULT_PREDICTOR else ""))
    return Predictor.load(path)


def metric_scores(layers: list[dict], metric: str) -> np.ndarray:
    """Rank by one metric; a leading '-' ranks low values first."""
    sign, name = (-1.0, metric[1:]) if metric.startswith("-") else (1.0, metric)
    METRICS.get_or_fail(name)
    values = np.array([l["metrics"][name] for l in layers], dtype=np.float64)
    return sign * np.nan_to_num(values, nan=-np.inf)


def rank_record(record: dict, scores: np.ndarray, top_k: int, ranked_by: str, head_params: int) -> dict:
    """ranking.json from a metrics record and one score per layer (higher = train it)."""
    layers = record["layers"]
    check_top_k(top_k, len(layers), record["model"])
    order = np.argsort(-scores, kind="stable")
    ranked = [{"name": layers[i]["name"], "rank": r + 1, **score_fields(scores[i], layers[i]),
               "params": layers[i]["params"], "index": layers[i]["index"], "type": layers[i]["type"]}
              for r, i in enumerate(order)]
    selected = [l["name"] for l in ranked[:top_k]]
    trainable = sum(l["params"] for l in ranked[:top_k]) + head_params
    total = record["total_params"]
    return {"format": "zest-edge/ranking", "version": 1, "model": record["model"], "data": record["data"],
            "resolution": record.get("resolution"), "max_length": record.get("max_length"), "batch_size": record["batch_size"], "batch_seed": record["batch_seed"],
            "ranked_by": ranked_by, "top_k": top_k, "selected": selected, "trainable_params": trainable,
            "total_params": total, "trainable_share": trainable / total, "layers": ranked}


def score_fields(score: float, layer: dict) -> dict:
    """{"score": ...}; a non-finite score (from a non-finite metric) is null, with the metrics that caused it."""
    if np.isfinite(score):
        return {"score": float(score)}
    return {"score": None, "nonfinite": layer.get("nonfinite", ["score"])}


def rank_task(task: Task, *, top_k: int, predictor=None, metric: str | None = None, batch_size: int | None = None,
              batch_seed: int | None = None) -> dict:
    """Rank the task's layers with the predictor (default: the shipped one) or a single metric."""
    model = task.model
    head = dict(model.named_modules())[model.zest_spec.head]
    batch_size = model.zest_spec.metric_batch if batch_size is None else batch_size   # None: the model's own
    if metric:
        names, scorer, ranked_by = [metric.lstrip("-")], None, f"metric:{metric}"
    else:
        scorer = predictor if isinstance(predictor, Predictor) else load_predictor(predictor)
        names, ranked_by = scorer.metric_names, f"predictor:{scorer.provenance.get('id', 'custom')}"
    record = metrics_record(task, batch_size=min(batch_size, len(task.train)), metrics=names, batch_seed=batch_seed)
    record["total_params"] = sum(p.numel() for p in model.parameters())
    scores = metric_scores(record["layers"], metric) if metric else scorer.score(record["layers"])
    return rank_record(record, scores, top_k, ranked_by, sum(p.numel() for p in head.parameters()))


def peft_config(record: dict, head: str, r: int = 8) -> dict:
    """`peft.LoraConfig(**result)` adapts just the selected modules (full names) and trains the head (LoRA + ZEST)."""
    from .lora import config_dict
    return config_dict(record["selected"], head, r=r, alpha=2 * r)


def plot_ranking(record: dict, path) -> None:
    """ranking.png: every layer's score over depth (execution order), the selected ones marked and labelled with
    their parameter counts, so the choice and its reason are visible at a glance."""
    from . import plots
    layers = sorted(record["layers"], key=lambda l: l["index"])
    chosen = set(record["selected"])
    fig, (ax,) = plots.figure(1, 1, width=max(6.4, 0.09 * len(layers) + 3) + 3, height=3.8)
    xs = [l["index"] for l in layers]
    ys = [l["score"] if l["score"] is not None else float("nan") for l in layers]
    ax.plot(xs, ys, "-", color=plots.color(7), linewidth=1, zorder=1)
    ax.scatter(xs, ys, s=12, color=plots.color(0), zorder=2, label="layer score")
    picked = [l for l in layers if l["name"] in chosen]
    ax.scatter([l["index"] for l in picked], [l["score"] for l in picked], s=60, facecolors="none",
               edgecolors=plots.color(3), linewidths=1.5, zorder=3, label=f"selected (top {len(picked)})")
    for l in picked:                                   # the rank at the point, the names in one box (no overlaps)
        ax.annotate(str(l["rank"]), (l["index"], l["score"]), fontsize=7, xytext=(0, 7), textcoords="offset points",
                    ha="center", color=plots.color(3))
    listing = "\n".join(f"{l['rank']}. {l['name']} ({l['params']:,} params)" for l in sorted(picked, key=lambda l: l["rank"]))
    ax.text(1.02, 1.0, listing, transform=ax.transAxes, fontsize=7, va="top", family="monospace",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel(f"score ({record['ranked_by']})")
    ax.set_title(f"{record['model']} on {record['data']}: trainable {100 * record['trainable_share']:.1f}% "
                 f"of {record['total_params']:,} parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    plots.save(fig, path)
