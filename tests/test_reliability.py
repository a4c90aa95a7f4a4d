"""Nothing lost, nothing half-written, no traceback: --force over a finished run (a real kill -9, a failure),
unreadable and 16-bit images, non-finite numbers, a full disk, bad config and file schemas, torn store lines, and
arguments refused before anything is written. Every check drives the command line."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zest_edge.io
from cli_helpers import one_line_error, run_main
from zest_edge.data import Preprocess, build_dataset

ZEST = str(Path(sys.executable).with_name("zest-edge"))
TASK = ["--model", "resnet18", "--data", "fashion_mnist", "--limit", "40", "--resolution", "32"]
LAYER = "layer4.1.conv2"
TRAIN = ["finetune", *TASK, "--layers", LAYER, "--batch-size", "16"]


def strict_json(path):
    """The file parsed as strict JSON (NaN / Infinity refused)."""
    def refuse(token):
        raise AssertionError(f"{path} holds {token}, which is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def leftovers(root):
    """Temporary files or folders anywhere under `root`."""
    return sorted(str(p) for p in Path(root).rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".old"))


def snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch finetune run."""
    out = tmp_path_factory.mktemp("ft") / "run"
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(sys, "argv", ["zest-edge", *TRAIN, "--epochs", "1", "--out", str(out)])
        from zest_edge.cli import main
        main()
    finally:
        mp.undo()
    return out


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """Artifacts of resnet18's last conv at 32 px (with a frozen prefix), exported through the CLI."""
    out = tmp_path_factory.mktemp("exp") / "art"
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(sys, "argv", ["zest-edge", "export", *TASK, "--layers", LAYER, "--batch-size", "16",
                                 "--out", str(out)])
        from zest_edge.cli import main
        main()
    finally:
        mp.undo()
    return out


