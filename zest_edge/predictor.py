"""The ZEST predictor: layer features (zest_edge.features) → a score whose order predicts contribution order.

Scorers (registered in SCORERS; a predictor file names its scorer and the features it was trained on):
- "pairwise": f(x) = w2 · tanh(W1 x + b1) + skip · x (hidden=0 is linear). Loss on pairs (a, b) of one
  combination whose contributions differ by more than `margin`: P(a above b) = σ(f(a) − f(b)), logistic loss
  weighted by min(|Δcontribution| / 0.05, 1) and the combination's weight, plus L2.
- "lambdarank": LightGBM's LambdaRank, one query per combination, labels = `grades` rank grades of the
  contributions within it; saved as LightGBM's own text model inside the JSON.
- "ensemble": the mean of its members' scores, each turned into a rank in [0, 1] within the combination.
Training data: `Combination(layers, contribution, weight)`; with several metric minibatches per combination
(corpus `metrics_by_batch`) each batch is its own copy, so the scorer learns what survives batch-to-batch noise.
Files are JSON (format zest-edge/predictor, version 2; version 1 files are pairwise scorers and still load).
"""
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .errors import ZestError
from .features import feature_matrix, feature_set, metrics_read, rank01
from .io import write_json
from .registry import Registry

SCORERS = Registry("scorer")


class Combination(NamedTuple):
    """One model–dataset combination to learn from: layer records (one list per metric minibatch), the
    contribution of each layer, and how much the combination counts (e.g. lower when its ground truth is noisy)."""
    batches: list[list[dict]]
    contribution: np.ndarray
    weight: float = 1.0


@dataclass
class PairwiseJSON:
    skip: list[float]
    W1: list[list[float]]
    b1: list[float]
    w2: list[float]


@SCORERS.register("pairwise")
class Pairwise:
    JSON = PairwiseJSON

    def __init__(self, skip, W1, b1, w2):
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in dict(skip=skip, W1=W1, b1=b1, w2=w2).items()}

    def score(self, x: np.ndarray) -> np.ndarray:
        out = x @ self.w["skip"]
        if self.w["W1"].size:
            out = out + np.tanh(x @ self.w["W1"] + self.w["b1"]) @ self.w["w2"]
        return out

    def to_json(self) -> dict:
        return {k: v.tolist() for k, v in self.w.items()}

    @classmethod
    def from_json(cls, obj: PairwiseJSON, n_features: int, where: str, field: str) -> "Pairwise":
        try:
            p = cls(obj.skip, obj.W1, obj.b1, obj.w2)
        except ValueError as e:                             # ragged weight lists
            raise ValueError(f"pairwise weights are malformed ({e})") from None
        if p.w["skip"].shape != (n_features,) or (p.w["W1"].size and p.w["W1"].shape[0] != n_features):
            raise ValueError(f"weights do not match its {n_features} features")
        return p

    @classmethod
    def fit(cls, groups, *, hidden: int = 0, epochs: int = 300, lr: float = 0.03, l2: float = 0.1,
            margin: float = 0.005, seed: int = 0) -> tuple["Pairwise", dict]:
        """groups: [(features [n, f], contribution [n], weight)]."""
        import torch
        torch.manual_seed(seed)
        xs, a, b, w, offset = [], [], [], [], 0
        for x, y, weight in groups:
            i, j, pair_w = training_pairs(y, margin)
            xs.append(x)
            a.append(i + offset)
            b.append(j + offset)
            w.append(pair_w * weight)
            offset += len(x)
        a, b, w = (np.concatenate(v) for v in (a, b, w))
        if len(a) == 0:
            raise ZestError("no training pairs: contributions are all within the noise margin")
        x, a, b = torch.tensor(np.concatenate(xs)), torch.tensor(a), torch.tensor(b)
        w = torch.tensor(w / w.mean(), dtype=torch.float32)
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
        info = {"hidden": hidden, "epochs": epochs, "lr": lr, "l2": l2, "margin": margin, "seed": seed,
                "pairs": int(len(a)), "final_loss": float(loss.detach())}
        return cls(*(p.detach().numpy() for p in params)), info


