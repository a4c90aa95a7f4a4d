"""Layer features for the predictor, each under a name, normalised within one model–dataset combination so they
transfer across models (raw metric scales differ by up to 40 orders of magnitude).

Families (m = every zero-shot metric):
    m:rank            the metric's rank among the combination's layers, in [0, 1] (non-finite values rank lowest)
    m:zlog            z-score of its log (sign(v)·log(1+|v|/median|v|) for signed metrics; non-finite → 0)
    m:per_param:zlog  the same for the metric divided by the layer's parameter count
    depth             position in execution order, in [0, 1]
    type:T            one-hot layer type (conv, conv_dw, conv_pw, linear)
    params:rank, params:zlog, kernel (size / 7), channels:zlog (log in·out channels)
    channel_ratio     log(out / in channels): > 0 for an expanding pointwise conv, < 0 for a projection — the
                      layer's position inside an inverted-residual block
    width:rank        rank of the output width: the stage, in models that widen with depth
A predictor file lists the feature names it was trained on; `feature_matrix` computes exactly those columns.
"""
import numpy as np

from .errors import ZestError

LAYER_TYPES = ("conv", "conv_dw", "conv_pw", "linear")
STRUCTURE_V1 = ["depth", *(f"type:{t}" for t in LAYER_TYPES), "params:rank", "params:zlog", "kernel", "channels:zlog"]
STRUCTURE_V2 = STRUCTURE_V1 + ["channel_ratio", "width:rank"]


def log_scale(v: np.ndarray) -> np.ndarray:
    """log v for positive metrics, sign(v)·log(1 + |v|/median|v|) for signed ones; after a z-score neither
    depends on the metric's overall scale."""
    if np.all(v > 0):
        return np.log(v)
    scale = np.median(np.abs(v))
    return np.sign(v) * np.log1p(np.abs(v) / (scale if scale > 0 else 1.0))


def zscore(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def rank01(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return (rankdata(v) - 1) / max(len(v) - 1, 1)


def feature_set(name: str, metric_names: list[str]) -> list[str]:
    """The named feature sets: "v1" (metric ranks and log z-scores, v1 structure), "v2" (v1 + metrics per
    parameter + block position and stage), "structure" (v2 structure alone), "metrics" (v2 without structure)."""
    if name == "v1":
        return [f"{m}:rank" for m in metric_names] + [f"{m}:zlog" for m in metric_names] + STRUCTURE_V1
    if name == "v2":
        return feature_set("v1", metric_names)[:-len(STRUCTURE_V1)] + [
            f"{m}:per_param:zlog" for m in metric_names] + STRUCTURE_V2
    if name == "structure":
        return list(STRUCTURE_V2)
    if name == "metrics":
        return feature_set("v2", metric_names)[:-len(STRUCTURE_V2)]
    raise ZestError(f"unknown feature set {name!r}; known: v1, v2, structure, metrics")


def metrics_read(names: list[str]) -> set[str]:
    """The metrics these features are computed from (structure features read none)."""
    return {n.split(":")[0] for n in names if n not in STRUCTURE_V2}


def feature_matrix(layers: list[dict], names: list[str]) -> np.ndarray:
    """[n_layers, len(names)] for one combination; `layers` are metrics.json layer records."""
    columns = _columns(layers, metrics_read(names))
    unknown = [n for n in names if n not in columns]
    if unknown:
        raise ZestError(f"unknown predictor feature {unknown[0]!r}")
    return np.stack([columns[n] for n in names], axis=1).astype(np.float32)


def _columns(layers: list[dict], metric_names: set[str]) -> dict[str, np.ndarray]:
    missing = sorted(m for m in metric_names if m not in layers[0]["metrics"])
    if missing:
        raise ZestError(f"the predictor needs metrics the input lacks: {', '.join(missing)}")
    params = np.array([max(l["params"], 1) for l in layers], dtype=np.float64)
    cols = {}
    for m in metric_names:
        raw = np.array([l["metrics"][m] for l in layers], dtype=np.float64)
        raw = np.where(np.isfinite(raw), raw, np.nan)
        cols[f"{m}:rank"] = rank01(np.nan_to_num(raw, nan=-np.inf))
        cols[f"{m}:zlog"] = zscore(log_scale(np.nan_to_num(raw, nan=0.0)))
        cols[f"{m}:per_param:zlog"] = zscore(log_scale(np.nan_to_num(raw, nan=0.0) / params))
    c_in = np.array([max(l["in_channels"], 1) for l in layers], dtype=np.float64)
    c_out = np.array([max(l["out_channels"], 1) for l in layers], dtype=np.float64)
    cols.update({"depth": np.array([l["depth"] for l in layers], dtype=np.float64),
                 **{f"type:{t}": np.array([float(l["type"] == t) for l in layers]) for t in LAYER_TYPES},
                 "params:rank": rank01(np.log(params)), "params:zlog": zscore(np.log(params)),
                 "kernel": np.array([l["kernel"] / 7 for l in layers]), "channels:zlog": zscore(np.log(c_in * c_out)),
                 "channel_ratio": np.log(c_out / c_in), "width:rank": rank01(c_out)})
    return cols
