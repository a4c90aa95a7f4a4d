"""Profiling one training step: full fine-tuning vs ZEST@k vs last-k vs head-only, per backend (torch, ORT).

`profile(model_name, out=..., ...)` writes
    out/profile.json   format zest-edge/profile, version 1: one flat record per (backend, configuration) + machine info
    out/profile.md     latency and memory per configuration with ratios to full fine-tuning (like ZEST's Table 4)
    out/profile.png    grouped bars: latency and memory per configuration, one bar per backend

Configurations (all trained with the same optimizer, default AdamW lr 1e-3; `sgd` is plain SGD without momentum in
both backends, since ORT's on-device SGD has none):
    full         every parameter trains, every BN in training mode
    zest@k       the first k layers of the ranking (--ranking / --data) or of an explicit --layers list
    last@k       the last k layers in execution order (same k)
    head-only    only the head trains; everything before the head's stage runs without autograd

What one step is: the fixed synthetic batch (torch.randn / token ids from a seeded generator, fixed labels) goes
forward, cross-entropy, backward, optimizer update, zero-grad. No feature cache: the frozen prefix runs every step.
Each measurement has two phases. Memory: baseline, optimizer/session construction, max(warmup, 1) untimed steps,
read the peak. Latency: `steps` timed steps (median and IQR), each followed by the forward-only passes the bound
needs, so step and bound see the same load on a shared machine.
- torch: the sparse engine (`zest_edge.sparse`) with `FusedOptimizer`; each step is timed by phase (forward,
  backward, update), with a device synchronisation at each boundary on CUDA.
- ort: artifacts from `zest_edge.export.onnx_training.export_artifacts` (exported in the parent, in a temporary
  folder), then `onnxruntime.training.api` Module(x, y) (forward + backward) and Optimizer.step() + lazy_reset_grad().

Isolation and memory: every (backend, configuration) runs in its own fresh process, forked from a fork server
(`python -m zest_edge.profile --serve`) that has only imported the libraries and never allocated a tensor or started
a thread pool, or, with isolation="subprocess", in
`python -m zest_edge.profile --one '<json config>'`. Peak memory is the step's peak above the process's memory once
the model and the batch are loaded (torch: the model built and sparsified; ORT: the checkpoint loaded); what comes
after counts: optimizer state, gradients, the ORT training session, activations, workspaces.
- CPU: the kernel's resident-set high-water mark. Writing "5" to /proc/self/clear_refs resets VmHWM to the current
  VmRSS (Linux >= 4.0; it works on this project's machines, including unprivileged containers), so
  peak = VmHWM after the steps - VmRSS at the reset, exact at page granularity. Where that write is refused, a thread
  samples VmRSS every ~1 ms and the result is max(sampled peak, ru_maxrss if it rose past its value at the start);
  `machine.memory_method` says which ran.
- CUDA (torch): torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated() at the
  reset. ORT's CUDA allocations are invisible to torch, so ORT on CUDA reports no memory.

Lower bound beside each measurement: bound = forward-only latency of the whole model (no autograd, same batch) +
the backward of the suffix after the earliest trained layer. torch measures that backward directly (the backward
phase of the real step, which only covers the suffix). ORT cannot time backward apart from forward, so its
backward is estimated as Module train call (forward + backward) - eval-model forward, and its forward-only time is
an InferenceSession on inference.onnx. bound_ms is the median over iterations of (forward-only + backward);
efficiency is the median over iterations of bound / step (each pair timed back to back), so it can exceed 1 by
noise when the step is already at its bound.
saved_bytes_mb: bytes autograd saves for backward during one forward of the torch graph (saved_tensors_hooks; unique
storages, parameters, buffers and the input batch excluded) — an analytic activation count, the same for both
backends.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from .errors import ZestError
from .sparse import sparsify

FORMAT = "zest-edge/profile"
VERSION = 1
CONFIG_KINDS = ("full", "zest", "last", "head")
BACKENDS = ("torch", "ort")
OPTIMIZERS = ("adamw", "sgd")
RESULT_TAG = "ZEST_PROFILE_RESULT "
PRELOAD = ["numpy", "torch", "zest_edge.models", "zest_edge.sparse", "zest_edge.fused", "zest_edge.layers",
           "onnxruntime", "onnxruntime.training.api"]


# ------------------------------------------------------------------------------------------------ memory

def _status_kb() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def reset_hwm() -> bool:
    """Reset this process's VmHWM to its VmRSS; True when the kernel allowed it and it took effect."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        s = _status_kb()
        return s["VmHWM"] <= s["VmRSS"] + 256
    except (OSError, KeyError):
        return False


