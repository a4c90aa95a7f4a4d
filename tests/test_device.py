"""The on-device runner (ORT Training only): training, per-epoch atomic checkpoints, bit-exact resume after an
interrupt, the inference model it writes, and the CLI's one-line refusals (export, device-train, build-engine)."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import export_cli, one_line_error, run_main
from zest_edge.cli.options import human_size
from zest_edge.data import Preprocess, build_dataset
from zest_edge.device import device_train, evaluate_onnx
from zest_edge.errors import ZestError
from zest_edge.export.tensorrt import TRT_MISSING

RES = 32
LAYERS = "features.15.conv.2,features.16.conv.0.0,features.16.conv.1.0"


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """Artifacts exported through the CLI (3 late layers of mobilenet_v2 at 32 px, AdamW)."""
    return export_cli(tmp_path_factory.mktemp("exp") / "art", "--resolution", str(RES), "--layers", LAYERS,
                      "--batch-size", "16")


@pytest.fixture(scope="module")
def data():
    pre = Preprocess(resolution=RES)
    return (build_dataset("fashion_mnist", "train", preprocess=pre, limit=48, seed=0),
            build_dataset("fashion_mnist", "val", preprocess=pre, limit=20, seed=0))


def params(path):
    from onnxruntime.training.api import CheckpointState
    return {n: p.data.copy() for n, p in CheckpointState.load_checkpoint(str(path)).parameters}


class Interrupting(torch.utils.data.Dataset):
    """Raises KeyboardInterrupt (a kill) on the n-th item read."""

    def __init__(self, base, n):
        self.base, self.n, self.reads = base, n, 0
        self.num_classes, self.classes, self.labels = base.num_classes, base.classes, base.labels

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads >= self.n:
            raise KeyboardInterrupt
        return self.base[i]


def test_export_cli_records_selection_and_data_in_the_manifest(art):
    m = json.loads((art / "manifest.json").read_text())
    assert [layer["name"] for layer in m["selected_layers"]] == LAYERS.split(",")
    assert m["data"] == "fashion_mnist" and m["classes"][0] == "T-shirt/top" and m["optimizer"]["batch_size"] == 16


def test_export_cli_prints_selection_share_sizes_and_prefix(monkeypatch, capsys, tmp_path):
    code, out, err = run_main(monkeypatch, capsys, "export", "--model", "mobilenet_v2", "--data", "fashion_mnist",
                              "--resolution", str(RES), "--limit", "20", "--layers", "features.16.conv.0.0",
                              "--out", str(tmp_path / "a"))
    assert code == 0, err
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert "selected 1 layers + head classifier.1: features.16.conv.0.0" in out
    assert f"trainable {m['trainable_params']:,} of {m['total_params']:,} parameters " \
           f"({100 * m['trainable_share']:.2f}%)" in out
    assert ", ".join(f"{name} {human_size(size)}" for name, size in m["files"].items()) in out
    assert f"frozen prefix: {m['prefix']['stages']} stages in prefix.onnx" in out


def test_device_train_writes_metrics_checkpoint_and_inference_model(art, data, tmp_path):
    train, val = data
    seen = []
    out = tmp_path / "run"
    m = device_train(art, train, val, epochs=2, batch_size=16, out_dir=out, progress_bar=False, on_epoch=seen.append)
    assert (m["format"], m["model"], m["resumed_from_epoch"]) == ("zest-edge/device-run", "mobilenet_v2", None)
    assert [r["epoch"] for r in m["epochs"]] == [1, 2] == [r["epoch"] for r in seen]
    assert len(m["train_loss"]) == len(m["val_accuracy"]) == len(m["epoch_seconds"]) == 2
    assert all(r["steps"] == 3 and r["mean_step_ms"] > 0 for r in m["epochs"])
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.epoch2", "metrics.json", "model_inference.onnx",
                                                     "progress.json"]
    # the exported inference model is the trained one: same accuracy as the eval model, in a plain session
    assert evaluate_onnx(out / "model_inference.onnx", val) == m["final_val_accuracy"] == m["inference_val_accuracy"]
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out / "model_inference.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    # trained: selected layers moved, everything else (frozen BN constants included) bit-identical
    before, after = params(art / "checkpoint"), params(out / "checkpoint.epoch2")
    trainable = set(json.loads((art / "manifest.json").read_text())["trainable_initializers"])
    for n in before:
        assert np.array_equal(before[n], after[n]) == (n not in trainable), n


def test_resume_after_an_interrupt_continues_from_the_last_finished_epoch(art, data, tmp_path):
    train, val = data
    full = device_train(art, train, val, epochs=3, batch_size=16, out_dir=tmp_path / "a", cache=False,
                        progress_bar=False)
    out = tmp_path / "b"
    # killed in the middle of epoch 2 (first read: the shape check; then 48 per epoch, without the prefix cache)
    with pytest.raises(KeyboardInterrupt):
        device_train(art, Interrupting(train, 1 + 48 + 20), val, epochs=3, batch_size=16, out_dir=out, cache=False,
                     progress_bar=False)
    progress = json.loads((out / "progress.json").read_text())
    assert progress["epoch"] == 1 and progress["checkpoint"] == "checkpoint.epoch1"
    assert not (out / "metrics.json").exists() and not (out / "model_inference.onnx").exists()
    with pytest.raises(ZestError, match="not empty"):                 # neither resume nor force
        device_train(art, train, val, epochs=3, batch_size=16, out_dir=out, progress_bar=False)
    resumed = device_train(art, train, val, epochs=3, batch_size=16, out_dir=out, resume=True, cache=False,
                           progress_bar=False)
    assert resumed["resumed_from_epoch"] == 1 and [r["epoch"] for r in resumed["epochs"]] == [1, 2, 3]
    # the same run as the uninterrupted one: shuffles and dropout are seeded per epoch
    assert resumed["train_loss"] == full["train_loss"] and resumed["val_accuracy"] == full["val_accuracy"]
    a, b = params(tmp_path / "a" / "checkpoint.epoch3"), params(out / "checkpoint.epoch3")
    assert all(np.array_equal(a[n], b[n]) for n in a)


def test_a_kill_between_checkpoint_and_commit_resumes_from_the_committed_epoch(art, data, tmp_path, monkeypatch):
    import zest_edge.device as dev
    train, val = data
    real = dev.write_json
    calls = []

    def dies_on_second_commit(path, obj):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt                  # checkpoint.epoch2 is on disk, progress still says epoch 1
        real(path, obj)
    monkeypatch.setattr(dev, "write_json", dies_on_second_commit)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        device_train(art, train, val, epochs=2, batch_size=16, out_dir=out, progress_bar=False)
    monkeypatch.setattr(dev, "write_json", real)
    assert json.loads((out / "progress.json").read_text())["epoch"] == 1 and (out / "checkpoint.epoch1").exists()
    m = device_train(art, train, val, epochs=2, batch_size=16, out_dir=out, resume=True, progress_bar=False)
    assert m["resumed_from_epoch"] == 1 and [r["epoch"] for r in m["epochs"]] == [1, 2]


def test_device_train_cli_prints_epochs_and_final_accuracy(art, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_main(monkeypatch, capsys, "device-train", str(art), "--data", "fashion_mnist",
                                 "--limit", "20", "--epochs", "2", "--out", str(out))
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("epoch 1/2: train loss ") and lines[1].startswith("epoch 2/2: ")
    assert lines[-1].startswith("final val acc ") and "model_inference.onnx" in lines[-1]
    assert json.loads((out / "metrics.json").read_text())["batch_size"] == 16      # the manifest's


def test_export_top_k_ranks_now_and_records_the_scores(tmp_path, monkeypatch, capsys):
    out = tmp_path / "art"
    code, stdout, err = run_main(monkeypatch, capsys, "export", "--model", "mobilenet_v2", "--data", "fashion_mnist",
                                 "--resolution", str(RES), "--limit", "20", "--top-k", "5", "--metric", "snip",
                                 "--optimizer", "sgd", "--out", str(out))
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    ranked = m["ranking"]
    assert ranked["ranked_by"] == "metric:snip" and ranked["top_k"] == 5 and len(ranked["layers"]) == 52
    assert sorted(layer["name"] for layer in m["selected_layers"]) == sorted(ranked["selected"])
    assert all({"name", "rank", "score", "params"} <= set(layer) for layer in ranked["layers"])
    lines = stdout.strip().splitlines()
    assert lines[1].startswith("selected 5 layers + head classifier.1: ")
    assert lines[2].startswith("trainable ") and "%" in lines[2] and "gradient nodes" in lines[2]
    assert "checkpoint" in lines[3] and "MB" in lines[3] and lines[4].startswith(f"wrote {out}/")


# ---------------------------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("k", ["0", "53"])
def test_export_top_k_outside_the_layer_count_is_refused(k, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(monkeypatch, capsys, "export", "--model", "mobilenet_v2", "--data", "fashion_mnist",
                            "--resolution", str(RES), "--limit", "20", "--top-k", k, "--out", str(out))
    one_line_error(code, err, "--top-k must be between 1 and", "(52)")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_into_a_non_empty_folder_needs_force(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_main(monkeypatch, capsys, "export", "--model", "mobilenet_v2", "--data", "fashion_mnist",
                            "--layers", "features.1.conv.0.0", "--out", str(out))
    one_line_error(code, err, "exists and is not empty", "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def copy_art(art, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(art, dst)
    return dst


def device_cli(monkeypatch, capsys, art, out, *extra, data="fashion_mnist"):
    return run_main(monkeypatch, capsys, "device-train", str(art), "--data", data, "--limit", "20",
                    "--epochs", "1", "--out", str(out), *extra)


def test_artifacts_from_another_version_are_refused(art, tmp_path, monkeypatch, capsys):
    bad = copy_art(art, tmp_path)
    m = json.loads((bad / "manifest.json").read_text())
    m["versions"]["zest_edge"] = "9.9.0"
    (bad / "manifest.json").write_text(json.dumps(m))
    code, _, err = device_cli(monkeypatch, capsys, bad, tmp_path / "run")
    one_line_error(code, err, "written by zest-edge 9.9.0", "re-export")
    assert not (tmp_path / "run").exists()
    m["versions"]["zest_edge"] = json.loads((art / "manifest.json").read_text())["versions"]["zest_edge"]
    m["version"] = 1
    (bad / "manifest.json").write_text(json.dumps(m))
    one_line_error(*device_cli(monkeypatch, capsys, bad, tmp_path / "run")[::2], "format version 1")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_checkpoint_is_refused(damage, art, tmp_path, monkeypatch, capsys):
    bad = copy_art(art, tmp_path)
    ck = bad / "checkpoint"
    data = bytearray(ck.read_bytes())
    if damage == "flip":                                  # valid flatbuffer, altered weights: the sha256 catches it
        data[len(data) // 2] ^= 0xFF
    else:                                                 # no recorded hash: ORT's own verification catches it
        data = data[:4096]
        m = json.loads((bad / "manifest.json").read_text())
        del m["sha256"]["checkpoint"]
        (bad / "manifest.json").write_text(json.dumps(m))
    ck.write_bytes(bytes(data))
    code, _, err = device_cli(monkeypatch, capsys, bad, tmp_path / "run")
    one_line_error(code, err, "checkpoint", "is corrupt")
    assert not (tmp_path / "run").exists()


def test_a_corrupt_resume_checkpoint_is_refused(art, data, tmp_path, monkeypatch, capsys):
    train, val = data
    out = tmp_path / "run"
    device_train(art, train, val, epochs=1, batch_size=16, out_dir=out, progress_bar=False)
    ck = out / "checkpoint.epoch1"
    raw = bytearray(ck.read_bytes())
    raw[-100] ^= 0x01
    ck.write_bytes(bytes(raw))
    with pytest.raises(ZestError, match=r"checkpoint .*checkpoint.epoch1 is corrupt"):
        device_train(art, train, val, epochs=2, batch_size=16, out_dir=out, resume=True, progress_bar=False)


def test_a_dataset_with_another_class_count_is_refused(art, tmp_path, monkeypatch, capsys):
    root = tmp_path / "two"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(root / c / f"{i}.png")
    out = tmp_path / "run"
    code, _, err = run_main(monkeypatch, capsys, "device-train", str(art), "--data", f"imagefolder:{root}",
                            "--epochs", "1", "--out", str(out))
    one_line_error(code, err, "2 classes", "exported for 10")
    assert not out.exists()


def test_device_train_into_a_non_empty_folder_is_refused(art, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    one_line_error(*device_cli(monkeypatch, capsys, art, out)[::2], "not empty", "--resume", "--force")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_build_engine_without_tensorrt_is_a_clear_one_line_error(art, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)          # `import tensorrt` raises ImportError
    code, _, err = run_main(monkeypatch, capsys, "build-engine", str(art / "inference.onnx"),
                            "--out", str(tmp_path / "m.engine"))
    assert one_line_error(code, err) == f"error: {TRT_MISSING}"
    assert list(tmp_path.iterdir()) == []
    code, _, err = run_main(monkeypatch, capsys, "export", "--model", "mobilenet_v2", "--data", "fashion_mnist",
                            "--layers", "features.1.conv.0.0", "--format", "tensorrt", "--out", str(tmp_path / "o"))
    assert one_line_error(code, err) == f"error: {TRT_MISSING}"
    assert list(tmp_path.iterdir()) == []
