"""The CUDA kernels of the fused update (marked `cuda`; skipped, with the reason, where no CUDA device is present):
on MobileNetV2-sized buffers they equal the CPU extension and torch's own fused optimizers to 1e-6 relative, mixed
dtypes step (float32 by the kernels, float16 by torch ops, said in backend_info), non-contiguous grads are handled.
tools/gpu_check.sh runs these first on a GPU machine."""
import pytest
import torch

from zest_edge.fused import FusedOptimizer, backend_info
from zest_edge.models import build_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (these run in tools/gpu_check.sh)")]
STEPS = 5
TOL = 1e-6


@pytest.fixture(scope="module")
def shapes():
    """Every parameter shape of MobileNetV2 (3.5 M values in 158 tensors)."""
    return [tuple(p.shape) for p in build_model("mobilenet_v2", num_classes=10, weights="random").parameters()]


def params_and_grads(shapes, device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device, dtype)) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(device, dtype) for s in shapes] for _ in range(STEPS)]
    return params, grads


def run(optimizer, params, grads, transpose=False):
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.t().contiguous().t() if transpose and g.dim() == 2 else g.clone()
        optimizer.step()
    return [p.detach().float().cpu() for p in params]


def assert_close(actual, expected, tol=TOL):
    worst = max(float((a - e).abs().max() / e.abs().max().clamp_min(1e-30)) for a, e in zip(actual, expected))
    assert worst <= tol, f"relative error {worst:.2e} above {tol:.0e}"


def test_the_extension_was_built_with_cuda_kernels():
    info = backend_info("cuda")
    assert info["backend"] == "cpp-cuda", info["reason"]            # a failure, not a skip: the build is broken


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_cuda_kernels_equal_the_cpu_extension_and_torch_fused(kind, shapes):
    config = dict(lr=0.01, momentum=0.9, weight_decay=0.01) if kind == "sgd" else dict(lr=0.001, weight_decay=0.01)
    results = {}
    for device in ("cuda", "cpu"):
        params, grads = params_and_grads(shapes, device)
        results[device] = run(FusedOptimizer(params, kind=kind, backend="ext", **config), params, grads)
    params, grads = params_and_grads(shapes, "cuda")
    reference = (torch.optim.SGD(params, fused=True, **config) if kind == "sgd"
                 else torch.optim.AdamW(params, fused=True, **config))
    results["torch"] = run(reference, params, grads)
    start, _ = params_and_grads(shapes, "cpu")
    moved = max(float((a - s.detach()).abs().max()) for a, s in zip(results["cuda"], start))
    assert moved > 100 * TOL                                    # the steps change the parameters far beyond TOL
    assert_close(results["cuda"], results["cpu"])
    assert_close(results["cuda"], results["torch"])


def test_mixed_dtypes_step_each_buffer_with_its_backend(shapes):
    small = shapes[:20]
    p32, g32 = params_and_grads(small, "cuda")
    p16, g16 = params_and_grads(small, "cuda", torch.float16, seed=1)
    opt = FusedOptimizer(p32 + p16, kind="adamw", lr=0.001)
    assert opt.backend == "cpp-cuda+torch" and "float16" in opt.backend_info()["reason"]
    got = run(opt, p32 + p16, [a + b for a, b in zip(g32, g16)])
    r32, _ = params_and_grads(small, "cuda")
    r16, _ = params_and_grads(small, "cuda", torch.float16, seed=1)
    want = run(torch.optim.AdamW(r32 + r16, lr=0.001), r32 + r16, [a + b for a, b in zip(g32, g16)])
    assert_close(got[:20], want[:20])
    assert_close(got[20:], want[20:], tol=1e-2)                  # float16 itself rounds at ~1e-3


def test_non_contiguous_grads_are_copied_into_the_flat_buffer(shapes):
    a, grads = params_and_grads(shapes[:30], "cuda")
    b, _ = params_and_grads(shapes[:30], "cuda")
    plain = run(FusedOptimizer(a, kind="sgd", lr=0.01, momentum=0.9), a, grads)
    strided = run(FusedOptimizer(b, kind="sgd", lr=0.01, momentum=0.9), b, grads, transpose=True)
    assert all(torch.equal(x, y) for x, y in zip(plain, strided))