def training_pairs(contrib: np.ndarray, margin: float, full_weight_gap: float = 0.05):
    """Index pairs (i above j) whose contribution gap exceeds `margin`; weight grows with the gap up to 1."""
    diff = contrib[:, None] - contrib[None, :]
    i, j = np.nonzero(diff > margin)
    return i, j, np.minimum(diff[i, j] / full_weight_gap, 1.0)


@dataclass
class LambdaRankJSON:
    lightgbm_model: str


@SCORERS.register("lambdarank")
class LambdaRank:
    JSON = LambdaRankJSON

    def __init__(self, model: str):
        import lightgbm
        self.model = model
        self.booster = lightgbm.Booster(model_str=model)

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.booster.predict(x, num_threads=1)

    def to_json(self) -> dict:
        return {"lightgbm_model": self.model}

    @classmethod
    def from_json(cls, obj: LambdaRankJSON, n_features: int, where: str, field: str) -> "LambdaRank":
        import lightgbm
        try:
            p = cls(obj.lightgbm_model)
        except lightgbm.basic.LightGBMError as e:
            raise ValueError(f"its LightGBM model does not load ({str(e).splitlines()[0]})") from None
        if p.booster.num_feature() != n_features:
            raise ValueError(f"its model has {p.booster.num_feature()} features, the file lists {n_features}")
        return p

    @classmethod
    def fit(cls, groups, *, trees: int = 200, leaves: int = 7, learning_rate: float = 0.05, grades: int = 8,
            colsample: float = 0.5, min_data_in_leaf: int = 10, seed: int = 0) -> tuple["LambdaRank", dict]:
        import lightgbm
        x = np.concatenate([g[0] for g in groups])
        label = np.concatenate([np.floor(rank01(g[1]) * (grades - 1) + 0.5) for g in groups]).astype(int)
        weight = np.concatenate([np.full(len(g[0]), g[2]) for g in groups])
        params = {"objective": "lambdarank", "num_leaves": leaves, "learning_rate": learning_rate,
                  "feature_fraction": colsample, "min_data_in_leaf": min_data_in_leaf, "seed": seed,
                  "deterministic": True, "num_threads": 1, "verbose": -1,
                  "label_gain": list(range(grades)), "lambdarank_truncation_level": 64}
        data = lightgbm.Dataset(x, label=label, group=[len(g[0]) for g in groups], weight=weight)
        booster = lightgbm.train(params, data, num_boost_round=trees)
        info = {"trees": trees, "leaves": leaves, "learning_rate": learning_rate, "grades": grades,
                "colsample": colsample, "min_data_in_leaf": min_data_in_leaf, "seed": seed,
                "lightgbm": lightgbm.__version__}
        return cls(booster.model_to_string()), info


@dataclass
class MemberJSON:
    scorer: str
    model: dict


@dataclass
class EnsembleJSON:
    members: list[MemberJSON]


@SCORERS.register("ensemble")
class Ensemble:
    JSON = EnsembleJSON

    def __init__(self, members: list):
        self.members = members

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.mean([rank01(m.score(x)) for m in self.members], axis=0)

    def to_json(self) -> dict:
        return {"members": [{"scorer": SCORER_NAMES[type(m)], "model": m.to_json()} for m in self.members]}

    @classmethod
    def from_json(cls, obj: EnsembleJSON, n_features: int, where: str, field: str) -> "Ensemble":
        if not obj.members:
            raise ValueError("an ensemble needs members")
        return cls([scorer_from_json(m.scorer, m.model, n_features, where, f"{field}.members[{i}].model")
                    for i, m in enumerate(obj.members)])

    @classmethod
    def fit(cls, groups, *, members=(("pairwise", {}), ("lambdarank", {}))) -> tuple["Ensemble", dict]:
        fitted = [SCORERS.get_or_fail(name).fit(groups, **kwargs) for name, kwargs in members]
        return cls([m for m, _ in fitted]), {"members": [{"scorer": n, **info} for (n, _), (_, info) in zip(members, fitted)]}


