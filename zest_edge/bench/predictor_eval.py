"""Held-out evaluation of predictors: Kendall τ against contribution scores, beside single-metric baselines and the
ground truth's own noise ceiling.

Schemes: leave-one-model-out (the one to choose by, each held-out model weighted once: leave-one-combination-out
lets the same model leak into training), leave-one-dataset-out, leave-one-combination-out. For each held-out
combination: every candidate predictor (scorer × feature set, CANDIDATES) trained on the rest; (a) every single
metric; (b) the best single metric (sign included) chosen by mean τ on the training combinations; (c) the oracle:
the best single metric on the held-out combination itself (the paper's "Best ZS"); (d) a random ranking (mean of 200
permutations); (e) the combination's ceiling: its measured test-retest τ where a retest sweep exists, else the τ
expected from its per-layer standard errors scaled by the noise the retests measured (`ceilings`). A retested
combination's ground truth is the mean of its two sweeps (`corpus.pool_retests`), in training and as the held-out
target. Training combinations whose ceiling is below 0.5 count `LOW_WEIGHT`; in training that ceiling comes from the
training combinations' retests alone, so a fold trains exactly as `train-predictor --exclude` would.
"""
import numpy as np
from scipy.stats import kendalltau

from ..corpus import combination_name, still_rising
from ..predictor import Combination, train
from ..registry import Registry

CANDIDATES = Registry("candidate")          # "scorer/feature set" -> predictor.train arguments
CANDIDATES.update({f"{scorer}/{features}": {"scorer": scorer, "features": features} for scorer, features in
                   [("pairwise", "v1"), ("pairwise", "v2"), ("lambdarank", "v1"), ("lambdarank", "v2"),
                    ("lambdarank", "structure"), ("lambdarank", "metrics"), ("ensemble", "v2")]})
LOW_CEILING, LOW_WEIGHT = 0.5, 0.25

SCHEMES = Registry("scheme")                # leave-one-X-out: X of a combination
SCHEMES.update({"model": lambda c: c["model"], "dataset": lambda c: c["data"], "combination": combination_name})


def tau(a, b) -> float:
    t = kendalltau(a, b).statistic
    return 0.0 if np.isnan(t) else float(t)


def contributions(c) -> np.ndarray:
    return np.array([l["contribution"] for l in c["layers"]])


def batches(c) -> list[list[dict]]:
    """The combination's layer records once per metric minibatch (corpus v2 keeps several), else once."""
    by_batch = [l.get("metrics_by_batch") for l in c["layers"]]
    if not all(by_batch):
        return [c["layers"]]
    return [[{**l, "metrics": m[i]} for l, m in zip(c["layers"], by_batch)] for i in range(len(by_batch[0]))]


def noise_ceiling(c, noise_per_se: float, draws: int = 200, seed: int = 0) -> float | None:
    """Expected Kendall τ between two sweeps of a combination that differ in training seed: true scores estimated
    by shrinking the observed ones (their variance less the noise variance), each sweep adding N(0, noise²) with
    noise = noise_per_se × the layer's binomial SE. None without standard errors."""
    se = np.array([l.get("contribution_se", np.nan) for l in c["layers"]], dtype=np.float64)
    if not np.all(np.isfinite(se)):
        return None
    noise = noise_per_se * se
    y = contributions(c)
    shrink = np.sqrt(max(y.var() - np.mean(noise ** 2), 0.0) / y.var()) if y.var() > 0 else 0.0
    true = y.mean() + shrink * (y - y.mean())
    rng = np.random.default_rng(seed)
    return float(np.mean([tau(true + rng.normal(0, noise), true + rng.normal(0, noise)) for _ in range(draws)]))


def perfect_ranker_tau(retest_tau: float, sweeps: int = 1) -> float:
    """Expected τ between the true scores and the mean of `sweeps` sweeps, given the test-retest τ of two sweeps: a
    perfect ranker still meets the ground truth's noise, but only once. Kendall τ = (2/π)·arcsin(ρ) for normal
    scores; one sweep's reliability is ρ_retest, the mean of n has nρ/(1 + (n−1)ρ) (Spearman–Brown) and correlates
    with the truth by its square root."""
    rho = max(np.sin(np.pi * retest_tau / 2), 0.0)
    return float(2 / np.pi * np.arcsin(np.sqrt(sweeps * rho / (1 + (sweeps - 1) * rho))))


