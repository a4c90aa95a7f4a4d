"""The model registry and the spec every model carries (the builders register from their own modules)."""
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..data import Preprocess
from ..errors import ZestError, first_line
from ..registry import Registry

MODELS = Registry("model")
RANDOM = "random"                           # `weights=RANDOM`: the architecture with random init
PREPROCESS: dict[str, Preprocess] = {}      # input each registered model expects; default: ImageNet 224 px


@dataclass(frozen=True)
class ModelSpec:
    name: str
    head: str                                  # qualified name of the classification head module
    preprocess: Preprocess = field(default_factory=Preprocess)
    weights: str = "random"                    # where the backbone weights came from
    # Optional split of forward() into stages: [(module-name prefixes, fn)], each fn maps the previous stage's
    # output to the next. Stage boundaries are where everything downstream depends only on the passed value,
    # which lets the sparse engine run a frozen prefix without autograd and cache its output.
    stages: Callable[[nn.Module], list[tuple[tuple[str, ...], Callable]]] | None = None
    role: Callable[[str], str | None] | None = None    # a layer's role in its block (e.g. q, k, v, o), by name
    metric_batch: int = 32                     # examples in the one metrics minibatch unless one asks otherwise


def attach_spec(model: nn.Module, spec: ModelSpec) -> nn.Module:
    model.zest_spec = spec
    return model


def with_preprocess(model: nn.Module, **changes) -> nn.Module:
    """The model with its spec's preprocessing changed (e.g. resolution=64); None values change nothing."""
    from dataclasses import replace
    changes = {k: v for k, v in changes.items() if v is not None}
    spec = get_spec(model)
    if spec.preprocess.kind != "image":
        changes.pop("resolution", None)
    return attach_spec(model, replace(spec, preprocess=replace(spec.preprocess, **changes))) if changes else model


def get_spec(model: nn.Module) -> ModelSpec:
    spec = getattr(model, "zest_spec", None)
    if spec is None:
        raise ZestError("model has no zest_spec: build it with zest_edge.models.build_model or call attach_spec")
    return spec


def build_model(name: str, *, num_classes: int, weights: str | None = None) -> nn.Module:
    """Build a registered model; `weights` is a local state_dict path that overrides the default weights, or
    "random" for random init."""
    if num_classes < 2:
        raise ZestError(f"num_classes must be at least 2, got {num_classes}")
    return MODELS.get_or_fail(name)(num_classes=num_classes, weights=weights)


def model_preprocess(name: str) -> Preprocess:
    """The preprocessing of a registered model, known without building it."""
    MODELS.get_or_fail(name)
    return PREPROCESS.get(name, Preprocess())


def load_state_dict_file(path) -> dict:
    """Load a state_dict with `weights_only=True`, turning every failure into a one-line ZestError."""
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise ZestError(f"weights file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise ZestError(f"cannot read weights {path}: {first_line(e)}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ZestError(f"{path} is not a state_dict (a dict of tensors)")
    return sd


def load_backbone(model: nn.Module, state_dict: dict, head: str, source: str) -> None:
    """Load everything but the head; a missing or mis-shaped key is a one-line error naming it."""
    own = {k: v for k, v in model.state_dict().items()
           if not k.startswith(head + ".") and not (k.endswith("num_batches_tracked") and k not in state_dict)}
    given = {k: v for k, v in state_dict.items() if not k.startswith(head + ".")}
    missing = sorted(set(own) - set(given))
    if missing:
        raise ZestError(f"weights {source} do not match this model: missing {len(missing)} keys, e.g. {missing[0]}")
    for k, v in own.items():
        if given[k].shape != v.shape:
            raise ZestError(f"weights {source} do not match this model: {k} has shape "
                            f"{tuple(given[k].shape)}, expected {tuple(v.shape)}")
    nonfinite = [k for k in own if given[k].is_floating_point() and not torch.isfinite(given[k]).all()]
    if nonfinite:
        raise ZestError(f"weights {source} hold NaN or infinite values in {len(nonfinite)} tensors, e.g. {nonfinite[0]}")
    model.load_state_dict({**model.state_dict(), **{k: given[k] for k in own}})

