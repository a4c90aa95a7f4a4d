"""The pairwise ZEST predictor: layer features → a score whose order predicts contribution order.

Features (per layer, normalised within its model–dataset combination so they transfer across models):
- for each zero-shot metric: its rank among the combination's layers in [0, 1], and the z-score of
  its log (sign(v)·log(1+|v|/median|v|) for signed metrics) within the combination (raw scales differ by up to 40 orders of magnitude);
- structure: relative depth, layer type one-hot, rank and z-score of log parameter count, kernel size / 7,
  z-score of log channels.
Scorer: f(x) = w2 · tanh(W1 x + b1) + skip · x (hidden=0, the default, is a linear scorer: with a corpus of a
few combinations the hidden units only overfit).
Loss: pairs (a, b) from the same combination whose contributions differ by more than `margin`;
P(a above b) = σ(f(a) − f(b)); logistic loss, weighted by min(|Δcontribution| / 0.05, 1), plus L2 (0.1).
The saved file is JSON (weights as lists); scoring needs only numpy.
"""
import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np

from .errors import ZestError
from .io import write_json

LAYER_TYPES = ("conv", "conv_dw", "conv_pw", "linear")


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


def feature_names(metric_names: list[str]) -> list[str]:
    return ([f"{m}:rank" for m in metric_names] + [f"{m}:zlog" for m in metric_names] +
            ["depth", *(f"type:{t}" for t in LAYER_TYPES), "params:rank", "params:zlog", "kernel", "channels:zlog"])


def layer_features(layers: list[dict], metric_names: list[str]) -> np.ndarray:
    """[n_layers, n_features] for one combination; `layers` are metrics.json layer records."""
    cols = []
    raw = np.array([[l["metrics"][m] for m in metric_names] for l in layers], dtype=np.float64)
    raw = np.where(np.isfinite(raw), raw, np.nan)
    for j in range(raw.shape[1]):        # non-finite values rank lowest and get z-score 0
        cols.append(rank01(np.nan_to_num(raw[:, j], nan=-np.inf)))
    for j in range(raw.shape[1]):
        cols.append(zscore(log_scale(np.nan_to_num(raw[:, j], nan=0.0))))
    params = np.log([max(l["params"], 1) for l in layers])
    cols += [np.array([l["depth"] for l in layers])]
    cols += [np.array([float(l["type"] == t) for l in layers]) for t in LAYER_TYPES]
    cols += [rank01(params), zscore(params), np.array([l["kernel"] / 7 for l in layers]),
             zscore(np.log([max(l["in_channels"] * l["out_channels"], 1) for l in layers]))]
    return np.stack(cols, axis=1).astype(np.float32)


@dataclass
class PredictorWeights:
    skip: list[float]
    W1: list[list[float]]
    b1: list[float]
    w2: list[float]


@dataclass
class PredictorFile:
    """A predictor JSON as read back (its types checked by zest_edge.schema)."""
    KIND: ClassVar[str] = "predictor"
    metric_names: list[str]
    features: list[str]
    weights: PredictorWeights
    provenance: dict = field(default_factory=dict)


