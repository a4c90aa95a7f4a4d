"""Sparse fine-tuning: real truncation (no grads, no saved activations upstream), BN policies, real-data training,
bit-exact resume, feature cache, and the CLI's refusals of bad selections."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cli_helpers import run_main, one_line_error
from zest_edge.errors import ZestError
from zest_edge.training import Schedule, finetune
from zest_edge.layers import layer_map
from zest_edge.models import build_model
from zest_edge.sparse import sparsify
from zest_edge.task import load_task

ZEST = str(Path(sys.executable).with_name("zest-edge"))
BN = nn.modules.batchnorm._BatchNorm
TIMINGS = {"train_seconds", "step_ms_median", "peak_rss_mb", "cache_seconds"}


def mobilenet(seed=0, calibrate=False):
    """Random init; `calibrate` sets BN running stats from two random batches, so eval-mode activations (and with
    them the gradients of the chosen layers) do not vanish through 52 un-normalised layers."""
    torch.manual_seed(seed)
    model = build_model("mobilenet_v2", num_classes=10)
    if calibrate:
        bns = [m for m in model.modules() if isinstance(m, BN)]
        for m in bns:
            m.momentum = None                                  # cumulative average
        with torch.no_grad():
            model.train()
            for _ in range(2):
                model(torch.randn(8, 3, 64, 64))
        for m in bns:
            m.momentum = 0.1
    return model


def leaf_order(model, x):
    """Leaf modules in the order they first run (eval, no grad)."""
    order = []
    hooks = [m.register_forward_pre_hook(lambda *_, n=n: order.append(n))
             for n, m in model.named_modules() if not list(m.children())]
    was = {n: m.training for n, m in model.named_modules()}
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
        for n, m in model.named_modules():
            m.training = was[n]
    return list(dict.fromkeys(order))


def saved_bytes_during_step(sm, x, y, optimizer, watched: dict):
    """One sm.step; (bytes autograd saved for backward, names of watched modules running while something was saved)."""
    running, saved, offenders = [], [0], set()

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        offenders.update(running)
        return t
    hooks = []
    for name, m in watched.items():
        hooks.append(m.register_forward_pre_hook(lambda *_, n=name: running.append(n)))
        hooks.append(m.register_forward_hook(lambda *_, n=name: running.remove(n)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sm.step(x, y, optimizer)
    finally:
        for h in hooks:
            h.remove()
    return saved[0], offenders


def test_truncation_is_real():
    model = mobilenet(calibrate=True)
    full_model = mobilenet(calibrate=True)                    # same init, trained fully for comparison
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([1, 2, 3, 4])
    names = [l.name for l in layer_map(model, x[:1])]
    chosen = names[20:25]
    assert chosen[0] == "features.7.conv.2"                   # mid-stage: features.7.conv.0/1 run before it

    sm = sparsify(model, chosen)
    assert [l.name for l in sm.selected] == chosen and not sm.full
    assert len(sm.prefix) == 7                                 # features.0..6 run without autograd
    assert {n for n, _ in sm.trainable} == {f"{c}.weight" for c in chosen} | {"classifier.1.weight", "classifier.1.bias"}
    order = leaf_order(model, x)
    before = order[:order.index(chosen[0])]
    assert "features.0.0" in before and "features.7.conv.1.1" in before and "features.7.conv.3" not in before
    modules = dict(model.named_modules())
    prefix = [n for n in before if int(n.split(".")[1]) < 7]
    assert all(not modules[n].training for n in prefix)        # the frozen prefix runs in eval mode
    assert all(not m.training for m in model.modules() if isinstance(m, BN))      # ... and every BN (policy frozen)
    assert modules["classifier.0"].training                    # dropout in the trained suffix is active
    params0 = {k: p.detach().clone() for k, p in model.named_parameters()}
    buffers0 = {k: b.clone() for k, b in model.named_buffers()}

    opt = torch.optim.SGD([p for _, p in sm.trainable], lr=0.1)
    sparse_bytes, offenders = saved_bytes_during_step(sm, x, y, opt, {n: modules[n] for n in before})
    assert offenders == set(), f"tensors saved for backward while {sorted(offenders)[:3]} ran"

    trained = {n for n, _ in sm.trainable}
    for k, p in model.named_parameters():
        if k in trained:
            assert not torch.equal(p, params0[k]), f"{k} did not train"
        else:
            assert p.grad is None, k
            assert torch.equal(p, params0[k]), k
    for n in before:
        for k, p in modules[n].named_parameters(prefix=n):
            assert p.grad is None and torch.equal(p, params0[k]) and not p.requires_grad, k
    for k, b in model.named_buffers():
        assert torch.equal(b, buffers0[k]), k                  # policy "frozen": no running-stat update anywhere

    full = sparsify(full_model, None)
    assert full.full and not full.prefix and len(full.trained_bn) == 52
    full_bytes, _ = saved_bytes_during_step(full, x, y, torch.optim.SGD(full_model.parameters(), lr=0.1), {})
    assert 0 < sparse_bytes < full_bytes / 2, (sparse_bytes, full_bytes)


def test_bn_train_selected_trains_exactly_the_bn_after_each_chosen_conv():
    model = mobilenet(calibrate=True)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 5, 6, 9])
    chosen = [l.name for l in layer_map(model, x[:1])][20:25]
    sm = sparsify(model, chosen, bn="train-selected")
    modules = dict(model.named_modules())
    expected = []
    for c in chosen:                                           # the next sibling in the parent Sequential
        parent, idx = c.rsplit(".", 1)
        expected.append(f"{parent}.{int(idx) + 1}")
        assert isinstance(modules[expected[-1]], nn.BatchNorm2d)
    assert sm.trained_bn == expected
    all_bn = [n for n, m in model.named_modules() if isinstance(m, BN)]
    for n in all_bn:
        assert modules[n].training == (n in expected), n
        assert all(p.requires_grad == (n in expected) for p in modules[n].parameters()), n
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    sm.step(x, y, torch.optim.SGD([p for _, p in sm.trainable], lr=0.1))
    state = model.state_dict()
    for n in all_bn:
        for part in ("running_mean", "running_var", "weight", "bias"):
            moved = not torch.equal(state[f"{n}.{part}"], state0[f"{n}.{part}"])
            assert moved == (n in expected), (n, part)


def test_head_or_unknown_selection_is_an_error():
    model = mobilenet()
    with pytest.raises(ZestError, match="'classifier.1' is the head"):
        sparsify(model, ["classifier.1"])
    with pytest.raises(ZestError, match="'classifier.1' is the head"):
        sparsify(model, ["features.8.conv.2", "classifier.1"])
    with pytest.raises(ZestError, match="unknown layer 'features.8.conv.9'.*did you mean"):
        sparsify(model, ["features.8.conv.9"])
    with pytest.raises(ZestError, match="unknown BN policy"):
        sparsify(model, ["features.8.conv.2"], bn="train")


# ---------------------------------------------------------------- training on real data

def test_sparse_training_learns_fashion_mnist(tmp_path):
    """Pretrained EfficientNet-Lite0, 5 late-middle layers + head; lr 0.01 (0.05 diverges at batch 32)."""
    task = load_task("efficientnet_lite0", "fashion_mnist", resolution=64, limit=400, seed=0)
    chosen = [l.name for l in layer_map(task.model)][40:45]
    record = finetune(task, chosen, Schedule(epochs=3, lr=0.01, batch_size=32), tmp_path / "run", progress=False)
    epochs = record["epochs"]
    assert record["layers"] == chosen and record["feature_cache"] and len(epochs) == 3
    assert record["trainable_share"] < 0.25
    before, after = epochs[-1]["val_acc_before"], epochs[-1]["val_acc"]
    assert before < 0.3                                        # an untrained head is near chance (10 classes)
    assert after > before + 0.3 and after > 0.5, (before, after)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == record


def small_task(seed=0):
    torch.manual_seed(123)                                     # the fresh head is drawn from torch's RNG
    return load_task("mobilenet_v2", "fashion_mnist", resolution=32, limit=60, val_limit=20, seed=seed)


LATE = ["features.16.conv.1.0", "features.16.conv.2", "features.17.conv.0.0"]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    schedule = lambda epochs: Schedule(epochs=epochs, lr=0.05, batch_size=16)
    torch.manual_seed(7)
    straight = finetune(small_task(), LATE, schedule(2), tmp_path / "straight", progress=False)
    torch.manual_seed(7)
    finetune(small_task(), LATE, schedule(1), tmp_path / "resumed", progress=False)
    assert len(json.loads((tmp_path / "resumed" / "metrics.json").read_text())["epochs"]) == 1
    torch.manual_seed(99)                                      # the resume restores the RNG state it saved
    resumed = finetune(small_task(), LATE, schedule(2), tmp_path / "resumed", resume=True, progress=False)

    a, b = load_file(tmp_path / "straight" / "trained.safetensors"), load_file(tmp_path / "resumed" / "trained.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("opt/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda r: {**{k: v for k, v in r.items() if k not in TIMINGS},
                       "epochs": [{k: v for k, v in e.items() if k not in TIMINGS} for e in r["epochs"]]}
    assert strip(resumed) == strip(straight)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["schedule"]["epochs"] == 2

    with pytest.raises(ZestError, match="different configuration"):    # anything but epochs must match
        finetune(small_task(), LATE, Schedule(epochs=3, lr=0.02, batch_size=16), tmp_path / "resumed",
                 resume=True, progress=False)


def test_feature_cache_gives_the_same_losses(tmp_path):
    runs = {}
    for cache in (True, False):
        torch.manual_seed(7)
        runs[cache] = finetune(small_task(), LATE, Schedule(epochs=2, lr=0.05, batch_size=16, cache=cache),
                               tmp_path / str(cache), progress=False)
    assert runs[True]["feature_cache"] and not runs[False]["feature_cache"]
    for on, off in zip(runs[True]["epochs"], runs[False]["epochs"]):
        assert on["train_loss"] == pytest.approx(off["train_loss"], rel=1e-5, abs=1e-6)
        assert on["val_acc"] == off["val_acc"] and on["val_acc_before"] == off["val_acc_before"]
    a, b = load_file(tmp_path / "True" / "trained.safetensors"), load_file(tmp_path / "False" / "trained.safetensors")
    for k in a:
        if k.startswith("param/"):
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- CLI refusals

TASK_ARGS = ["--model", "mobilenet_v2", "--data", "fashion_mnist", "--resolution", "32", "--limit", "40",
             "--epochs", "1", "--batch-size", "8"]


def assert_refused(code, err, out_dir, *fragments):
    one_line_error(code, err, *fragments)
    assert not out_dir.exists()


@pytest.mark.parametrize("selection, fragments", [
    (["--layers", "features.7.conv.9"], ["unknown layer 'features.7.conv.9'", "did you mean", "features.7.conv."]),
    (["--random-k", "0"], ["--random-k must be between 1 and", "(52)", "got 0"]),
    (["--layers", "classifier.1"], ["'classifier.1' is the head"]),
    (["--layers", "classifier"], ["unknown layer 'classifier'"]),
    (["--layers", "features.7.conv.2", "--full"], ["choose exactly one of"]),
])
def test_cli_refuses_bad_selection(monkeypatch, capsys, tmp_path, selection, fragments):
    out = tmp_path / "run"
    code, _, err = run_main(monkeypatch, capsys, "finetune", *TASK_ARGS, *selection, "--out", str(out))
    assert_refused(code, err, out, *fragments)


def test_cli_refuses_top_k_beyond_the_layer_count(monkeypatch, capsys, tmp_path):
    ranking = tmp_path / "ranking.json"
    names = [l.name for l in layer_map(mobilenet(), torch.zeros(1, 3, 32, 32))]
    ranking.write_text(json.dumps({"format": "zest-edge/ranking", "version": 1, "model": "mobilenet_v2",
                                   "ranked_by": "snip", "selected": names[:3],
                                   "layers": [{"name": n, "rank": i + 1, "score": float(-i)} for i, n in enumerate(names)]}))
    out = tmp_path / "run"
    code, _, err = run_main(monkeypatch, capsys, "finetune", *TASK_ARGS, "--ranking", str(ranking), "--top-k", "53",
                            "--out", str(out))
    assert_refused(code, err, out, "--top-k must be between 1 and", "(52)", "got 53")


def test_cli_subprocess_refusals(tmp_path):
    """Through the installed entry point: an unknown layer, and a non-empty --out without --resume/--force."""
    out = tmp_path / "run"
    r = subprocess.run([ZEST, "finetune", *TASK_ARGS, "--layers", "features.7.conv.2,features.77.conv.2",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert_refused(r.returncode, r.stderr, out, "unknown layer 'features.77.conv.2'", "did you mean")

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = subprocess.run([ZEST, "finetune", *TASK_ARGS, "--layers", "features.7.conv.2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "exists and is not empty" in lines[0] and "--resume" in lines[0] and "--force" in lines[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
