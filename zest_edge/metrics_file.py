"""metrics.json: the layer map plus zero-shot metrics from one (or several) minibatches of a task."""
import csv
import io
import time

from .io import write_text
from .layers import layer_map
from .metrics import METRICS, compute_metrics
from .task import Task, sample_batch


def metrics_record(task: Task, *, batch_size: int, metrics: list[str] | None = None, batch_seed: int | None = None) -> dict:
    """The metrics.json record for one minibatch drawn with `batch_seed` (default: the task seed)."""
    seed = task.seed if batch_seed is None else batch_seed
    names = list(METRICS) if metrics is None else metrics
    for n in names:
        METRICS.get_or_fail(n)
    x, y = sample_batch(task.train, batch_size, seed)
    start = time.perf_counter()
    values = compute_metrics(task.model, x, y, metrics=names)
    seconds = time.perf_counter() - start
    layers = [{**layer.to_dict(), "metrics": values[layer.name]} for layer in layer_map(task.model, x[:1])]
    return {"format": "zest-edge/metrics", "version": 1, **task.describe(), "batch_size": batch_size,
            "batch_seed": seed, "metric_names": names, "seconds": round(seconds, 3), "layers": layers}


def write_csv(path, record: dict) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["index", "name", "type", "params", "depth", *record["metric_names"]])
    for layer in record["layers"]:
        writer.writerow([layer["index"], layer["name"], layer["type"], layer["params"], f"{layer['depth']:.4f}",
                         *(repr(layer["metrics"][m]) for m in record["metric_names"])])
    write_text(path, buf.getvalue())
