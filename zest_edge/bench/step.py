"""One configuration's training step, built in a fresh worker process (zest_edge.bench.isolation), then stepped on
command so that configurations can be timed interleaved.

Construction is the memory phase: load the model (torch) or the checkpoint (ORT), take the baseline, build the
optimizer / training session, run max(warmup, 1) untimed steps, read the peak (`memory`). Each `step()` then runs one
timed training step on the fixed synthetic batch, followed by the forward-only passes its lower bound needs, so the
step and its bound see the same load on a shared machine.

- `TorchStep`: the sparse engine (`zest_edge.sparse`) with `FusedOptimizer`; the step is timed by phase (forward,
  backward, update), with a device synchronisation at each boundary on CUDA. Bound: forward-only (no autograd) of the
  whole model + the measured backward, which covers only the suffix after the earliest trained layer.
- `OrtStep`, mode "split": prefix.onnx in an InferenceSession, then the suffix's training Module + Optimizer — what a
  device does in its first epoch. Mode "cached": the suffix alone on the prefix's output computed once before the
  baseline — what a device does once the prefix cache is full. ORT cannot time backward apart from forward, so its
  backward is estimated as (training call − eval-model call); the forward-only parts are InferenceSessions on
  prefix.onnx and on the suffix's inference graph (`Module.export_model_for_inferencing`). Bound = those forward-only times + the estimated backward.
- `ExecutorchStep`, modes as ORT's: prefix.pte, then training.pte's forward_backward and the SGD update
  (`zest_edge.executorch_runner`). Its backward cannot be timed apart and it has no eval program to estimate it
  from, so its bound is the forward-only time alone (inference.pte; minus prefix.pte when cached): a weaker bound.
"""
import json
import time
from pathlib import Path

from ..sparse import sparsify
from .memory import PeakMemory


def build_model(cfg: dict):
    import torch
    from ..models import build_model as build, with_preprocess
    torch.manual_seed(cfg.get("seed", 0))
    model = build(cfg["model"], num_classes=cfg["num_classes"], weights=cfg.get("weights"))
    return with_preprocess(model, resolution=cfg.get("resolution"), max_length=cfg.get("max_length"))


def synthetic_batch(model, batch_size: int, num_classes: int, seed: int = 0):
    """The fixed batch: random images (or token ids) from the model's preprocessing and labels, seeded."""
    import torch
    from ..layers import dummy_input
    x = dummy_input(model, batch_size, seed=seed)
    y = torch.randint(0, num_classes, (batch_size,), generator=torch.Generator().manual_seed(seed + 1))
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
        loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
    del loss, logits
    return sum(seen.values())


def sync(device: str) -> None:
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def timed(fn, device: str = "cpu") -> float:
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


class TorchStep:
    def __init__(self, cfg: dict):
        import torch
        from ..fused import FusedOptimizer
        self.device = device = cfg.get("device", "cpu")
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg["threads"]))
        model = build_model(cfg).to(device)
        x, y = synthetic_batch(model, cfg["batch_size"], cfg["num_classes"], cfg.get("seed", 0))
        self.x, self.y = x.to(device), y.to(device)
        if cfg.get("lora"):                       # LoRA (PEFT) on the layers (None: all) + the head
            from ..lora import LoraSpec, lora_sparsify
            self.sm = lora_sparsify(model, cfg["layers"], LoraSpec(r=int(cfg["lora"])))
        else:
            self.sm = sparsify(model, cfg["layers"])
        with torch.no_grad():                      # one-time runtime costs (thread pools, kernels) before the baseline
            self.sm.model.eval()
            self.sm(self.x[:1])
            self.sm.train_mode()
        sync(device)
        mem = PeakMemory(device)
        mem.start()
        extra = dict(momentum=0.0) if cfg["optimizer"] == "sgd" else {}
        self.opt = FusedOptimizer([p for _, p in self.sm.trainable], kind=cfg["optimizer"], lr=cfg["lr"], **extra)
        setup_mb = mem.peak_mb()
        for _ in range(max(cfg["warmup"], 1)):
            self.train_step()
        self.memory = {"peak_mem_mb": mem.peak_mb(), "setup_mem_mb": setup_mb, "memory_method": mem.method}
        mem.stop()
        timed(self.forward_only, device)           # first no-grad pass at this batch size: untimed
        self.info = {"saved_bytes_mb": saved_tensor_bytes(self.sm, self.x) / 2**20,
                     "trainable_params": self.sm.trainable_count(), "total_params": self.sm.total_count(),
                     "optimizer_backend": self.opt.backend, "threads": torch.get_num_threads()}

    def train_step(self) -> tuple[float, float, float]:
        import torch.nn.functional as F
        t0 = time.perf_counter()
        loss = F.cross_entropy(self.sm(self.x), self.y)
        sync(self.device)
        t1 = time.perf_counter()
        loss.backward()
        sync(self.device)
        t2 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad()
        sync(self.device)
        t3 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3

    def forward_only(self):
        import torch
        with torch.no_grad():
            self.sm(self.x)

    def step(self) -> dict:
        f, b, u = self.train_step()
        nograd = timed(self.forward_only, self.device)
        return {"step_ms": f + b + u, "bound_ms": nograd + b, "forward_ms": f, "backward_ms": b, "update_ms": u,
                "forward_only_ms": nograd}


