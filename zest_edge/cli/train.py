"""Training and ground truth: finetune, evaluate, contrib, train-predictor, eval-predictor."""
import click

from ..errors import ZestError
from .options import task_options, load, selection_options, select_from_flags, schedule_options


@click.command()
@task_options
@selection_options
@schedule_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--lora", "lora_r", type=int, default=None,
              help="Train rank-R LoRA adapters (PEFT) on the chosen layers instead of their weights; with --full, on every layer.")
@click.option("--lora-alpha", type=float, default=None, help="LoRA scaling alpha [2·R].")
def finetune(top_k, ranking, predictor, metric, layers, random_k, full, epochs, lr, optimizer, batch_size,
             weight_decay, bn, no_cache, backend, out, resume, force, lora_r, lora_alpha, **task_args):
    """Fine-tune chosen layers (+ head) and write run/ (metrics.json, trained.safetensors; adapter/ with --lora)."""
    from ..training import Schedule, finetune as run
    schedule = Schedule(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size, weight_decay=weight_decay,
                        bn=bn, cache=not no_cache, backend=backend)
    schedule.check()
    lora = None
    if lora_r is not None:
        from ..lora import LoraSpec
        lora = LoraSpec(r=lora_r, alpha=lora_alpha).check()
    elif lora_alpha is not None:
        raise ZestError("--lora-alpha needs --lora R")
    task = load(**task_args)
    chosen = select_from_flags(task, top_k=top_k, ranking=ranking, predictor=predictor, metric=metric, layers=layers,
                               random_k=random_k, full=full, seed=task_args["seed"])
    record = run(task, chosen.layers, schedule, out, resume=resume, force=force, selection=chosen.info, lora=lora)
    last = record["epochs"][-1]
    what = f"LoRA r={lora.r} on {len(record['layers'])} layers" if lora else f"{len(record['layers'])} layers"
    click.echo(f"trained {what} + head: {record['trainable_params']:,} of "
               f"{record['total_params']:,} parameters ({100 * record['trainable_share']:.2f}%), "
               f"update backend {record['optimizer_backend']}")
    click.echo(f"val acc {last['val_acc_before']:.4f} (untrained head) -> {last['val_acc']:.4f}; "
               f"step {last['step_ms_median']:.1f} ms; peak RSS {last['peak_rss_mb']:.0f} MB; wrote {out}/")


@click.command()
@task_options
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder from finetune.")
@click.option("--save", type=click.Path(dir_okay=False), default=None, help="Write the merged full model (safetensors).")
def evaluate(run_dir, save, **task_args):
    """Merge a run's trained layers into the model and report validation accuracy."""
    from ..training import evaluate_run
    task = load(**task_args)
    acc = evaluate_run(task, run_dir)
    click.echo(f"{task.model_name} + {run_dir}: val acc {acc:.4f} on {len(task.val)} examples of {task.data_spec}")
    if save:
        from safetensors.torch import save as st_save
        from ..io import atomic_write_bytes
        atomic_write_bytes(save, st_save({k: v.contiguous() for k, v in task.model.state_dict().items()}))
        click.echo(f"wrote {save}")


@click.command()
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
    from ..config import load_config
    from ..contrib import HEAD, SweepConfig, check_shard, run_sweep
    from ..corpus import combination_record, still_rising, write_combination
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
        rising = still_rising(record)
        if rising:
            click.echo(f"note: {len(rising)} layers still rose by > 2 SE in the last epoch (e.g. {rising[0]}): their "
                       f"curves are not flat, more epochs would lower the noise of their scores")


def corpus_options(f):
    f = click.option("--exclude", multiple=True,
                     help="Leave out combination files whose name contains this (repeatable).")(f)
    f = click.option("--corpus", required=True, type=click.Path(exists=True, file_okay=False),
                     help="Folder of combination files (its retest/ subfolder holds second sweeps, pooled into the "
                          "ground truth).")(f)
    f = click.option("--ground-truth", type=click.Choice(["probed-rate", "best-of-two-rates"]), default="probed-rate",
                     show_default=True, help="A layer's score at the rate the probe chose, or its better score of "
                     "that and the corpus's rate_study/ sweep at another rate.")(f)
    return f


