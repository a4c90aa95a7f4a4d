"""The `zest-edge` command line: argument checking and printing over the Python API, nothing else."""
import sys
import time

import click

from .errors import ZestError


def task_options(fn):
    """--model/--data and the options every command that loads a task shares."""
    for opt in reversed([
        click.option("--model", "model_name", required=True, help="Registered model name (see `zest-edge models`)."),
        click.option("--data", "data_spec", required=True, help="Dataset spec, e.g. fashion_mnist or imagefolder:PATH."),
        click.option("--data-root", default=None, help="Folder holding torchvision datasets (never downloaded)."),
        click.option("--weights", default=None, help="Local state_dict overriding the model's default weights, or 'random'."),
        click.option("--resolution", type=int, default=None, help="Image side in pixels (default: the model's)."),
        click.option("--max-length", type=int, default=None, help="Text models: tokens per example (default: the model's)."),
        click.option("--limit", type=int, default=None, help="Class-balanced subset of N training examples."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for subsets, splits and batches."),
    ]):
        fn = opt(fn)
    return fn


def load(model_name, data_spec, data_root, weights, resolution, max_length, limit, seed, **extra):
    from .task import load_task
    return load_task(model_name, data_spec, weights=weights, resolution=resolution, limit=limit, seed=seed,
                     data_root=data_root, max_length=max_length, **extra)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="zest-edge")
def cli():
    """zest-edge: pick the few layers worth fine-tuning from one minibatch, train only those, ship them to ORT."""


@cli.command()
def doctor():
    """Print versions, the fused-update backend and what hardware paths are available."""
    from .doctor import report
    for key, value in report().items():
        click.echo(f"{key:>22}: {value}")


@cli.command()
def models():
    """List registered models with their default preprocessing."""
    from .models import MODELS, model_preprocess
    for name in sorted(MODELS):
        pre = model_preprocess(name)
        click.echo(f"{name:20} {pre.kind:5} " + (f"{pre.resolution}px" if pre.kind == "image" else f"{pre.max_length} tokens"))


@cli.command()
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--num-classes", type=int, default=10, show_default=True, help="Head size (does not change layers).")
@click.option("--weights", default=None, help="Local state_dict overriding the model's default weights, or 'random'.")
def layers(model_name, num_classes, weights):
    """List a model's candidate layers in execution order."""
    from .layers import layer_map
    from .models import build_model
    from .report import layer_table
    click.echo(layer_table(layer_map(build_model(model_name, num_classes=num_classes, weights=weights))))


@cli.command()
@task_options
@click.option("--batch-size", type=int, default=32, show_default=True, help="Size of the one minibatch.")
@click.option("--metrics", "metric_names", default=None, help="Comma-separated subset of metrics (default: all).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write metrics.json here.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write a CSV table.")
def metrics(batch_size, metric_names, out, csv_path, **task_args):
    """Compute zero-shot metrics for every layer from one minibatch."""
    from .metrics_file import metrics_record, write_csv
    from .report import metrics_table
    from .io import write_json
    task = load(**task_args)
    start = time.perf_counter()
    record = metrics_record(task, batch_size=batch_size, metrics=metric_names.split(",") if metric_names else None)
    click.echo(metrics_table(record))
    click.echo(f"{len(record['layers'])} layers, {len(record['metric_names'])} metrics in "
               f"{time.perf_counter() - start:.1f} s (batch {batch_size})")
    if out:
        write_json(out, record)
        click.echo(f"wrote {out}")
    if csv_path:
        write_csv(csv_path, record)
        click.echo(f"wrote {csv_path}")


def selection_options(fn):
    """How layers are chosen: --layers, --ranking/--top-k, --random-k or --full."""
    for opt in reversed([
        click.option("--layers", default=None, help="Comma-separated layer names to train."),
        click.option("--ranking", type=click.Path(dir_okay=False), default=None, help="ranking.json from `zest-edge rank`."),
        click.option("--top-k", type=int, default=None, help="Train the top K layers of --ranking."),
        click.option("--random-k", type=int, default=None, help="Train K layers drawn at random (a baseline)."),
        click.option("--full", is_flag=True, help="Full fine-tuning: every layer trains."),
    ]):
        fn = opt(fn)
    return fn


