"""ResNet-18/50 (torchvision): random init, or a local torchvision state_dict."""
import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18, resnet50 as tv_resnet50

from .core import MODELS, RANDOM, ModelSpec, attach_spec, load_backbone, load_state_dict_file


def stages(model):
    """Stem, each residual block, then pool + fc (torchvision's forward, split)."""
    stem = lambda x: model.maxpool(model.relu(model.bn1(model.conv1(x))))
    blocks = [((f"layer{i}.{j}",), block) for i in range(1, 5) for j, block in enumerate(getattr(model, f"layer{i}"))]
    return [(("conv1", "bn1"), stem), *blocks, (("fc",), lambda x: model.fc(torch.flatten(model.avgpool(x), 1)))]


def _resnet(name, factory, num_classes, weights):
    model = factory()
    if weights and weights != RANDOM:
        load_backbone(model, load_state_dict_file(weights), "fc", weights)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return attach_spec(model, ModelSpec(name, head="fc", weights=weights or RANDOM, stages=stages))


@MODELS.register("resnet18")
def resnet18(*, num_classes: int, weights: str | None = None) -> nn.Module:
    return _resnet("resnet18", tv_resnet18, num_classes, weights)


@MODELS.register("resnet50")
def resnet50(*, num_classes: int, weights: str | None = None) -> nn.Module:
    return _resnet("resnet50", tv_resnet50, num_classes, weights)
