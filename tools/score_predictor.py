"""Kendall τ and top-5 overlap of saved predictors on combination files: spot checks outside leave-one-out (a
combination from another corpus, a superseded sweep of a held-out model).

Usage: python tools/score_predictor.py --predictor P.json [--predictor Q.json] FILE... --out reports/predictor_spot_checks
"""
import argparse
import sys
from pathlib import Path

from zest_edge.bench.predictor_eval import contributions, tau, top_overlap
from zest_edge.corpus import combination_name, load_corpus, pool_retests
from zest_edge.io import report_main
from zest_edge.predictor import Predictor


def score(predictors: list[Path], files: list[Path]) -> list[dict]:
    """Rows of τ against the ground truth eval-predictor uses: for a file with a retest/ copy beside it, the mean of
    both sweeps (`pool_retests`). A file that lacks a metric the predictor reads (one built before the metric
    existed) gets a row that names it, with no τ."""
    combos = {f: pool_retests(f.parent, load_corpus(f))[0] for f in files}
    rows = []
    for pred_path in predictors:
        predictor = Predictor.load(pred_path)
        for f, c in combos.items():
            row = {"predictor": str(pred_path), "predictor_id": predictor.provenance.get("id"),
                   "trained_on": predictor.provenance.get("corpus"), "file": str(f),
                   "combination": combination_name(c), "layers": len(c["layers"])}
            lacks = sorted(predictor.metrics_read - set(c["metric_names"]))
            if lacks:
                rows.append({**row, "tau": None, "top5": None, "not_scored": f"the file lacks {', '.join(lacks)}"})
                continue
            scores, y = predictor.score(c["layers"]), contributions(c)
            rows.append({**row, "tau": tau(scores, y), "top5": round(5 * top_overlap(scores, y))})
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["# Predictor spot checks", "", "| predictor | combination file | layers | Kendall τ | top-5 overlap |",
           "|---|---|---:|---:|---:|"]
    out += [f"| {r['predictor']} | {r['file']} | {r['layers']} | " +
            (f"{r['tau']:.3f} | {r['top5']}/5 |" if "not_scored" not in r else f"— ({r['not_scored']}) | — |")
            for r in rows]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--predictor", action="append", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    def build():
        rows = score(args.predictor, args.files)
        return {"format": "zest-edge/predictor-spot-checks", "version": 1, "rows": rows}, markdown(rows)
    return report_main(args.out, "spot_checks", build)


if __name__ == "__main__":
    sys.exit(main())