def resolve_selection(task, layers, ranking, top_k, random_k, full, seed) -> tuple[list[str] | None, dict]:
    """(layer names or None for full, a description of how they were chosen)."""
    from .layers import layer_map
    given = [o for o, v in (("--layers", layers), ("--ranking", ranking), ("--random-k", random_k), ("--full", full or None))
             if v is not None]
    if len(given) != 1:
        raise ZestError("choose exactly one of --layers, --ranking (with --top-k), --random-k, --full")
    count = len(layer_map(task.model))
    for name, k in (("--top-k", top_k), ("--random-k", random_k)):
        if k is not None and not 1 <= k <= count:
            raise ZestError(f"{name} must be between 1 and the number of layers of {task.model_name} ({count}), got {k}")
    if full:
        return None, {"method": "full"}
    if layers is not None:
        names = [n.strip() for n in layers.split(",") if n.strip()]
        if not names:
            raise ZestError("--layers names no layer")
        return names, {"method": "layers"}
    if random_k is not None:
        import random
        names = [l.name for l in layer_map(task.model)]
        return random.Random(seed).sample(names, random_k), {"method": "random", "k": random_k, "seed": seed}
    from .ranking import load_ranking
    record = load_ranking(ranking, task.model_name)
    k = top_k or len(record["selected"])
    return [l["name"] for l in record["layers"][:k]], {"method": "ranking", "ranking": str(ranking), "k": k,
                                                       "ranked_by": record.get("ranked_by")}


def schedule_options(fn):
    for opt in reversed([
        click.option("--epochs", type=int, default=3, show_default=True),
        click.option("--lr", type=float, default=0.01, show_default=True),
        click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True),
        click.option("--batch-size", type=int, default=32, show_default=True),
        click.option("--weight-decay", type=float, default=0.0, show_default=True),
        click.option("--bn", type=click.Choice(["frozen", "train-selected"]), default="frozen", show_default=True,
                     help="frozen: every BN uses running stats; train-selected: BN after a chosen layer trains."),
        click.option("--no-cache", is_flag=True, help="Recompute the frozen prefix every step."),
        click.option("--backend", type=click.Choice(["auto", "ext", "torch"]), default="auto", show_default=True,
                     help="Fused update: the C++ extension, the PyTorch fallback, or whichever is built."),
    ]):
        fn = opt(fn)
    return fn


@cli.command()
@task_options
@selection_options
@schedule_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def finetune(layers, ranking, top_k, random_k, full, epochs, lr, optimizer, batch_size, weight_decay, bn, no_cache,
             backend, out, resume, force, **task_args):
    """Fine-tune chosen layers (+ head) and write run/ (metrics.json, trained.safetensors)."""
    from .finetune import Schedule, finetune as run
    task = load(**task_args)
    names, selection = resolve_selection(task, layers, ranking, top_k, random_k, full, task_args["seed"])
    schedule = Schedule(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size, weight_decay=weight_decay,
                        bn=bn, cache=not no_cache, backend=backend)
    record = run(task, names, schedule, out, resume=resume, force=force, selection=selection)
    last = record["epochs"][-1]
    click.echo(f"trained {len(record['layers'])} layers + head: {record['trainable_params']:,} of "
               f"{record['total_params']:,} parameters ({100 * record['trainable_share']:.2f}%), "
               f"update backend {record['optimizer_backend']}")
    click.echo(f"val acc {last['val_acc_before']:.4f} (untrained head) -> {last['val_acc']:.4f}; "
               f"step {last['step_ms_median']:.1f} ms; peak RSS {last['peak_rss_mb']:.0f} MB; wrote {out}/")