class PeakMemory:
    """Peak memory above a baseline taken by `start()`; `peak_mb()` may be read several times."""

    def __init__(self, device: str = "cpu"):
        self.device, self.method, self._thread, self._stop = device, None, None, None

    def start(self) -> None:
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.method = "cuda max_memory_allocated - memory_allocated at reset"
            return
        if not os.path.exists("/proc/self/status"):
            self.base, self.ru_base = None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "ru_maxrss delta (no /proc: a peak below the process's earlier peak is missed)"
            return
        if reset_hwm():
            self.base = _status_kb()["VmRSS"]
            self.method = "clear_refs=5 + VmHWM - VmRSS"
            return
        self.base = _rss_kb()
        self.ru_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.sampled = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.method = "VmRSS sampled every 1 ms + ru_maxrss delta (clear_refs refused)"

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, _rss_kb())
            time.sleep(0.001)

    def peak_mb(self) -> float:
        if self.device == "cuda":
            import torch
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if self.base is None:
            return max(ru - self.ru_base, 0) / 1024
        if self._thread is None:
            return max(_status_kb()["VmHWM"] - self.base, 0) / 1024
        peak = max(self.sampled, _rss_kb(), ru if ru > self.ru_base else 0)
        return max(peak - self.base, 0) / 1024

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()


# ------------------------------------------------------------------------------------------------ one measurement

def _median_iqr(values: list[float]) -> tuple[float, float]:
    import numpy as np
    a = np.asarray(values, dtype=float)
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return float(q50), float(q75 - q25)


def with_resolution(model, resolution: int | None):
    """Make the model's spec (dummy inputs, exported input shape) use `resolution` for image models."""
    from .models import attach_spec, get_spec
    spec = get_spec(model)
    if resolution is None or spec.preprocess.kind != "image":
        return model
    pre = dataclasses.replace(spec.preprocess, resolution=int(resolution))
    return attach_spec(model, dataclasses.replace(spec, preprocess=pre))


def synthetic_batch(model, batch_size: int, num_classes: int, seed: int = 0):
    """The fixed batch: torch.randn images (or token ids in [1000, 2000)) and labels from a seeded generator."""
    import torch
    from .layers import dummy_input
    g = torch.Generator().manual_seed(seed)
    shape = dummy_input(model, batch_size).shape
    if dummy_input(model, 1).dtype == torch.long:
        x = torch.randint(1000, 2000, shape, generator=g)
    else:
        x = torch.randn(shape, generator=g)
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    return x, y


def saved_tensor_bytes(sm, x) -> int:
    """Bytes autograd saves for backward during one forward (unique storages; params, buffers and x excluded)."""
    import torch
    import torch.nn.functional as F
    exclude = {t.untyped_storage().data_ptr() for t in list(sm.model.parameters()) + list(sm.model.buffers())}
    exclude.add(x.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            s = t.untyped_storage()
            if s.data_ptr() not in exclude:
                seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = sm(x)
        y = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, y)
    del loss, logits
    return sum(seen.values())


def _build(cfg: dict):
    import torch
    from .models import build_model
    torch.manual_seed(cfg.get("seed", 0))
    model = with_resolution(build_model(cfg["model"], num_classes=cfg["num_classes"], weights=cfg.get("weights")),
                            cfg.get("resolution"))
    return model


def _sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def warm_runtime(sm, x) -> None:
    """One eval-mode forward of a single example before the baseline: the runtime's one-time costs (thread pools,
    kernel code) are paid here, not charged to the step, while the memory it frees is 1/batch of a forward's."""
    import torch
    with torch.no_grad():
        sm.model.eval()
        try:
            sm(x[:1])
        finally:
            sm.train_mode()
    _sync(x.device.type)


