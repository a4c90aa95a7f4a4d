"""Train the layers whose curves had not flattened in a corpus sweep again, with more epochs, beside the sweep's top
layers and the head: does a longer run move them in the ranking, i.e. did the score measure how fast a layer learns
rather than where it ends? Same task, rate, seed and cosine schedule as the sweep, only `--epochs` differs.

Usage: python tools/recheck_rising.py configs/corpus/X.yaml corpus/X.json --epochs 8 --out reports/recheck_rising/X
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

from scipy.stats import kendalltau

from zest_edge.config import load_config
from zest_edge.contrib import HEAD, SweepConfig, run_jobs_local
from zest_edge.corpus import load_corpus, still_rising
from zest_edge.errors import ZestError
from zest_edge.io import report_main


def recheck(config: Path, corpus_file: Path, epochs: int, top: int) -> dict:
    sweep = SweepConfig.from_dict(load_config(config, None), str(config))
    combo = load_corpus(corpus_file)[0]
    rising = still_rising(combo)
    if rising is None:
        raise ZestError(f"{corpus_file} has no standard errors (a version-1 file)")
    by_score = sorted(combo["layers"], key=lambda l: -l["contribution"])
    names = list(dict.fromkeys(rising + [l["name"] for l in by_score[:top]]))
    longer = replace(sweep, epochs=epochs)
    longer.check(str(config))
    rows = []
    run_jobs_local(longer, longer.load_task(), [(n, combo["lr"]) for n in names + [HEAD]], rows.append, "layer")
    before = {l["name"]: l["contribution"] for l in combo["layers"]} | {HEAD: combo["head_acc"]}
    layers = [{"layer": r["layer"], "rising": r["layer"] in rising, "score": before[r["layer"]],
               "score_longer": r["acc"], "se_longer": r["se"], "curve_longer": r["curve"]} for r in rows]
    rank = lambda key: {l["layer"]: sorted(layers, key=lambda m: -m[key]).index(l) + 1 for l in layers}
    r_before, r_after = rank("score"), rank("score_longer")
    for l in layers:
        l["rank"], l["rank_longer"] = r_before[l["layer"]], r_after[l["layer"]]
    return {"format": "zest-edge/recheck-rising", "version": 1, "config": str(config), "corpus_file": str(corpus_file),
            "lr": combo["lr"], "epochs": sweep.epochs, "epochs_longer": epochs, "layers": layers,
            "tau_between": float(kendalltau([l["score"] for l in layers], [l["score_longer"] for l in layers]).statistic)}


def markdown(res: dict) -> str:
    out = [f"# Rising curves rechecked: {res['corpus_file']}", "",
           f"Rate {res['lr']:g}; the sweep's {res['epochs']} epochs against {res['epochs_longer']} (same seed, cosine "
           f"schedule over all epochs). Rank among the layers below; τ between the two scorings "
           f"{res['tau_between']:.2f}.", "",
           "| layer | still rising | score % (rank) | longer % (rank) | longer curve |", "|---|---|---:|---:|---|"]
    for l in sorted(res["layers"], key=lambda l: l["rank_longer"]):
        curve = " ".join(f"{100 * a:.1f}" for a in l["curve_longer"])
        out.append(f"| {l['layer']} | {'yes' if l['rising'] else ''} | {100 * l['score']:.1f} ({l['rank']}) | "
                   f"{100 * l['score_longer']:.1f} ({l['rank_longer']}) | {curve} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("corpus_file", type=Path)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--top", type=int, default=5, help="the sweep's best layers to train again beside them")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    def build():
        res = recheck(args.config, args.corpus_file, args.epochs, args.top)
        return res, markdown(res)
    return report_main(args.out, "recheck", build, show=False)


if __name__ == "__main__":
    sys.exit(main())
