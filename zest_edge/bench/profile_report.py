"""profile.md and profile.png from a profile record (zest_edge.bench.profile)."""

NOTES = ("peak mem: the training step's peak above the worker after loading model + batch (optimizer state, grads, "
         "activations; ORT: also its sessions). saved MB: bytes autograd saves for backward (torch graph, analytic). "
         "bound: forward-only + suffix backward (ORT: backward estimated as training call - eval call); "
         "efficiency = bound / step. ort = prefix.onnx + suffix training step (a device's first epoch); "
         "ort-cached = the suffix step on cached prefix outputs (later epochs). Speedups: median full step / median "
         "step of the same runtime, [95% bootstrap interval over interleaved rounds].")


def _f(v, fmt="{:.1f}", none="n/a"):
    return none if v is None else fmt.format(v)


def speedup(r) -> str:
    if r.get("speedup_vs_full") is None:
        return "n/a"
    ci = r.get("speedup_ci95")
    return f"{r['speedup_vs_full']:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def profile_table(record: dict) -> str:
    """Markdown: one table per backend, latency and memory per configuration with ratios to full fine-tuning."""
    m = record["machine"]
    lines = [f"# Training-step profile: {record['model']}", "",
             f"batch {record['batch_size']}, " + (f"{record['max_length']} tokens" if record.get("max_length") else
                                                  f"resolution {record['resolution']}") + f", weights {record['weights']}, "
             f"optimizer {record['optimizer']} (lr {record['lr']}), {record['steps']} interleaved timed rounds after "
             f"{record['warmup']} warm-up steps, device {record['device']}", "",
             f"machine: {m['cpu']} ({m['cpu_count']} cores, {m.get('threads') or m['torch_threads']} threads), "
             f"torch {m['torch']}, onnxruntime {m.get('onnxruntime')}; memory: {m.get('memory_method')}", ""]
    for backend in record["backends"]:
        lines += [f"## {backend}", "",
                  "| configuration | layers | trainable params | step ms (median) | IQR | speedup vs full [95% CI] | "
                  "peak mem MB | mem vs full | saved MB | bound ms | efficiency |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in record["records"] if r["backend"] == backend):
            n_layers = "all" if r["layers"] is None else str(len(r["layers"]))
            if "error" in r:
                lines.append(f"| {r['config']} | {n_layers} | | | | | | | | | error: {r['error']} |")
                continue
            lines.append(
                f"| {r['config']} | {n_layers} | {r['trainable_params']:,} | {r['step_ms_median']:.1f} | "
                f"{r['step_ms_iqr']:.1f} | {speedup(r)} | {_f(r['peak_mem_mb'], '{:.0f}')} | "
                f"{_f(r['mem_ratio_vs_full'], '{:.2f}')} | {r['saved_bytes_mb']:.0f} | {r['bound_ms']:.1f} | "
                f"{r['efficiency']:.2f} |")
        lines.append("")
    lines.append(f"selection: {record['selection'].get('source') or 'none'}")
    for name, layers in dict.fromkeys((r["config"], tuple(r["layers"])) for r in record["records"] if r["layers"]):
        lines.append(f"- {name}: {', '.join(layers)}")
    return "\n".join(lines + ["", NOTES, ""])


def plot_profile(record: dict, path) -> None:
    from .. import plots
    configs = list(dict.fromkeys(r["config"] for r in record["records"]))
    fig, (lat, mem) = plots.figure(1, 2, width=max(5.0, 0.9 * len(configs) + 2), height=4.0)
    series_lat, series_mem = {}, {}
    for backend in record["backends"]:
        by = {r["config"]: r for r in record["records"] if r["backend"] == backend}
        series_lat[backend] = [by.get(c, {}).get("step_ms_median") for c in configs]
        series_mem[backend] = [by.get(c, {}).get("peak_mem_mb") for c in configs]
    plots.grouped_bars(lat, configs, series_lat, ylabel="ms per training step (median)", title="latency")
    plots.grouped_bars(mem, configs, series_mem, ylabel="peak memory above model (MB)", title="memory")
    fig.suptitle(f"{record['model']}, batch {record['batch_size']}, {record['resolution']} px, {record['device']}")
    plots.save(fig, path)