def _timed(fn, device: str = "cpu") -> float:
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def _summary(total: list[float], bounds: list[float]) -> dict:
    """Median/IQR of the step; the bound and its efficiency paired per iteration (same load on the machine)."""
    step_med, step_iqr = _median_iqr(total)
    return {"step_ms_median": step_med, "step_ms_iqr": step_iqr, "step_ms": [round(t, 3) for t in total],
            "bound_ms": statistics.median(bounds),
            "efficiency": statistics.median(b / t for b, t in zip(bounds, total))}


def measure_torch(cfg: dict) -> dict:
    """One configuration on the torch backend, in this (fresh) process.

    Memory phase: baseline, optimizer, max(warmup, 1) untimed steps, read the peak. Timing phase: `steps`
    iterations of (training step by phase, forward-only pass), interleaved so both see the same machine load."""
    import torch
    import torch.nn.functional as F
    from .fused import FusedOptimizer
    device = cfg.get("device", "cpu")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    model = _build(cfg).to(device)
    x, y = synthetic_batch(model, cfg["batch_size"], cfg["num_classes"], cfg.get("seed", 0))
    x, y = x.to(device), y.to(device)
    sm = sparsify(model, cfg["layers"])
    warm_runtime(sm, x)
    mem = PeakMemory(device)
    mem.start()
    extra = dict(momentum=0.0) if cfg["optimizer"] == "sgd" else {}
    opt = FusedOptimizer([p for _, p in sm.trainable], kind=cfg["optimizer"], lr=cfg["lr"], **extra)
    setup_mb = mem.peak_mb()

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        loss = F.cross_entropy(sm(x), y)
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        _sync(device)
        t3 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3

    def forward_only():
        with torch.no_grad():
            sm(x)

    for _ in range(max(cfg["warmup"], 1)):
        step()
    peak = mem.peak_mb()
    mem.stop()
    _timed(forward_only, device)                   # first no-grad pass at this batch size: untimed
    fwd, bwd, upd, total, nograd = [], [], [], [], []
    for _ in range(cfg["steps"]):
        f, b, u = step()
        fwd.append(f), bwd.append(b), upd.append(u), total.append(f + b + u)
        nograd.append(_timed(forward_only, device))
    return {**_summary(total, [n + b for n, b in zip(nograd, bwd)]),
            "forward_ms": statistics.median(fwd), "backward_ms": statistics.median(bwd),
            "update_ms": statistics.median(upd), "forward_only_ms": statistics.median(nograd),
            "peak_mem_mb": peak, "setup_mem_mb": setup_mb, "memory_method": mem.method,
            "saved_bytes_mb": saved_tensor_bytes(sm, x) / 2**20,
            "trainable_params": sm.trainable_count(), "total_params": sm.total_count(),
            "optimizer_backend": opt.backend, "threads": torch.get_num_threads()}


