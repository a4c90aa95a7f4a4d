"""Test-retest ceiling of the contribution scores: each sweep in corpus/sweeps/retest/X against corpus/sweeps/X.

The two sweeps share model, data subset and protocol and differ only in train_seed (head init, data order), so the
Kendall τ between their layer scores is the agreement one ground-truth measurement has with itself: no predictor
can be expected to beat it against one sweep (the corpus scores a retested combination by the mean of both).
Works on partial sweeps (the layers both have finished), and says how many that is.

Usage: python tools/retest_report.py [--sweeps corpus/sweeps] [--out reports/retest]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from zest_edge.contrib import HEAD, load_sweep
from zest_edge.errors import ZestError
from zest_edge.io import write_report


def compare(first: dict, second: dict, k: int = 5) -> dict:
    common = sorted(set(first["rows"]) & set(second["rows"]) - {HEAD})
    a = np.array([first["rows"][n]["acc"] for n in common])
    b = np.array([second["rows"][n]["acc"] for n in common])
    tau = float(kendalltau(a, b).statistic) if len(common) > 2 else None
    top_a, top_b = (set(np.array(common)[np.argsort(-v, kind="stable")[:k]]) for v in (a, b))
    se = [r["se"] for s in (first, second) for n, r in s["rows"].items() if n in common]
    return {"layers": len(common), "kendall_tau": tau, f"top{k}_overlap": len(top_a & top_b) if tau is not None else None,
            "mean_abs_diff": float(np.mean(np.abs(a - b))) if common else None,
            "score_spread": float(np.std(np.concatenate([a, b]))) if common else None,
            "mean_se": float(np.mean(se)) if se else None,
            "lr": [first["lr"], second["lr"]],
            "head_only": [s["rows"][HEAD]["acc"] if HEAD in s["rows"] else None for s in (first, second)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweeps", default="corpus/sweeps")
    ap.add_argument("--out", default="reports/retest")
    args = ap.parse_args()
    sweeps = Path(args.sweeps)
    rows = {}
    for retest in sorted((sweeps / "retest").iterdir()):
        try:
            first, second = load_sweep(sweeps / retest.name), load_sweep(retest)
        except ZestError as e:
            print(f"skip {retest.name}: {e}", file=sys.stderr)
            continue
        rows[retest.name] = {**compare(first, second), "train_seeds": [first["config"]["train_seed"],
                                                                         second["config"]["train_seed"]],
                             "finished_rows": [len(first["rows"]), len(second["rows"])]}
    if not rows:
        print("error: no retest sweep found", file=sys.stderr)
        return 2
    lines = ["# Test-retest ceiling of the contribution scores", "",
             "Two sweeps of one combination, identical but for train_seed (head init, data order). Kendall τ between",
             "their per-layer scores (head-only row excluded) is the ceiling a ranker can reach against one sweep;",
             "the corpus scores a retested combination by the mean of both. SE: the binomial standard error of a",
             "score (mean over both sweeps).", "",
             "| combination | layers compared | τ | top-5 overlap | mean |Δscore| | score spread (sd) | mean SE | lr |",
             "|---|---|---|---|---|---|---|---|"]
    def cell(value, spec: str, suffix: str = "") -> str:          # "–" where too few layers are finished yet
        return "–" if value is None else f"{value:{spec}}{suffix}"
    for name, r in rows.items():
        cells = [cell(r["kendall_tau"], ".3f"), cell(r["top5_overlap"], "d", "/5"), cell(r["mean_abs_diff"], ".4f"),
                 cell(r["score_spread"], ".4f"), cell(r["mean_se"], ".4f"), f"{r['lr'][0]} / {r['lr'][1]}"]
        lines.append(f"| {name} | {r['layers']} | " + " | ".join(cells) + " |")
    write_report(args.out, "retest", {"format": "zest-edge/retest", "version": 1, "combinations": rows},
                 "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
