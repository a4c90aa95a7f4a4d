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
