"""Measuring: profile (training-step latency and memory), benchmark (accuracy of selections)."""
import click

from ..errors import ZestError


@click.command()
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--num-classes", type=int, default=10, show_default=True, help="Head size of the profiled model.")
@click.option("--weights", default=None, help="Local state_dict overriding the model's default weights, or 'random'.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--resolution", type=int, default=None, help="Image side in pixels (default: the model's).")
@click.option("--top-k", default="5", show_default=True, help="Comma-separated k values for zest@k and last@k.")
@click.option("--layers", default=None, help="Comma-separated layer order for zest@k (its first k), instead of a ranking.")
@click.option("--ranking", type=click.Path(dir_okay=False), default=None, help="ranking.json from `zest-edge rank`.")
@click.option("--data", "data_spec", default=None, help="Rank layers with rank_task on this dataset.")
@click.option("--data-root", default=None, help="Folder holding torchvision datasets (with --data).")
@click.option("--limit", type=int, default=None, help="Subset size for ranking (with --data).")
@click.option("--configs", default="full,zest,last,head", show_default=True,
              help="Configurations to measure: full, zest, last, head, lora (LoRA on every layer), lora-zest.")
@click.option("--lora", "lora_r", type=int, default=8, show_default=True, help="LoRA rank of the lora configurations.")
@click.option("--max-length", type=int, default=None, help="Text models: tokens per example (default: the model's).")
@click.option("--label", default=None, help="Name of the zest@k rows (default: zest, or sel with --layers).")
@click.option("--backends", default="torch", show_default=True, help="Comma-separated: torch, ort, executorch.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--steps", type=int, default=10, show_default=True, help="Timed rounds (one step per configuration each).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed steps first.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True,
              help="All backends; sgd is plain SGD (ORT's on-device SGD has no momentum; executorch has no adamw).")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (torch and ORT; default: theirs).")
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds per worker call (build or step).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for profile.json/.md/.png.")
def profile(model_name, num_classes, weights, batch_size, resolution, top_k, layers, ranking, data_spec, data_root,
            limit, configs, label, backends, device, steps, warmup, optimizer, lr, threads, timeout, out, lora_r,
            max_length):
    """Measure one training step (latency, peak memory, lower bound) for full, ZEST@k, last-k and head-only."""
    from ..bench.profile import profile as run
    try:
        ks = [int(k) for k in top_k.split(",") if k.strip()]
    except ValueError:
        raise ZestError(f"--top-k takes comma-separated integers, got {top_k!r}") from None
    record = run(model_name, out=out, batch_size=batch_size, resolution=resolution, top_k=ks, layers=layers,
                 ranking=ranking, data=data_spec,
                 task_args={"data_root": data_root, "limit": limit, "resolution": resolution, "max_length": max_length},
                 backends=[b.strip() for b in backends.split(",") if b.strip()], device=device, steps=steps,
                 warmup=warmup, optimizer=optimizer, lr=lr, num_classes=num_classes, weights=weights, threads=threads,
                 configs=[c.strip() for c in configs.split(",") if c.strip()], label=label, timeout=timeout,
                 max_length=max_length, lora_r=lora_r)
    from ..bench.profile_report import profile_table
    click.echo(profile_table(record))
    click.echo(f"wrote {out}/profile.json, profile.md, profile.png")


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Benchmark YAML (configs/eval_*.yaml).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for runs/ and results.")
@click.option("--resume", is_flag=True, help="Skip finished runs, continue an interrupted one.")
def benchmark(config_path, out, resume):
    """Fine-tune every method of a config (full, ZEST@k, baselines) and compare val accuracy and step time."""
    from ..bench.benchmark import benchmark as run
    from ..bench.benchmark_report import results_table
    record = run(config_path, out, resume=resume)
    click.echo(results_table(record))
    click.echo(f"wrote {out}/results.json, results.md, curves.png ({record['seconds']:.0f} s)")
