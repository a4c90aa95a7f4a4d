"""Optimizer-step time on MobileNetV2: FusedOptimizer (C++ extension, torch-op fallback) vs torch.optim foreach / fused.

Times the median step over --steps steps after warm-up, the candidates stepping in turn each round (so machine noise
hits all alike), on (a) the params of --layers (default: 5 mid-network blocks + the classifier) and (b) all params.
Ratios are against torch's fused optimizer of the same algorithm (AdamW or SGD with momentum).

    python tools/bench_optimizer.py [--layers features.7 ... classifier] [--steps 50] [--json out.json]
"""
import argparse
import json
import statistics
import time

import torch
import torchvision

from zest_edge.fused import FusedOptimizer, backend_info

DEFAULT_LAYERS = ["features.7", "features.8", "features.9", "features.10", "features.11", "classifier"]
HYPERPARAMETERS = {"adamw": dict(lr=1e-3, weight_decay=1e-2), "sgd": dict(lr=1e-3, momentum=0.9, weight_decay=1e-2)}


def fused(kind: str, backend: str):
    return lambda ps: FusedOptimizer(ps, kind=kind, backend=backend, **HYPERPARAMETERS[kind])


def torch_optim(kind: str, **impl):
    optimizer_class = torch.optim.AdamW if kind == "adamw" else torch.optim.SGD
    return lambda ps: optimizer_class(ps, **impl, **HYPERPARAMETERS[kind])


CANDIDATES = {  # algorithm -> {name: factory(params)}; the last one is the ratio baseline
    "AdamW": {"FusedOptimizer ext": fused("adamw", "ext"), "FusedOptimizer torch-ops": fused("adamw", "torch"),
              "torch AdamW foreach": torch_optim("adamw", foreach=True),
              "torch AdamW fused": torch_optim("adamw", fused=True)},
    "SGD momentum": {"FusedOptimizer ext": fused("sgd", "ext"), "FusedOptimizer torch-ops": fused("sgd", "torch"),
                     "torch SGD foreach": torch_optim("sgd", foreach=True),
                     "torch SGD fused": torch_optim("sgd", fused=True)},
}


def param_sets(layers: list[str], device: torch.device) -> dict[str, list[torch.Tensor]]:
    named = [(n, p.detach().to(device)) for n, p in torchvision.models.mobilenet_v2().named_parameters()]
    chosen = [p for n, p in named if any(n.startswith(layer + ".") for layer in layers)]
    if not chosen:
        raise SystemExit(f"no MobileNetV2 parameters under {layers}")
    return {"selected layers": chosen, "all MobileNetV2": [p for _, p in named]}


def time_steps(params: list[torch.Tensor], algorithm: str, steps: int, warmup: int) -> dict[str, list[float]]:
    """Step times (ms) of each candidate, each on its own copy of `params` with the same fixed grads."""
    optimizers = {}
    for name, factory in CANDIDATES[algorithm].items():
        copies = [torch.nn.Parameter(p.clone()) for p in params]
        for p in copies:
            p.grad = torch.randn_like(p, generator=torch.Generator(p.device).manual_seed(p.numel()))
        optimizers[name] = factory(copies)
    sync = torch.cuda.synchronize if params[0].is_cuda else (lambda: None)
    times = {name: [] for name in optimizers}
    for round_index in range(warmup + steps):
        for name, optimizer in optimizers.items():
            sync()
            start = time.perf_counter()
            optimizer.step()
            sync()
            if round_index >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS, help="MobileNetV2 module names (prefixes)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for set_name, params in param_sets(args.layers, device).items():
        for algorithm in CANDIDATES:
            times = time_steps(params, algorithm, args.steps, args.warmup)
            medians = {name: statistics.median(t) for name, t in times.items()}
            baseline = list(medians.values())[-1]
            rows += [{"params": set_name, "numel": sum(p.numel() for p in params), "tensors": len(params),
                      "algorithm": algorithm, "optimizer": n, "median_ms": ms, "vs_torch_fused": ms / baseline}
                     for n, ms in medians.items()]
    environment = {"layers": args.layers, "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "device": str(device), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "steps": args.steps, "backend_info": backend_info(device)}
    print(environment)
    print(f"{'params':<16} {'numel':>9} {'tensors':>7}  {'algorithm':<13} {'optimizer':<25} {'median ms':>9} "
          f"{'x torch fused':>13}")
    for r in rows:
        print(f"{r['params']:<16} {r['numel']:>9} {r['tensors']:>7}  {r['algorithm']:<13} {r['optimizer']:<25} "
              f"{r['median_ms']:>9.3f} {r['vs_torch_fused']:>13.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