class OrtStep:
    def __init__(self, cfg: dict):
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module, Optimizer
        art = Path(cfg["artifacts"])
        manifest = json.loads((art / "manifest.json").read_text())
        self.mode = cfg["mode"]
        model = build_model(cfg)                  # for the synthetic batch and the analytic saved-bytes count
        xt, yt = synthetic_batch(model, cfg["batch_size"], cfg["num_classes"], cfg.get("seed", 0))
        self.x, self.y = xt.numpy(), yt.numpy()
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if cfg.get("threads"):
            so.intra_op_num_threads = int(cfg["threads"])
        session = lambda name: ort.InferenceSession(str(art / name), so, providers=["CPUExecutionProvider"])  # noqa: E731
        self.prefix = session(manifest["prefix"]["file"]) if manifest.get("prefix") else None
        self.prefix_calls = 0
        self.boundary = self.run_prefix() if self.prefix is not None else [self.x]
        if self.mode == "cached":
            self.prefix = None                     # computed once above; the step never runs it
        state = CheckpointState.load_checkpoint(str(art / "checkpoint"))
        mem = PeakMemory("cpu")
        mem.start()
        self.module = Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"), session_options=so)
        self.opt = Optimizer(str(art / "optimizer_model.onnx"), self.module)
        setup_mb = mem.peak_mb()
        self.module.train()
        for _ in range(max(cfg["warmup"], 1)):
            self.train_step()
        self.memory = {"peak_mem_mb": mem.peak_mb(), "setup_mem_mb": setup_mb, "memory_method": mem.method}
        mem.stop()
        self.suffix_inference = self.inference_session(so)
        self.feed = {i.name: b for i, b in zip(self.suffix_inference.get_inputs(), self.boundary)}
        timed(self.eval_forward), timed(self.inference_forward)       # first calls: untimed
        sm = sparsify(model, cfg["layers"])
        self.info = {"saved_bytes_mb": saved_tensor_bytes(sm, xt) / 2**20,
                     "trainable_params": int(manifest["trainable_params"]), "total_params": int(manifest["total_params"]),
                     "optimizer_backend": f"ort-{manifest['optimizer']['kind']}", "threads": so.intra_op_num_threads or None,
                     "prefix_stages": manifest["prefix"]["stages"] if manifest.get("prefix") else 0}

    def inference_session(self, so):
        """An InferenceSession of the suffix as the training module holds it (its eval graph, parameters inlined)."""
        import tempfile
        import onnxruntime as ort
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "suffix_inference.onnx"
            self.module.export_model_for_inferencing(str(path), ["logits"])
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run_prefix(self) -> list:
        self.prefix_calls += 1
        return self.prefix.run(None, {self.prefix.get_inputs()[0].name: self.x})

    def train_step(self) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        inputs = self.run_prefix() if self.prefix is not None else self.boundary
        t1 = time.perf_counter()
        self.module(*inputs, self.y)
        t2 = time.perf_counter()
        self.opt.step()
        self.module.lazy_reset_grad()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3

    def eval_forward(self):
        self.module.eval()
        try:
            self.module(*self.boundary, self.y)
        finally:
            self.module.train()

    def inference_forward(self):
        self.suffix_inference.run(None, self.feed)

    def step(self) -> dict:
        calls = self.prefix_calls
        p, fb, u = self.train_step()
        calls = self.prefix_calls - calls
        evals, inference = timed(self.eval_forward), timed(self.inference_forward)
        backward = max(fb - evals, 0.0)            # training call - eval call: ORT's backward, estimated
        return {"step_ms": p + fb + u, "bound_ms": p + inference + backward, "prefix_ms": p, "forward_backward_ms": fb,
                "update_ms": u, "eval_forward_ms": evals, "backward_ms": backward, "forward_only_ms": p + inference,
                "prefix_calls": calls}


