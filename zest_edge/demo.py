"""The deployment story on the bundled default: rank → export top-k → train on device with ORT → report."""
import time
from pathlib import Path

from .io import atomic_dir


def run_demo(out, *, model: str = "efficientnet_lite0", data: str = "fashion_mnist", top_k: int = 5,
             limit: int = 600, resolution: int = 64, epochs: int = 2, batch_size: int = 32, lr: float = 3e-4,
             weights: str | None = None, force: bool = False, echo=print) -> dict:
    from .device import device_train, evaluate_onnx
    from .export import export_artifacts
    from .ranking import rank_task
    from .task import load_task
    out = Path(out)
    start = time.perf_counter()
    with atomic_dir(out, force=force) as tmp:
        task = load_task(model, data, weights=weights, resolution=resolution, limit=limit, seed=0)
        echo(f"[1/4] {model} ({task.model.zest_spec.weights}) on {data}: {len(task.train)} train / "
             f"{len(task.val)} val examples at {resolution} px")
        if task.model.zest_spec.weights == "random":
            echo(f"note: {model} has random weights (--weights random): with frozen BatchNorm statistics a random "
                 "network barely trains, so expect accuracy near chance")
        ranking = rank_task(task, top_k=top_k, batch_size=batch_size)
        echo(f"[2/4] ranked {len(ranking['layers'])} layers by {ranking['ranked_by']} from one minibatch; top {top_k}:")
        for layer in ranking["layers"][:top_k]:
            echo(f"        {layer['rank']}. {layer['name']:28} {layer['type']:8} {layer['params']:>9,} params")
        manifest = export_artifacts(task.model, ranking["selected"], tmp / "artifacts", batch_size=batch_size,
                                    optimizer="adamw", lr=lr, preprocess=task.preprocess,
                                    classes=task.train.classes, ranking=ranking)
        share = manifest["trainable_params"] / manifest["total_params"]
        echo(f"[3/4] exported ORT training artifacts: {manifest['trainable_params']:,} of {manifest['total_params']:,} "
             f"parameters trainable ({100 * share:.2f}%, head included)"
             + (f"; frozen prefix of {manifest['prefix']['stages']} stages in prefix.onnx" if manifest["prefix"] else ""))
        before = evaluate_onnx(tmp / "artifacts" / "inference.onnx", task.val)
        echo(f"[4/4] device-train with onnxruntime.training only, {epochs} epochs (val acc before: {before:.4f})")
        record = device_train(tmp / "artifacts", task.train, task.val, epochs=epochs, batch_size=batch_size,
                              out_dir=tmp / "device_run", seed=0, progress_bar=True,
                              on_epoch=lambda r: echo(f"        epoch {r['epoch']}: loss {r['train_loss']:.4f}, "
                                                      f"val acc {r['val_accuracy']:.4f}, {r['epoch_seconds']:.1f} s "
                                                      f"(prefix {r['prefix']})"), echo=echo)
    after = record["final_val_accuracy"]
    echo(f"\nselected layers : {', '.join(ranking['selected'])}")
    echo(f"trainable share : {100 * share:.2f}% of {manifest['total_params']:,} parameters")
    echo(f"val accuracy    : {before:.4f} before -> {after:.4f} after {epochs} on-device epochs")
    echo(f"artifacts       : {out / 'artifacts'}/ (training/eval/optimizer models, checkpoint, inference.onnx, manifest.json)")
    echo(f"trained model   : {out / 'device_run' / 'model_inference.onnx'}")
    echo(f"total time      : {time.perf_counter() - start:.0f} s")
    return {"selected": ranking["selected"], "trainable_share": share, "val_acc_before": before, "val_acc_after": after}
