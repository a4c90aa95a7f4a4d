"""ResNet-18/50 (torchvision): random init, or a local torchvision state_dict."""
from torch import nn
from torchvision.models import resnet18 as tv_resnet18, resnet50 as tv_resnet50

from . import MODELS, ModelSpec, attach_spec, load_backbone, load_state_dict_file


def _resnet(name, factory, num_classes, weights):
    model = factory()
    if weights:
        load_backbone(model, load_state_dict_file(weights), "fc", weights)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return attach_spec(model, ModelSpec(name, head="fc", weights=weights or "random"))


@MODELS.register("resnet18")
def resnet18(*, num_classes: int, weights: str | None = None) -> nn.Module:
    return _resnet("resnet18", tv_resnet18, num_classes, weights)


@MODELS.register("resnet50")
def resnet50(*, num_classes: int, weights: str | None = None) -> nn.Module:
    return _resnet("resnet50", tv_resnet50, num_classes, weights)
