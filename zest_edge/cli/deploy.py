"""Deployment: export, device-train, build-engine, and the demo that runs them."""
import time

import click

from ..errors import ZestError
from .options import human_size, load, select_from_flags, selection_options, task_options


@click.command()
@task_options
@selection_options
@click.option("--backend", type=click.Choice(["ort", "executorch"]), default="ort", show_default=True,
              help="ort: ONNX Runtime Training artifacts; executorch: ExecuTorch .pte training programs (SGD only).")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default=None,
              help="adamw = torch.optim.AdamW (ort); sgd = torch.optim.SGD (ORT's has no momentum or weight decay). "
                   "[ort: adamw, executorch: sgd]")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--momentum", type=float, default=0.0, show_default=True, help="SGD momentum (executorch only).")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="AdamW, or SGD with executorch.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Batch size recorded for device runs.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt"]), default="onnx", show_default=True,
              help="tensorrt: also build model.engine from inference.onnx (needs TensorRT and a GPU).")
@click.option("--fp16", is_flag=True, help="FP16 TensorRT engine (with --format tensorrt).")
@click.option("--no-split", is_flag=True, help="One training graph from the input (no prefix.onnx, nothing cached).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifacts folder to write.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out (only once the new export is complete).")
def export(top_k, ranking, predictor, metric, layers, random_k, full, backend, optimizer, lr, momentum, weight_decay,
           batch_size, fmt, fp16, no_split, out, force, **task_args):
    """Export training artifacts for the chosen layers: ONNX Runtime Training (+ inference ONNX, optional TensorRT
    engine) or ExecuTorch programs (training, inference, frozen prefix)."""
    from ..export import export_artifacts
    from ..io import refuse_nonempty
    optimizer = optimizer or ("sgd" if backend == "executorch" else "adamw")
    if momentum and optimizer != "sgd":
        raise ZestError("--momentum applies to --optimizer sgd")
    if backend == "executorch":
        from ..export.executorch import check_args, export_executorch, import_exir
        if fmt != "onnx":
            raise ZestError("--format tensorrt builds from inference.onnx: use it with --backend ort")
        check_args(None if full else [], optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                   batch_size=batch_size, bn="frozen")
        import_exir()                           # fail before the slow part when ExecuTorch cannot run here
    if fp16 and fmt != "tensorrt":
        raise ZestError("--fp16 applies to --format tensorrt")
    if batch_size < 1:
        raise ZestError(f"--batch-size must be at least 1, got {batch_size}")
    refuse_nonempty(out, force)
    if fmt == "tensorrt":
        from ..export.tensorrt import import_tensorrt
        import_tensorrt()                       # fail before the slow part when TensorRT cannot run here
    task = load(**task_args)
    start = time.perf_counter()
    chosen = select_from_flags(task, top_k=top_k, ranking=ranking, predictor=predictor, metric=metric, layers=layers,
                               random_k=random_k, full=full, seed=task_args["seed"])
    if chosen.info["method"] == "rank":
        click.echo(f"ranked layers by {chosen.info['ranked_by']} in {time.perf_counter() - start:.1f} s")

    def engine(tmp):
        from ..export.tensorrt import build_engine
        report = build_engine(tmp / "inference.onnx", tmp / "model.engine", fp16=fp16, max_batch=batch_size)
        report["engine"] = "model.engine"
        return {"tensorrt": report}

    extra = {"data": task.data_spec, "task": task.describe(), "selection_info": chosen.info}
    if backend == "executorch":
        manifest = export_executorch(task.model, chosen.layers, out, batch_size=batch_size, optimizer=optimizer, lr=lr,
                                     momentum=momentum, weight_decay=weight_decay, split=not no_split,
                                     preprocess=task.preprocess, classes=task.train.classes, ranking=chosen.ranking,
                                     force=force, extra_manifest=extra)
    else:
        manifest = export_artifacts(task.model, chosen.layers, out, batch_size=batch_size, optimizer=optimizer, lr=lr,
                                    weight_decay=weight_decay, momentum=momentum, split=not no_split,
                                    preprocess=task.preprocess, classes=task.train.classes, ranking=chosen.ranking,
                                    force=force, finalize=engine if fmt == "tensorrt" else None, extra_manifest=extra)
    sel = manifest["selected_layers"]
    what = "all layers (full fine-tuning)" if chosen.layers is None else f"{len(sel)} layers"
    click.echo(f"selected {what} + head {manifest['head']['name']}"
               + ("" if chosen.layers is None else ": " + ", ".join(layer["name"] for layer in sel)))
    click.echo(f"trainable {manifest['trainable_params']:,} of {manifest['total_params']:,} parameters "
               f"({100 * manifest['trainable_share']:.2f}%); "
               f"{manifest['gradient_nodes']} gradient nodes; {manifest['optimizer']['kind']} lr {lr:g}")
    files = dict(manifest["files"])
    if "tensorrt" in manifest:
        files["model.engine"] = manifest["tensorrt"]["bytes"]
    click.echo(", ".join(f"{name} {human_size(size)}" for name, size in files.items()))
    if manifest["prefix"]:
        boundary = ", ".join(f"{b['name']} {b['shape'][1:]}" for b in manifest["prefix"]["boundary"])
        click.echo(f"frozen prefix: {manifest['prefix']['stages']} stages in {manifest['prefix']['file']} (run once "
                   f"per example on device, then cached); training starts at {boundary}")
    click.echo(f"wrote {out}/ in {manifest['export_seconds']:.1f} s (manifest.json describes it)")


