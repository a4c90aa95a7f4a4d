"""The ExecuTorch backend: SGD parity with torch.optim.SGD (parameters and their deltas), the trained inference
program against PyTorch, resume after an interrupt, and the export's one-line refusals."""
import copy
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

try:
    import executorch.exir  # noqa: F401
    from executorch.extension.training import _load_for_executorch_for_training_from_buffer  # noqa: F401
except Exception as e:  # pragma: no cover - depends on the install
    pytest.skip(f"executorch is not importable ({e}); pip install executorch==1.5.1", allow_module_level=True)

import zest_edge as ze
from cli_helpers import one_line_error, run_main
from test_device import Interrupting
from zest_edge.device import device_train
from zest_edge.errors import ZestError
from zest_edge.executorch_runner import load_program
from zest_edge.export.executorch import export_executorch
from zest_edge.sparse import sparsify

LAYERS = {"mobilenet_v2": ["features.15.conv.2", "features.16.conv.1.0", "features.16.conv.2"],
          "efficientnet_lite0": ["blocks.6.0.conv_dw", "blocks.6.0.conv_pwl", "conv_head"]}
SGD = dict(lr=0.02, momentum=0.9, weight_decay=1e-3)
BATCH, EPOCHS = 10, 2


@pytest.fixture(scope="module", params=sorted(LAYERS))
def trained(request, tmp_path_factory):
    """(task, layers, artifacts, metrics, run folder): an export and a 2-epoch device run (24 examples: batches of
    10, 10 and 4, the last one padded)."""
    name = request.param
    task = ze.load_task(name, "fashion_mnist", resolution=32, limit=24, val_limit=12, seed=0)
    folder = tmp_path_factory.mktemp(name)
    export_executorch(task.model, LAYERS[name], folder / "art", batch_size=BATCH, preprocess=task.preprocess,
                      classes=task.train.classes, **SGD)
    metrics = device_train(folder / "art", task.train, task.val, epochs=EPOCHS, batch_size=BATCH,
                           out_dir=folder / "run", progress_bar=False, echo=lambda *a: None)
    return task, LAYERS[name], folder / "art", metrics, folder / "run"


def torch_sgd(task, layers, epochs):
    """The same training in PyTorch: eval form (frozen BN, no Dropout), torch.optim.SGD, the runner's shuffle."""
    sm = sparsify(copy.deepcopy(task.model), layers)
    sm.model.eval()
    opt = torch.optim.SGD([p for _, p in sm.trainable], **SGD)
    x_all = torch.stack([task.train[i][0] for i in range(len(task.train))])
    y_all = torch.tensor([int(task.train[i][1]) for i in range(len(task.train))])
    for epoch in range(1, epochs + 1):
        order = np.random.default_rng([0, epoch]).permutation(len(task.train))
        for start in range(0, len(order), BATCH):
            idx = torch.from_numpy(order[start:start + BATCH])
            F.cross_entropy(sm.model(x_all[idx]), y_all[idx]).backward()
            opt.step()
            opt.zero_grad()
    return sm.model, {n: p.detach() for n, p in sm.trainable}


def trained_params(run):
    from safetensors.torch import load_file
    return load_file(str(run / "trained.safetensors"))


def test_sgd_with_momentum_matches_torch_after_six_steps_one_short_batch_each_epoch(trained):
    task, layers, _, metrics, run = trained
    _, want = torch_sgd(task, layers, EPOCHS)
    got = trained_params(run)
    assert set(got) == set(want) and metrics["epochs"][-1]["steps"] == 3
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-5, rtol=0), (n, (got[n] - want[n]).abs().max())


def test_the_update_moves_each_parameter_as_torch_does(trained):
    """Deltas, not final values: a runner that skipped the optimizer step would leave every delta at zero."""
    task, layers, _, _, run = trained
    start = {n: p.detach() for n, p in task.model.named_parameters()}
    _, want = torch_sgd(task, layers, EPOCHS)
    got = trained_params(run)
    for n in want:
        torch_delta, et_delta = want[n] - start[n], got[n] - start[n]
        assert torch_delta.abs().max() > 1e-3, n
        assert (et_delta - torch_delta).abs().max() <= 1e-5 * max(1.0, float(torch_delta.abs().max())), n


