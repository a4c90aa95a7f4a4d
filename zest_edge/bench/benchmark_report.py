"""The benchmark's results as Markdown tables and as test-accuracy curves in the paper's Figure 3 shape."""

# the baselines' colours: the palette without ZEST's blue and without the grey head-only uses, so no colour repeats
BASELINE_COLORS = ("#DD8452", "#C44E52", "#55A868", "#8172B3", "#937860", "#DA8BC3", "#CCB974", "#64B5CD")


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def _pts(v):
    return f"{v:+.2f}"


def results_table(record: dict) -> str:
    """results.md: the methods at their chosen lr, ZEST@k's paired differences, and each lr's select accuracy."""
    c, s, split = record["config"], record["schedule"], record["split"]
    lines = [f"# Evaluation: {record['model']} on {record['data']}" + (f" ({record['name']})" if record.get("name") else ""),
             "",
             f"limit {c['limit']}, resolution {c['resolution']}, {s['epochs']} epochs, {s['optimizer']} at lr "
             f"{', '.join(f'{lr:g}' for lr in record['lr_grid'])} (each method its own), momentum {s['momentum']}, "
             f"batch {s['batch_size']}, BN {s['bn']}, feature cache {'on' if s['cache'] else 'off'}, seeds {c['seeds']}"
             + (f"; best single metric: {c['metric']}" if c.get("metric") else ""), "",
             f"lr chosen per method by mean final accuracy on the select half ({split['select']['examples']} val "
             f"examples), accuracy reported on the disjoint test half ({split['test']['examples']}).", ""]
    if c.get("heldout_note"):
        lines += [f"held-out: {c['heldout_note']}", ""]
    lines += ["| method | lr | test acc % (mean ± std) | Δ vs full (pts) | select acc % | trainable params | "
              "% of model | step ms | speedup | seeds |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in record["methods"]:
        if m["lr"] is None:
            lines.append(f"| {m['method']} | not run | | | | | | | | {m['runs_done']}/{m['runs_planned']} runs |")
            continue
        delta = "" if m["delta_vs_full"] is None else f"{100 * m['delta_vs_full']:+.2f}"
        speed = "" if m["speedup_vs_full"] is None else f"{m['speedup_vs_full']:.2f}x"
        diverged = f" ({len(m['diverged_seeds'])} diverged)" if m["diverged_seeds"] else ""
        cost = (f"{m['trainable_params']:,} | {_pct(m['trainable_share'])} | {m['step_ms_median']:.1f}"
                if "trainable_params" in m else " | | ")
        lines.append(f"| {m['method']} | {m['lr']:g} | {_pct(m['test_acc_mean'])} ± {_pct(m['test_acc_std'])} | "
                     f"{delta} | {_pct(m['select_acc_mean'])} | {cost} | {speed} | {len(m['seeds'])}{diverged} |")
    lines += ["", "test acc: after the last epoch, at the method's chosen lr (a diverged run counts 0); step ms: "
              "median train step (sparse methods on cached prefix features when the feature cache is on). Curves: "
              "curves.png (test accuracy, epoch 0 = untrained head).", ""]
    if record["paired"]:
        lines += ["## ZEST@k against the alternatives (test accuracy, paired by seed)", "",
                  "| k | comparison | mean Δ (pts) | 95% t-interval | ZEST wins / ties / losses |",
                  "|---:|---|---:|---|---:|"]
        for d in record["paired"]:
            ci = "n/a (1 seed)" if d["ci95"] is None else f"[{_pts(d['ci95'][0])}, {_pts(d['ci95'][1])}]"
            lines.append(f"| {d['k']} | {d['method']} − {d['baseline']} | {_pts(d['mean'])} | {ci} | "
                         f"{d['wins']} / {d['ties']} / {d['losses']} |")
        lines += [""]
    grid = record["lr_grid"]
    lines += ["## Learning-rate choice (mean final select acc %; (n d): n runs diverged; * chosen)", "",
              "| method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " |", "|---|" + "---:|" * len(grid)]
    for m in record["methods"]:
        if m["lr"] is not None:
            cells = [_pct(x["select_acc_mean"]) + (f" ({x['diverged']} d)" if x["diverged"] else "")
                     + ("*" if x["lr"] == m["lr"] else "") for x in m["lr_scores"]]
            lines.append(f"| {m['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def plot_curves(record: dict, path) -> None:
    """Each method's test-accuracy curve at its chosen lr, in the paper's Figure 3 shape: one panel per k; full
    fine-tuning in black and head-only in grey in every panel, ZEST@k solid, the baselines at that k dashed, no
    colour used twice within a panel."""
    from .. import plots
    methods = [m for m in record["methods"] if m.get("curve_mean")]
    ks = sorted({int(m["method"].rpartition("@")[2]) for m in methods if "@" in m["method"]})
    fig, axes = plots.figure(1, max(len(ks), 1), width=4.6, height=3.8)
    for ax, k in zip(axes, ks or [None]):
        shown = [m for m in methods if "@" not in m["method"] or m["method"].endswith(f"@{k}")]
        baselines = iter(BASELINE_COLORS)
        for m in shown:
            name, xs = m["method"], list(range(len(m["curve_mean"])))
            if name == "full":
                style = ("black", "-")
            elif name == "head-only":
                style = ("0.55", ":")
            elif name.startswith("zest@"):
                style = (plots.color(0), "-")
            else:
                style = (next(baselines), "--")
            ax.plot(xs, m["curve_mean"], style[1], color=style[0], marker="o", markersize=3, label=name,
                    linewidth=2.0 if name.startswith("zest@") else 1.2)
            lo = [y - s for y, s in zip(m["curve_mean"], m["curve_std"])]
            hi = [y + s for y, s in zip(m["curve_mean"], m["curve_std"])]
            ax.fill_between(xs, lo, hi, color=style[0], alpha=0.08)
        ax.set_title(f"k = {k}" if k else "")
        ax.set_xticks(range(max(len(m["curve_mean"]) for m in shown)))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test accuracy (mean over seeds)")
    fig.suptitle(f"{record['model']} on {record['data']}")
    plots.save(fig, path)
