"""metrics.json: the layer map plus zero-shot metrics from one (or several) minibatches of a task."""
import csv
import io
import math
import time

from .io import write_text
from .layers import layer_map
from .metrics import METRICS, compute_metrics
from .task import Task, sample_batch


def metrics_record(task: Task, *, batch_size: int, metrics: list[str] | None = None, batch_seed: int | None = None) -> dict:
    """The metrics.json record for one minibatch drawn with `batch_seed` (default: the task seed), which also seeds
    the pass's dropout masks: the same task and seed give the same record."""
    seed = task.seed if batch_seed is None else batch_seed
    names = list(METRICS) if metrics is None else metrics
    for n in names:
        METRICS.get_or_fail(n)
    x, y = sample_batch(task.train, batch_size, seed)
    start = time.perf_counter()
    values = compute_metrics(task.model, x, y, metrics=names, seed=seed)
    seconds = time.perf_counter() - start
    layers = [finite_metrics({**layer.to_dict(), "metrics": values[layer.name]})
               for layer in layer_map(task.model, x[:1])]
    return {"format": "zest-edge/metrics", "version": 1, **task.describe(), "batch_size": batch_size,
            "batch_seed": seed, "metric_names": names, "seconds": round(seconds, 3), "layers": layers}


def finite_metrics(layer: dict) -> dict:
    """A layer record with each NaN/inf metric as null (JSON has no NaN) and listed under `nonfinite`."""
    bad = [m for m, v in layer["metrics"].items() if not math.isfinite(v)]
    if bad:
        layer["metrics"] = {m: None if m in bad else v for m, v in layer["metrics"].items()}
        layer["nonfinite"] = bad
    return layer


def nonfinite_note(record: dict) -> str | None:
    """One line saying which metrics were not finite for how many layers (written as null), or None."""
    counts = {}
    for layer in record["layers"]:
        for m in layer.get("nonfinite", []):
            counts[m] = counts.get(m, 0) + 1
    if not counts:
        return None
    return ("note: not finite, written as null (ranked lowest): " +
            ", ".join(f"{m} for {n} of {len(record['layers'])} layers" for m, n in counts.items()))


def write_csv(path, record: dict) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "name", "type", "params", "depth", *record["metric_names"]])
    for layer in record["layers"]:
        writer.writerow([layer["index"], layer["name"], layer["type"], layer["params"], f"{layer['depth']:.4f}",
                         *("" if layer["metrics"][m] is None else repr(layer["metrics"][m])
                           for m in record["metric_names"])])
    write_text(path, buf.getvalue())