class Predictor:
    def __init__(self, metric_names: list[str], weights: dict, provenance: dict | None = None):
        self.metric_names = list(metric_names)
        self.features = feature_names(self.metric_names)
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.provenance = provenance or {}

    def score_features(self, x: np.ndarray) -> np.ndarray:
        w = self.weights
        out = x @ w["skip"]
        if w["W1"].size:
            out = out + np.tanh(x @ w["W1"] + w["b1"]) @ w["w2"]
        return out

    def score(self, layers: list[dict]) -> np.ndarray:
        missing = [m for m in self.metric_names if m not in layers[0]["metrics"]]
        if missing:
            raise ZestError(f"the predictor needs metrics the input lacks: {', '.join(missing)}")
        return self.score_features(layer_features(layers, self.metric_names))

    def save(self, path) -> None:
        write_json(path, {"format": "zest-edge/predictor", "version": 1, "metric_names": self.metric_names,
                          "features": self.features, "architecture": describe_architecture(self.weights),
                          "weights": {k: v.tolist() for k, v in self.weights.items()}, "provenance": self.provenance})

    @classmethod
    def load(cls, path) -> "Predictor":
        from .schema import read_record
        _, obj = read_record(path, PredictorFile)
        try:
            p = cls(obj.metric_names, asdict(obj.weights), obj.provenance)
        except ValueError as e:                              # ragged weight lists
            raise ZestError(f"predictor {path} is malformed ({e})") from None
        if p.features != obj.features:
            raise ZestError(f"predictor {path} was trained on a different feature set than this zest-edge computes")
        n = len(p.features)
        if p.weights["skip"].shape != (n,) or (p.weights["W1"].size and p.weights["W1"].shape[0] != n):
            raise ZestError(f"predictor {path} weights do not match its {n} features")
        return p


def describe_architecture(weights: dict) -> str:
    hidden = weights["W1"].shape[1] if np.asarray(weights["W1"]).size else 0
    return f"f(x) = w2·tanh(W1 x + b1) + skip·x, hidden={hidden}; pairwise logistic loss"


def training_pairs(contrib: np.ndarray, margin: float, full_weight_gap: float = 0.05):
    """Index pairs (i above j) whose contribution gap exceeds `margin`; weight grows with the gap up to 1."""
    diff = contrib[:, None] - contrib[None, :]
    i, j = np.nonzero(diff > margin)
    return i, j, np.minimum(diff[i, j] / full_weight_gap, 1.0)


def train(combos: list[tuple[list[dict], np.ndarray]], metric_names: list[str], *, hidden: int = 0,
          epochs: int = 300, lr: float = 0.03, l2: float = 0.1, margin: float = 0.005, seed: int = 0,
          provenance: dict | None = None) -> Predictor:
    """Fit the scorer on combinations [(layer records, contribution scores)] with the pairwise loss."""
    import torch
    torch.manual_seed(seed)
    xs, pairs = [], []
    offset = 0
    for layers, contrib in combos:
        x = layer_features(layers, metric_names)
        i, j, w = training_pairs(np.asarray(contrib, dtype=np.float64), margin)
        xs.append(x)
        pairs.append((i + offset, j + offset, w))
        offset += len(x)
    if not pairs or sum(len(p[0]) for p in pairs) == 0:
        raise ZestError("no training pairs: contributions are all within the noise margin")
    x = torch.tensor(np.concatenate(xs))
    a = torch.tensor(np.concatenate([p[0] for p in pairs]))
    b = torch.tensor(np.concatenate([p[1] for p in pairs]))
    w = torch.tensor(np.concatenate([p[2] for p in pairs]), dtype=torch.float32)
    w = w / w.mean()
    n = x.shape[1]
    skip = torch.zeros(n, requires_grad=True)
    W1 = (torch.randn(n, hidden) / math.sqrt(n)).requires_grad_(True)
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden) / math.sqrt(max(hidden, 1))).requires_grad_(True)
    params = [skip, W1, b1, w2]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        f = x @ skip + (torch.tanh(x @ W1 + b1) @ w2 if hidden else 0.0)
        loss = (torch.nn.functional.softplus(-(f[a] - f[b])) * w).mean() + l2 * sum((p ** 2).sum() for p in params)
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = {"skip": skip.detach().numpy(), "W1": W1.detach().numpy(), "b1": b1.detach().numpy(), "w2": w2.detach().numpy()}
    prov = {"hidden": hidden, "epochs": epochs, "lr": lr, "l2": l2, "margin": margin, "seed": seed,
            "pairs": int(len(a)), "final_loss": float(loss.detach()), **(provenance or {})}
    return Predictor(metric_names, weights, prov)
