"""ZEST@k against each baseline, pooled over several finished v2 benchmarks (each one's per-seed paired differences
side by side, then all of them together, with a 95% t-interval over every seed pair).

One benchmark's 5 seeds give a wide interval; held-out combinations answer the same question ("is ZEST@k better
than what I would otherwise do?"), so their seed pairs are pooled. The per-benchmark rows stay in the table: a pooled
mean must not hide one combination where ZEST loses.

Usage: python tools/pool_benchmarks.py REPORT_DIR... [--out reports/eval_v2_pooled]
"""
import argparse
import sys
from pathlib import Path

from zest_edge.bench.benchmark_stats import difference_summary
from zest_edge.errors import ZestError
from zest_edge.io import read_json, write_report


def load(report: Path) -> dict:
    results = read_json(report / "results.json", "results")
    if results.get("version") != 2:
        raise ZestError(f"{report}/results.json is not a version-2 benchmark result")
    if not results.get("complete"):
        raise ZestError(f"{report} is not finished (resume it with zest-edge benchmark --resume)")
    return results


def pool(reports: dict[str, dict]) -> list[dict]:
    """One row per (k, baseline) that every report has: each report's summary and the pooled one."""
    keys = [{(p["k"], p["baseline"]) for p in r["paired"]} for r in reports.values()]
    rows = []
    for k, baseline in sorted(set.intersection(*keys)):
        per = {name: next(p for p in r["paired"] if (p["k"], p["baseline"]) == (k, baseline))
               for name, r in reports.items()}
        rows.append({"k": k, "baseline": baseline,
                     "per_report": {n: difference_summary(p["diffs"]) for n, p in per.items()},
                     "pooled": difference_summary([d for p in per.values() for d in p["diffs"]])})
    return rows


def markdown(rows: list[dict], names: list[str]) -> str:
    def cell(s):
        ci = "" if s["ci95"] is None else f" [{s['ci95'][0]:+.1f}, {s['ci95'][1]:+.1f}]"
        return f"{s['mean']:+.1f}{ci} ({s['wins']}/{s['ties']}/{s['losses']})"
    out = ["# ZEST@k − baseline, pooled over held-out benchmarks", "",
           "Test accuracy points, mean [95% t-interval] (ZEST wins/ties/losses over seed pairs). Benchmarks: " +
           ", ".join(names) + ".", "",
           "| k | comparison | " + " | ".join(names) + " | pooled |", "|---:|---|" + "---|" * (len(names) + 1)]
    for r in rows:
        out.append(f"| {r['k']} | zest@{r['k']} − {r['baseline']} | " +
                   " | ".join(cell(r["per_report"][n]) for n in names) + f" | **{cell(r['pooled'])}** |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("reports/eval_v2_pooled"))
    args = ap.parse_args()
    try:
        reports = {p.name: load(p) for p in args.reports}
        rows = pool(reports)
        write_report(args.out, "pooled", {"format": "zest-edge/benchmark-pool", "version": 1,
                                          "reports": [str(p) for p in args.reports], "rows": rows},
                     markdown(rows, list(reports)))
    except ZestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/pooled.json and pooled.md ({len(rows)} comparisons over {len(reports)} benchmarks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
