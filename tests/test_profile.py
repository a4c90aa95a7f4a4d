"""zest-edge profile: the report, interleaved rounds, bootstrap intervals, worker isolation, memory accounting, errors."""
import json
import mmap
import os
import signal
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from zest_edge.bench import memory, profile as prof
from zest_edge.bench.isolation import Worker
from zest_edge.cli import cli
from zest_edge.errors import ZestError
from zest_edge.layers import layer_map
from zest_edge.models import build_model

TINY = dict(batch_size=2, resolution=32, steps=3, warmup=1, threads=1)
LAYERS = "features.14.conv.0.0,features.16.conv.2"
FIELDS = {"backend", "config", "layers", "step_ms_median", "step_ms_iqr", "peak_mem_mb", "saved_bytes_mb", "bound_ms",
          "efficiency", "trainable_params", "speedup_vs_full", "speedup_ci95", "mem_ratio_vs_full"}


def check_report(out, rows):
    record = json.loads((out / "profile.json").read_text())
    assert record["format"] == "zest-edge/profile" and record["version"] == 2
    assert {"cpu", "cpu_count", "torch", "onnxruntime", "device", "memory_method", "threads"} <= set(record["machine"])
    assert [(r["backend"], r["config"]) for r in record["records"]] == rows
    for r in record["records"]:
        assert "error" not in r, r["error"]
        assert FIELDS <= set(r) and len(r["step_ms"]) == TINY["steps"]
        assert r["step_ms_median"] == pytest.approx(float(np.median(r["step_ms"])), abs=1e-3)
        assert r["speedup_ci95"] is None or 0 < r["speedup_ci95"][0] <= r["speedup_ci95"][1]
    md = (out / "profile.md").read_text()
    assert all(f"## {b}" in md for b in dict.fromkeys(b for b, _ in rows))
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return {(r["backend"], r["config"]): r for r in record["records"]}


