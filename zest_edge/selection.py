"""Which layers train: the one place that turns a request into layer names (top-k checked by layers.check_top_k).

    select_layers(task, "rank", k=5)                       rank now (shipped predictor, or `predictor=` / `metric=`)
    select_layers(task, "ranking", ranking="r.json", k=5)  the top k of a ranking (file or record; k: its own)
    select_layers(task, "layers", names=["a", "b"])        exactly these
    select_layers(task, "random", k=5, seed=0)             k distinct layers drawn by random.Random(seed)
    select_layers(task, "last", k=5)                       the last k in execution order
    select_layers(task, "largest", k=5)                    the k with the most parameters
    select_layers(task, "head-only") / ("full")            the head alone / everything

The result's `layers` are in execution order (None for full fine-tuning, [] for the head alone); `info` says how they
were chosen (it goes into run configs and manifests); `ranking` is the ranking record when one was used or made.
`task` may be a bare model where no ranking is computed.
"""
import random
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from .errors import ZestError
from .layers import check_top_k, layer_map, resolve_layers

METHODS = ("full", "head-only", "layers", "ranking", "rank", "random", "last", "largest")
K_METHODS = ("rank", "random", "last", "largest")          # k is required; "ranking" defaults to its own


@dataclass
class Selection:
    layers: list[str] | None
    info: dict
    ranking: dict | None = field(default=None, repr=False)


def ranked_names(record: dict) -> list[str]:
    return [l["name"] for l in sorted(record["layers"], key=lambda l: l["rank"])]


def select_layers(task, method: str, *, k: int | None = None, names=None, ranking=None, predictor=None,
                  metric: str | None = None, seed: int = 0, batch_size: int | None = None, flag: str = "--top-k") -> Selection:
    """Resolve one selection request (see the module docstring) against the task's (or model's) layer map;
    `flag` names k in error messages."""
    from .models import get_spec
    model = task if isinstance(task, nn.Module) else task.model      # a module may itself have a `.model` child
    model_name = get_spec(model).name
    if method not in METHODS:
        raise ZestError(f"unknown selection {method!r}; choose from: {', '.join(METHODS)}")
    if method == "full":
        return Selection(None, {"method": "full"})
    if method == "head-only":
        return Selection([], {"method": "head-only"})
    lmap = layer_map(model)
    if k is not None or method in K_METHODS:
        check_top_k(k, len(lmap), model_name, flag)
    record, info = None, {"method": method, "k": k}
    if method == "layers":
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names or [])
        names = [n for n in names if n]
        if not names:
            raise ZestError("the layer list names no layer")
        if len(set(names)) != len(names):
            raise ZestError("the layer list names a layer twice")
        chosen, info = names, {"method": "layers"}
    elif method == "ranking":
        record = ranking if isinstance(ranking, dict) else load_ranking(ranking, model_name)
        k = k if k is not None else check_top_k(len(record.get("selected", [])), len(lmap), model_name, "the ranking's selection")
        chosen = ranked_names(record)[:k]
        info = {"method": "ranking", "k": k, "ranked_by": record.get("ranked_by"),
                **({"ranking": str(ranking)} if not isinstance(ranking, dict) else {})}
    elif method == "rank":
        if not hasattr(task, "train"):
            raise ZestError("ranking layers now needs a task (model + data)")
        from .ranking import rank_task
        record = rank_task(task, top_k=k, predictor=predictor, metric=metric, batch_size=batch_size)
        chosen, info = record["selected"], {"method": "rank", "k": k, "ranked_by": record["ranked_by"]}
    elif method == "random":
        chosen, info = random.Random(seed).sample([l.name for l in lmap], k), {"method": "random", "k": k, "seed": seed}
    elif method == "last":
        chosen = [l.name for l in lmap[-k:]]
    else:
        chosen = [l.name for l in sorted(lmap, key=lambda l: (-l.params, l.index))[:k]]
    return Selection([l.name for l in resolve_layers(lmap, chosen, head=get_spec(model).head)], info, record)


@dataclass
class RankedLayer:
    name: str
    rank: int
    score: float | None = None


@dataclass
class RankingFile:
    """ranking.json as `zest-edge rank` writes it (the fields a selection reads)."""
    KIND: ClassVar[str] = "ranking"
    model: str
    layers: list[RankedLayer]
    selected: list[str] = field(default_factory=list)
    ranked_by: str | None = None


def load_ranking(path, model_name: str) -> dict:
    """A ranking.json for `model_name`, its fields checked (schema.RankingFile)."""
    from .schema import read_record
    record, ranking = read_record(path, RankingFile)
    if ranking.model != model_name:
        raise ZestError(f"{path} ranks layers of {ranking.model}, not {model_name}")
    if not ranking.layers:
        raise ZestError(f"{path}: `layers` is empty")
    return record