def ceilings(combos: list[dict]) -> dict:
    """Each combination's ceiling {"tau", "source", "perfect"}: the measured test-retest τ of its two "sweeps" where
    it has a retest (`corpus.pool_retests`), else `noise_ceiling` with the training-seed noise per unit of binomial
    SE measured on the retests (the validation set is shared by both sweeps, so the retest noise is smaller than the
    binomial SE); None without either. "perfect" is what a perfect ranker would score against this ground truth
    (`perfect_ranker_tau`; against the mean of both sweeps where there are two)."""
    measured, diffs, ses = {}, [], []
    for first, again in (c["sweeps"] for c in combos if "sweeps" in c):
        other = {l["name"]: l for l in again["layers"]}
        common = [l for l in first["layers"] if l["name"] in other]
        a = np.array([l["contribution"] for l in common])
        b = np.array([other[l["name"]]["contribution"] for l in common])
        measured[combination_name(first)] = tau(a, b)
        diffs += list(a - b)
        ses += [x for l in common for x in (l.get("contribution_se"), other[l["name"]].get("contribution_se"))]
    noise_per_se = (float(np.sqrt(np.mean(np.square(diffs)) / 2) / np.mean(ses))
                    if diffs and None not in ses else None)
    out = {"noise_per_se": noise_per_se}
    for c in combos:
        name = combination_name(c)
        if name in measured:
            out[name] = {"tau": measured[name], "source": "retest", "sweeps": 2}
        else:
            est = noise_ceiling(c, noise_per_se) if noise_per_se is not None else None
            out[name] = {"tau": est, "source": "estimated" if est is not None else "none", "sweeps": 1}
        tau_ = out[name]["tau"]
        out[name]["perfect"] = None if tau_ is None else perfect_ranker_tau(tau_, out[name]["sweeps"])
    return out


def weight(ceiling: dict) -> float:
    return LOW_WEIGHT if ceiling["tau"] is not None and ceiling["tau"] < LOW_CEILING else 1.0


def training_set(combos: list[dict], ceiling: dict) -> list[Combination]:
    """Combinations as predictor.train takes them: every metric minibatch, weighted by their `ceilings`."""
    return [Combination(batches(c), contributions(c), weight(ceiling[combination_name(c)])) for c in combos]


def metric_values(c, metric: str) -> np.ndarray:
    """One metric over a combination's layers; null (non-finite) values are NaN."""
    return np.array([l["metrics"][metric] for l in c["layers"]], dtype=np.float64)


def metric_taus(c, metric_names) -> dict:
    y = contributions(c)
    return {m: tau(np.nan_to_num(metric_values(c, m), nan=-1e300), y) for m in metric_names}


def top_overlap(scores, y, k=5) -> float:
    return len(set(np.argsort(-scores)[:k]) & set(np.argsort(-y)[:k])) / k


def evaluate(combos: list[dict], metric_names: list[str], schemes=("model", "dataset", "combination"),
             candidates: dict | None = None, **train_kwargs) -> dict:
    """{"ceilings": ..., scheme: {"rows": [per held-out combination], "mean": {...}}} over combinations as
    `corpus.pool_retests` returns them; `train_kwargs` go to every candidate (e.g. epochs for the pairwise scorer)."""
    candidates = candidates or {"pairwise/v1": CANDIDATES["pairwise/v1"]}
    rng = np.random.default_rng(0)
    ceiling = ceilings(combos)
    per_combo_taus = {id(c): metric_taus(c, metric_names) for c in combos}
    results = {"ceilings": ceiling, "low_ceiling": LOW_CEILING, "low_weight": LOW_WEIGHT,
               "still_rising": {combination_name(c): still_rising(c) for c in combos}}
    for scheme in schemes:
        key = SCHEMES[scheme]
        rows = []
        for group in sorted({key(c) for c in combos}):
            test = [c for c in combos if key(c) == group]
            rest = [c for c in combos if key(c) != group]
            if not rest:
                continue
            train_set = training_set(rest, ceilings(rest))     # as train-predictor --exclude
            predictors = {name: train(train_set, metric_names, **kw, **_for(kw["scorer"], train_kwargs))
                          for name, kw in candidates.items()}
            signed = {(m, s): np.mean([s * per_combo_taus[id(c)][m] for c in rest]) for m in metric_names for s in (1, -1)}
            (best_m, best_s) = max(signed, key=signed.get)
            for c in test:
                y = contributions(c)
                taus = per_combo_taus[id(c)]
                oracle = max(((m, s) for m in metric_names for s in (1, -1)), key=lambda ms: ms[1] * taus[ms[0]])
                best_vals = best_s * np.nan_to_num(metric_values(c, best_m), nan=-1e300)
                scores = {name: p.score(c["layers"]) for name, p in predictors.items()}
                rows.append({"held_out": group, "combination": combination_name(c), "layers": len(y),
                             "ceiling_tau": ceiling[combination_name(c)]["tau"],
                             "predictor_tau": {n: tau(s, y) for n, s in scores.items()},
                             "predictor_top5": {n: top_overlap(s, y) for n, s in scores.items()},
                             "best_train_metric": f"{'-' if best_s < 0 else ''}{best_m}",
                             "best_train_metric_tau": best_s * taus[best_m],
                             "best_train_metric_top5": top_overlap(best_vals, y),
                             "oracle_metric": f"{'-' if oracle[1] < 0 else ''}{oracle[0]}",
                             "oracle_tau": oracle[1] * taus[oracle[0]],
                             "random_tau": float(np.mean([tau(rng.permutation(len(y)), y) for _ in range(200)])),
                             "single_metric_taus": taus})
                if "sweeps" in c:           # against each sweep alone: what pooling the retest changed
                    rows[-1]["predictor_tau_by_sweep"] = {n: [tau(s, contributions(x)) for x in c["sweeps"]]
                                                          for n, s in scores.items()}
        if rows:
            mean = {k: float(np.mean([r[k] for r in rows])) for k in
                    ("best_train_metric_tau", "best_train_metric_top5", "oracle_tau", "random_tau")}
            mean["predictor_tau"] = {n: float(np.mean([r["predictor_tau"][n] for r in rows])) for n in candidates}
            mean["predictor_top5"] = {n: float(np.mean([r["predictor_top5"][n] for r in rows])) for n in candidates}
            mean["predictor_tau_by_group"] = {n: group_mean(rows, n) for n in candidates}
            results[scheme] = {"rows": rows, "mean": mean}
    first = next((s for s in schemes if s in results), None)
    if first:
        results["chosen"] = max(candidates, key=lambda n: results[first]["mean"]["predictor_tau_by_group"][n])
        results["chosen_by"] = f"mean leave-one-{first}-out τ, each held-out {first} weighted once"
    return results