def test_profile_cli_end_to_end_torch(tmp_path):
    out = tmp_path / "prof"
    result = CliRunner().invoke(cli, ["profile", "--model", "mobilenet_v2", "--batch-size", "2", "--resolution", "32",
                                      "--top-k", "1", "--layers", LAYERS, "--backends", "torch", "--steps", "3",
                                      "--warmup", "1", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    by = check_report(out, [("torch", c) for c in ("full", "sel@1", "last@1", "head-only")])
    assert "| configuration |" in result.output and "wrote" in result.output       # the table is printed
    # zest@k takes the first k of the given order; last@k the last k layers in execution order
    assert by[("torch", "sel@1")]["layers"] == ["features.14.conv.0.0"]
    assert by[("torch", "last@1")]["layers"] == [layer_map(build_model("mobilenet_v2", num_classes=10))[-1].name]
    full, head = by[("torch", "full")], by[("torch", "head-only")]
    assert full["layers"] is None and head["layers"] == []
    assert full["trainable_params"] == 2236682 and head["trainable_params"] == 12810      # 1280·10 + 10
    assert full["saved_bytes_mb"] > by[("torch", "sel@1")]["saved_bytes_mb"] > head["saved_bytes_mb"]
    assert full["speedup_vs_full"] == 1.0 and full["mem_ratio_vs_full"] == 1.0 and full["speedup_ci95"] is None


def test_profile_ort_split_and_cached(tmp_path):
    prof.profile("mobilenet_v2", out=tmp_path, top_k=[1], layers=LAYERS, backends=["torch", "ort"],
                 configs=["full", "zest", "head"], progress=False, **TINY)
    by = check_report(tmp_path, [("torch", "full"), ("torch", "sel@1"), ("torch", "head-only"), ("ort", "full"),
                                 ("ort", "sel@1"), ("ort-cached", "sel@1"), ("ort", "head-only"),
                                 ("ort-cached", "head-only")])
    for config in ("full", "sel@1", "head-only"):          # the same selection trains on both runtimes
        assert by[("ort", config)]["trainable_params"] == by[("torch", config)]["trainable_params"]
    assert by[("ort", "full")]["prefix_stages"] == 0 and by[("ort", "sel@1")]["prefix_stages"] == 14
    # the split step runs prefix.onnx once per step; the cached step never does
    assert by[("ort", "sel@1")]["prefix_calls_median"] == 1 and by[("ort-cached", "sel@1")]["prefix_calls_median"] == 0
    assert all(r["optimizer_backend"] == "ort-adamw" for (b, _), r in by.items() if b != "torch")


class FakeWorker:
    calls: list = []

    def __init__(self, cfg, timeout):
        self.name, self.alive = (cfg["backend"], tuple(cfg["layers"] or ())), True
        self.ready = {"memory": {"peak_mem_mb": 1.0, "setup_mem_mb": 0.5, "memory_method": "fake"},
                      "info": {"trainable_params": 1, "saved_bytes_mb": 0.0, "threads": 1}}

    def step(self, timeout):
        FakeWorker.calls.append(self.name)
        return {"step_ms": 10.0 if self.name[1] == () else 5.0, "bound_ms": 4.0}

    def close(self):
        pass


def test_rounds_interleave_every_configuration_with_a_rotating_order(tmp_path, monkeypatch):
    monkeypatch.setattr(prof, "Worker", FakeWorker)
    FakeWorker.calls = []
    prof.profile("mobilenet_v2", out=tmp_path, top_k=[1], layers=LAYERS, configs=["full", "zest", "last"],
                 progress=False, **{**TINY, "steps": 4})
    calls = FakeWorker.calls
    assert len(calls) == 12
    rounds = [calls[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(r) == sorted(rounds[0]) for r in rounds)              # every worker once per round
    assert len({r[0] for r in rounds}) == 3                                 # a different one goes first


def test_bootstrap_interval_brackets_the_ratio():
    rng = np.random.default_rng(0)
    assert prof.bootstrap_ratio(np.full(20, 10.0), np.full(20, 5.0)) == (2.0, 2.0)
    full, other = 10 + rng.normal(0, 1, 40), 5 + rng.normal(0, 1, 40)
    lo, hi = prof.bootstrap_ratio(full, other)
    assert lo < np.median(full) / np.median(other) < hi and hi - lo < 1.0


WORKER = {"model": "mobilenet_v2", "num_classes": 10, "resolution": 32, "device": "cpu", "warmup": 1,
          "optimizer": "adamw", "lr": 1e-3, "backend": "torch", "threads": 1, "seed": 0, "mode": None, "batch_size": 2,
          "weights": "random"}


def test_workers_measure_memory_in_their_own_process():
    base = WORKER
    big, small = Worker({**base, "layers": None, "batch_size": 8}), Worker({**base, "layers": [], "batch_size": 2})
    try:
        assert "error" not in big.ready and "error" not in small.ready, (big.ready, small.ready)
        # full fine-tuning holds AdamW state + grads for 2.2M params (~34 MB) plus batch-8 activations
        assert big.ready["memory"]["setup_mem_mb"] > 25 > small.ready["memory"]["setup_mem_mb"]
        assert big.ready["memory"]["peak_mem_mb"] > small.ready["memory"]["peak_mem_mb"] + 20
        step = big.step()
        assert step["step_ms"] > 0 and step["backward_ms"] > 0
    finally:
        big.close(), small.close()
    assert not big.alive


def test_a_worker_that_fails_to_build_reports_an_error():
    worker = Worker({"model": "no_such_model", "backend": "torch", "num_classes": 10, "layers": None})
    assert "no_such_model" in worker.ready["error"] and not worker.alive


def test_a_worker_killed_after_building_says_how_it_died():
    worker = Worker({**WORKER, "layers": ["features.17.conv.2"]})
    assert "error" not in worker.ready and worker.alive
    os.killpg(worker.proc.pid, signal.SIGKILL)                      # as the kernel's OOM killer would
    worker.proc.wait()
    assert not worker.alive
    assert "killed by signal 9 (out of memory?)" in worker.step()["error"]


@pytest.mark.parametrize("hwm_reset", [True, False])
def test_peak_memory_sees_an_allocation(monkeypatch, hwm_reset):
    if not hwm_reset:
        monkeypatch.setattr(memory, "reset_hwm", lambda: False)     # the sampling fallback
    mem = memory.PeakMemory("cpu")
    mem.start()
    a = mmap.mmap(-1, 40 * 2**20)           # a fresh 40 MB mapping (a numpy array may reuse resident heap)
    a.write(b"x" * len(a))                  # touch every page
    deadline = time.time() + 60             # hang guard only: the sampler thread may be starved on a loaded machine
    while not hwm_reset and mem.sampled - mem.base < 35 * 1024 and time.time() < deadline:
        time.sleep(0.01)
    a.close()
    peak = mem.peak_mb()
    mem.stop()
    assert peak > 35
    assert mem.method.startswith("clear_refs") == hwm_reset


def test_profile_errors(tmp_path):
    with pytest.raises(ZestError, match="layer order"):
        prof.profile("mobilenet_v2", out=tmp_path, progress=False, **TINY)
    with pytest.raises(ZestError, match="unknown backend"):
        prof.profile("mobilenet_v2", out=tmp_path, backends=["tf"], configs=["full"], progress=False, **TINY)
    with pytest.raises(ZestError, match="unknown layer"):
        prof.profile("mobilenet_v2", out=tmp_path, layers="features.99", progress=False, **TINY)
    with pytest.raises(ZestError, match="--top-k 3 needs 3"):
        prof.profile("mobilenet_v2", out=tmp_path, layers=LAYERS, top_k=[3], progress=False, **TINY)
    if not torch.cuda.is_available():
        with pytest.raises(ZestError, match="no CUDA device"):
            prof.profile("mobilenet_v2", out=tmp_path, device="cuda", configs=["full"], progress=False, **TINY)