def measure_ort(cfg: dict) -> dict:
    """One configuration on the ORT backend from artifacts in cfg["artifacts"], in this (fresh) process.

    Memory phase: checkpoint loaded, baseline, Module + Optimizer (training session, gradients, optimizer state),
    max(warmup, 1) untimed steps, read the peak. Timing phase: `steps` iterations of (train step, eval-model
    forward, inference forward), interleaved."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.training.api import CheckpointState, Module, Optimizer
    device = cfg.get("device", "cpu")
    art = Path(cfg["artifacts"])
    model = _build(cfg)           # only for the synthetic batch's shape and, after measuring, the saved-bytes count
    xt, yt = synthetic_batch(model, cfg["batch_size"], cfg["num_classes"], cfg.get("seed", 0))
    x, y = xt.numpy(), yt.numpy().astype(np.int64)
    state = CheckpointState.load_checkpoint(str(art / "checkpoint"))
    mem = PeakMemory("cpu")      # host memory: ORT's CUDA allocations are not seen (reported as None)
    mem.start()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if cfg.get("threads"):
        so.intra_op_num_threads = int(cfg["threads"])
    module = Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"), device=device,
                    session_options=so)
    opt = Optimizer(str(art / "optimizer_model.onnx"), module)
    setup_mb = mem.peak_mb()
    module.train()

    def train_step() -> tuple[float, float]:
        t0 = time.perf_counter()
        module(x, y)
        t1 = time.perf_counter()
        opt.step()
        module.lazy_reset_grad()
        return (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3

    def eval_forward():
        module.eval()
        try:
            module(x, y)
        finally:
            module.train()

    for _ in range(max(cfg["warmup"], 1)):
        train_step()
    peak = mem.peak_mb()
    mem.stop()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(art / "inference.onnx"), so, providers=providers)
    feed = {sess.get_inputs()[0].name: x}
    inference = lambda: sess.run(None, feed)  # noqa: E731
    _timed(eval_forward), _timed(inference)        # first calls: untimed
    fb, upd, total, evals, inf = [], [], [], [], []
    for _ in range(cfg["steps"]):
        a, u = train_step()
        fb.append(a), upd.append(u), total.append(a + u)
        evals.append(_timed(eval_forward))
        inf.append(_timed(inference))
    backward = [max(a - e, 0.0) for a, e in zip(fb, evals)]    # train call - eval forward: ORT's backward, estimated
    manifest = json.loads((art / "manifest.json").read_text())
    sm = sparsify(model, cfg["layers"])
    return {**_summary(total, [i + b for i, b in zip(inf, backward)]),
            "forward_backward_ms": statistics.median(fb), "update_ms": statistics.median(upd),
            "eval_forward_ms": statistics.median(evals), "backward_ms": statistics.median(backward),
            "forward_only_ms": statistics.median(inf),
            "peak_mem_mb": None if device == "cuda" else peak, "setup_mem_mb": None if device == "cuda" else setup_mb,
            "memory_method": mem.method if device != "cuda" else "not measured (ORT CUDA allocations)",
            "saved_bytes_mb": saved_tensor_bytes(sm, xt) / 2**20,
            "trainable_params": int(manifest["parameters"]["trainable"]), "total_params": int(manifest["parameters"]["total"]),
            "optimizer_backend": f"ort-{manifest['optimizer']['kind']}", "threads": so.intra_op_num_threads or None}


def measure(cfg: dict) -> dict:
    """Run one configuration here; errors become {"error": ...} (never an exception)."""
    import warnings
    warnings.simplefilter("ignore")
    try:
        if cfg["backend"] == "torch":
            return measure_torch(cfg)
        if cfg["backend"] == "ort":
            return measure_ort(cfg)
        return {"error": f"unknown backend {cfg['backend']!r}"}
    except MemoryError:
        return {"error": "out of memory"}
    except Exception as e:  # a failed configuration is reported beside the others
        line = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        return {"error": f"{type(e).__name__}: {line[:300]}"}


def _read_all(fd: int, deadline: float) -> bytes | None:
    """Everything written to `fd` until EOF, or None when `deadline` (time.monotonic) passes first."""
    import select
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _fork_one(cfg: dict, timeout: float) -> dict:
    """Fork, measure in the child, return its result (the child's stdout goes to stderr)."""
    import signal
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # child
        code = 0
        try:
            os.close(r)
            os.dup2(2, 1)
            data = json.dumps(measure(cfg)).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = _read_all(r, time.monotonic() + timeout)
    finally:
        os.close(r)
    if data is None:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if data is None:
        return {"error": f"timed out after {timeout:.0f} s"}
    if data:
        return json.loads(data)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"error": f"process killed by signal {sig}" + (" (out of memory?)" if sig == signal.SIGKILL else "")}
    return {"error": f"process exited {os.WEXITSTATUS(status)} without a result"}


