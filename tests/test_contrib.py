"""Contribution sweep: resume after a real kill, shard merge, Ray backend, corpus checks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zest_edge.contrib import HEAD, load_sweep, run_sweep
from zest_edge.corpus import load_corpus
from zest_edge.errors import ZestError
from zest_edge.finetune import Schedule
from zest_edge.task import load_task

CLI = [str(Path(sys.executable).parent / "zest-edge")]
TINY = dict(limit=40, val_limit=20, resolution=32, seed=0)
SCHEDULE = Schedule(epochs=1, lr=0.01, batch_size=16)


def tiny_task():
    return load_task("resnet18", "fashion_mnist", **TINY)


def layer_rows(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines() if '"type": "layer"' in l]


def test_sweep_resumes_after_kill_without_redoing_rows(tmp_path):
    out = tmp_path / "sweep"
    cmd = CLI + ["contrib", "--model", "resnet18", "--data", "fashion_mnist", "--limit", "40", "--val-limit", "20",
                 "--resolution", "32", "--epochs", "1", "--batch-size", "16", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store = out / "rows.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (store.exists() and len(layer_rows(store)) >= 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = layer_rows(store)
    assert 3 <= len(before) < 21, "kill landed before or after the sweep"
    subprocess.run(cmd, check=True, capture_output=True)
    after = layer_rows(store)
    assert after[:len(before)] == before                      # finished rows kept as they were
    names = [r["layer"] for r in after]
    assert len(names) == len(set(names)) == 21                # 20 layers + head, none twice
    assert HEAD in names


def test_shards_merge_to_the_unsharded_sweep(tmp_path):
    whole = run_sweep(tiny_task(), SCHEDULE, tmp_path / "whole", progress=False)
    for i in range(2):
        run_sweep(tiny_task(), SCHEDULE, tmp_path / "sharded", shard=(i, 2), progress=False)
    merged = load_sweep(tmp_path / "sharded")
    assert set(merged["rows"]) == set(whole["rows"])
    for name, row in whole["rows"].items():
        assert merged["rows"][name]["acc"] == row["acc"]
        assert merged["rows"][name]["curve"] == row["curve"]


def test_changed_config_is_refused(tmp_path):
    run_sweep(tiny_task(), SCHEDULE, tmp_path / "s", shard=(0, 10), progress=False)
    with pytest.raises(ZestError, match="different configuration"):
        run_sweep(tiny_task(), Schedule(epochs=2, lr=0.01, batch_size=16), tmp_path / "s", shard=(0, 10), progress=False)


def test_ray_backend_matches_local(tmp_path):
    pytest.importorskip("ray")
    import ray
    local = run_sweep(tiny_task(), SCHEDULE, tmp_path / "local", shard=(0, 7), progress=False)
    try:
        remote = run_sweep(tiny_task(), SCHEDULE, tmp_path / "ray", shard=(0, 7), backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert set(remote["rows"]) == set(local["rows"])
    for name, row in local["rows"].items():
        assert remote["rows"][name]["acc"] == pytest.approx(row["acc"], abs=1e-9)


def test_corrupt_corpus_row_is_a_clear_error(tmp_path):
    good = {"format": "zest-edge/combination", "version": 1, "model": "m", "data": "d", "metric_names": ["snip"],
            "layers": [{"name": "a", "contribution": 0.5, "metrics": {"snip": 1.0}},
                       {"name": "b", "contribution": "oops", "metrics": {"snip": 2.0}}]}
    (tmp_path / "c.json").write_text(json.dumps(good))
    with pytest.raises(ZestError, match="layer row 1 is corrupt"):
        load_corpus(tmp_path)
    res = subprocess.run(CLI + ["train-predictor", "--corpus", str(tmp_path), "--out", str(tmp_path / "p.json")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "corrupt" in res.stderr
    assert not (tmp_path / "p.json").exists()