def read_corpus(corpus, exclude, ground_truth="probed-rate"):
    """(combinations with retests pooled (`corpus.pool_retests`) and, for "best-of-two-rates", each layer's better
    score of two rates (`corpus.best_of_two_rates`), the metrics all of them have)."""
    from ..corpus import best_of_two_rates, load_corpus, pool_retests
    from ..metrics import METRICS
    combos = [c for c in load_corpus(corpus) if not any(x in c["file"] for x in exclude)]
    if not combos:
        raise ZestError("--exclude left no combination")
    names = [m for m in METRICS if all(m in c["metric_names"] for c in combos)]
    combos = pool_retests(corpus, combos)
    return (best_of_two_rates(corpus, combos) if ground_truth == "best-of-two-rates" else combos), names


@click.command("train-predictor")
@corpus_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Predictor JSON to write.")
@click.option("--scorer", default="lambdarank", show_default=True, help="pairwise, lambdarank or ensemble.")
@click.option("--features", default="v2", show_default=True, help="Feature set: v1, v2, structure or metrics.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_predictor(corpus, exclude, ground_truth, out, scorer, features, seed):
    """Train a predictor on a corpus of contribution sweeps (noisy combinations down-weighted as eval-predictor)."""
    import datetime
    from ..predictor import train
    from ..training import config_hash
    from ..corpus import combination_name
    from ..bench.predictor_eval import ceilings, training_set
    combos, names = read_corpus(corpus, exclude, ground_truth)
    train_set = training_set(combos, ceilings(combos))
    predictor = train(train_set, names, scorer=scorer, features=features, seed=seed,
                      provenance={"corpus": [c["file"] for c in combos], "ground_truth": ground_truth,
                                  "weights": {combination_name(c): t.weight for c, t in zip(combos, train_set)}})
    digest = config_hash(predictor.scorer.to_json())[:8]              # the JSON digest runs are named by
    predictor.provenance["id"] = f"zest-{datetime.date.today().isoformat()}-{digest}"   # rankings name it
    predictor.save(out)
    click.echo(f"trained a {scorer} scorer on {len(combos)} combination{'s' * (len(combos) != 1)} "
               f"({predictor.provenance['groups']} metric batches, features {features}); wrote {out}")


@click.command("eval-predictor")
@corpus_options
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write eval.json and eval.md here.")
@click.option("--candidates", default=None, help="Comma-separated scorer/features pairs [every one in the study].")
@click.option("--schemes", default="model,dataset,combination", show_default=True,
              help="Leave-one-X-out schemes; the first chooses the winner (mean τ over its held-out groups).")
@click.option("--nested", is_flag=True, help="Also choose inside each leave-one-model-out fold (the unbiased τ of the "
              "choice; trains a predictor per candidate per inner fold: several minutes on a full corpus).")
def eval_predictor(corpus, exclude, ground_truth, out, candidates, schemes, nested):
    """Held-out Kendall τ of candidate predictors vs single metrics and the ground truth's ceiling (leave-one-out)."""
    from ..io import write_report
    from ..bench.predictor_eval import CANDIDATES, SCHEMES, evaluate, markdown, nested as nested_choice
    combos, names = read_corpus(corpus, exclude, ground_truth)
    chosen = {n: CANDIDATES.get_or_fail(n) for n in (candidates.split(",") if candidates else CANDIDATES)}
    schemes = schemes.split(",")
    for scheme in schemes:
        SCHEMES.get_or_fail(scheme)
    if nested and schemes[0] != "model":
        raise ZestError("--nested compares with the choice leave-one-model-out makes: put model first in --schemes")
    results = {**evaluate(combos, names, schemes=schemes, candidates=chosen), "ground_truth": ground_truth}
    if nested:
        results["nested"] = nested_choice(combos, names, chosen, results["model"])
    text = markdown(results, names)
    click.echo(text)
    if out:
        write_report(out, "eval", {"format": "zest-edge/predictor-eval", "version": 2,
                                   "corpus": [c["file"] for c in combos], "results": results}, text)
        click.echo(f"wrote {out}/eval.json and eval.md")