@cli.command()
@task_options
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder from finetune.")
@click.option("--save", type=click.Path(dir_okay=False), default=None, help="Write the merged full model (safetensors).")
def evaluate(run_dir, save, **task_args):
    """Merge a run's trained layers into the model and report validation accuracy."""
    from .finetune import Batches, accuracy, load_run
    task = load(**task_args)
    sm = load_run(task, run_dir)
    acc = accuracy(sm, Batches(sm, task.val, 64, use_cache=False))
    click.echo(f"{task.model_name} + {run_dir}: val acc {acc:.4f} on {len(task.val)} examples of {task.data_spec}")
    if save:
        from safetensors.torch import save as st_save
        from .io import atomic_write_bytes
        atomic_write_bytes(save, st_save({k: v.contiguous() for k, v in task.model.state_dict().items()}))
        click.echo(f"wrote {save}")


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML fixing every setting below (flags override it).")
@click.option("--model", default=None, help="Registered model name.")
@click.option("--data", default=None, help="Dataset spec (a class subset too: fashion_mnist:0-4).")
@click.option("--data-root", default=None)
@click.option("--weights", default=None)
@click.option("--resolution", type=int, default=None)
@click.option("--max-length", type=int, default=None, help="Text models: tokens per example.")
@click.option("--limit", type=int, default=None, help="Training examples (class-balanced) [2000].")
@click.option("--val-limit", type=int, default=None, help="Validation examples (class-balanced) [2000].")
@click.option("--seed", type=int, default=None, help="Data subset seed [0].")
@click.option("--train-seed", type=int, default=None, help="Head init and data order [the data seed]; another value = a retest.")
@click.option("--epochs", type=int, default=None, help="Epochs per layer [4].")
@click.option("--score-epochs", type=int, default=None, help="Score = mean val accuracy of the last N epochs [2].")
@click.option("--lr", type=float, default=None, help="One learning rate (skips the probe) instead of the grid.")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default=None, help="[adamw]")
@click.option("--batch-size", type=int, default=None, help="[32]")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Sweep folder (append-only store).")
@click.option("--shard", default="0/1", show_default=True, help="Run slice I of N of the layers.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (with --backend ray).")
@click.option("--corpus-out", type=click.Path(dir_okay=False), default=None,
              help="When the sweep is complete, write the combination file (contributions + metrics) here.")
def contrib(config_path, out, shard, backend, address, corpus_out, lr, **flags):
    """Contribution sweep: fine-tune each layer alone (+ head) and record the accuracy it reaches (resumable)."""
    from .config import load_config
    from .contrib import HEAD, SweepConfig, check_shard, run_sweep
    from .corpus import combination_record, write_combination
    cfg = load_config(config_path, None) if config_path else {}
    cfg.update({k: v for k, v in flags.items() if v is not None})
    if lr is not None:
        cfg["lr_grid"] = [lr]
    if not cfg.get("model") or not cfg.get("data"):
        raise ZestError("contrib needs --model and --data (or a --config naming them)")
    sweep = SweepConfig.from_dict(cfg, config_path or "contrib")
    try:
        shard_i, shard_n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise ZestError(f"--shard must look like I/N, got {shard!r}") from None
    check_shard((shard_i, shard_n))
    task = sweep.load_task()
    result = run_sweep(sweep, out, shard=(shard_i, shard_n), backend=backend, address=address, task=task)
    rows = result["rows"]
    click.echo(f"{len(rows)} rows in {out} at lr {result['lr']:g}" +
               (f"; head only: {rows[HEAD]['acc']:.4f}" if HEAD in rows else ""))
    for name, row in sorted(rows.items(), key=lambda kv: -kv[1]["acc"])[:5]:
        click.echo(f"  {row['acc']:.4f} ± {row['se']:.4f}  {name}")
    if corpus_out:
        record = combination_record(task, out, batch_size=sweep.metric_batch_size,
                                    batch_seeds=[sweep.seed + i for i in range(sweep.metric_batches)])
        record["note"] = sweep.note
        write_combination(corpus_out, record)
        click.echo(f"wrote {corpus_out} ({len(record['layers'])} layers, sweep {record['sweep_seconds']:.0f} s)")