def nested(combos: list[dict], metric_names: list[str], candidates: dict, outer: dict, **train_kwargs) -> dict:
    """Selection inside the fold. `evaluate` chooses the candidate on the same leave-one-model-out folds it reports,
    so the chosen one's τ is slightly optimistic; here each held-out model gets the candidate that leave-one-model-out
    on the other models alone picks, scored on its rows as `outer` (evaluate's "model" results) has them."""
    folds = []
    for model in sorted({c["model"] for c in combos}):
        rest = [c for c in combos if c["model"] != model]
        if len({c["model"] for c in rest}) < 2:
            continue
        pick = evaluate(rest, metric_names, schemes=("model",), candidates=candidates, **train_kwargs)["chosen"]
        taus = [r["predictor_tau"][pick] for r in outer["rows"] if r["held_out"] == model]
        folds.append({"held_out": model, "chosen": pick, "tau": float(np.mean(taus))})
    return {"folds": folds, "mean": float(np.mean([f["tau"] for f in folds])) if folds else None}


def group_mean(rows: list[dict], candidate: str) -> float:
    """Mean over the held-out groups (folds) of their rows' mean τ: a new model is one draw of a model, not of a
    combination, so a model with five combinations counts as much as a model with one."""
    groups = sorted({r["held_out"] for r in rows})
    return float(np.mean([np.mean([r["predictor_tau"][candidate] for r in rows if r["held_out"] == g])
                          for g in groups]))


def _for(scorer: str, kwargs: dict) -> dict:
    """The shared training settings a scorer takes (the pairwise settings do not apply to LightGBM)."""
    return kwargs if scorer == "pairwise" else {}


