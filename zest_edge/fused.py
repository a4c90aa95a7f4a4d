"""FusedOptimizer: SGD / AdamW over one flat buffer per (device, dtype), stepped by the C++ extension zest_edge._fused.

Each param's `.data` and `.grad` become views of the flat buffers, so autograd accumulates straight into them and a
step is one kernel call per param group. Without the extension the same maths runs as torch ops on the flat buffers
(backend "torch"), rounding exactly like the kernels; `backend_info()` reports which backend runs and why.
"""
from __future__ import annotations

import math
import warnings

import torch

from zest_edge.errors import ZestError

try:
    from zest_edge import _fused
    _EXTENSION_ERROR = None
except ImportError as err:
    _fused, _EXTENSION_ERROR = None, f"zest_edge._fused is not importable ({err})"

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` with ninja on PATH (or `make setup`)"


def torch_sgd_step(param, grad, momentum_buf, lr, momentum, dampening, weight_decay, nesterov, first_step):
    """zest_edge._fused.sgd_step as torch ops, rounding exactly like the kernel (torch.optim.SGD semantics)."""
    direction = grad + param * weight_decay if weight_decay != 0 else grad
    if momentum != 0:
        if first_step:
            momentum_buf.copy_(direction)
        else:
            momentum_buf.mul_(momentum).add_(direction * (1.0 - dampening))
        direction = direction + momentum_buf * momentum if nesterov else momentum_buf
    param.sub_(direction * lr)


def _rounded_sqrt(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded sqrt, as the kernels compute it: torch's CPU float sqrt (MKL) can be 1 ulp off."""
    return t.double().sqrt_().to(t.dtype) if t.device.type == "cpu" else t.sqrt()


def torch_adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """zest_edge._fused.adamw_step as torch ops, rounding exactly like the kernel (torch.optim.AdamW semantics)."""
    step_size = lr / (1.0 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
    if weight_decay != 0:
        param.mul_(1.0 - lr * weight_decay)
    exp_avg.mul_(beta1).add_(grad * (1.0 - beta1))
    exp_avg_sq.mul_(beta2).add_(grad * (1.0 - beta2) * grad)
    denom = _rounded_sqrt(exp_avg_sq).div_(bias_correction2_sqrt).add_(eps)
    param.sub_(exp_avg * step_size / denom)


def _extension_gap(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the extension cannot step buffers of this device and dtype; None when it can."""
    if _fused is None:
        return f"{_EXTENSION_ERROR}; {BUILD_HINT}"
    if dtype != torch.float32:
        return f"the extension steps float32 buffers only, not {dtype}"
    if device.type == "cuda" and not _fused.cuda_kernels:
        return "zest_edge._fused was built without CUDA kernels; rebuild with ZEST_BUILD_CUDA=1 and a CUDA toolkit"
    if device.type not in ("cpu", "cuda"):
        return f"the extension has no kernels for {device.type}"
    return None


def _info(backend: str, reason: str | None) -> dict:
    return {"backend": backend, "extension_built": _fused is not None,
            "cuda_kernels": bool(_fused is not None and _fused.cuda_kernels), "reason": reason}


def backend_info(device: str | torch.device = "cpu") -> dict:
    """The backend that backend="auto" picks for float32 params on `device`, and why not the extension if not."""
    device = torch.device(device)
    reason = _extension_gap(device, torch.float32)
    return _info("torch" if reason else f"cpp-{device.type}", reason)


class FlatBuffer:
    """The params of one (device, dtype), packed group by group into `param`, with `grad` and `state` alongside."""

    def __init__(self, members: list[tuple[int, torch.nn.Parameter]], state_names: tuple[str, ...],
                 requested_backend: str):
        first = members[0][1]
        self.device, self.dtype = first.device, first.dtype
        self.key = f"{self.device}.{str(self.dtype).removeprefix('torch.')}"
        if requested_backend == "torch":
            self.reason = "backend='torch' requested"
        else:
            self.reason = _extension_gap(self.device, self.dtype)
        if requested_backend == "ext" and self.reason:
            raise ZestError(f"backend='ext' cannot step {self.dtype} params on {self.device}: {self.reason}")
        self.backend = "torch" if self.reason else f"cpp-{self.device.type}"
        self.sgd_step = torch_sgd_step if self.reason else _fused.sgd_step
        self.adamw_step = torch_adamw_step if self.reason else _fused.adamw_step
        self.param = torch.empty(sum(p.numel() for _, p in members), device=self.device, dtype=self.dtype)
        self.grad = torch.zeros_like(self.param)
        self.state = {name: torch.zeros_like(self.param) for name in state_names}
        self.views: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.segments: list[tuple[int, int, int]] = []  # (param group index, start, end), one per group
        offset = 0
        for group_index, p in members:
            end = offset + p.numel()
            self.param[offset:end].copy_(p.detach().reshape(-1))
            grad_view = self.grad[offset:end].view(p.shape)
            if p.grad is not None:
                grad_view.copy_(p.grad)
            p.data, p.grad = self.param[offset:end].view(p.shape), grad_view
            self.views.append((p, grad_view))
            if self.segments and self.segments[-1][0] == group_index:
                self.segments[-1] = (group_index, self.segments[-1][1], end)
            else:
                self.segments.append((group_index, offset, end))
            offset = end

    def sync_grads(self) -> None:
        """Copy grads that were replaced (e.g. set to None by Module.zero_grad) into the flat buffer, re-view them."""
        for p, grad_view in self.views:
            if p.grad is not grad_view:
                if p.grad is None:
                    grad_view.zero_()
                else:
                    grad_view.copy_(p.grad)
                p.grad = grad_view

    def zero_grads(self) -> None:
        """Zero the flat grad buffer in place, re-viewing grads that were replaced."""
        for p, grad_view in self.views:
            if p.grad is not grad_view:
                p.grad = grad_view
        self.grad.zero_()


class FusedOptimizer(torch.optim.Optimizer):
    """torch.optim.SGD / AdamW over flat buffers; accepts param groups, works with LR schedulers.

    Every param is stepped every step, a missing grad counting as zero (like torch.optim after
    zero_grad(set_to_none=False)). Params must stay on their device after construction.
    """

    def __init__(self, params, *, kind: str = "adamw", lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, backend: str = "auto"):
        if kind not in ("adamw", "sgd"):
            raise ZestError(f"FusedOptimizer kind must be 'adamw' or 'sgd', not {kind!r}")
        if backend not in ("auto", "ext", "torch"):
            raise ZestError(f"FusedOptimizer backend must be 'auto', 'ext' or 'torch', not {backend!r}")
        if kind == "adamw":
            defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        else:
            defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.kind, self.step_count = kind, 0
        members: dict[tuple[torch.device, torch.dtype], list] = {}
        for group_index, group in enumerate(self.param_groups):
            if kind == "sgd" and group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
                raise ZestError("Nesterov SGD needs momentum > 0 and dampening = 0")
            for p in group["params"]:
                if not p.is_floating_point():
                    raise ZestError(f"FusedOptimizer steps floating-point params only, got {p.dtype}")
                members.setdefault((p.device, p.dtype), []).append((group_index, p))
        if kind == "adamw":
            state_names = ("exp_avg", "exp_avg_sq")
        else:
            state_names = ("momentum_buffer",) if any(g["momentum"] for g in self.param_groups) else ()
        self.flat_buffers = [FlatBuffer(m, state_names, backend) for m in members.values()]
        self.backend = "+".join(sorted({b.backend for b in self.flat_buffers}))
        if backend == "auto" and any(b.reason for b in self.flat_buffers):
            warnings.warn(f"FusedOptimizer falls back to torch ops: {self.backend_info()['reason']}", RuntimeWarning)

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "flat_buffers"):
            raise ZestError("FusedOptimizer packs its params at construction; build a new one to add a param group")
        super().add_param_group(param_group)

    def backend_info(self) -> dict:
        """{"backend", "extension_built", "cuda_kernels", "reason"} for this optimizer's buffers."""
        reasons = sorted({b.reason for b in self.flat_buffers if b.reason})
        return _info(self.backend, "; ".join(reasons) or None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat grad buffers in place; grads stay views of them (`set_to_none` is ignored)."""
        for buffer in self.flat_buffers:
            buffer.zero_grads()

    @torch.no_grad()
    def step(self, closure=None):
        """One SGD / AdamW step of every param, one fused call per param group and flat buffer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.step_count += 1
        for buffer in self.flat_buffers:
            buffer.sync_grads()
            for group_index, start, end in buffer.segments:
                group = self.param_groups[group_index]
                param, grad = buffer.param[start:end], buffer.grad[start:end]
                if self.kind == "adamw":
                    buffer.adamw_step(param, grad, buffer.state["exp_avg"][start:end],
                                      buffer.state["exp_avg_sq"][start:end], self.step_count, group["lr"],
                                      *group["betas"], group["eps"], group["weight_decay"])
                    continue
                if group["momentum"] and "momentum_buffer" not in buffer.state:
                    raise ZestError("SGD momentum was 0 at construction; create the FusedOptimizer with momentum > 0")
                momentum_buf = buffer.state["momentum_buffer"][start:end] if group["momentum"] else None
                buffer.sgd_step(param, grad, momentum_buf, group["lr"], group["momentum"], group["dampening"],
                                group["weight_decay"], group["nesterov"], self.step_count == 1)
        return loss

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The optimizer state as plain tensors (safetensors-ready): the live flat state buffers and the step count."""
        tensors = {f"{b.key}.{name}": t for b in self.flat_buffers for name, t in b.state.items()}
        return {**tensors, "step": torch.tensor(self.step_count, dtype=torch.int64)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Resume from `state_tensors()` of an optimizer of the same kind over the same params."""
        current = self.state_tensors()
        misfits = sorted(current.keys() ^ tensors.keys()) + sorted(
            k for k in current.keys() & tensors.keys() if current[k].shape != tensors[k].shape)
        if misfits:
            raise ZestError(f"optimizer state does not fit these params (missing, unexpected or mis-shaped: "
                            f"{', '.join(misfits)})")
        for key, t in current.items():
            if key != "step":
                t.copy_(tensors[key])
        self.step_count = int(tensors["step"])

    def state_dict(self) -> dict:
        """{"state": state_tensors(), "param_groups": hyperparameters with param indices, as torch.optim does}."""
        groups, index = [], 0
        for group in self.param_groups:
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(index, index + len(group["params"])))})
            index += len(group["params"])
        return {"state": self.state_tensors(), "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and state saved by `state_dict()` of an optimizer over the same params."""
        saved_groups = state_dict["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in self.param_groups]:
            raise ZestError("optimizer state_dict has a different param-group layout than this optimizer")
        self.load_state_tensors(state_dict["state"])
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