def full_disk(marker):
    """A stand-in for zest_edge.io.write_all that fails with ENOSPC on temporary files whose path holds `marker`."""
    real = zest_edge.io.write_all

    def write_all(f, data):
        if marker in str(f.name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(f, data)
    return write_all


def run_cli(mp, *args):
    """zest_edge.cli.main outside pytest's capture fixtures (module fixtures): (code, stdout, stderr)."""
    import contextlib
    import io
    from zest_edge.cli import main
    mp.setattr(sys, "argv", ["zest-edge", *args])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def device(monkeypatch, capsys, art, out, *extra):
    return run_main(monkeypatch, capsys, "device-train", str(art), "--data", "fashion_mnist", "--limit", "32",
                    "--epochs", "1", "--out", str(out), *extra)


# 1. --force builds beside and swaps at the end ------------------------------------------------------------------

def test_finetune_force_killed_mid_run_leaves_the_finished_run_intact(finished, tmp_path):
    out = tmp_path / "run"
    os.rename(finished, out)                      # a private copy of the finished run (the fixture's is moved back)
    try:
        before = snapshot(out)
        proc = subprocess.Popen([ZEST, *TRAIN, "--epochs", "500", "--force", "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 300     # a hang guard, not a timing assertion
            while not list(tmp_path.glob(".run.*.tmp/trained.safetensors")):
                assert proc.poll() is None, "the --force run ended before it was killed"
                assert time.monotonic() < deadline, "the --force run never wrote its first epoch"
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert snapshot(out) == before            # the finished run, byte for byte
        assert strict_json(out / "metrics.json")["epochs"][-1]["epoch"] == 1
    finally:
        os.rename(out, finished)


def test_a_failing_force_run_keeps_the_old_run_and_leaves_nothing(finished, tmp_path, monkeypatch, capsys):
    before = snapshot(finished)
    code, _, err = run_main(monkeypatch, capsys, *TRAIN, "--epochs", "2", "--lr", "1e38", "--force",
                            "--out", str(finished))
    one_line_error(code, err, "training diverged", "lower --lr")
    assert snapshot(finished) == before and leftovers(finished.parent) == []
    code, _, err = run_main(monkeypatch, capsys, *TRAIN, "--epochs", "2", "--lr", "1e38", "--out", str(tmp_path / "new"))
    one_line_error(code, err, "training diverged")
    assert list(tmp_path.iterdir()) == []         # a fresh run that failed before its first epoch leaves no folder


def test_device_train_force_fails_on_a_full_disk_and_keeps_the_old_run(device_run, monkeypatch, capsys):
    art, out, _, _ = device_run
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    monkeypatch.setattr(zest_edge.io, "write_all", full_disk(".model_inference.onnx."))
    code, _, err = device(monkeypatch, capsys, art, out, "--force")
    one_line_error(code, err, "cannot write", "model_inference.onnx", "No space left on device")
    assert snapshot(out) == before and leftovers(out.parent) == []
    monkeypatch.undo()
    code, _, err = device(monkeypatch, capsys, art, out, "--force", "--seed", "1")
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"                    # not a device run's file: kept
    assert strict_json(out / "metrics.json")["seed"] == 1 and leftovers(out.parent) == []


# 2. unreadable images are refused before anything is written; 16-bit greyscale is scaled -------------------------

def image_folder(root, n=8):
    for c, value in (("cat", 40), ("dog", 200)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((12, 12, 3), value + i, np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("command", [["finetune", "--layers", LAYER, "--epochs", "1"], ["export", "--layers", LAYER]])
def test_unreadable_images_are_one_line_naming_the_file(command, tmp_path, monkeypatch, capsys):
    root = image_folder(tmp_path / "imgs")
    for c in ("cat", "dog"):                                     # the same bad files in both classes: both splits
        (root / c / "0.png").write_bytes(b"")
        (root / c / "notes.jpg").write_text("not a picture")
    out = tmp_path / "out"
    code, _, err = run_main(monkeypatch, capsys, command[0], "--model", "resnet18", "--data", f"imagefolder:{root}",
                            "--resolution", "32", *command[1:], "--out", str(out))
    line = one_line_error(code, err, "cannot be read", "images")
    assert "0.png" in line or "notes.jpg" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path):
    root = image_folder(tmp_path / "imgs")
    Image.fromarray(np.full((12, 12), 20000, np.uint16)).save(root / "cat" / "deep.png")
    pre = Preprocess(resolution=12, mean=(0, 0, 0), std=(1, 1, 1))
    found = [ds[i][0] for ds in (build_dataset(f"imagefolder:{root}", split, preprocess=pre) for split in ("train", "val"))
             for i, f in enumerate(ds.files) if f.endswith("deep.png")]
    assert len(found) == 1
    assert torch.allclose(found[0], torch.full((3, 12, 12), round(20000 / 257) / 255))


# 3. non-finite numbers: named errors, strict JSON ---------------------------------------------------------------

@pytest.mark.parametrize("lr", ["inf", "nan"])
@pytest.mark.parametrize("command", ["finetune", "export", "device-train", "contrib"])
def test_a_non_finite_lr_is_refused_everywhere(command, lr, art, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = {"finetune": [*TRAIN, "--epochs", "1"], "export": ["export", *TASK, "--layers", LAYER],
            "device-train": ["device-train", str(art), "--data", "fashion_mnist", "--epochs", "1"],
            "contrib": ["contrib", *TASK]}[command]
    code, _, err = run_main(monkeypatch, capsys, *args, "--lr", lr, "--out", str(out))
    one_line_error(code, err, "positive")
    assert not out.exists()


def test_nan_weights_are_a_named_error(tmp_path, monkeypatch, capsys):
    from torchvision.models import resnet18
    sd = resnet18(num_classes=10).state_dict()
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "w.pth")
    code, _, err = run_main(monkeypatch, capsys, *TRAIN, "--epochs", "1", "--weights", str(tmp_path / "w.pth"),
                            "--out", str(tmp_path / "run"))
    one_line_error(code, err, "NaN or infinite", "layer2.0.conv1.weight")
    assert not (tmp_path / "run").exists()


def test_non_finite_metrics_are_null_with_a_per_layer_note(tmp_path, monkeypatch, capsys):
    import zest_edge.metrics_file as mf
    real = mf.compute_metrics

    def poisoned(model, x, y, **kw):
        values = real(model, x, y, **kw)
        values[LAYER] = {m: float("nan") for m in values[LAYER]}
        values["conv1"] = {m: float("inf") for m in values["conv1"]}
        return values

    monkeypatch.setattr(mf, "compute_metrics", poisoned)
    code, out, err = run_main(monkeypatch, capsys, "metrics", *TASK, "--metrics", "snip,grad_norm", "--batch-size",
                              "8", "--out", str(tmp_path / "m.json"), "--csv", str(tmp_path / "m.csv"))
    assert code == 0, err
    assert "not finite, written as null" in out and "snip for 2 of 20 layers" in out
    layers = {l["name"]: l for l in strict_json(tmp_path / "m.json")["layers"]}
    assert layers[LAYER]["metrics"] == {"snip": None, "grad_norm": None}
    assert layers[LAYER]["nonfinite"] == ["snip", "grad_norm"] and "nonfinite" not in layers["layer1.0.conv1"]
    code, out, err = run_main(monkeypatch, capsys, "rank", *TASK, "--metric", "snip", "--top-k", "3",
                              "--batch-size", "8", "--out", str(tmp_path / "r.json"))
    assert code == 0, err
    ranked = strict_json(tmp_path / "r.json")["layers"]
    assert {l["name"] for l in ranked[-2:]} == {LAYER, "conv1"}           # ranked last, score null, reason kept
    assert all(l["score"] is None and l["nonfinite"] == ["snip"] for l in ranked[-2:])
    assert all(isinstance(l["score"], float) for l in ranked[:-2])
    assert "2 layers have no finite score" in out


def test_device_training_whose_loss_diverges_stops_with_one_line(art, tmp_path, monkeypatch, capsys):
    code, _, err = device(monkeypatch, capsys, art, tmp_path / "dev", "--lr", "1e38")
    one_line_error(code, err, "training diverged", "lower --lr")
    assert list(tmp_path.iterdir()) == []


# 4. a full disk: one line naming the path and the cause, no temporary files -------------------------------------

def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(zest_edge.io, "write_all", full_disk("/.inference.onnx."))
    out = tmp_path / "art"
    code, _, err = run_main(monkeypatch, capsys, "export", *TASK, "--layers", LAYER, "--out", str(out))
    one_line_error(code, err, "cannot write", "inference.onnx", "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def device_run(art, tmp_path_factory):
    """A device run whose inference export met a full disk, then finished with --resume: (artifacts, run folder,
    what the failed attempt left: (exit code, stderr, temporary files, whether model_inference.onnx exists), what
    the resume wrote: (resumed_from_epoch, whether model_inference.onnx exists))."""
    out = tmp_path_factory.mktemp("dev") / "run"
    args = ["device-train", str(art), "--data", "fashion_mnist", "--limit", "32", "--epochs", "1", "--out", str(out)]
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(zest_edge.io, "write_all", full_disk(".model_inference.onnx."))
        code, _, err = run_cli(mp, *args)
        failed = (code, err, leftovers(out.parent), (out / "model_inference.onnx").exists())
        mp.undo()
        code, _, err = run_cli(mp, *args, "--resume")
        assert code == 0, err
        resumed = (strict_json(out / "metrics.json")["resumed_from_epoch"], (out / "model_inference.onnx").is_file())
    finally:
        mp.undo()
    return art, out, failed, resumed


def test_device_train_inference_export_on_a_full_disk_then_resume(device_run):
    art, out, (code, err, tmp_files, written), resumed = device_run
    one_line_error(code, err, f"cannot write {out / 'model_inference.onnx'}", "No space left on device")
    assert tmp_files == [] and not written
    assert resumed == (1, True)                 # with space again, --resume finished the run from its epoch 1


def test_a_full_disk_under_the_prefix_cache_is_one_line_not_a_crash(art, tmp_path, monkeypatch, capsys):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "dev"
    code, _, err = device(monkeypatch, capsys, art, out, "--cache-mb", "0")         # the cache goes to disk
    one_line_error(code, err, f"cannot write {out / '.prefix-cache' / 'train' / '0.npy'}", "No space left on device")
    assert list(tmp_path.iterdir()) == []                   # the run folder it made, holding nothing resumable, went


# 5. config and file schemas -------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, fragments", [
    ('epochs: "three"', ["epochs must be an integer", "'three'"]),
    ("limit: [1, 2]", ["limit must be an integer", "[1, 2]"]),
    ("lr_grid: [0.01, fast]", ["lr_grid[1] must be a number", "'fast'"]),
    ("weight_decay: .nan", ["weight-decay", "nan"]),
])
def test_contrib_config_types_are_checked(setting, fragments, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"model: resnet18\ndata: fashion_mnist\n{setting}\n")
    code, _, err = run_main(monkeypatch, capsys, "contrib", "--config", str(cfg), "--out", str(tmp_path / "s"))
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "s").exists()


def test_benchmark_config_types_are_checked(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("model: resnet18\ndata: fashion_mnist\nepochs: three\nk: [1, 2]\n")
    code, _, err = run_main(monkeypatch, capsys, "benchmark", "--config", str(cfg), "--out", str(tmp_path / "b"))
    one_line_error(code, err, f"{cfg}: epochs must be an integer, got 'three'")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("command", [["finetune", "--epochs", "1"], ["export"]])
def test_a_ranking_without_layers_is_refused(command, tmp_path, monkeypatch, capsys):
    ranking = tmp_path / "r.json"
    ranking.write_text(json.dumps({"format": "zest-edge/ranking", "model": "resnet18", "selected": [LAYER]}))
    out = tmp_path / "out"
    code, _, err = run_main(monkeypatch, capsys, command[0], *TASK, *command[1:], "--ranking", str(ranking),
                            "--out", str(out))
    one_line_error(code, err, str(ranking), "layers is missing", "a list of mappings with name, rank")
    assert not out.exists()


def test_files_read_back_are_checked_against_their_schema(finished, device_run, tmp_path, monkeypatch, capsys):
    import shutil
    run = shutil.copytree(finished, tmp_path / "run")               # run/config.json: a field of the wrong type
    config = strict_json(run / "config.json")
    config["schedule"]["lr"] = "fast"
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = run_main(monkeypatch, capsys, *TRAIN, "--epochs", "2", "--resume", "--out", str(run))
    one_line_error(code, err, "config.json: schedule.lr must be a number, got 'fast'")
    art, dev_run, _, _ = device_run                                 # a device run's progress.json
    dev = shutil.copytree(dev_run, tmp_path / "dev")
    progress = strict_json(dev / "progress.json")
    progress["epoch"] = "1"
    (dev / "progress.json").write_text(json.dumps(progress))
    code, _, err = device(monkeypatch, capsys, art, dev, "--epochs", "2", "--resume")
    one_line_error(code, err, "progress.json: epoch must be an integer, got '1'")
    bare = shutil.copytree(art, tmp_path / "art")                  # a manifest without its optimizer
    manifest = strict_json(bare / "manifest.json")
    del manifest["optimizer"]
    (bare / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = device(monkeypatch, capsys, bare, tmp_path / "dev2")
    one_line_error(code, err, "manifest.json: optimizer is missing (expected a mapping with kind, lr, batch_size)")
    from zest_edge.ranking import DEFAULT_PREDICTOR                 # a predictor file
    predictor = json.loads(DEFAULT_PREDICTOR.read_text())
    predictor["model"]["lightgbm_model"] = None
    (tmp_path / "p.json").write_text(json.dumps(predictor))
    code, _, err = run_main(monkeypatch, capsys, "rank", *TASK, "--predictor", str(tmp_path / "p.json"),
                            "--out", str(tmp_path / "r.json"))
    one_line_error(code, err, "p.json: model.lightgbm_model must be a string, got None")
    assert not (tmp_path / "r.json").exists()


# 6. a torn last line in an append-only store is cut, and said so ------------------------------------------------

def test_contrib_resumes_over_a_torn_store_and_warns(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    args = ["contrib", *TASK, "--val-limit", "20", "--epochs", "1", "--score-epochs", "1", "--lr", "0.01",
            "--batch-size", "16", "--shard", "0/10", "--out", str(out)]
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    store = out / "rows.shard-0-of-10.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    torn = lines[-1][:len(lines[-1]) // 2]
    store.write_text("".join(lines[:-1]) + torn)                 # the last row cut mid-write, as a kill leaves it
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    warnings = [l for l in err.splitlines() if l.startswith("warning:")]
    assert warnings == [f"warning: {store}: cut off a torn last line ({len(torn)} bytes left by an interrupted write)"]
    rows = [json.loads(l) for l in store.read_text().splitlines()]
    assert [r.get("layer") for r in rows] == [json.loads(l).get("layer") for l in lines]   # the torn row redone


# 7. arguments are refused before anything is created ------------------------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["contrib", *TASK, "--shard", "5/4"], ["--shard", "5/4"]),
    (["contrib", *TASK, "--shard", "x"], ["--shard", "I/N"]),
    ([*TRAIN, "--batch-size", "0"], ["--batch-size", "at least 1"]),
    ([*TRAIN, "--epochs", "0"], ["--epochs", "at least 1"]),
    (["export", *TASK, "--layers", LAYER, "--batch-size", "0"], ["--batch-size", "at least 1"]),
])
def test_bad_arguments_are_refused_before_any_output(args, fragments, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(monkeypatch, capsys, *args, "--out", str(out))
    one_line_error(code, err, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_contrib_without_ray_is_refused_before_its_store_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)                  # `import ray` raises ImportError
    code, _, err = run_main(monkeypatch, capsys, "contrib", *TASK, "--lr", "0.01", "--backend", "ray",
                            "--out", str(tmp_path / "sweep"))
    one_line_error(code, err, "--backend ray needs Ray")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, fragments", [(["--batch-size", "0"], ["batch size", "at least 1"]),
                                              (["--cache-mb", "-1"], ["--cache-mb", "0 or more"])])
def test_device_train_arguments_are_refused_before_any_output(extra, fragments, art, tmp_path, monkeypatch, capsys):
    code, _, err = device(monkeypatch, capsys, art, tmp_path / "dev", *extra)
    one_line_error(code, err, *fragments)
    assert list(tmp_path.iterdir()) == []
