"""The layer map: every Conv2d/Linear with weights except the head, in forward-execution order."""
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import ZestError
from .models import get_spec
from .registry import suggest


@dataclass(frozen=True)
class Layer:
    name: str          # qualified module name
    index: int         # position in execution order
    type: str          # conv | conv_dw | conv_pw | linear
    shape: tuple       # weight shape
    params: int        # weight + bias elements
    depth: float       # index / (n - 1), in [0, 1]
    kernel: int        # spatial kernel size (1 for linear)
    in_channels: int
    out_channels: int

    def to_dict(self) -> dict:
        return asdict(self)


def layer_type(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if module.groups > 1 and module.groups == module.in_channels:
        return "conv_dw"
    if tuple(module.kernel_size) == (1, 1):
        return "conv_pw"
    return "conv"


def dummy_input(model: nn.Module, batch_size: int = 1, seed: int | None = None) -> torch.Tensor:
    """A batch of the shape the model's preprocessing produces (`Preprocess.example`)."""
    return get_spec(model).preprocess.example(batch_size, seed)


def traced_forward(model: nn.Module, example, hooks: list = ()):
    """One no-grad eval-mode forward (with `hooks` attached, removed after); every module's mode is restored.
    Returns the output."""
    modes = [(m, m.training) for m in model.modules()]      # per module: a mix of train/eval must survive
    try:
        model.eval()
        with torch.no_grad():
            return model(example)
    finally:
        for m, mode in modes:
            m.training = mode
        for h in hooks:
            h.remove()


def layer_map(model: nn.Module, example: torch.Tensor | None = None) -> list[Layer]:
    """Trace one forward pass and list candidate layers in the order they first run."""
    head = get_spec(model).head
    candidates = {name: m for name, m in model.named_modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight is not None
                  and name != head and not name.startswith(head + ".")}
    order = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
             for name, m in candidates.items()]
    traced_forward(model, dummy_input(model) if example is None else example, hooks)
    seen = list(dict.fromkeys(order))
    if not seen:
        raise ZestError("model has no Conv2d or Linear layer outside the head")
    layers = []
    for i, name in enumerate(seen):
        m = candidates[name]
        kernel = m.kernel_size[0] if isinstance(m, nn.Conv2d) else 1
        in_ch, out_ch = (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features)
        layers.append(Layer(name, i, layer_type(m), tuple(m.weight.shape), sum(p.numel() for p in m.parameters(recurse=False)),
                            i / max(len(seen) - 1, 1), kernel, in_ch, out_ch))
    return layers


def resolve_layers(layers: list[Layer], names: list[str], head: str | None = None) -> list[Layer]:
    """The named layers in execution order; an unknown name is an error listing close matches, and naming the
    `head` (which always trains) says so."""
    by_name = {layer.name: layer for layer in layers}
    for n in names:
        if head and (n == head or n.startswith(head + ".")):
            raise ZestError(f"{n!r} is the head, which always trains; name candidate layers (`zest-edge layers --model M`)")
        if n not in by_name:
            raise ZestError(f"unknown layer {n!r}{suggest(n, by_name)}; `zest-edge layers --model M` lists them")
    wanted = set(names)
    return [layer for layer in layers if layer.name in wanted]


def check_top_k(k, n_layers: int, model_name: str, flag: str = "--top-k") -> int:
    """The one top-k check: an integer between 1 and the model's layer count."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_layers:
        raise ZestError(f"{flag} must be between 1 and the number of layers of {model_name} ({n_layers}), got {k}")
    return k