def test_trained_inference_program_matches_torch(trained):
    task, layers, art, metrics, run = trained
    model, _ = torch_sgd(task, layers, EPOCHS)
    program = load_program(run / "model_inference.pte")
    params = trained_params(run)
    names = [n for n, _ in sparsify(copy.deepcopy(task.model), layers).trainable]
    x = torch.stack([task.val[i][0] for i in range(BATCH)])          # a full batch: the program's static shape
    logits = program.forward((x, *[params[n] for n in names]))[0]
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-4, rtol=0)
    assert metrics["inference_val_accuracy"] == metrics["final_val_accuracy"]
    assert metrics["runtime"].startswith("executorch ") and metrics["inference_model"] == "model_inference.pte"


def test_resume_after_an_interrupted_epoch_matches_an_uninterrupted_run(trained, tmp_path):
    task, _, art, _, _ = trained
    if task.model.zest_spec.name != "mobilenet_v2":
        pytest.skip("resume is model-independent: checked once")
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):          # killed 5 examples into epoch 2
        device_train(art, Interrupting(task.train, 1 + 24 + 5), task.val, epochs=EPOCHS, batch_size=BATCH,
                     out_dir=out, cache=False, progress_bar=False, echo=lambda *a: None)
    assert (out / "checkpoint.epoch1").exists() and not (out / "metrics.json").exists()
    resumed = device_train(art, task.train, task.val, epochs=EPOCHS, batch_size=BATCH, out_dir=out, resume=True,
                           cache=False, progress_bar=False, echo=lambda *a: None)
    assert resumed["resumed_from_epoch"] == 1 and [r["epoch"] for r in resumed["epochs"]] == [1, 2]
    uninterrupted = device_train(art, task.train, task.val, epochs=EPOCHS, batch_size=BATCH, out_dir=tmp_path / "u",
                                 cache=False, progress_bar=False, echo=lambda *a: None)
    assert uninterrupted["train_loss"] == resumed["train_loss"]
    a, b = trained_params(out), trained_params(tmp_path / "u")
    assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(ZestError, match="lr=0.02"):
        device_train(art, task.train, task.val, epochs=3, batch_size=BATCH, out_dir=out, resume=True, lr=0.1,
                     progress_bar=False)


def test_export_refuses_adamw_full_fine_tuning_and_tensorrt(monkeypatch, capsys, tmp_path):
    common = ["export", "--model", "mobilenet_v2", "--data", "fashion_mnist", "--resolution", "32", "--limit", "20",
              "--backend", "executorch", "--out", str(tmp_path / "a")]
    one_line_error(*run_main(monkeypatch, capsys, *common, "--top-k", "2", "--optimizer", "adamw")[::2],
                   "SGD only", "--optimizer sgd")
    one_line_error(*run_main(monkeypatch, capsys, *common, "--full")[::2], "full fine-tuning")
    one_line_error(*run_main(monkeypatch, capsys, *common, "--top-k", "2", "--format", "tensorrt")[::2],
                   "--backend ort")
    assert not (tmp_path / "a").exists()


def test_an_executorch_that_does_not_import_is_one_line_naming_the_fix(monkeypatch, capsys, tmp_path):
    from zest_edge.doctor import executorch_report
    monkeypatch.setitem(sys.modules, "executorch.version", None)          # as if the package were missing
    code, _, err = run_main(monkeypatch, capsys, "export", "--model", "mobilenet_v2", "--data", "fashion_mnist",
                            "--top-k", "2", "--backend", "executorch", "--out", str(tmp_path / "a"))
    one_line_error(code, err, "pip install executorch==1.5.1")
    assert "pip install executorch==1.5.1" in executorch_report()["executorch"]