@cli.command("train-predictor")
@click.option("--corpus", required=True, type=click.Path(exists=True), help="Folder of combination files.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Predictor JSON to write.")
@click.option("--hidden", type=int, default=0, show_default=True, help="Hidden units (0 = linear scorer).")
@click.option("--epochs", type=int, default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--exclude", multiple=True, help="Leave out combination files whose name contains this (repeatable).")
def train_predictor(corpus, out, hidden, epochs, seed, exclude):
    """Train the pairwise predictor on a corpus of contribution sweeps."""
    import datetime
    from .corpus import load_corpus
    from .metrics import METRICS
    from .predictor import train
    from .predictor_eval import contributions
    combos = [c for c in load_corpus(corpus) if not any(x in c["file"] for x in exclude)]
    if not combos:
        raise ZestError("--exclude left no combination to train on")
    names = [m for m in METRICS if all(m in c["metric_names"] for c in combos)]
    predictor = train([(c["layers"], contributions(c)) for c in combos], names, hidden=hidden, epochs=epochs, seed=seed,
                      provenance={"id": f"zest-{datetime.date.today().isoformat()}", "corpus": [c["file"] for c in combos]})
    predictor.save(out)
    click.echo(f"trained on {len(combos)} combinations, {predictor.provenance['pairs']} pairs; wrote {out}")


@cli.command("eval-predictor")
@click.option("--corpus", required=True, type=click.Path(exists=True), help="Folder of combination files.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write eval.json and eval.md here.")
@click.option("--hidden", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, default=300, show_default=True)
def eval_predictor(corpus, out, hidden, epochs):
    """Held-out Kendall τ of the predictor vs single-metric baselines (leave-one-out)."""
    from pathlib import Path
    from .corpus import load_corpus
    from .io import write_json, write_text
    from .metrics import METRICS
    from .predictor_eval import evaluate, markdown
    combos = load_corpus(corpus)
    names = [m for m in METRICS if all(m in c["metric_names"] for c in combos)]
    results = evaluate(combos, names, hidden=hidden, epochs=epochs)
    text = markdown(results, names)
    click.echo(text)
    if out:
        write_json(Path(out) / "eval.json", {"format": "zest-edge/predictor-eval", "version": 1, "hidden": hidden,
                                             "epochs": epochs, "results": results})
        write_text(Path(out) / "eval.md", text)
        click.echo(f"wrote {out}/eval.json and eval.md")


@cli.command()
@task_options
@click.option("--predictor", type=click.Path(dir_okay=False), default=None, help="Predictor JSON (default: shipped).")
@click.option("--metric", default=None, help="Rank by one metric instead (prefix '-' for low-first).")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="ranking.json to write.")
@click.option("--emit-peft", type=click.Path(dir_okay=False), default=None, help="Also write a PEFT LoraConfig JSON.")
def rank(predictor, metric, top_k, batch_size, out, emit_peft, **task_args):
    """Rank layers from one minibatch and select the top k (ranking.json)."""
    from .io import write_json
    from .ranking import peft_config, rank_task
    from .report import table
    task = load(**task_args)
    record = rank_task(task, top_k=top_k, predictor=predictor, metric=metric, batch_size=batch_size)
    click.echo(table(["rank", "layer", "type", "params", "score"],
                     [[l["rank"], l["name"], l["type"], f"{l['params']:,}", f"{l['score']:.4g}"] for l in record["layers"][:max(top_k, 10)]]))
    click.echo(f"selected top {top_k} by {record['ranked_by']}: {', '.join(record['selected'])}")
    click.echo(f"trainable {record['trainable_params']:,} of {record['total_params']:,} parameters "
               f"({100 * record['trainable_share']:.2f}%, head included)")
    write_json(out, record)
    click.echo(f"wrote {out}")
    if emit_peft:
        write_json(emit_peft, peft_config(record, task.model.zest_spec.head))
        click.echo(f"wrote {emit_peft}")


@cli.command()
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
@click.option("--configs", default="full,zest,last,head", show_default=True, help="Configurations to measure.")
@click.option("--label", default=None, help="Name of the zest@k rows (default: zest, or sel with --layers).")
@click.option("--backends", default="torch", show_default=True, help="Comma-separated: torch, ort.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--steps", type=int, default=10, show_default=True, help="Timed training steps.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed steps first.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True,
              help="Both backends; sgd is plain SGD (ORT's on-device SGD has no momentum).")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (torch and ORT; default: theirs).")
