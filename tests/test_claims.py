"""README claims, each checked on tiny real data: atomic writes and the --force swap, the frozen prefix running once
(feature cache, device cache), full fine-tuning updating every BN while sparse training updates none, frozen
parameters holding no optimizer state, and the success paths of finetune → evaluate, doctor and demo."""
import json

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import run_main
from zest_edge.errors import ZestError
from zest_edge.io import atomic_dir, atomic_write_bytes
from zest_edge.sparse import sparsify
from zest_edge.task import load_task
from zest_edge.training import Schedule, finetune, load_run

RES = 32
LATE = ["features.16.conv.1.0", "features.16.conv.2"]


def small_task():
    torch.manual_seed(0)
    return load_task("mobilenet_v2", "fashion_mnist", resolution=RES, limit=48, val_limit=16, seed=0)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_bytes(path, b"old")
    import zest_edge.io as zio

    def dies(*a, **k):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(zio.os, "replace", dies)
    with pytest.raises((OSError, ZestError)):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_force_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "a.txt").write_text("second")
            assert (out / "a.txt").read_text() == "first"        # still the old one while the new one is built
            raise RuntimeError("killed mid-way")
    assert (out / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(out, force=True) as tmp:
        (tmp / "a.txt").write_text("second")
    assert (out / "a.txt").read_text() == "second"
    with pytest.raises(ZestError, match="not empty"):
        with atomic_dir(out):
            pass


def count_stem_calls(task) -> list:
    calls = []
    task.model.features[0].register_forward_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("cache", [True, False])
def test_the_feature_cache_runs_the_frozen_prefix_once(tmp_path, cache):
    """The stem is in the frozen prefix: with the cache it runs the same number of times for 1 epoch as for 3."""
    counts = []
    for epochs in (1, 3):
        task = small_task()
        calls = count_stem_calls(task)
        finetune(task, LATE, Schedule(epochs=epochs, lr=0.01, batch_size=16, cache=cache), tmp_path / f"{cache}{epochs}",
                 progress=False)
        counts.append(len(calls))
    assert (counts[0] == counts[1]) == cache and counts[0] > 0, counts


def test_the_device_cache_reads_each_example_once(tmp_path, monkeypatch):
    from zest_edge.device import device_train
    from zest_edge.export import export_artifacts
    task = small_task()
    export_artifacts(task.model, LATE, tmp_path / "art", preprocess=task.preprocess, classes=task.train.classes)
    reads = {"n": 0}
    real = type(task.train).__getitem__

    def counted(self, i):
        reads["n"] += self is task.train
        return real(self, i)
    monkeypatch.setattr(type(task.train), "__getitem__", counted)
    for cache in (True, False):
        reads["n"] = 0
        device_train(tmp_path / "art", task.train, task.val, epochs=3, batch_size=16, out_dir=tmp_path / f"run{cache}",
                     cache=cache, progress_bar=False, echo=lambda *a: None)
        assert reads["n"] == 1 + len(task.train) * (1 if cache else 3), (cache, reads["n"])   # 1: the shape check


def bn_state(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n}


@pytest.mark.parametrize("layers", [None, LATE], ids=["full", "sparse"])
def test_full_fine_tuning_updates_every_bn_and_sparse_none(layers):
    task = small_task()
    sm = sparsify(task.model, layers)
    before = bn_state(task.model)
    x, y = next(iter(torch.utils.data.DataLoader(task.train, batch_size=16)))
    sm.step(x, y, torch.optim.SGD([p for _, p in sm.trainable], lr=0.01))
    after = bn_state(task.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) == (len(before) if layers is None else 0), len(changed)


def test_frozen_parameters_hold_no_optimizer_state_and_no_gradient(tmp_path):
    task = small_task()
    finetune(task, LATE, Schedule(epochs=1, lr=0.01, optimizer="adamw", batch_size=16), tmp_path / "run",
             progress=False)
    saved = load_file(tmp_path / "run" / "trained.safetensors")
    trainable = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
    state = [t for k, t in saved.items() if k.startswith("opt/") and t.dim() > 0]
    assert state and all(t.numel() == trainable for t in state)          # one flat buffer per state, trainable only
    assert all(p.grad is None for p in task.model.parameters() if not p.requires_grad)


def test_finetune_then_evaluate_through_the_cli(monkeypatch, capsys, tmp_path):
    args = ["--model", "mobilenet_v2", "--data", "fashion_mnist", "--resolution", str(RES), "--limit", "48"]
    code, out, err = run_main(monkeypatch, capsys, "finetune", *args, "--layers", ",".join(LATE), "--epochs", "1",
                              "--batch-size", "16", "--out", str(tmp_path / "run"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    code, out, err = run_main(monkeypatch, capsys, "evaluate", *args, "--run", str(tmp_path / "run"),
                              "--save", str(tmp_path / "merged.safetensors"))
    assert code == 0, err
    assert f"val acc {metrics['epochs'][-1]['val_acc']:.4f}" in out
    assert "classifier.1.weight" in load_file(tmp_path / "merged.safetensors")


@pytest.mark.parametrize("layers,bn", [(None, "frozen"), (LATE, "train-selected")])
def test_a_checkpoint_carries_the_batchnorm_statistics_that_trained(tmp_path, layers, bn):
    """Full fine-tuning (and --bn train-selected) moves BatchNorm running statistics: the run folder carries them,
    so evaluate and resume rebuild the trained model, not the trained weights over the old statistics."""
    args = dict(resolution=RES, limit=48)
    task = load_task("mobilenet_v2", "fashion_mnist", **args)
    before = {n: b.clone() for n, b in task.model.named_buffers() if "running" in n}
    finetune(task, layers, Schedule(epochs=1, lr=0.05, batch_size=16, bn=bn), tmp_path / "run", progress=False)
    trained = {n: b.clone() for n, b in task.model.named_buffers() if "running" in n}
    moved = [n for n in trained if not torch.equal(before[n], trained[n])]
    assert moved
    fresh = load_task("mobilenet_v2", "fashion_mnist", **args)
    load_run(fresh, tmp_path / "run")
    restored = dict(fresh.model.named_buffers())
    assert all(torch.equal(restored[n], trained[n]) for n in trained)


def test_doctor_reports_versions_and_the_fused_backend(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "doctor")
    assert code == 0
    for word in ("torch", "onnxruntime", torch.__version__):
        assert word in out
    assert "cpp-cpu" in out or "torch" in out


def test_demo_runs_rank_export_and_device_training(monkeypatch, capsys, tmp_path):
    code, out, err = run_main(monkeypatch, capsys, "demo", "--model", "mobilenet_v2", "--limit", "40",
                              "--resolution", str(RES), "--top-k", "2", "--epochs", "1", "--out", str(tmp_path / "d"))
    assert code == 0, err
    assert "[1/4]" in out and "[4/4]" in out
    assert (tmp_path / "d" / "artifacts" / "manifest.json").exists()