def serve() -> None:
    """The fork server: import the libraries once, then per JSON line on stdin fork a fresh child that measures
    one configuration; answer with one tagged JSON line on stdout. No tensor is ever allocated here."""
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)                                   # anything a library prints goes to stderr, not the protocol
    print(RESULT_TAG + json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            result = _fork_one(request["cfg"], float(request.get("timeout", 900)))
        except Exception as e:
            result = {"error": f"fork server: {type(e).__name__}: {e}"}
        print(RESULT_TAG + json.dumps(result), file=out, flush=True)


class ForkServer:
    """A `python -m zest_edge.profile --serve` process; `measure(cfg)` runs one configuration in a fresh fork."""

    def __init__(self):
        import subprocess
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "zest_edge.profile", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        if self._answer() is None:
            raise ZestError(f"the profile fork server did not start: {self._log_tail()}")

    def _answer(self) -> dict | None:
        for line in self.proc.stdout:
            if line.startswith(RESULT_TAG):
                return json.loads(line[len(RESULT_TAG):])
        return None

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = [ln for ln in self.log.read().splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "no output"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def measure(self, cfg: dict, timeout: float = 900) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"cfg": cfg, "timeout": timeout}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"error": f"the profile fork server died: {self._log_tail()}"}
        answer = self._answer()
        if answer is None:
            return {"error": f"the profile fork server died: {self._log_tail()}"}
        return answer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


_SERVER: ForkServer | None = None


def _server() -> ForkServer:
    global _SERVER
    if _SERVER is None or not _SERVER.alive():
        import atexit
        if _SERVER is None:
            atexit.register(lambda: _SERVER is not None and _SERVER.close())
        _SERVER = ForkServer()
    return _SERVER