def markdown(results: dict, metric_names: list[str]) -> str:
    """The comparison tables: per scheme, each held-out combination's τ for every candidate and baseline."""
    schemes = [s for s in SCHEMES if s in results]
    if not schemes:
        return "no held-out combination (one model and one dataset only)\n"
    names = list(results[schemes[0]]["mean"]["predictor_tau"])
    out = [f"Chosen: **{results['chosen']}** (by {results['chosen_by']}). Ceiling: the combination's test-retest τ "
           f"(measured, or — marked est. — expected from its standard errors); perfect: the τ a perfect ranker is "
           f"expected to score against this ground truth: one noisy sweep, or — marked ² — the mean of a combination's "
           f"sweep and its retest; training combinations with a ceiling below "
           f"{results['low_ceiling']} count {results['low_weight']}×.", ""]
    if results.get("ground_truth", "probed-rate") != "probed-rate":
        out += [f"Ground truth: {results['ground_truth']} (`corpus.best_of_two_rates`: a layer's better score of the "
                f"rate its combination's probe chose and the rate study's other rate).", ""]
    ceilings_ = results["ceilings"]
    if ceilings_["noise_per_se"] is not None:
        out += [f"Training-seed noise measured on the retests: {ceilings_['noise_per_se']:.2f} × the binomial SE of a "
                f"score (ceilings without a retest are estimated from it).", ""]
    low = [n for n, c in ceilings_.items()
           if n != "noise_per_se" and c["tau"] is not None and c["tau"] < results["low_ceiling"]]
    if low:
        out += [f"Down-weighted (ceiling < {results['low_ceiling']}): {', '.join(low)}.", ""]
    rising = {n: len(r) for n, r in results.get("still_rising", {}).items() if r}
    if rising:
        out += ["Curves not flat — layers whose accuracy still rose by > 2 SE in the last epoch: " +
                ", ".join(f"{n} {k}" for n, k in rising.items()) + ".", ""]
    for scheme in schemes:
        res = results[scheme]
        out += [f"### Leave-one-{scheme}-out (Kendall τ; top-5 overlap in brackets)", "",
                "| held-out combination | layers | ceiling | perfect | " + " | ".join(names) +
                " | best-on-train metric | τ | oracle metric (Best ZS) | τ | random |",
                "|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|"]
        for r in res["rows"]:
            source, perfect = ceilings_[r["combination"]]["source"], ceilings_[r["combination"]]["perfect"]
            ceil = "n/a" if r["ceiling_tau"] is None else f"{r['ceiling_tau']:.2f}" + (" est." * (source == "estimated"))
            perfect = "n/a" if perfect is None else f"{perfect:.2f}" + ("²" * (source == "retest"))
            cells = " | ".join(f"{r['predictor_tau'][n]:.3f} ({r['predictor_top5'][n] * 5:.0f})" for n in names)
            out.append(f"| {r['combination']} | {r['layers']} | {ceil} | {perfect} | {cells} | "
                       f"{r['best_train_metric']} | {r['best_train_metric_tau']:.3f} | {r['oracle_metric']} | "
                       f"{r['oracle_tau']:.3f} | "
                       f"{r['random_tau']:.3f} |")
        m = res["mean"]
        cells = " | ".join(f"**{m['predictor_tau'][n]:.3f}** ({m['predictor_top5'][n] * 5:.1f})" for n in names)
        known = [(r["ceiling_tau"], ceilings_[r["combination"]]["perfect"])
                 for r in res["rows"] if r["ceiling_tau"] is not None]
        ceil_mean, perfect_mean = (f"{np.mean(v):.2f}" for v in zip(*known)) if known else ("", "")
        by_group = " | ".join(f"**{m['predictor_tau_by_group'][n]:.3f}**" for n in names)
        out += [f"| **mean** | | {ceil_mean} | {perfect_mean} | {cells} | | {m['best_train_metric_tau']:.3f} | | "
                f"{m['oracle_tau']:.3f} | {m['random_tau']:.3f} |",
                f"| **mean per held-out {scheme}** | | | | {by_group} | | | | | |", ""]
    if results.get("nested", {}).get("folds"):
        nest, chosen = results["nested"], results["chosen"]
        out += ["### Selection inside the fold (leave-one-model-out)", "",
                f"Each held-out model scored with the candidate that leave-one-model-out on the other models alone "
                f"picks: mean per held-out model **{nest['mean']:.3f}**, against "
                f"{results['model']['mean']['predictor_tau_by_group'][chosen]:.3f} for {chosen} chosen on all folds.",
                "", "| held-out model | chosen on the others | τ (mean of its rows) |", "|---|---|---|"]
        out += [f"| {f['held_out']} | {f['chosen']} | {f['tau']:.3f} |" for f in nest["folds"]]
        out.append("")
    pooled = [r for r in results[schemes[0]]["rows"] if "predictor_tau_by_sweep" in r]
    if pooled:
        chosen = results["chosen"]
        out += [f"### Retested combinations: {chosen} against each sweep and against their mean "
                f"(leave-one-{schemes[0]}-out)", "",
                "| combination | test-retest τ | first sweep | retest | mean of both (the ground truth) |",
                "|---|---|---|---|---|"]
        out += [f"| {r['combination']} | {r['ceiling_tau']:.3f} | {r['predictor_tau_by_sweep'][chosen][0]:.3f} | "
                f"{r['predictor_tau_by_sweep'][chosen][1]:.3f} | {r['predictor_tau'][chosen]:.3f} |" for r in pooled]
        out.append("")
    rows = results[schemes[-1]]["rows"]
    out += ["### Single metrics (τ on each combination)", "",
            "| metric | " + " | ".join(r["combination"] for r in rows) + " | mean |", "|---|" + "---|" * (len(rows) + 1)]
    for m in metric_names:
        vals = [r["single_metric_taus"][m] for r in rows]
        out.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} |")
    return "\n".join(out) + "\n"
