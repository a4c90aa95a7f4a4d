"""The passes every metric reads from: one minibatch forward+backward, grasp's Hessian-vector product, and
synflow's data-free pass. The model comes back exactly as it went in: weights, buffers, flags and modes."""
import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LayerTensors:
    """What one layer's metrics read. W: weight, G: dL/dW, X: output activation, dX: dL/dX."""
    weight: torch.Tensor
    grad: torch.Tensor | None = None
    act: torch.Tensor | None = None
    act_grad: torch.Tensor | None = None
    hvp: torch.Tensor | None = None              # (H G) restricted to this layer's weight
    synflow_grad: torch.Tensor | None = None     # dR/d|W| of the data-free pass
    synflow_weight: torch.Tensor | None = None   # |W| in float64


@contextlib.contextmanager
def preserved(model: nn.Module):
    """Restore buffers (BN statistics), parameter values, requires_grad flags, .grad and train/eval modes."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    params = {k: (p.detach().clone(), p.requires_grad, p.grad) for k, p in model.named_parameters()}
    modes = {k: m.training for k, m in model.named_modules()}
    try:
        yield
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
            for k, p in model.named_parameters():
                value, flag, grad = params[k]
                p.copy_(value)
                p.requires_grad_(flag)
                p.grad = grad
        for k, m in model.named_modules():
            m.training = modes[k]


def data_pass(model, modules: dict[str, nn.Module], inputs, targets, with_hvp: bool) -> dict[str, LayerTensors]:
    """One forward and one backward in train mode; with_hvp keeps the graph for grasp's H·G (double backward)."""
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, out, name=name: outputs.__setitem__(name, out))
             for name, m in modules.items()]
    names = list(modules)
    weights = [modules[n].weight for n in names]
    try:
        model.train()
        for w in weights:
            w.requires_grad_(True)
        loss = F.cross_entropy(model(inputs), targets)
        acts = [outputs[n] for n in names]
        grads = torch.autograd.grad(loss, weights + acts, create_graph=with_hvp)
    finally:
        for h in hooks:
            h.remove()
    weight_grads, act_grads = grads[:len(names)], grads[len(names):]
    hvps = [None] * len(names)
    if with_hvp:
        z = sum((g * g.detach()).sum() for g in weight_grads)
        hvps = [h.detach() for h in torch.autograd.grad(z, weights, allow_unused=True)]
    return {n: LayerTensors(weight=modules[n].weight.detach(), grad=g.detach(), act=a.detach(), act_grad=da.detach(), hvp=h)
            for n, g, a, da, h in zip(names, weight_grads, acts, act_grads, hvps)}


def synflow_pass(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, tuple]:
    """Data-free pass on a float64 copy: BatchNorm as identity (eval), |W|, all-ones input, R = sum of outputs.

    ReLU6/Hardtanh become ReLU: with |W| and ones the activations pass 6 at once and a clipped activation would
    zero every gradient upstream; synflow assumes positively homogeneous activations."""
    net = copy.deepcopy(model).double().eval()
    for parent in list(net.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Hardtanh):       # nn.ReLU6 is a Hardtanh
                setattr(parent, child_name, nn.ReLU())
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_(); m.running_var.fill_(1.0); m.eps = 0.0
                if m.affine:
                    m.weight.fill_(1.0); m.bias.zero_()
        for p in net.parameters():
            p.abs_()
            p.requires_grad_(True)
    ones = torch.ones_like(example[:1], dtype=torch.float64) if example.is_floating_point() else torch.ones_like(example[:1])
    net(ones).sum().backward()
    modules = dict(net.named_modules())
    return {n: (modules[n].weight.grad.detach(), modules[n].weight.detach()) for n in names}