SCORER_NAMES = {cls: name for name, cls in SCORERS.items()}


def scorer_from_json(name: str, obj: dict, n_features: int, where: str, field: str):
    """A scorer from its JSON (`obj`, at `field` in the file `where`), types checked against the scorer's JSON
    dataclass (ZestError naming the field); ValueError if the values do not fit together."""
    from .schema import parse
    cls = SCORERS.get_or_fail(name)
    checked = parse(cls.JSON, obj, where, field=field)
    return cls.from_json(checked, n_features, where, field)


@dataclass
class PredictorFile:
    """A predictor JSON as read back (its types checked by zest_edge.schema); version 1 keeps `weights`."""
    KIND: ClassVar[str] = "predictor"
    metric_names: list[str]
    features: list[str]
    version: int = 1
    scorer: str = "pairwise"
    model: dict | None = None
    weights: dict | None = None
    provenance: dict = field(default_factory=dict)


class Predictor:
    def __init__(self, metric_names: list[str], features: list[str], scorer: Any, provenance: dict | None = None):
        self.metric_names = list(metric_names)
        self.features = list(features)
        self.scorer = scorer
        self.provenance = provenance or {}

    def score(self, layers: list[dict]) -> np.ndarray:
        return self.scorer.score(feature_matrix(layers, self.features))

    @property
    def metrics_read(self) -> set[str]:
        """The metrics `score` needs in each layer record (a subset of `metric_names`, empty on structure alone)."""
        return metrics_read(self.features)

    def save(self, path) -> None:
        write_json(path, {"format": "zest-edge/predictor", "version": 2, "metric_names": self.metric_names,
                          "features": self.features, "scorer": SCORER_NAMES[type(self.scorer)],
                          "model": self.scorer.to_json(), "provenance": self.provenance})

    @classmethod
    def load(cls, path) -> "Predictor":
        from .schema import read_record
        _, obj = read_record(path, PredictorFile)
        known = set(feature_set("v2", obj.metric_names))
        if not set(obj.features) <= known:
            raise ZestError(f"predictor {path} was trained on a different feature set than this zest-edge computes "
                            f"(e.g. {sorted(set(obj.features) - known)[0]!r})")
        if obj.version not in (1, 2):
            raise ZestError(f"predictor {path} has version {obj.version}; this zest-edge reads versions 1 and 2")
        name, model, key = ("pairwise", obj.weights, "weights") if obj.version == 1 else (obj.scorer, obj.model, "model")
        if model is None:
            raise ZestError(f"{path}: {key} is missing")
        try:
            scorer = scorer_from_json(name, model, len(obj.features), str(path), key)
        except ValueError as e:
            raise ZestError(f"predictor {path} is malformed: {e}") from None
        return cls(obj.metric_names, obj.features, scorer, obj.provenance)


def train(combos: list[Combination], metric_names: list[str], *, scorer: str = "pairwise", features: str = "v1",
          provenance: dict | None = None, **scorer_kwargs) -> Predictor:
    """Fit a scorer (SCORERS) on combinations, with the named feature set (zest_edge.features.feature_set)."""
    names = feature_set(features, metric_names)
    groups = [(feature_matrix(layers, names), np.asarray(c.contribution, dtype=np.float64), c.weight)
              for c in combos for layers in c.batches]
    model, info = SCORERS.get_or_fail(scorer).fit(groups, **scorer_kwargs)
    prov = {"scorer": scorer, "feature_set": features, "combinations": len(combos), "groups": len(groups),
            **info, **(provenance or {})}
    return Predictor(metric_names, names, model, prov)
