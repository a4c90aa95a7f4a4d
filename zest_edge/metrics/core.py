"""The metric registry, `@measure`, and `compute_metrics` (the metrics register from zero_shot.py)."""
import math
import warnings

import torch
from torch import nn

from ..layers import layer_map, resolve_layers
from ..models import get_spec
from ..registry import Registry
from .probe import LayerTensors, data_pass, preserved, synflow_pass

METRICS = Registry("metric")
NEEDS = ("weight", "data", "hvp", "synflow")


def measure(name: str, needs: str = "weight"):
    """Register `fn(LayerTensors) -> scalar tensor` as metric `name`; `needs` names the pass it reads."""
    assert needs in NEEDS, needs

    def wrap(fn):
        fn.needs = needs
        return METRICS.register(name)(fn)
    return wrap


def compute_metrics(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    metrics: list[str] | None = None, layers: list[str] | None = None,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """{layer_name: {metric: value}} for the candidate layers (all, or `layers`) in execution order.

    The data pass runs in train mode, so dropout draws masks: they come from `seed` (the global RNG is left as it
    was), and the same model, batch and seed give the same values."""
    names = list(METRICS) if metrics is None else metrics
    fns = [METRICS.get_or_fail(n) for n in names]
    all_layers = layer_map(model, inputs[:1])
    chosen = all_layers if layers is None else resolve_layers(all_layers, layers)
    needs = {fn.needs for fn in fns}
    modules = dict(model.named_modules())
    head = get_spec(model).head
    with preserved(model):
        tensors = {layer.name: LayerTensors(weight=modules[layer.name].weight.detach()) for layer in chosen}
        if needs & {"data", "hvp"}:
            # G and H·G are taken over every candidate weight plus the head, as foresight does.
            probed = {layer.name: modules[layer.name] for layer in all_layers}
            probed.update({n: m for n, m in modules.items() if n.startswith(head) and isinstance(m, (nn.Linear, nn.Conv2d))})
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                passed = data_pass(model, probed, inputs, targets, with_hvp="hvp" in needs)
            tensors = {n: passed[n] for n in tensors}
        if "synflow" in needs:
            for n, (g, w) in synflow_pass(model, list(tensors), inputs).items():
                tensors[n].synflow_grad, tensors[n].synflow_weight = g, w
        result = {n: {m: float(fn(t)) for m, fn in zip(names, fns)} for n, t in tensors.items()}
    bad = sorted({m for values in result.values() for m, v in values.items() if not math.isfinite(v)})
    if bad:
        warnings.warn(f"non-finite values in metrics: {', '.join(bad)} (reported as-is)")
    return result

