"""Looking before training: doctor, models, layers, metrics, rank."""
import time
from pathlib import Path

import click

from .options import task_options, load


@click.command()
def doctor():
    """Print versions, the fused-update backend and what hardware paths are available."""
    from ..doctor import report
    for key, value in report().items():
        click.echo(f"{key:>22}: {value}")


@click.command()
def models():
    """List registered models with their default preprocessing."""
    from ..models import MODELS, model_preprocess
    for name in sorted(MODELS):
        pre = model_preprocess(name)
        click.echo(f"{name:20} {pre.kind:5} " + (f"{pre.resolution}px" if pre.kind == "image" else f"{pre.max_length} tokens"))


@click.command()
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--num-classes", type=int, default=10, show_default=True, help="Head size (does not change layers).")
@click.option("--weights", default=None, help="Local state_dict overriding the model's default weights, or 'random'.")
def layers(model_name, num_classes, weights):
    """List a model's candidate layers in execution order."""
    from ..layers import layer_map
    from ..models import build_model
    from ..report import layer_table
    model = build_model(model_name, num_classes=num_classes, weights=weights)
    click.echo(layer_table(layer_map(model), role=model.zest_spec.role))


@click.command()
@task_options
@click.option("--batch-size", type=int, default=None, help="Size of the one minibatch [the model's: 32, smollm2_135m 8].")
@click.option("--metrics", "metric_names", default=None, help="Comma-separated subset of metrics (default: all).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write metrics.json here.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write a CSV table.")
def metrics(batch_size, metric_names, out, csv_path, **task_args):
    """Compute zero-shot metrics for every layer from one minibatch."""
    from ..metrics_file import metrics_record, nonfinite_note, write_csv
    from ..report import metrics_table
    from ..io import write_json
    task = load(**task_args)
    start = time.perf_counter()
    batch_size = task.model.zest_spec.metric_batch if batch_size is None else batch_size
    record = metrics_record(task, batch_size=batch_size, metrics=metric_names.split(",") if metric_names else None)
    click.echo(metrics_table(record))
    if nonfinite_note(record):
        click.echo(nonfinite_note(record))
    click.echo(f"{len(record['layers'])} layers, {len(record['metric_names'])} metrics in "
               f"{time.perf_counter() - start:.1f} s (batch {batch_size})")
    if out:
        write_json(out, record)
        click.echo(f"wrote {out}")
    if csv_path:
        write_csv(csv_path, record)
        click.echo(f"wrote {csv_path}")


@click.command()
@task_options
@click.option("--predictor", type=click.Path(dir_okay=False), default=None, help="Predictor JSON (default: shipped).")
@click.option("--metric", default=None, help="Rank by one metric instead (prefix '-' for low-first).")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Examples in the metrics minibatch [the model's: 32, smollm2_135m 8].")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="ranking.json to write.")
@click.option("--emit-peft", type=click.Path(dir_okay=False), default=None, help="Also write a PEFT LoraConfig JSON.")
def rank(predictor, metric, top_k, batch_size, out, emit_peft, **task_args):
    """Rank layers from one minibatch and select the top k (ranking.json)."""
    from ..io import write_json
    from ..ranking import peft_config, plot_ranking, rank_task
    from ..report import number, table
    task = load(**task_args)
    record = rank_task(task, top_k=top_k, predictor=predictor, metric=metric, batch_size=batch_size)
    click.echo(table(["rank", "layer", "type", "params", "score"],
                     [[l["rank"], l["name"], l["type"], f"{l['params']:,}", number(l["score"])] for l in record["layers"][:max(top_k, 10)]]))
    nonfinite = [l["name"] for l in record["layers"] if l["score"] is None]
    if nonfinite:
        click.echo(f"note: {len(nonfinite)} layers have no finite score (a non-finite metric; written as null, "
                   f"ranked last), e.g. {nonfinite[0]}")
    click.echo(f"selected top {top_k} by {record['ranked_by']}: {', '.join(record['selected'])}")
    click.echo(f"trainable {record['trainable_params']:,} of {record['total_params']:,} parameters "
               f"({100 * record['trainable_share']:.2f}%, head included)")
    write_json(out, record)
    picture = Path(out).with_name(Path(out).stem + ".png")
    plot_ranking(record, picture)
    click.echo(f"wrote {out} and {picture} (scores over depth, the selected layers marked)")
    if emit_peft:
        write_json(emit_peft, peft_config(record, task.model.zest_spec.head))
        click.echo(f"wrote {emit_peft}")
