"""Sparse fine-tuning: train only the chosen layers (+ the head) and skip everything before the earliest one.

What happens to each part (policy "frozen", the default):
- Chosen layers: weight and bias train. Head: all its parameters train. Everything else: requires_grad=False,
  so it gets no .grad and no optimizer state.
- BatchNorm: every BN is in eval mode — running statistics are used, never updated — and its affine
  parameters are frozen. Policy "train-selected" also trains the BN that directly follows a chosen layer
  (affine and running statistics). Full fine-tuning (`layers=None`) trains every parameter and every BN.
- Dropout: active in the trained suffix, as in ordinary fine-tuning; the frozen prefix runs in eval mode.
- Truncation: models with stages (all registered ones) run the prefix — the stages before the one holding the
  earliest chosen layer — under torch.no_grad(), so it saves no activations and runs no backward; its output
  can be cached per example (`FeatureCache`). Other modules rely on requires_grad=False, with which autograd
  records nothing upstream of the first trainable parameter either.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ZestError
from .layers import Layer, layer_map, resolve_layers, traced_forward
from .models import get_spec

BN_POLICIES = ("frozen", "train-selected")
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class SparseModel:
    model: nn.Module
    selected: list[Layer]            # chosen layers in execution order (all layers for full fine-tuning)
    full: bool
    trainable: list[tuple[str, nn.Parameter]]
    trained_bn: list[str]            # BN modules in train mode
    prefix: list                     # stages run without autograd
    suffix: list                     # stages run with autograd (the whole model when it has no stages)
    lora: object = None              # LoraSpec when the selected layers train through LoRA adapters (zest_edge.lora)
    peft: object = None              # the PeftModel wrapping `model` then (for save_pretrained)

    def train_mode(self) -> None:
        """model.train(), then frozen BN and the prefix back to eval."""
        self.model.train()
        trained = set(self.trained_bn)
        for name, m in self.model.named_modules():
            if isinstance(m, _BN) and name not in trained:
                m.eval()
        for prefixes, _ in self.prefix:
            for name, m in self.model.named_modules():
                if in_stage(name, prefixes):
                    m.eval()

    @torch.no_grad()
    def features(self, x):
        """Output of the frozen prefix (the input itself when nothing is frozen)."""
        for _, fn in self.prefix:
            x = fn(x)
        return x

    def forward_features(self, state):
        if not self.suffix:
            return self.model(state)
        for _, fn in self.suffix:
            state = fn(state)
        return state

    def __call__(self, x):
        return self.forward_features(self.features(x))

    def step(self, x, y, optimizer, features: bool = False) -> float:
        """One training step; `features=True` when x is already the prefix output (feature cache)."""
        logits = self.forward_features(x) if features else self(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    def trainable_count(self) -> int:
        return sum(p.numel() for _, p in self.trainable)

    def total_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def in_stage(name: str, prefixes) -> bool:
    """Whether module `name` is one of a stage's modules or inside one (whole path components: stage
    "features.1" does not hold "features.16")."""
    return name in prefixes or name.startswith(tuple(p + "." for p in prefixes))


def following_bn(model: nn.Module, layer_names: list[str], example) -> list[str]:
    """BatchNorm modules whose input is the output of one of the named layers (traced on `example`)."""
    outputs, found = {}, []          # outputs keeps the tensors alive so their ids stay unique
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(id(o), (n, o))) for n in layer_names]
    hooks += [m.register_forward_pre_hook(lambda m, i, n=n: found.append(n) if id(i[0]) in outputs else None)
              for n, m in modules.items() if isinstance(m, _BN)]
    traced_forward(model, example, hooks)
    return found


def sparsify(model: nn.Module, layers: list[str] | None, bn: str = "frozen") -> SparseModel:
    """Freeze all but `layers` (+ head) and split the forward at the earliest chosen layer.

    layers=None: full fine-tuning; layers=[]: the head alone."""
    if bn not in BN_POLICIES:
        raise ZestError(f"unknown BN policy {bn!r}; choose from: {', '.join(BN_POLICIES)}")
    spec = get_spec(model)
    all_layers = layer_map(model)
    full = layers is None
    selected = all_layers if full else resolve_layers(all_layers, layers, head=spec.head)
    modules = dict(model.named_modules())
    for p in model.parameters():
        p.requires_grad_(full)
    trained_bn = [n for n, m in modules.items() if isinstance(m, _BN)] if full else []
    if not full:
        for layer in selected:
            for p in modules[layer.name].parameters(recurse=False):
                p.requires_grad_(True)
        for p in modules[spec.head].parameters():
            p.requires_grad_(True)
        if bn == "train-selected":
            from .layers import dummy_input
            trained_bn = following_bn(model, [l.name for l in selected], dummy_input(model))
            for n in trained_bn:
                for p in modules[n].parameters():
                    p.requires_grad_(True)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    stages = spec.stages(model) if spec.stages else []
    cut = 0
    if stages and not full:
        first = selected[0].name if selected else spec.head      # layers=[]: head only
        owners = [i for i, (prefixes, _) in enumerate(stages) if in_stage(first, prefixes)]
        if not owners:
            raise ZestError(f"layer {first!r} belongs to no stage of {spec.name}")
        cut = owners[0]
    sm = SparseModel(model, selected, full, trainable, trained_bn, stages[:cut], stages[cut:])
    sm.train_mode()
    return sm
