"""FusedOptimizer against torch.optim, ext vs torch-op backends, state round trips, autograd into the flat buffers."""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zest_edge import fused
from zest_edge.errors import ZestError
from zest_edge.fused import FusedOptimizer, backend_info

SHAPES = [(16, 8, 3, 3), (16,), (300, 40), (40,), (7,)]
STEPS = 20
BACKENDS = ["ext", "torch"]
SGD_CONFIGS = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, dampening=0.1),
               dict(momentum=0.9, nesterov=True)]


def make_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in SHAPES]


def grad_sequence(steps=STEPS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=gen) for shape in SHAPES] for _ in range(steps)]


def param_groups(params, weight_decay=0.05):
    """Conv-like weights decay, biases don't: two groups, as training code sets them up."""
    return [{"params": params[0::2], "weight_decay": weight_decay}, {"params": params[1::2], "weight_decay": 0.0}]


def run(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        optimizer.step()
    return [p.detach().clone() for p in params]


def assert_relative_close(actual, expected, tol):
    for a, e in zip(actual, expected):
        assert (a - e).abs().max() <= tol * e.abs().max(), f"relative error above {tol}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_sgd_matches_torch(backend, config):
    grads = grad_sequence()
    reference = make_params()
    expected = run(torch.optim.SGD(param_groups(reference), lr=0.01, **config), reference, grads)
    params = make_params()
    actual = run(FusedOptimizer(param_groups(params), kind="sgd", lr=0.01, backend=backend, **config), params, grads)
    assert_relative_close(actual, expected, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_matches_torch(backend):
    grads = grad_sequence()
    reference = make_params()
    expected = run(torch.optim.AdamW(param_groups(reference), lr=0.01, betas=(0.8, 0.99)), reference, grads)
    params = make_params()
    optimizer = FusedOptimizer(param_groups(params), kind="adamw", lr=0.01, betas=(0.8, 0.99), backend=backend)
    assert_relative_close(run(optimizer, params, grads), expected, 1e-6)


@pytest.mark.parametrize("kind, config", [("adamw", {})] + [("sgd", c) for c in SGD_CONFIGS], ids=str)
def test_ext_and_torch_backends_identical(kind, config):
    results = {}
    for backend in BACKENDS:
        params = make_params()
        optimizer = FusedOptimizer(param_groups(params), kind=kind, lr=0.01, backend=backend, **config)
        results[backend] = run(optimizer, params, grad_sequence())
    assert all(torch.equal(a, b) for a, b in zip(results["ext"], results["torch"]))


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_state_round_trip_resumes_identically(kind, tmp_path):
    grads = grad_sequence()
    params = make_params()
    momentum = 0.9 if kind == "sgd" else 0.0
    optimizer = FusedOptimizer(param_groups(params), kind=kind, lr=0.01, momentum=momentum)
    run(optimizer, params, grads[:10])
    save_file(optimizer.state_tensors(), tmp_path / "optim.safetensors")
    hyperparameters = optimizer.state_dict()["param_groups"]
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = FusedOptimizer(param_groups(resumed_params, weight_decay=0.5), kind=kind, lr=1.0, momentum=momentum)
    resumed.load_state_dict({"state": load_file(tmp_path / "optim.safetensors"), "param_groups": hyperparameters})
    expected = run(optimizer, params, grads[10:])
    assert all(torch.equal(a, b) for a, b in zip(run(resumed, resumed_params, grads[10:]), expected))


def test_mismatched_state_is_a_user_error():
    optimizer = FusedOptimizer(make_params(), kind="adamw", lr=0.01)
    state = optimizer.state_tensors()
    with pytest.raises(ZestError, match="does not fit"):
        optimizer.load_state_tensors({**state, "cpu.float32.exp_avg": torch.zeros(3)})


def is_view_of(tensor, flat):
    start = flat.data_ptr()
    return start <= tensor.data_ptr() < start + flat.numel() * flat.element_size()


def test_zero_grad_keeps_grads_as_views_of_the_flat_buffer():
    params = make_params()
    optimizer = FusedOptimizer(params, kind="sgd", lr=0.1)
    (flat,) = optimizer.flat_buffers
    flat.grad.fill_(1.0)
    params[0].grad = torch.ones(SHAPES[0])  # replaced by the user: re-viewed on zero_grad
    optimizer.zero_grad()
    assert all(is_view_of(p.grad, flat.grad) and is_view_of(p, flat.param) for p in params)
    assert not flat.grad.any()


def test_backward_accumulates_into_the_flat_grad_buffer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    optimizer = FusedOptimizer(model.parameters(), kind="adamw", lr=0.01)
    (flat,) = optimizer.flat_buffers
    grad_ptrs = [p.grad.data_ptr() for p in model.parameters()]
    x = torch.randn(5, 8)
    for _ in range(2):  # the second pass must add to the first
        model(x).square().sum().backward()
    assert [p.grad.data_ptr() for p in model.parameters()] == grad_ptrs
    w1, b1, w2, b2 = reference
    (2 * (torch.relu(x @ w1.T + b1) @ w2.T + b2).square().sum()).backward()
    assert torch.allclose(flat.grad, torch.cat([p.grad.reshape(-1) for p in reference]), rtol=1e-5, atol=1e-6)

    model.zero_grad()  # sets grads to None; the next step copies fresh grads back into the flat buffer
    model(x).square().sum().backward()
    fresh = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    optimizer.step()
    assert torch.equal(flat.grad, fresh) and all(is_view_of(p.grad, flat.grad) for p in model.parameters())


def test_backend_info_is_truthful(monkeypatch):
    built = importlib.util.find_spec("zest_edge._fused") is not None
    info = backend_info()
    assert info["extension_built"] == built and info["backend"] == ("cpp-cpu" if built else "torch")
    assert (info["reason"] is None) == built and info["cuda_kernels"] == (built and fused._fused.cuda_kernels)
    assert FusedOptimizer(make_params(), lr=0.1).backend == backend_info()["backend"]
    forced = FusedOptimizer(make_params(), lr=0.1, backend="torch")
    assert forced.backend == "torch" and forced.backend_info()["reason"] == "backend='torch' requested"

    monkeypatch.setattr(fused, "_fused", None)
    monkeypatch.setattr(fused, "_EXTENSION_ERROR", "zest_edge._fused is not importable (simulated)")
    info = backend_info()
    assert info["backend"] == "torch" and not info["extension_built"] and "simulated" in info["reason"]
    with pytest.warns(RuntimeWarning, match="falls back to torch ops"):
        assert FusedOptimizer(make_params(), lr=0.1).backend == "torch"
    with pytest.raises(ZestError, match="pip install --no-build-isolation -e ."):
        FusedOptimizer(make_params(), lr=0.1, backend="ext")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    source = Path(__file__).resolve().parents[1] / "cpp_ext" / "fused_optim_cuda.cu"
    includes = [f"-I{path}" for path in include_paths(device_type="cuda")]
    command = ["nvcc", "-c", str(source), "-o", str(tmp_path / "fused_optim_cuda.o"), "-std=c++20", "-O3",
               "--fmad=false", "-DZEST_WITH_CUDA", "-Xcompiler", "-fPIC", *COMMON_NVCC_FLAGS, *includes]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
