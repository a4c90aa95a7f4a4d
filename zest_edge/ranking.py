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
    ranked = [{"name": layers[i]["name"], "rank": r + 1, "score": float(scores[i]), "params": layers[i]["params"],
               "index": layers[i]["index"], "type": layers[i]["type"]} for r, i in enumerate(order)]
    selected = [l["name"] for l in ranked[:top_k]]
    trainable = sum(l["params"] for l in ranked[:top_k]) + head_params
    total = record["total_params"]
    return {"format": "zest-edge/ranking", "version": 1, "model": record["model"], "data": record["data"],
            "resolution": record.get("resolution"), "max_length": record.get("max_length"), "batch_size": record["batch_size"], "batch_seed": record["batch_seed"],
            "ranked_by": ranked_by, "top_k": top_k, "selected": selected, "trainable_params": trainable,
            "total_params": total, "trainable_share": trainable / total, "layers": ranked}


def rank_task(task: Task, *, top_k: int, predictor=None, metric: str | None = None, batch_size: int | None = None,
              batch_seed: int | None = None) -> dict:
    """Rank the task's layers with the predictor (default: the shipped one) or a single metric."""
    model = task.model
    head = dict(model.named_modules())[model.zest_spec.head]
    batch_size = batch_size or model.zest_spec.metric_batch          # None: the model's own (32 for most)
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
