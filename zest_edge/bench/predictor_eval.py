"""Held-out evaluation of the predictor: Kendall τ against contribution scores, beside single-metric baselines.

Schemes: leave-one-combination-out, leave-one-dataset-out, leave-one-model-out. For each held-out combination:
the predictor trained on the rest; (a) every single metric; (b) the best single metric (sign included) chosen
by mean τ on the training combinations; (c) the oracle: the best single metric on the held-out combination
itself (the paper's "Best ZS"); (d) a random ranking (mean of 200 permutations). Plus top-5 overlap.
"""
import numpy as np
from scipy.stats import kendalltau

from ..predictor import train

def size(c) -> str:
    task = c["sweep"]["task"]
    return f"{task['resolution']}px" if "resolution" in task else f"{task['max_length']}tok"


SCHEMES = {"combination": lambda c: f"{c['model']}/{c['data']}@{size(c)}",
           "dataset": lambda c: c["data"], "model": lambda c: c["model"]}


def tau(a, b) -> float:
    t = kendalltau(a, b).statistic
    return 0.0 if np.isnan(t) else float(t)


def contributions(c) -> np.ndarray:
    return np.array([l["contribution"] for l in c["layers"]])


def metric_taus(c, metric_names) -> dict:
    y = contributions(c)
    return {m: tau(np.nan_to_num(metric_values(c, m), nan=-1e300), y) for m in metric_names}


def metric_values(c, metric: str) -> np.ndarray:
    """One metric over a combination's layers; null (non-finite) values are NaN."""
    return np.array([l["metrics"][metric] for l in c["layers"]], dtype=np.float64)


def top_overlap(scores, y, k=5) -> float:
    return len(set(np.argsort(-scores)[:k]) & set(np.argsort(-y)[:k])) / k


def evaluate(combos: list[dict], metric_names: list[str], schemes=("combination", "dataset", "model"), **train_kwargs) -> dict:
    rng = np.random.default_rng(0)
    per_combo_taus = {id(c): metric_taus(c, metric_names) for c in combos}
    results = {}
    for scheme in schemes:
        key = SCHEMES[scheme]
        rows = []
        for group in sorted({key(c) for c in combos}):
            test = [c for c in combos if key(c) == group]
            rest = [c for c in combos if key(c) != group]
            if not rest:
                continue
            predictor = train([(c["layers"], contributions(c)) for c in rest], metric_names, **train_kwargs)
            signed = {(m, s): np.mean([s * per_combo_taus[id(c)][m] for c in rest]) for m in metric_names for s in (1, -1)}
            (best_m, best_s) = max(signed, key=signed.get)
            for c in test:
                y = contributions(c)
                scores = predictor.score(c["layers"])
                taus = per_combo_taus[id(c)]
                oracle = max(((m, s) for m in metric_names for s in (1, -1)), key=lambda ms: ms[1] * taus[ms[0]])
                best_vals = best_s * np.nan_to_num(metric_values(c, best_m), nan=-1e300)
                rows.append({"held_out": group, "combination": SCHEMES["combination"](c), "layers": len(y),
                             "predictor_tau": tau(scores, y), "predictor_top5": top_overlap(scores, y),
                             "best_train_metric": f"{'-' if best_s < 0 else ''}{best_m}",
                             "best_train_metric_tau": best_s * taus[best_m],
                             "best_train_metric_top5": top_overlap(best_vals, y),
                             "oracle_metric": f"{'-' if oracle[1] < 0 else ''}{oracle[0]}",
                             "oracle_tau": oracle[1] * taus[oracle[0]],
                             "random_tau": float(np.mean([tau(rng.permutation(len(y)), y) for _ in range(200)])),
                             "single_metric_taus": taus})
        if rows:
            mean = {k: float(np.mean([r[k] for r in rows])) for k in
                    ("predictor_tau", "predictor_top5", "best_train_metric_tau", "best_train_metric_top5", "oracle_tau", "random_tau")}
            results[scheme] = {"rows": rows, "mean": mean}
    return results


def markdown(results: dict, metric_names: list[str]) -> str:
    out = []
    for scheme, res in results.items():
        out += [f"### Leave-one-{scheme}-out", "",
                "| held-out combination | layers | ZEST τ | ZEST top-5 | best-on-train metric | τ | oracle metric (Best ZS) | τ | random τ |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            out.append(f"| {r['combination']} | {r['layers']} | {r['predictor_tau']:.3f} | {r['predictor_top5']:.1f} | "
                       f"{r['best_train_metric']} | {r['best_train_metric_tau']:.3f} | {r['oracle_metric']} | "
                       f"{r['oracle_tau']:.3f} | {r['random_tau']:.3f} |")
        m = res["mean"]
        out += [f"| **mean** | | **{m['predictor_tau']:.3f}** | {m['predictor_top5']:.2f} | | {m['best_train_metric_tau']:.3f} | "
                f"| {m['oracle_tau']:.3f} | {m['random_tau']:.3f} |", ""]
    first = next(iter(results.values()), None)
    if first:
        out += ["### Single metrics (τ on each combination)", "",
                "| metric | " + " | ".join(r["combination"] for r in first["rows"]) + " | mean |",
                "|---|" + "---|" * (len(first["rows"]) + 1)]
        for m in metric_names:
            vals = [r["single_metric_taus"][m] for r in first["rows"]]
            out.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} |")
    return "\n".join(out) + "\n"
