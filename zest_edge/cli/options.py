"""Options several commands share, and the one place their selection flags become a select_layers call."""
import click

from ..errors import ZestError


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
    from ..task import load_task
    return load_task(model_name, data_spec, weights=weights, resolution=resolution, limit=limit, seed=seed,
                     data_root=data_root, max_length=max_length, **extra)


def selection_options(fn):
    """How layers are chosen, the same in finetune and export: --top-k K ranks now (or cuts --ranking)."""
    for opt in reversed([
        click.option("--top-k", type=int, default=None, help="Train the top K layers: of --ranking if given, else ranked now."),
        click.option("--ranking", type=click.Path(dir_okay=False), default=None, help="ranking.json from `zest-edge rank`."),
        click.option("--predictor", type=click.Path(dir_okay=False), default=None, help="Predictor JSON for ranking now."),
        click.option("--metric", default=None, help="Rank now by one metric instead ('-' prefix: low first)."),
        click.option("--layers", default=None, help="Comma-separated layer names to train."),
        click.option("--random-k", type=int, default=None, help="Train K layers drawn at random (a baseline)."),
        click.option("--full", is_flag=True, help="Full fine-tuning: every layer and BatchNorm trains."),
    ]):
        fn = opt(fn)
    return fn


def select_from_flags(task, *, top_k, ranking, predictor, metric, layers, random_k, full, seed=0):
    """The selection options → one select_layers call."""
    from ..selection import select_layers
    given = [o for o, v in (("--top-k", top_k if ranking is None else None), ("--ranking", ranking),
                            ("--layers", layers), ("--random-k", random_k), ("--full", full or None)) if v is not None]
    if len(given) != 1:
        raise ZestError("choose exactly one of --top-k K, --ranking FILE (optionally with --top-k), --layers, "
                        "--random-k K, --full")
    if (predictor or metric) and given != ["--top-k"]:
        raise ZestError("--predictor and --metric rank layers now, for --top-k without --ranking")
    if full:
        return select_layers(task, "full")
    if layers is not None:
        return select_layers(task, "layers", names=layers)
    if random_k is not None:
        return select_layers(task, "random", k=random_k, seed=seed, flag="--random-k")
    if ranking is not None:
        return select_layers(task, "ranking", ranking=ranking, k=top_k)
    return select_layers(task, "rank", k=top_k, predictor=predictor, metric=metric)


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


def human_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