class ExecutorchStep:
    def __init__(self, cfg: dict):
        from ..executorch_runner import Trainer, load_program, program_runner, runtime
        art = Path(cfg["artifacts"])
        manifest = json.loads((art / "manifest.json").read_text())
        self.mode, self.lr, batch = cfg["mode"], cfg["lr"], manifest["programs"]["batch"]
        if cfg.get("threads"):
            runtime()
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
            _unsafe_reset_threadpool(int(cfg["threads"]))
        model = build_model(cfg)
        xt, yt = synthetic_batch(model, cfg["batch_size"], cfg["num_classes"], cfg.get("seed", 0))
        self.x, self.y, self.xt = xt.numpy(), yt.numpy(), xt
        prefix = manifest.get("prefix")
        self.prefix_program = program_runner(art / prefix["file"], batch) if prefix else None
        self.boundary = self.prefix_program(self.x) if prefix else [self.x]
        self.prefix = self.prefix_program if self.mode == "split" else None
        mem = PeakMemory("cpu")
        mem.start()
        self.trainer = Trainer(art / "training.pte", manifest)
        setup_mb = mem.peak_mb()
        for _ in range(max(cfg["warmup"], 1)):
            self.train_step()
        self.memory = {"peak_mem_mb": mem.peak_mb(), "setup_mem_mb": setup_mb, "memory_method": mem.method}
        mem.stop()
        self.inference = load_program(art / "inference.pte")
        params = self.trainer.params()
        self.params = tuple(params["net." + n] for n in manifest["programs"]["inference"]["inputs"][1:])
        timed(self.inference_forward), timed(self.prefix_forward)       # first calls: untimed
        sm = sparsify(model, cfg["layers"])
        self.info = {"saved_bytes_mb": saved_tensor_bytes(sm, xt) / 2**20,
                     "trainable_params": int(manifest["trainable_params"]), "total_params": int(manifest["total_params"]),
                     "optimizer_backend": "executorch-program + zest-edge sgd", "threads": cfg.get("threads"),
                     "prefix_stages": prefix["stages"] if prefix else 0}

    def train_step(self) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        inputs = self.prefix(self.x) if self.prefix is not None else self.boundary
        t1 = time.perf_counter()
        self.trainer.forward_backward(inputs, self.y)
        t2 = time.perf_counter()
        self.trainer.step(self.lr)
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3

    def inference_forward(self):
        self.inference.forward((self.xt, *self.params))

    def prefix_forward(self):
        if self.prefix_program is not None:
            self.prefix_program(self.x)

    def step(self) -> dict:
        p, fb, u = self.train_step()
        whole, prefix = timed(self.inference_forward), timed(self.prefix_forward)
        forward_only = max(whole - (prefix if self.mode == "cached" else 0.0), 0.0)     # timed apart: noisy
        return {"step_ms": p + fb + u, "bound_ms": forward_only, "prefix_ms": p, "forward_backward_ms": fb,
                "update_ms": u, "forward_only_ms": forward_only}


STEPS = {"torch": TorchStep, "ort": OrtStep, "executorch": ExecutorchStep}
