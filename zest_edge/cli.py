"""The `zest-edge` command line: argument checking and printing over the Python API, nothing else."""
import functools
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
        click.option("--weights", default=None, help="Local state_dict overriding the model's default weights."),
        click.option("--resolution", type=int, default=None, help="Image side in pixels (default: the model's)."),
        click.option("--limit", type=int, default=None, help="Class-balanced subset of N training examples."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for subsets, splits and batches."),
    ]):
        fn = opt(fn)
    return fn


def load(model_name, data_spec, data_root, weights, resolution, limit, seed, **extra):
    from .task import load_task
    return load_task(model_name, data_spec, weights=weights, resolution=resolution, limit=limit, seed=seed,
                     data_root=data_root, **extra)


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
@click.option("--weights", default=None, help="Local state_dict overriding the model's default weights.")
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
    if layers:
        return [n.strip() for n in layers.split(",") if n.strip()], {"method": "layers"}
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
