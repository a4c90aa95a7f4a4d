"""The command line: help, layers, metrics output files, and one-line refusals (exit 2) of bad input."""
import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import run_main, one_line_error
from zest_edge.metrics import METRICS

ZEST = str(Path(sys.executable).with_name("zest-edge"))
CORE_COMMANDS = ("doctor", "models", "layers", "metrics", "finetune", "evaluate")


def test_help_lists_commands_with_one_line_descriptions():
    r = subprocess.run([ZEST, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    start = lines.index("Commands:") + 1
    rows = {}
    for line in lines[start:]:
        m = re.match(r"^  (\S+)\s{2,}(\S.*)$", line)
        assert m, f"command row without a one-line description: {line!r}"
        rows[m.group(1)] = m.group(2)
    assert set(CORE_COMMANDS) <= set(rows), rows
    assert rows["layers"].startswith("List a model's candidate layers")
    assert rows["metrics"].startswith("Compute zero-shot metrics")


def test_layers_prints_52_rows_for_mobilenet_v2(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "layers", "--model", "mobilenet_v2")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["#", "layer", "type", "shape", "params", "depth"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    rows = [l.split() for l in lines[2:]]
    assert len(rows) == 52
    assert [r[0] for r in rows] == [str(i) for i in range(52)]
    assert rows[0][1:4] == ["features.0.0", "conv", "32x3x3x3"] and rows[-1][1] == "features.18.0"
    assert rows[1][2] == "conv_dw" and not any(r[1].startswith("classifier") for r in rows)


def test_metrics_writes_json_and_csv_for_every_layer_and_metric(monkeypatch, capsys, tmp_path):
    out, csv_path = tmp_path / "m.json", tmp_path / "m.csv"
    code, stdout, err = run_main(monkeypatch, capsys, "metrics", "--model", "efficientnet_lite0", "--data",
                                 "fashion_mnist", "--limit", "64", "--resolution", "32", "--batch-size", "8",
                                 "--out", str(out), "--csv", str(csv_path))
    assert code == 0, err
    assert "49 layers, 19 metrics" in stdout and f"wrote {out}" in stdout
    record = json.loads(out.read_text())
    assert record["format"] == "zest-edge/metrics" and record["version"] == 1
    assert (record["model"], record["data"], record["resolution"], record["batch_size"]) == \
        ("efficientnet_lite0", "fashion_mnist", 32, 8)
    assert record["train_examples"] == 64 and record["num_classes"] == 10
    assert sorted(record["metric_names"]) == sorted(METRICS) and len(record["metric_names"]) == 19
    layers = record["layers"]
    assert len(layers) == 49 and layers[0]["name"] == "conv_stem" and layers[-1]["name"] == "conv_head"
    assert [l["index"] for l in layers] == list(range(49))
    for layer in layers:
        assert list(layer["metrics"]) == record["metric_names"], layer["name"]
        assert all(math.isfinite(v) for v in layer["metrics"].values()), layer["name"]
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 49
    assert list(rows[0])[:5] == ["index", "name", "type", "params", "depth"]
    assert list(rows[0])[5:] == record["metric_names"]
    for row, layer in zip(rows, layers):
        assert (row["name"], row["type"], int(row["params"])) == (layer["name"], layer["type"], layer["params"])
        assert {m: float(row[m]) for m in record["metric_names"]} == layer["metrics"]    # repr round-trips


@pytest.mark.parametrize("args, fragments", [
    (["--model", "mobilenet", "--data", "fashion_mnist"],
     ["unknown model 'mobilenet'", "did you mean mobilenet_v2", "choose from:", "efficientnet_lite0", "resnet18"]),
    (["--model", "mobilenet_v2", "--data", "fashion-mnist"],
     ["unknown dataset 'fashion-mnist'", "did you mean fashion_mnist", "choose from:", "imagefolder:PATH"]),
    (["--model", "mobilenet_v2", "--data", "fashion_mnist", "--metrics", "snip,synflw"],
     ["unknown metric 'synflw'", "did you mean synflow", "choose from:", "grasp", "wt_abs_std"]),
])
def test_unknown_names_list_valid_choices(monkeypatch, capsys, tmp_path, args, fragments):
    out = tmp_path / "m.json"
    code, _, err = run_main(monkeypatch, capsys, "metrics", *args, "--limit", "20", "--resolution", "32",
                            "--batch-size", "4", "--out", str(out))
    one_line_error(code, err, *fragments)
    assert not out.exists()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    corrupt = root / "corrupt.pt"
    torch.save({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:-40])                       # truncated zip archive
    wrong = root / "wrong.pt"
    torch.save({"features.0.0.weight": torch.zeros(16, 3, 3, 3)}, wrong)  # a state_dict of another model
    empty = root / "empty"
    empty.mkdir()
    no_images = root / "no_images"
    (no_images / "cat").mkdir(parents=True)
    (no_images / "cat" / "notes.txt").write_text("not an image")
    return {"corrupt": corrupt, "wrong": wrong, "empty": empty, "no_images": no_images, "root": root}


@pytest.mark.parametrize("case", ["missing weights", "corrupt weights", "wrong state_dict", "empty imagefolder",
                                  "imagefolder without images", "batch size 0", "batch size > dataset"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path, bad_inputs, case):
    base = {"--model": "mobilenet_v2", "--data": "fashion_mnist", "--limit": "20", "--resolution": "32",
            "--batch-size": "4"}
    change, fragments = {
        "missing weights": ({"--weights": str(bad_inputs["root"] / "nope.pt")}, ["weights file not found"]),
        "corrupt weights": ({"--weights": str(bad_inputs["corrupt"])}, ["cannot read weights"]),
        "wrong state_dict": ({"--weights": str(bad_inputs["wrong"])}, ["do not match this model"]),
        "empty imagefolder": ({"--data": f"imagefolder:{bad_inputs['empty']}", "--limit": None}, ["no images in"]),
        "imagefolder without images": ({"--data": f"imagefolder:{bad_inputs['no_images']}", "--limit": None},
                                       ["no images in"]),
        "batch size 0": ({"--batch-size": "0"}, ["--batch-size must be between 1 and the dataset size (20)", "got 0"]),
        "batch size > dataset": ({"--batch-size": "21"}, ["--batch-size must be between 1 and the dataset size (20)",
                                                          "got 21"]),
    }[case]
    opts = {**base, **change}
    args = [x for k, v in opts.items() if v is not None for x in (k, v)]
    out, csv_path = tmp_path / "m.json", tmp_path / "m.csv"
    code, stdout, err = run_main(monkeypatch, capsys, "metrics", *args, "--out", str(out), "--csv", str(csv_path))
    one_line_error(code, err, *fragments)
    assert not out.exists() and not csv_path.exists() and list(tmp_path.iterdir()) == []


def test_bad_input_through_the_installed_entry_point(tmp_path):
    out = tmp_path / "m.json"
    r = subprocess.run([ZEST, "metrics", "--model", "mobilenet_v2", "--data", "fashion_mnist", "--limit", "20",
                        "--resolution", "32", "--batch-size", "21", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    one_line_error(r.returncode, r.stderr, "--batch-size must be between 1 and the dataset size (20), got 21")
    assert r.stdout == "" and not out.exists()
