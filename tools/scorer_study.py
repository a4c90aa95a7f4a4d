"""Scorer variants beside the shipped LambdaRank, by leave-one-model-out Kendall τ on a corpus: is the scorer the
limit? Variants: LightGBM's other ranking objectives (rank_xendcg; regression on the within-combination rank),
five bagged LambdaRank models averaged as ranks, coarser and finer relevance grades, and ranking from the mean of
the predictor's ranks over every metric minibatch of the held-out combination instead of the first one.

Usage: python tools/scorer_study.py [--corpus corpus] [--features v2] --out reports/scorer_study
(tools/make_reports.sh passes the feature set of the candidate eval-predictor chose.)
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from zest_edge.bench.predictor_eval import batches, ceilings, contributions, tau, training_set
from zest_edge.corpus import combination_name, load_corpus, pool_retests
from zest_edge.features import rank01
from zest_edge.io import report_main
from zest_edge.metrics import METRICS
from zest_edge.predictor import SCORERS, LambdaRank, train


class LightGBMVariant(LambdaRank):
    """LambdaRank's file format, with another objective and optional bagging (scores: mean rank over the bags)."""

    @classmethod
    def fit(cls, groups, *, objective: str = "lambdarank", bags: int = 1, grades: int = 8, seed: int = 0):
        import lightgbm
        x = np.concatenate([g[0] for g in groups])
        ranks = [rank01(g[1]) for g in groups]
        label = (np.concatenate(ranks) if objective == "regression" else
                 np.concatenate([np.floor(r * (grades - 1) + 0.5) for r in ranks]).astype(int))
        params = {"objective": objective, "num_leaves": 7, "learning_rate": 0.05, "feature_fraction": 0.5,
                  "min_data_in_leaf": 10, "deterministic": True, "num_threads": 1, "verbose": -1}
        if objective == "lambdarank":
            params.update(label_gain=list(range(grades)), lambdarank_truncation_level=64)
        if bags > 1:
            params.update(bagging_fraction=0.7, bagging_freq=1)
        data = lightgbm.Dataset(x, label=label, group=[len(g[0]) for g in groups],
                                weight=np.concatenate([np.full(len(g[0]), g[2]) for g in groups]))
        boosters = [lightgbm.train({**params, "seed": seed + b}, data, num_boost_round=200) for b in range(bags)]
        model = cls(boosters[0].model_to_string())
        model.boosters = boosters
        return model, {}

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.mean([rank01(b.predict(x, num_threads=1)) for b in self.boosters], axis=0)


VARIANTS = {"lambdarank (shipped)": {"scorer": "lambdarank"},
            "rank_xendcg": {"scorer": "lightgbm-variant", "objective": "rank_xendcg"},
            "regression on rank": {"scorer": "lightgbm-variant", "objective": "regression"},
            "lambdarank, 5 bags": {"scorer": "lightgbm-variant", "bags": 5},
            "lambdarank, 4 grades": {"scorer": "lambdarank", "grades": 4},
            "lambdarank, 16 grades": {"scorer": "lambdarank", "grades": 16}}
BATCH_MEAN = "lambdarank, mean over metric batches"


def study(combos: list[dict], features: str = "v2") -> list[dict]:
    """One row per combination (as `pool_retests` returns them): its τ under every variant (on `features`), each
    trained on the other models' combinations."""
    SCORERS["lightgbm-variant"] = LightGBMVariant          # registered for this study only
    try:
        return _study(combos, features)
    finally:
        del SCORERS["lightgbm-variant"]


def _study(combos: list[dict], features: str) -> list[dict]:
    names = [m for m in METRICS if all(m in c["metric_names"] for c in combos)]
    rows = []
    for model in sorted({c["model"] for c in combos}):
        rest = [c for c in combos if c["model"] != model]
        train_set = training_set(rest, ceilings(rest))
        fitted = {v: train(train_set, names, features=features, **kw) for v, kw in VARIANTS.items()}
        for c in (c for c in combos if c["model"] == model):
            y = contributions(c)
            taus = {v: tau(p.score(c["layers"]), y) for v, p in fitted.items()}
            shipped = fitted["lambdarank (shipped)"]
            taus[BATCH_MEAN] = tau(np.mean([rank01(shipped.score(b)) for b in batches(c)], axis=0), y)
            rows.append({"combination": combination_name(c), "tau": taus})
    return rows


def markdown(rows: list[dict], features: str) -> str:
    variants = list(rows[0]["tau"])
    out = [f"# Scorer variants, leave-one-model-out Kendall τ ({features} features)", "",
           "| held-out combination | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    out += [f"| {r['combination']} | " + " | ".join(f"{r['tau'][v]:.3f}" for v in variants) + " |" for r in rows]
    out.append("| **mean** | " + " | ".join(f"**{np.mean([r['tau'][v] for r in rows]):.3f}**" for v in variants) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("corpus"))
    ap.add_argument("--features", default="v2", help="feature set every variant trains on")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    def build():
        combos = pool_retests(args.corpus, load_corpus(args.corpus))
        rows = study(combos, args.features)
        return ({"format": "zest-edge/scorer-study", "version": 1, "features": args.features,
                 "corpus": [c["file"] for c in combos], "rows": rows}, markdown(rows, args.features))
    return report_main(args.out, "study", build)


if __name__ == "__main__":
    sys.exit(main())
