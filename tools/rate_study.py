"""Rate study: does the protocol's one learning rate per combination decide a layer's contribution score?

For each corpus/rate_study/X.json (corpus/X.json's sweep at another rate, outside the corpus) it compares the ground
truth at the probed rate (corpus/X.json, pooled with its retest as eval-predictor does) with the one at the other
rate (pooled with rate_study/retest/X.json where there is one) and with a layer's better score of the two
(`corpus.better_rate`, as `--ground-truth best-of-two-rates` takes it), and scores it with the given predictor that
has not seen its model (trained without it: `train-predictor --exclude`) against all three. The per-layer maximum
of two noisy scores is biased upward, more for noisier scores: the retest at the other rate measures what that does
to the ceiling (eval-predictor --ground-truth best-of-two-rates).

Usage: python tools/rate_study.py --predictor P.json [--predictor Q.json ...] [--corpus corpus]
       [--out reports/rate_study]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from zest_edge.bench.predictor_eval import contributions, tau, top_overlap
from zest_edge.corpus import better_rate, combination_name, load_corpus, pool_retests
from zest_edge.errors import ZestError
from zest_edge.io import report_main
from zest_edge.predictor import Predictor

MOVED = 0.01        # a layer "moves" when its score at the other rate differs by more than this


def models_seen(predictor: Predictor, corpus: Path) -> set[str]:
    """The models of the combinations a predictor was trained on (its provenance names their files in `corpus`)."""
    return {load_corpus(corpus / f)[0]["model"] for f in predictor.provenance.get("corpus", [])}


def unseen(predictors: dict[Path, Predictor], model: str, corpus: Path, seen: dict[Path, set[str]]) -> Path:
    """The first predictor that has not seen `model`; `seen` caches models_seen across calls."""
    for path, predictor in predictors.items():
        if path not in seen:
            seen[path] = models_seen(predictor, corpus)
        if model not in seen[path]:
            return path
    raise ZestError(f"every predictor given has seen {model}; train one without it (train-predictor --exclude)")


def study(predictors: dict[Path, Predictor], seen: dict[Path, set[str]], corpus: Path, other: dict) -> dict:
    """One combination: its probed-rate ground truth against `other` (the same combination at another rate)."""
    path = corpus / other["file"]
    if not path.is_file():
        raise ZestError(f"{corpus / 'rate_study' / other['file']} has no corpus combination {path} to compare with")
    probed = pool_retests(corpus, load_corpus(path))[0]
    other = pool_retests(corpus / "rate_study", [other])[0]
    names = [l["name"] for l in probed["layers"]]
    at_other = {l["name"]: l["contribution"] for l in other["layers"]}
    if set(at_other) != set(names):
        raise ZestError(f"{other['file']}: its layers differ from {path}'s")
    y_probed = contributions(probed)
    y_other = np.array([at_other[n] for n in names])
    truths = {"probed": y_probed, "other": y_other, "best_of_two": contributions(better_rate(probed, other))}
    chosen = unseen(predictors, probed["model"], corpus, seen)
    scores = predictors[chosen].score(probed["layers"])
    moved = [{"layer": n, "probed": float(a), "other": float(b)} for n, a, b in zip(names, y_probed, y_other)
             if abs(b - a) > MOVED]
    return {"combination": combination_name(probed), "file": other["file"], "predictor": str(chosen),
            "probed_lr": probed["lr"], "other_lr": other["lr"], "layers": len(names),
            "probed_sweeps": len(probed.get("sweeps", [probed])), "other_sweeps": len(other.get("sweeps", [other])),
            "head_acc": {"probed": probed["head_acc"], "other": other["head_acc"]},
            "rates_agree_tau": tau(y_probed, y_other),
            "predictor_tau": {k: tau(scores, y) for k, y in truths.items()},
            "predictor_top5": {k: round(5 * top_overlap(scores, y)) for k, y in truths.items()},
            "better_at_other": int(np.sum(y_other > y_probed)), "moved": moved}


def markdown(rows: list[dict]) -> str:
    out = ["# Rate study", "", "Ground truth at each rate is the mean of the combination's sweeps there (the other "
           "rate: one sweep unless marked ²); best of two: a layer's higher score. Predictor: one that has not seen "
           "the model.",
           "",
           "| combination | probed lr | other lr | rates agree τ | layers better at other | predictor | τ: probed "
           "| other | best of two |", "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        t = r["predictor_tau"]
        out.append(f"| {r['combination']} | {r['probed_lr']:g} | {r['other_lr']:g}{'²' * (r['other_sweeps'] > 1)} | "
                   f"{r['rates_agree_tau']:.3f} | "
                   f"{r['better_at_other']}/{r['layers']} | {r['predictor']} | {t['probed']:.3f} | {t['other']:.3f} | "
                   f"{t['best_of_two']:.3f} |")
    for r in rows:
        out += ["", f"## {r['combination']}: layers moved by more than {MOVED} (head only, first sweeps: "
                f"{r['head_acc']['probed']:.3f} at {r['probed_lr']:g}, {r['head_acc']['other']:.3f} at "
                f"{r['other_lr']:g})", "", f"| layer | at {r['probed_lr']:g} | at {r['other_lr']:g} |",
                "|---|---:|---:|"]
        out += [f"| {m['layer']} | {m['probed']:.3f} | {m['other']:.3f} |" for m in r["moved"]]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--predictor", type=Path, action="append", required=True)
    ap.add_argument("--corpus", type=Path, default=Path("corpus"))
    ap.add_argument("--out", type=Path, default=Path("reports/rate_study"))
    args = ap.parse_args()

    def build():
        predictors = {p: Predictor.load(p) for p in args.predictor}
        seen = {}
        rows = [study(predictors, seen, args.corpus, c) for c in load_corpus(args.corpus / "rate_study")]
        return {"format": "zest-edge/rate-study", "version": 1, "rows": rows}, markdown(rows)
    return report_main(args.out, "rate_study", build)


if __name__ == "__main__":
    sys.exit(main())
