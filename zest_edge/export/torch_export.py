"""PyTorch → ONNX: the training graph of a sparsified copy and the plain inference graph (TorchScript exporter)."""
import contextlib
import copy
import io
import os
import sys
import tempfile
import warnings

import torch
from torch import nn

from ..errors import ZestError, first_line
from ..layers import traced_forward
from ..models import get_spec
from .graph import OPSET, fold_small_constants
from .manifest import INPUT_NAME, OUTPUT_NAME


def static_same_padding(model: nn.Module, example: torch.Tensor, pad=None) -> int:
    """Give timm's dynamic 'SAME'-padding convs (Conv2dSame) the constant padding of the fixed input size, so the
    exported graph has a plain Pad instead of a Shape/Ceil/Max chain that shape inference cannot follow. The
    module keeps its parameters (and names); only its forward changes. `model` must be a private copy.
    `pad(x, pads)` pads (default torch.nn.functional.pad)."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import pad_same_arg
    except ImportError:
        return 0
    convs = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dSame)}
    if not convs:
        return 0
    sizes = {}
    def record(name):
        def hook(module, inputs):                   # returns None: a pre-hook's return value would replace the inputs
            sizes.setdefault(name, tuple(inputs[0].shape[-2:]))
        return hook
    hooks = [m.register_forward_pre_hook(record(name)) for name, m in convs.items()]
    traced_forward(model, example, hooks)
    for name, m in convs.items():
        if name not in sizes:
            continue
        pads = [int(v) for v in pad_same_arg(list(sizes[name]), list(m.weight.shape[-2:]), list(m.stride),
                                             list(m.dilation))]

        def forward(self, x, pads=pads, pad=pad or torch.nn.functional.pad):
            return torch.nn.functional.conv2d(pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation,
                                              self.groups)
        m.forward = forward.__get__(m)
    return len(sizes)


class Stages(nn.Module):
    """Some of a model's stages run as one module, `forward(*state) -> state` (the model is its child `net`, so
    parameter and initializer names gain a "net." prefix). Stage-less models run whole."""

    def __init__(self, model: nn.Module, stages: list | None):
        super().__init__()
        self.net = model
        self.fns = [fn for _, fn in stages] if stages else [model]

    def forward(self, *state):
        state = state if len(state) > 1 else state[0]
        for fn in self.fns:
            state = fn(state)
        return state


def io_names(prefix: str, value) -> list[str]:
    """ONNX names for one tensor ("boundary") or a tuple of them ("boundary_0", "boundary_1", ...)."""
    return [f"{prefix}_{i}" for i in range(len(value))] if isinstance(value, tuple) else [prefix]


def torch_export(module: nn.Module, inputs: tuple, *, input_names: list[str], output_names: list[str], train: bool,
                 what: str):
    """TorchScript-export `module` (a private copy) on `inputs` to an in-memory ModelProto, every input and output
    with a dynamic batch axis; failures become a one-line error."""
    import onnx
    from onnx import numpy_helper
    buf = io.BytesIO()
    static_same_padding(module, inputs[0] if len(inputs) == 1 else inputs)
    # tracing runs one forward: BatchNorm in training mode updates its running statistics on the dummy input,
    # and the exporter would ship those; keep the originals to put back into the graph
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    grad_mode = torch.enable_grad() if train else torch.no_grad()
    try:
        with warnings.catch_warnings(), quiet_native((1, 2)), grad_mode:
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, inputs, buf, dynamo=False, export_params=True, opset_version=OPSET,
                do_constant_folding=not train, keep_initializers_as_inputs=False,
                training=torch.onnx.TrainingMode.PRESERVE if train else torch.onnx.TrainingMode.EVAL,
                input_names=input_names, output_names=output_names,
                dynamic_axes={n: {0: "batch"} for n in input_names + output_names})
    except ZestError:
        raise
    except Exception as e:  # torch raises many types: UnsupportedOperatorError, RuntimeError, SymbolicValueError...
        text = ", token ids" if inputs[0].dtype == torch.long else ""
        raise ZestError(f"cannot export {model_name(module)} to ONNX ({what}{text}): {first_line(e)}") from None
    proto = onnx.load_from_string(buf.getvalue())
    for i, init in enumerate(proto.graph.initializer):
        if init.name in buffers:
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(buffers[init.name].numpy(), init.name))
    return proto


def model_name(module: nn.Module) -> str:
    net = module.net if isinstance(module, Stages) else module
    return getattr(getattr(net, "zest_spec", None), "name", type(net).__name__)


def export_training_onnx(sm, boundary) -> tuple:
    """(ModelProto, input names): the suffix after the frozen prefix as the graph to train from, exported from a
    sparsified copy in the engine's training mode (Dropout active, frozen BatchNorm in inference form, trained
    BatchNorm in training form). Its inputs are the prefix's outputs (`boundary`), or the model input."""
    sm.train_mode()
    suffix = Stages(sm.model, sm.suffix)
    names = io_names("boundary", boundary) if sm.prefix else [INPUT_NAME]
    inputs = boundary if isinstance(boundary, tuple) else (boundary,)
    return torch_export(suffix, inputs, input_names=names, output_names=[OUTPUT_NAME], train=True,
                        what="training graph"), names


def export_prefix_onnx(sm, example: torch.Tensor) -> tuple:
    """(ModelProto, boundary value on `example`): the frozen prefix as an inference graph (eval mode, BatchNorm
    folded, small constant subgraphs folded)."""
    net = copy.deepcopy(sm.model).eval()
    prefix = Stages(net, get_spec(net).stages(net)[:len(sm.prefix)])     # stage closures bound to the copy
    with torch.no_grad():
        boundary = Stages(sm.model, sm.prefix)(example)
    proto = torch_export(prefix, (example,), input_names=[INPUT_NAME], output_names=io_names("boundary", boundary),
                         train=False, what="prefix graph")
    fold_small_constants(proto)
    return proto, boundary


def export_inference_onnx(model: nn.Module, example: torch.Tensor):
    """The plain inference model (eval mode, BatchNorm folded), with small constant subgraphs folded too."""
    m = copy.deepcopy(model).eval()
    proto = torch_export(m, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], train=False,
                         what="inference graph")
    fold_small_constants(proto)
    return proto


@contextlib.contextmanager
def quiet_native(fds=(2,)):
    """Silence what native code prints on these file descriptors (ORT's graph-transformer log, the TorchScript
    exporter's IR dump on failure); yields a callable returning the captured text."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with tempfile.TemporaryFile() as sink:
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        captured = []
        try:
            yield lambda: captured[0] if captured else ""
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, orig in saved.items():
                os.dup2(orig, fd)
                os.close(orig)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))