@click.option("--isolation", type=click.Choice(["fork", "subprocess"]), default="fork", show_default=True,
              help="Fresh process per configuration: forked from a preloaded server, or a new interpreter.")
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds per configuration.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for profile.json/.md/.png.")
def profile(model_name, num_classes, weights, batch_size, resolution, top_k, layers, ranking, data_spec, data_root,
            limit, configs, label, backends, device, steps, warmup, optimizer, lr, threads, isolation, timeout, out):
    """Measure one training step (latency, peak memory, lower bound) for full, ZEST@k, last-k and head-only."""
    from .profile import profile as run
    try:
        ks = [int(k) for k in top_k.split(",") if k.strip()]
    except ValueError:
        raise ZestError(f"--top-k takes comma-separated integers, got {top_k!r}") from None
    record = run(model_name, out=out, batch_size=batch_size, resolution=resolution, top_k=ks, layers=layers,
                 ranking=ranking, data=data_spec,
                 task_args={"data_root": data_root, "limit": limit, "resolution": resolution},
                 backends=[b.strip() for b in backends.split(",") if b.strip()], device=device, steps=steps,
                 warmup=warmup, optimizer=optimizer, lr=lr, num_classes=num_classes, weights=weights, threads=threads,
                 configs=[c.strip() for c in configs.split(",") if c.strip()], label=label, isolation=isolation,
                 timeout=timeout)
    from .profile import profile_table
    click.echo(profile_table(record))
    click.echo(f"wrote {out}/profile.json, profile.md, profile.png")


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Benchmark YAML (configs/eval_*.yaml).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for runs/ and results.")
@click.option("--resume", is_flag=True, help="Skip finished runs, continue an interrupted one.")
def benchmark(config_path, out, resume):
    """Fine-tune every method of a config (full, ZEST@k, baselines) and compare val accuracy and step time."""
    from .benchmark import benchmark as run, results_table
    record = run(config_path, out, resume=resume)
    click.echo(results_table(record))
    click.echo(f"wrote {out}/results.json, results.md, curves.png ({record['seconds']:.0f} s)")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _refuse_nonempty(out, force: bool, hint: str = "use --force to replace it") -> None:
    """Fail before any work when --out is a non-empty folder (the atomic writers check again at the end)."""
    from pathlib import Path
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ZestError(f"output {out} exists and is not empty ({hint})")


@cli.command()
@task_options
@click.option("--top-k", type=int, default=None, help="Rank layers now (or cut --ranking) and train the top K.")
@click.option("--ranking", type=click.Path(dir_okay=False), default=None, help="ranking.json from `zest-edge rank`.")
@click.option("--layers", default=None, help="Comma-separated layer names to train.")
@click.option("--full", is_flag=True, help="Full fine-tuning (every layer and BatchNorm trains): the baseline.")
@click.option("--predictor", type=click.Path(dir_okay=False), default=None, help="Predictor JSON for --top-k ranking.")
@click.option("--metric", default=None, help="Rank by one metric instead of the predictor ('-' prefix: low first).")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True,
              help="adamw = torch.optim.AdamW; sgd = plain SGD (ORT's on-device SGD has no momentum).")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="AdamW only.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Batch size recorded for device runs.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt"]), default="onnx", show_default=True,
              help="tensorrt: also build model.engine from inference.onnx (needs TensorRT and a GPU).")
