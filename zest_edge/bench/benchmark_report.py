"""The benchmark's results as a Markdown table and as curves in the paper's Figure 3 shape."""


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.2f}"


def results_table(record: dict) -> str:
    c = record["config"]
    s = record["schedule"]
    lines = [f"# Evaluation: {record['model']} on {record['data']}" + (f" ({record['name']})" if record.get("name") else ""),
             "",
             f"limit {c['limit']}, resolution {c['resolution']}, {s['epochs']} epochs, {s['optimizer']} lr {s['lr']}"
             f" (momentum {s['momentum']}), batch {s['batch_size']}, BN {s['bn']}, feature cache "
             f"{'on' if s['cache'] else 'off'}, seeds {c['seeds']}"
             + (f"; best single metric: {c['metric']}" if c.get("metric") else ""), ""]
    if c.get("heldout_note"):
        lines += [f"held-out: {c['heldout_note']}", ""]
    lines += ["| method | val acc % (mean ± std) | Δ vs full (pts) | best % | trainable params | % of model | "
              "step ms | speedup | seeds |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in record["methods"]:
        if m.get("final_val_acc_mean") is None:
            lines.append(f"| {m['method']} | not run | | | | | | | 0/{m['runs_planned']} |")
            continue
        delta = "" if m["delta_vs_full"] is None else f"{100 * m['delta_vs_full']:+.2f}"
        speed = "" if m["speedup_vs_full"] is None else f"{m['speedup_vs_full']:.2f}x"
        lines.append(f"| {m['method']} | {_pct(m['final_val_acc_mean'])} ± {_pct(m['final_val_acc_std'])} | {delta} | "
                     f"{_pct(m['best_val_acc_mean'])} | {m['trainable_params']:,} | {_pct(m['trainable_share'])} | "
                     f"{m['step_ms_median']:.1f} | {speed} | {m['runs_done']}/{m['runs_planned']} |")
    lines += ["", "val acc: after the last epoch; step ms: median train step (sparse methods on cached prefix "
              "features when the feature cache is on). Curves: curves.png (epoch 0 = untrained head).", ""]
    return "\n".join(lines)


def plot_curves(record: dict, path) -> None:
    """The paper's Figure 3 shape: one panel per k; full fine-tuning in black and head-only in grey in every panel,
    ZEST@k solid, the baselines at that k dashed, no colour used twice within a panel."""
    from .. import plots
    methods = [m for m in record["methods"] if m.get("curve_mean")]
    ks = sorted({int(m["method"].rpartition("@")[2]) for m in methods if "@" in m["method"]})
    fig, axes = plots.figure(1, max(len(ks), 1), width=4.6, height=3.8)
    for ax, k in zip(axes, ks or [None]):
        shown = [m for m in methods if "@" not in m["method"] or m["method"].endswith(f"@{k}")]
        for i, m in enumerate(shown):
            name, xs = m["method"], list(range(len(m["curve_mean"])))
            if name == "full":
                style = ("black", "-")
            elif name == "head-only":
                style = ("0.55", ":")
            elif name.startswith("zest@"):
                style = (plots.color(0), "-")
            else:
                style = (plots.color(i + 1), "--")
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
    axes[0].set_ylabel("validation accuracy (mean over seeds)")
    fig.suptitle(f"{record['model']} on {record['data']}")
    plots.save(fig, path)
