"""Zero-shot metrics: one registered function per metric, one value per layer, from one minibatch.

    @measure("snip", needs="data")
    def snip(t): return (t.grad * t.weight).abs().sum()

`compute_metrics(model, inputs, targets)` runs only the passes the requested metrics need.
"""
from .core import METRICS, NEEDS, compute_metrics, measure
from . import zero_shot  # noqa: F401  (registers the metrics)

__all__ = ["METRICS", "NEEDS", "compute_metrics", "measure"]