@click.command("device-train")
@click.argument("artifacts", type=click.Path(file_okay=False))
@click.option("--data", "data_spec", required=True, help="Dataset spec, e.g. fashion_mnist or imagefolder:PATH.")
@click.option("--data-root", default=None, help="Folder holding torchvision datasets (never downloaded).")
@click.option("--limit", type=int, default=None, help="Class-balanced subset of N training examples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for subsets and shuffling.")
@click.option("--epochs", type=int, required=True)
@click.option("--batch-size", type=int, default=None, help="Default: the batch size in the manifest.")
@click.option("--lr", type=float, default=None, help="Default: the learning rate in the manifest.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--cache-mb", type=int, default=None,
              help="Memory for the frozen prefix's cached outputs; beyond it they spill to memory-mapped files "
                   "[a quarter of RAM, at most 4096].")
@click.option("--no-cache", is_flag=True, help="Run the frozen prefix for every example in every epoch.")
@click.option("--augment", is_flag=True, help="Random horizontal flips of training images (turns the cache off).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last finished epoch.")
@click.option("--force", is_flag=True, help="Start over in a non-empty --out.")
def device_train(artifacts, data_spec, data_root, limit, seed, epochs, batch_size, lr, cache_mb, no_cache, augment, out,
                 resume, force):
    """Fine-tune on device from exported artifacts with their runtime only: ONNX Runtime Training, or ExecuTorch."""
    from ..device import device_datasets, device_train as run
    from ..export import read_manifest
    from ..io import refuse_nonempty
    manifest = read_manifest(artifacts)
    if not resume:
        refuse_nonempty(out, force, "use --resume to continue that run, or --force to start over")
    train, val = device_datasets(manifest, data_spec, limit=limit, seed=seed, data_root=data_root)
    batch_size = manifest["optimizer"]["batch_size"] if batch_size is None else batch_size

    def report(r):
        click.echo(f"epoch {r['epoch']}/{epochs}: train loss {r['train_loss']:.4f}, train acc "
                   f"{r['train_accuracy']:.4f}, val acc {r['val_accuracy']:.4f} ({r['epoch_seconds']:.1f} s, "
                   f"{r['mean_step_ms']:.1f} ms/step, prefix {r['prefix']})")

    record = run(artifacts, train, val, epochs=epochs, batch_size=batch_size, out_dir=out, resume=resume,
                 force=force, seed=seed, lr=lr, cache=not no_cache, cache_mb=cache_mb, augment=augment,
                 on_epoch=report, echo=click.echo)
    click.echo(record["prefix"])
    if record["resumed_from_epoch"]:
        click.echo(f"resumed after epoch {record['resumed_from_epoch']}")
    click.echo(f"final val acc {record['final_val_accuracy']:.4f} on {len(val)} examples (inference model: "
               f"{record['inference_val_accuracy']:.4f}); wrote {out}/{record['inference_model']}, metrics.json")


@click.command("build-engine")
@click.argument("onnx_path", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Engine (plan) file to write.")
@click.option("--fp16", is_flag=True, help="Allow FP16 kernels.")
@click.option("--workspace-gb", type=float, default=2.0, show_default=True, help="Builder workspace limit.")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Largest batch of the dynamic profile.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def build_engine(onnx_path, out, fp16, workspace_gb, max_batch, force):
    """Build a TensorRT engine from an inference ONNX model (needs TensorRT and an NVIDIA GPU)."""
    from pathlib import Path

    from ..export.tensorrt import build_engine as build
    if not Path(onnx_path).is_file():
        raise ZestError(f"ONNX file not found: {onnx_path}")
    if Path(out).exists() and not force:
        raise ZestError(f"output {out} exists (use --force to replace it)")
    report = build(onnx_path, out, fp16=fp16, workspace_gb=workspace_gb, max_batch=max_batch)
    click.echo(f"wrote {out} ({human_size(report['bytes'])}, TensorRT {report['tensorrt']}, "
               f"{'fp16' if fp16 else 'fp32'}, batch 1..{max_batch})")


@click.command()
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
    from ..demo import run_demo
    run_demo(out, model=model_name, data=data_spec, weights=weights, top_k=top_k, limit=limit, resolution=resolution,
             epochs=epochs, force=force, echo=click.echo)