@click.option("--fp16", is_flag=True, help="FP16 TensorRT engine (with --format tensorrt).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifacts folder to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def export(top_k, ranking, layers, full, predictor, metric, optimizer, lr, weight_decay, batch_size, fmt, fp16, out,
           force, **task_args):
    """Export ONNX Runtime Training artifacts (+ inference ONNX, optional TensorRT engine) for the chosen layers."""
    from .export import export_artifacts
    from .layers import layer_map, resolve_layers
    given = [o for o, v in (("--top-k", top_k if ranking is None else None), ("--ranking", ranking),
                            ("--layers", layers), ("--full", full or None)) if v is not None]
    if len(given) != 1:
        raise ZestError("choose exactly one of --top-k K, --ranking FILE (optionally with --top-k), --layers, --full")
    if fp16 and fmt != "tensorrt":
        raise ZestError("--fp16 applies to --format tensorrt")
    if (predictor or metric) and (top_k is None or ranking is not None):
        raise ZestError("--predictor and --metric rank layers for --top-k (without --ranking)")
    if batch_size < 1:
        raise ZestError(f"--batch-size must be at least 1, got {batch_size}")
    _refuse_nonempty(out, force)
    if fmt == "tensorrt":
        from .export.tensorrt import _import_tensorrt
        _import_tensorrt()                       # fail before the slow part when TensorRT cannot run here
    task = load(**task_args)
    lmap = layer_map(task.model)
    if top_k is not None and not 1 <= top_k <= len(lmap):
        raise ZestError(f"--top-k must be between 1 and the number of layers of {task.model_name} ({len(lmap)}), "
                        f"got {top_k}")
    record = None
    if full:
        names = None
    elif layers is not None:
        names = [n.strip() for n in layers.split(",") if n.strip()]
        if not names:
            raise ZestError("--layers names no layer")
        names = [layer.name for layer in resolve_layers(lmap, names)]
    elif ranking is not None:
        from .ranking import load_ranking
        record = load_ranking(ranking, task.model_name)
        ordered = [layer["name"] for layer in record.get("layers", [])]
        names = ordered[:top_k] if top_k is not None else list(record["selected"])
        names = [layer.name for layer in resolve_layers(lmap, names)]
    else:
        from .ranking import rank_task
        start = time.perf_counter()
        record = rank_task(task, top_k=top_k, predictor=predictor, metric=metric)
        names = list(record["selected"])
        click.echo(f"ranked {len(lmap)} layers by {record.get('ranked_by', 'predictor')} in "
                   f"{time.perf_counter() - start:.1f} s")

    def engine(tmp):
        from .export.tensorrt import build_engine
        report = build_engine(tmp / "inference.onnx", tmp / "model.engine", fp16=fp16, max_batch=batch_size)
        report["engine"] = "model.engine"
        return {"tensorrt": report}

    manifest = export_artifacts(task.model, names, out, batch_size=batch_size, optimizer=optimizer, lr=lr,
                                weight_decay=weight_decay, preprocess=task.preprocess, classes=task.train.classes,
                                ranking=record, force=force, finalize=engine if fmt == "tensorrt" else None,
                                extra_manifest={"data": task.data_spec, "task": task.describe()})
    sel = manifest["selected_layers"]
    what = "all layers (full fine-tuning)" if names is None else f"{len(sel)} layers"
    click.echo(f"selected {what} + head {manifest['head']['name']}"
               + ("" if names is None else ": " + ", ".join(layer["name"] for layer in sel)))
    click.echo(f"trainable {manifest['trainable_params']:,} of {manifest['total_params']:,} parameters "
               f"({100 * manifest['trainable_share']:.2f}%); "
               f"{manifest['gradient_nodes']} gradient nodes; {manifest['optimizer']['kind']} lr {lr:g}")
    files = dict(manifest["files"])
    if "tensorrt" in manifest:
        files["model.engine"] = manifest["tensorrt"]["bytes"]
    click.echo(", ".join(f"{name} {_size(size)}" for name, size in files.items()))
    click.echo(f"wrote {out}/ in {manifest['export_seconds']:.1f} s (manifest.json describes it)")


