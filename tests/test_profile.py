"""zest-edge profile: the report files, isolation, memory accounting, head-only, error paths (tiny MobileNetV2)."""
import json
import mmap
import time

import pytest
import torch
from click.testing import CliRunner

from zest_edge import profile as prof
from zest_edge.cli import cli
from zest_edge.errors import ZestError
from zest_edge.layers import layer_map
from zest_edge.models import build_model

TINY = dict(batch_size=2, resolution=32, steps=3, warmup=1, threads=1)
LAYERS = "features.14.conv.0.0,features.16.conv.2"
RECORD_FIELDS = {"backend", "config", "layers", "step_ms_median", "step_ms_iqr", "peak_mem_mb", "saved_bytes_mb",
                 "bound_ms", "efficiency", "trainable_params", "speedup_vs_full", "mem_ratio_vs_full"}


def export_available() -> bool:
    try:
        from zest_edge.export.onnx_training import export_artifacts  # noqa: F401
        import onnxruntime.training.api  # noqa: F401
        return True
    except ImportError:
        return False


def check_report(out, backends, configs):
    record = json.loads((out / "profile.json").read_text())
    assert record["format"] == "zest-edge/profile" and record["version"] == 1
    assert {"cpu", "cpu_count", "torch", "onnxruntime", "device", "memory_method", "threads"} <= set(record["machine"])
    assert record["machine"]["threads"] == 1
    assert [(r["backend"], r["config"]) for r in record["records"]] == [(b, c) for c in configs for b in backends]
    for r in record["records"]:
        assert "error" not in r, r["error"]
        assert RECORD_FIELDS <= set(r)
        assert r["step_ms_median"] > 0 and r["step_ms_iqr"] >= 0 and r["bound_ms"] > 0 and r["efficiency"] > 0
        assert r["peak_mem_mb"] >= 0 and r["saved_bytes_mb"] >= 0
    by = {(r["backend"], r["config"]): r for r in record["records"]}
    for b in backends:
        full, head = by[(b, "full")], by[(b, "head-only")]
        assert full["speedup_vs_full"] == 1.0 and full["mem_ratio_vs_full"] == 1.0
        assert full["layers"] is None and head["layers"] == [] and head["trainable_params"] == 12810
        assert full["trainable_params"] == 2236682 > by[(b, "sel@1")]["trainable_params"] > head["trainable_params"]
        assert full["saved_bytes_mb"] > by[(b, "sel@1")]["saved_bytes_mb"] > head["saved_bytes_mb"]
    md = (out / "profile.md").read_text()
    for b in backends:
        assert f"## {b}" in md
    for c in configs:
        assert f"| {c} |" in md
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return record


def test_profile_cli_end_to_end_torch(tmp_path):
    out = tmp_path / "prof"
    result = CliRunner().invoke(cli, ["profile", "--model", "mobilenet_v2", "--batch-size", "2", "--resolution", "32",
                                      "--top-k", "1", "--layers", LAYERS, "--backends", "torch", "--steps", "3",
                                      "--warmup", "1", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    configs = ["full", "sel@1", "last@1", "head-only"]
    record = check_report(out, ["torch"], configs)
    assert "| configuration |" in result.output and "wrote" in result.output       # the table is printed
    by = {r["config"]: r for r in record["records"]}
    # zest@k takes the first k of the given order; last@k the last k layers in execution order
    assert by["sel@1"]["layers"] == ["features.14.conv.0.0"]
    assert by["last@1"]["layers"] == [layer_map(build_model("mobilenet_v2", num_classes=10))[-1].name]
    t = by["full"]
    assert t["optimizer_backend"] in ("cpp-cpu", "torch") and len(t["step_ms"]) == 3
    assert 0 < t["backward_ms"] < t["bound_ms"] and t["forward_only_ms"] < t["bound_ms"]


@pytest.mark.skipif(not export_available(), reason="zest_edge.export.onnx_training.export_artifacts not available")
def test_profile_ort_backend(tmp_path):
    record = prof.profile("mobilenet_v2", out=tmp_path, top_k=[1], layers=LAYERS, backends=["torch", "ort"],
                          configs=["full", "zest", "head"], progress=False, **TINY)
    check_report(tmp_path, ["torch", "ort"], ["full", "sel@1", "head-only"])
    ort = [r for r in record["records"] if r["backend"] == "ort"]
    assert all(r["optimizer_backend"] == "ort-adamw" and r["forward_backward_ms"] > 0 for r in ort)
    torch_params = {r["config"]: r["trainable_params"] for r in record["records"] if r["backend"] == "torch"}
    assert {r["config"]: r["trainable_params"] for r in ort} == torch_params     # the same selection trains


def test_memory_separates_configurations():
    base = {"model": "mobilenet_v2", "num_classes": 10, "resolution": 32, "device": "cpu", "steps": 2, "warmup": 1,
            "optimizer": "adamw", "lr": 1e-3, "backend": "torch", "threads": 1, "seed": 0}
    big = prof.run_isolated({**base, "layers": None, "batch_size": 8})
    small = prof.run_isolated({**base, "layers": [], "batch_size": 2}, isolation="subprocess")
    assert "error" not in big and "error" not in small, (big, small)
    # full fine-tuning holds AdamW state + grads for 2.2M params (~34 MB) plus batch-8 activations
    assert big["setup_mem_mb"] > 25 > small["setup_mem_mb"]
    assert big["peak_mem_mb"] > small["peak_mem_mb"] + 20
    assert big["saved_bytes_mb"] > small["saved_bytes_mb"]
    assert big["memory_method"] == small["memory_method"]


@pytest.mark.parametrize("hwm_reset", [True, False])
def test_peak_memory_sees_an_allocation(monkeypatch, hwm_reset):
    if not hwm_reset:
        monkeypatch.setattr(prof, "reset_hwm", lambda: False)     # the sampling fallback
    mem = prof.PeakMemory("cpu")
    mem.start()
    a = mmap.mmap(-1, 40 * 2**20)           # a fresh 40 MB mapping (a numpy array may reuse resident heap)
    a.write(b"x" * len(a))                  # touch every page
    deadline = time.time() + 10             # the sampler thread may be starved on a loaded machine: let it look
    while not hwm_reset and mem.sampled - mem.base < 35 * 1024 and time.time() < deadline:
        time.sleep(0.01)
    a.close()
    peak = mem.peak_mb()
    mem.stop()
    assert peak > 35
    assert mem.method.startswith("clear_refs") == hwm_reset


def test_head_only_trains_the_head_alone():
    from zest_edge.sparse import sparsify
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=10)
    sm = sparsify(model, [])
    assert [n for n, _ in sm.trainable] == ["classifier.1.weight", "classifier.1.bias"]
    assert len(sm.suffix) == 1 and sm.selected == [] and not sm.full
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for _, p in sm.trainable], lr=0.1)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    sm.step(x, y, opt)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"classifier.1.weight", "classifier.1.bias"}
    assert all(not m.training for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))


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


@pytest.mark.skipif(prof.ort_cuda_unavailable() is None, reason="this onnxruntime has the CUDA provider")
def test_ort_without_cuda_provider_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    record = prof.profile("mobilenet_v2", out=tmp_path, device="cuda", backends=["ort"], configs=["full", "head"],
                          progress=False, **TINY)
    assert all(r["error"].startswith("ort: CUDA provider unavailable: ") for r in record["records"])
    assert "ort: CUDA provider unavailable" in capsys.readouterr().out
    assert "error: ort: CUDA provider unavailable" in (tmp_path / "profile.md").read_text()

