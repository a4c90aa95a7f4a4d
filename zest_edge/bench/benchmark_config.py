"""The benchmark's config (configs/eval_*.yaml) and the names its files share: methods, the run folders, the
Schedule every run uses. See zest_edge.bench.benchmark for what the benchmark does."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import ZestError

OUTCOME = "outcome.json"
METHODS = ("full", "zest", "random", "best-metric", "rgn", "largest", "last", "head-only", "contribution", "lora",
           "lora-zest")
K_METHODS = ("zest", "random", "best-metric", "rgn", "largest", "last", "contribution", "lora-zest")
LORA_METHODS = ("lora", "lora-zest")          # LoRA (rank `lora_r`) on every layer / on zest@k's layers


@dataclasses.dataclass
class BenchmarkConfig:
    """A benchmark YAML: its types are checked by zest_edge.schema, unknown settings refused."""
    # what to train on
    name: str | None = None
    model: str | None = None
    weights: str | None = None
    data: str | None = None
    data_root: str | None = None
    limit: int | None = None
    val_limit: int | None = None
    resolution: int | None = None
    max_length: int | None = None
    # how (one Schedule for every method)
    epochs: int = 3
    lr: float = 0.01
    lr_grid: list[float] | None = None       # learning rates tried for every method (instead of `lr`)
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    bn: str = "frozen"
    cache: bool = True
    cache_limit_mb: int = 4096
    backend: str = "auto"
    threads: int | None = None
    # what to compare
    seeds: int | list[int] = dataclasses.field(default_factory=lambda: [0])
    k: int | list[int] = dataclasses.field(default_factory=lambda: [3, 5, 10])
    methods: str | list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    metric: str | None = None
    predictor: str | None = None
    contribution: str | None = None
    rank_batch_size: int = 32
    lora_r: int = 8
    # free text
    heldout_note: str | None = None
    notes: str | None = None
    sizing: str | None = None


def load_benchmark_config(path) -> dict:
    """The YAML config with defaults filled in and every value checked."""
    from ..config import load_config
    from ..schema import parse
    path = Path(path)
    raw = load_config(path, None)
    if "lr" in raw and "lr_grid" in raw:
        raise ZestError(f"{path}: give `lr` (one learning rate) or `lr_grid` (several), not both")
    cfg = dataclasses.asdict(parse(BenchmarkConfig, raw, str(path), unknown="refuse"))
    lr, grid = cfg.pop("lr"), cfg["lr_grid"]
    if grid is not None and not grid:
        raise ZestError(f"{path}: `lr_grid` must list at least one learning rate")
    cfg["lr_grid"] = sorted({float(x) for x in grid or [lr]})
    for key in ("model", "data"):
        if not cfg[key]:
            raise ZestError(f"{path}: `{key}` is required")
    methods = cfg["methods"]
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ZestError(f"{path}: unknown method {unknown[0]!r}; choose from: {', '.join(METHODS)}")
    cfg["methods"] = list(dict.fromkeys(methods))
    seeds, ks = cfg["seeds"], cfg["k"]
    seeds = [seeds] if isinstance(seeds, int) else seeds
    ks = [ks] if isinstance(ks, int) else ks
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ZestError(f"{path}: `seeds` must be a list of integers")
    if not ks or not all(isinstance(k, int) and k >= 1 for k in ks):
        raise ZestError(f"{path}: `k` must be a list of positive integers")
    cfg["seeds"], cfg["k"] = list(dict.fromkeys(seeds)), sorted(set(ks))
    if "best-metric" in cfg["methods"] and not cfg["metric"]:
        raise ZestError(f"{path}: method best-metric needs `metric` (a metric name, e.g. snip)")
    if cfg["contribution"]:
        cfg["contribution"] = str(_resolve(cfg["contribution"], path))
    elif "contribution" in cfg["methods"]:
        cfg["methods"].remove("contribution")          # only where a sweep is named
    for lr in cfg["lr_grid"]:
        schedule(cfg, lr).check()
    return cfg


def _resolve(p, config_path: Path) -> Path:
    """A path as given if it exists from here, else relative to the config file's folder."""
    p = Path(p)
    if p.is_absolute() or p.exists():
        return p
    return config_path.parent / p


def schedule(cfg: dict, lr: float):
    """The one Schedule of every run, at learning rate `lr`."""
    from ..training import Schedule
    try:
        return Schedule(epochs=int(cfg["epochs"]), lr=float(lr), optimizer=str(cfg["optimizer"]),
                        batch_size=int(cfg["batch_size"]), momentum=float(cfg["momentum"]),
                        weight_decay=float(cfg["weight_decay"]), bn=str(cfg["bn"]), cache=bool(cfg["cache"]),
                        cache_limit_mb=int(cfg["cache_limit_mb"]), backend=str(cfg["backend"]))
    except (TypeError, ValueError) as e:
        raise ZestError(f"benchmark config: bad schedule setting ({e})") from None


def method_labels(cfg: dict) -> list[tuple[str, str, int | None]]:
    """[(label, method, k)] in table order."""
    out = []
    for m in cfg["methods"]:
        if m in K_METHODS:
            out += [(f"{m}@{k}", m, k) for k in cfg["k"]]
        else:
            out.append((m, m, None))
    return out


def run_dir(out: Path, label: str, lr: float, seed: int) -> Path:
    """One run's folder: out/runs/<method>/lr<lr>/seed<S>."""
    return out / "runs" / label / f"lr{lr:g}" / f"seed{seed}"


def jsonable(cfg: dict) -> dict:
    """`cfg` as it reads back from JSON (tuples become lists)."""
    import json
    return json.loads(json.dumps(cfg))
