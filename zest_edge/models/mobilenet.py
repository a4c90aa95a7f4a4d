"""MobileNetV2 (torchvision): random init, or a local torchvision state_dict."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

from . import MODELS, ModelSpec, attach_spec, load_backbone, load_state_dict_file


def stages(model):
    """Each `features.i` block, then pool + classifier (torchvision's forward, split)."""
    return [((f"features.{i}",), block) for i, block in enumerate(model.features)] + [
        (("classifier",), lambda x: model.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)))]


@MODELS.register("mobilenet_v2")
def mobilenet_v2(*, num_classes: int, weights: str | None = None) -> nn.Module:
    model = tv_mobilenet_v2()
    if weights:
        load_backbone(model, load_state_dict_file(weights), "classifier.1", weights)
    model.classifier[1] = nn.Linear(model.last_channel, num_classes)
    return attach_spec(model, ModelSpec("mobilenet_v2", head="classifier.1", weights=weights or "random", stages=stages))