def run_isolated(cfg: dict, *, isolation: str = "fork", timeout: float = 900) -> dict:
    """`measure(cfg)` in a fresh process (a crash or timeout is an {"error": ...} record).

    isolation="fork": forked from a long-lived server that has only imported the libraries (fast: no import per
    configuration); "subprocess": a fresh `python -m zest_edge.profile --one '<json>'` per configuration."""
    if isolation == "subprocess":
        import subprocess
        try:
            done = subprocess.run([sys.executable, "-m", "zest_edge.profile", "--one", json.dumps(cfg)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        for line in reversed(done.stdout.splitlines()):
            if line.startswith(RESULT_TAG):
                return json.loads(line[len(RESULT_TAG):])
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"process exited {done.returncode}: {tail[:300]}"}
    if isolation != "fork":
        raise ZestError(f"isolation must be 'fork' or 'subprocess', not {isolation!r}")
    return _server().measure(cfg, timeout)


# ------------------------------------------------------------------------------------------------ machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ort_cuda_unavailable() -> str | None:
    """Why ORT cannot train on CUDA here; None when its CUDA provider is built in."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime is not importable ({e})"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" in providers:
        return None
    return (f"onnxruntime {ort.__version__} here is a CPU build (providers: {', '.join(providers)}); "
            "install the onnxruntime-training CUDA build")


def machine_info(device: str) -> dict:
    import torch
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": device}
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
        info["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    if device == "cuda":
        try:
            info["gpu"] = torch.cuda.get_device_name(0)
        except Exception as e:  # no driver / no device: say so rather than fail the report
            info["gpu"] = f"unknown ({type(e).__name__})"
        info["cuda"] = torch.version.cuda
    from .fused import backend_info
    info["fused_backend"] = backend_info(device)["backend"]
    return info


# ------------------------------------------------------------------------------------------------ selection

def ranked_layers(model, *, layers=None, ranking=None, data=None, model_name=None, task_args=None,
                  top_k: int = 1, out: Path | None = None) -> tuple[list[str], dict]:
    """The layer order that zest@k takes its first k from: an explicit list, a ranking file, or rank_task on data."""
    given = [n for n, v in (("--layers", layers), ("--ranking", ranking), ("--data", data)) if v]
    if len(given) > 1:
        raise ZestError(f"choose one of --layers, --ranking, --data (got {', '.join(given)})")
    if layers:
        from .layers import layer_map, resolve_layers
        names = [n.strip() for n in layers.split(",") if n.strip()] if isinstance(layers, str) else list(layers)
        resolve_layers(layer_map(model), names)        # unknown names are an error listing close matches
        if len(set(names)) != len(names):
            raise ZestError("--layers names a layer twice")
        return names, {"source": "layers"}
    if ranking:
        from .ranking import load_ranking
        record = load_ranking(ranking, model_name)
        return [l["name"] for l in sorted(record["layers"], key=lambda l: l["rank"])], {"source": "ranking",
                                                                                          "ranking": str(ranking)}
    if data:
        from .ranking import rank_task
        from .task import load_task
        task = load_task(model_name, data, **(task_args or {}))
        record = rank_task(task, top_k=top_k)
        if out is not None:
            from .io import write_json
            write_json(Path(out) / "ranking.json", record)
        return [l["name"] for l in sorted(record["layers"], key=lambda l: l["rank"])], {"source": "rank_task",
                                                                                          "data": data}
    return [], {"source": None}


def plan_configs(all_names: list[str], order: list[str], ks: list[int], kinds, label: str) -> list[dict]:
    """[{name, kind, k, layers}] in table order: full, zest@k..., last@k..., head-only."""
    configs = []
    if "full" in kinds:
        configs.append({"name": "full", "kind": "full", "k": None, "layers": None})
    for kind in ("zest", "last"):
        if kind not in kinds:
            continue
        for k in ks:
            if kind == "zest":
                if k > len(order):
                    raise ZestError(f"--top-k {k} needs {k} ranked layers, but the selection has {len(order)}")
                names = order[:k]
            else:
                if k > len(all_names):
                    raise ZestError(f"last@{k}: the model has only {len(all_names)} layers")
                names = all_names[-k:]
            configs.append({"name": f"{label if kind == 'zest' else 'last'}@{k}", "kind": kind, "k": k,
                            "layers": [n for n in all_names if n in set(names)]})
    if "head" in kinds:
        configs.append({"name": "head-only", "kind": "head", "k": 0, "layers": []})
    return configs


# ------------------------------------------------------------------------------------------------ profile

def profile(model_name: str, *, out, batch_size: int = 32, resolution: int | None = None, top_k=(5,),
            layers=None, ranking=None, data=None, task_args: dict | None = None, backends=("torch",),
            device: str = "cpu", steps: int = 10, warmup: int = 3, optimizer: str = "adamw", lr: float = 1e-3,
            num_classes: int = 10, weights: str | None = None, threads: int | None = None, configs=CONFIG_KINDS,
            label: str | None = None, isolation: str = "fork", timeout: float = 900,
            progress: bool = True) -> dict:
    """Measure one training step per (backend, configuration) and write profile.json/.md/.png into `out`."""
    import torch
    from tqdm import tqdm
    from .io import write_json, write_text
    from .layers import layer_map
    from .models import build_model
    ks = sorted({int(k) for k in top_k})
    backends = list(dict.fromkeys(backends))
    kinds = list(dict.fromkeys(configs))
    for b in backends:
        if b not in BACKENDS:
            raise ZestError(f"unknown backend {b!r}; choose from: {', '.join(BACKENDS)}")
    for c in kinds:
        if c not in CONFIG_KINDS:
            raise ZestError(f"unknown configuration {c!r}; choose from: {', '.join(CONFIG_KINDS)}")
    if optimizer not in OPTIMIZERS:
        raise ZestError(f"unknown optimizer {optimizer!r}; choose from: {', '.join(OPTIMIZERS)}")
    if device not in ("cpu", "cuda"):
        raise ZestError(f"--device must be cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ZestError("--device cuda: torch sees no CUDA device here")
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ZestError("--steps must be >= 1, --warmup >= 0 and --batch-size >= 1")
    if not ks or ks[0] < 1:
        raise ZestError("--top-k needs positive integers, e.g. 3,5,10")
    if resolution is not None and not 16 <= resolution <= 1024:
        raise ZestError(f"--resolution must be between 16 and 1024, got {resolution}")
    out = Path(out)
    model = with_resolution(build_model(model_name, num_classes=num_classes, weights=weights), resolution)
    all_names = [l.name for l in layer_map(model)]
    order, source = ranked_layers(model, layers=layers, ranking=ranking, data=data, model_name=model_name,
                                  task_args=task_args, top_k=max(ks), out=out)
    if "zest" in kinds and not order:
        raise ZestError("zest@k needs a layer order: give --layers, --ranking or --data (or leave zest out of --configs)")
    label = label or ("zest" if source["source"] in ("ranking", "rank_task") else "sel")
    plan = plan_configs(all_names, order, ks, kinds, label)
    out.mkdir(parents=True, exist_ok=True)
    base = {"model": model_name, "num_classes": num_classes, "weights": weights, "batch_size": batch_size,
            "resolution": resolution, "device": device, "steps": steps, "warmup": warmup, "optimizer": optimizer,
            "lr": lr, "threads": threads, "seed": 0}
    ort_gap = ort_cuda_unavailable() if "ort" in backends and device == "cuda" else None
    if ort_gap:
        print(f"ort: CUDA provider unavailable: {ort_gap}")
    records = []
    jobs = [(c, b) for c in plan for b in backends]
    bar = tqdm(jobs, desc="profile", unit="config", disable=not progress)
    for config, backend in bar:
        bar.set_postfix_str(f"{backend} {config['name']}")
        cfg = {**base, "backend": backend, "name": config["name"], "layers": config["layers"]}
        if backend == "ort" and ort_gap:
            result = {"error": f"ort: CUDA provider unavailable: {ort_gap}"}
        elif backend == "ort":
            with tempfile.TemporaryDirectory(prefix="zest-profile-") as tmp:
                result = _export_for_ort(model, config["layers"], Path(tmp) / "artifacts", batch_size, optimizer, lr)
                if result is None:
                    result = run_isolated({**cfg, "artifacts": str(Path(tmp) / "artifacts")}, isolation=isolation,
                                          timeout=timeout)
        else:
            result = run_isolated(cfg, isolation=isolation, timeout=timeout)
        records.append({"backend": backend, "config": config["name"], "kind": config["kind"], "k": config["k"],
                        "layers": config["layers"], **result})
    bar.close()
    add_ratios(records)
    record = {"format": FORMAT, "version": VERSION, "model": model_name, "batch_size": batch_size,
              "resolution": resolution or model.zest_spec.preprocess.resolution, "num_classes": num_classes,
              "weights": model.zest_spec.weights, "optimizer": optimizer, "lr": lr, "steps": steps, "warmup": warmup,
              "device": device, "backends": backends, "selection": {**source, "order": order[:max(ks)]},
              "isolation": isolation, "machine": machine_info(device), "records": records}
    methods = {r["memory_method"] for r in records if r.get("memory_method")}
    record["machine"]["memory_method"] = "; ".join(sorted(methods)) or None
    record["machine"]["threads"] = next((r["threads"] for r in records if r.get("threads")), None)
    write_json(out / "profile.json", record)
    table = profile_table(record)
    write_text(out / "profile.md", table)
    plot_profile(record, out / "profile.png")
    return record


def _export_for_ort(model, layers, path: Path, batch_size: int, optimizer: str, lr: float) -> dict | None:
    """Export ORT training artifacts into `path`; None on success, else an {"error": ...} record."""
    import io as _io
    try:
        from .export.onnx_training import export_artifacts
    except ImportError as e:
        return {"error": f"ort: export_artifacts unavailable ({e})"}
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            export_artifacts(model, layers, path, batch_size=batch_size, optimizer=optimizer, lr=lr)
    except ZestError as e:
        return {"error": f"ort export: {e}"}
    except Exception as e:
        return {"error": f"ort export: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]}
    return None


def add_ratios(records: list[dict]) -> None:
    """speedup_vs_full and mem_ratio_vs_full against the same backend's full fine-tuning (None when unmeasured)."""
    full = {r["backend"]: r for r in records if r["kind"] == "full" and "error" not in r}
    for r in records:
        f = full.get(r["backend"])
        ok = f is not None and "error" not in r
        r["speedup_vs_full"] = f["step_ms_median"] / r["step_ms_median"] if ok else None
        r["mem_ratio_vs_full"] = (r["peak_mem_mb"] / f["peak_mem_mb"]
                                  if ok and r.get("peak_mem_mb") is not None and f.get("peak_mem_mb") else None)


# ------------------------------------------------------------------------------------------------ report

def _f(v, fmt="{:.1f}", none="n/a"):
    return none if v is None else fmt.format(v)


def profile_table(record: dict) -> str:
    """Markdown: one table per backend, latency and memory per configuration with ratios to full fine-tuning."""
    m = record["machine"]
    lines = [f"# Training-step profile: {record['model']}", "",
             f"batch {record['batch_size']}, resolution {record['resolution']}, optimizer {record['optimizer']} "
             f"(lr {record['lr']}), {record['steps']} timed steps after {record['warmup']} warm-up, "
             f"device {record['device']}", "",
             f"machine: {m['cpu']} ({m['cpu_count']} cores, {m.get('threads') or m['torch_threads']} threads), "
             f"torch {m['torch']}, onnxruntime {m.get('onnxruntime')}; memory: {m.get('memory_method')}", ""]
    for backend in record["backends"]:
        rows = [r for r in record["records"] if r["backend"] == backend]
        lines += [f"## {backend}", "",
                  "| configuration | layers | trainable params | step ms (median) | IQR | speedup vs full | "
                  "peak mem MB | mem vs full | saved MB | bound ms | efficiency |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            n_layers = "all" if r["layers"] is None else str(len(r["layers"]))
            if "error" in r:
                lines.append(f"| {r['config']} | {n_layers} | | | | | | | | | error: {r['error']} |")
                continue
            lines.append(
                f"| {r['config']} | {n_layers} | {r['trainable_params']:,} | {r['step_ms_median']:.1f} | "
                f"{r['step_ms_iqr']:.1f} | {_f(r['speedup_vs_full'], '{:.2f}x')} | {_f(r['peak_mem_mb'], '{:.0f}')} | "
                f"{_f(r['mem_ratio_vs_full'], '{:.2f}')} | {r['saved_bytes_mb']:.0f} | {r['bound_ms']:.1f} | "
                f"{r['efficiency']:.2f} |")
        lines.append("")
    source = record.get("selection", {}).get("source")
    lines.append(f"selections ({ {'layers': 'given with --layers', 'ranking': 'from a ranking file', 'rank_task': 'ranked with rank_task'}.get(source, 'none')}):")
    for config in dict.fromkeys((r["config"], tuple(r["layers"])) for r in record["records"] if r["layers"]):
        lines.append(f"- {config[0]}: {', '.join(config[1])}")
    lines.append("")
    lines += ["peak mem: training-step peak above the process after loading model + batch (optimizer state, grads, "
              "activations; ORT: also its training session). saved MB: bytes autograd saves for backward (torch "
              "graph, analytic). bound: forward-only + suffix backward; efficiency = bound / step.", ""]
    return "\n".join(lines)


def plot_profile(record: dict, path) -> None:
    from . import plots
    configs = list(dict.fromkeys(r["config"] for r in record["records"]))
    fig, (lat, mem) = plots.figure(1, 2, width=max(5.0, 0.9 * len(configs) + 2), height=4.0)
    series_lat, series_mem = {}, {}
    for backend in record["backends"]:
        by = {r["config"]: r for r in record["records"] if r["backend"] == backend}
        series_lat[backend] = [by.get(c, {}).get("step_ms_median") for c in configs]
        series_mem[backend] = [by.get(c, {}).get("peak_mem_mb") for c in configs]
    plots.grouped_bars(lat, configs, series_lat, ylabel="ms per training step (median)", title="latency")
    plots.grouped_bars(mem, configs, series_mem, ylabel="peak memory above model (MB)", title="memory")
    fig.suptitle(f"{record['model']}, batch {record['batch_size']}, {record['resolution']} px, {record['device']}")
    plots.save(fig, path)


def main(argv=None) -> None:
    """`python -m zest_edge.profile --one '<json config>'`: measure one configuration, print it tagged."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m zest_edge.profile")
    parser.add_argument("--one", help="JSON configuration of one measurement")
    parser.add_argument("--serve", action="store_true", help="run the fork server (JSON lines on stdin)")
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return
    if not args.one:
        parser.error("give --one JSON or --serve")
    result = measure(json.loads(args.one))
    print(RESULT_TAG + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