@cli.command("device-train")
@click.argument("artifacts", type=click.Path(file_okay=False))
@click.option("--data", "data_spec", required=True, help="Dataset spec, e.g. fashion_mnist or imagefolder:PATH.")
@click.option("--data-root", default=None, help="Folder holding torchvision datasets (never downloaded).")
@click.option("--limit", type=int, default=None, help="Class-balanced subset of N training examples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for subsets and shuffling.")
@click.option("--epochs", type=int, required=True)
@click.option("--batch-size", type=int, default=None, help="Default: the batch size in the manifest.")
@click.option("--lr", type=float, default=None, help="Default: the learning rate in the manifest.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--force", is_flag=True, help="Start over in a non-empty --out.")
def device_train(artifacts, data_spec, data_root, limit, seed, epochs, batch_size, lr, out, resume, force):
    """Fine-tune on device from exported artifacts with ONNX Runtime Training only (no PyTorch)."""
    from .data import Preprocess, build_dataset
    from .device import device_train as run
    from .export import read_manifest
    manifest = read_manifest(artifacts)
    if not resume:
        _refuse_nonempty(out, force, "use --resume to continue that run, or --force to start over")
    pre = manifest["preprocess"]
    preprocess = (Preprocess(kind="text", tokenizer_dir=pre["tokenizer_dir"], max_length=pre["max_length"])
                  if pre["kind"] == "text" else
                  Preprocess(resolution=pre["resolution"], mean=tuple(pre["mean"]), std=tuple(pre["std"])))
    train = build_dataset(data_spec, "train", preprocess=preprocess, limit=limit, seed=seed, data_root=data_root)
    val_limit = max(limit // 4, 10 * train.num_classes) if limit is not None else None
    val = build_dataset(data_spec, "val", preprocess=preprocess, limit=val_limit, seed=seed, data_root=data_root)
    if train.num_classes != manifest["num_classes"]:
        raise ZestError(f"{data_spec} has {train.num_classes} classes but {artifacts} was exported for "
                        f"{manifest['num_classes']}")
    batch_size = batch_size or manifest["optimizer"]["batch_size"]

    def report(r):
        click.echo(f"epoch {r['epoch']}/{epochs}: train loss {r['train_loss']:.4f}, train acc "
                   f"{r['train_accuracy']:.4f}, val acc {r['val_accuracy']:.4f} ({r['epoch_seconds']:.1f} s, "
                   f"{r['mean_step_ms']:.1f} ms/step)")

    record = run(artifacts, train, val, epochs=epochs, batch_size=batch_size, out_dir=out, resume=resume,
                 force=force, seed=seed, lr=lr, on_epoch=report)
    if record["resumed_from_epoch"]:
        click.echo(f"resumed after epoch {record['resumed_from_epoch']}")
    click.echo(f"final val acc {record['final_val_accuracy']:.4f} on {len(val)} examples (inference model: "
               f"{record['inference_val_accuracy']:.4f}); wrote {out}/model_inference.onnx, metrics.json")


@cli.command("build-engine")
@click.argument("onnx_path", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Engine (plan) file to write.")
@click.option("--fp16", is_flag=True, help="Allow FP16 kernels.")
@click.option("--workspace-gb", type=float, default=2.0, show_default=True, help="Builder workspace limit.")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Largest batch of the dynamic profile.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def build_engine(onnx_path, out, fp16, workspace_gb, max_batch, force):
    """Build a TensorRT engine from an inference ONNX model (needs TensorRT and an NVIDIA GPU)."""
    from pathlib import Path

    from .export.tensorrt import build_engine as build
    if not Path(onnx_path).is_file():
        raise ZestError(f"ONNX file not found: {onnx_path}")
    if Path(out).exists() and not force:
        raise ZestError(f"output {out} exists (use --force to replace it)")
    report = build(onnx_path, out, fp16=fp16, workspace_gb=workspace_gb, max_batch=max_batch)
    click.echo(f"wrote {out} ({_size(report['bytes'])}, TensorRT {report['tensorrt']}, "
               f"{'fp16' if fp16 else 'fp32'}, batch 1..{max_batch})")


@cli.command()
@click.option("--model", "model_name", default="efficientnet_lite0", show_default=True)
@click.option("--data", "data_spec", default="fashion_mnist", show_default=True)
@click.option("--weights", default=None, help="Local state_dict overriding the model's default weights, or 'random'.")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--limit", type=int, default=600, show_default=True, help="Training examples.")
@click.option("--resolution", type=int, default=64, show_default=True)
@click.option("--epochs", type=int, default=2, show_default=True, help="On-device epochs.")
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def demo(model_name, data_spec, weights, top_k, limit, resolution, epochs, out, force):
    """The deployment story: rank, export the top-k to ORT, fine-tune on device, report."""
    from .demo import run_demo
    run_demo(out, model=model_name, data=data_spec, weights=weights, top_k=top_k, limit=limit, resolution=resolution,
             epochs=epochs, force=force, echo=click.echo)


def main():
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except ZestError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
