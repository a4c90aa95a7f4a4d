"""Model registry: `build_model(name, num_classes=..., weights=...)` returns an nn.Module with a `zest_spec`.

Every builder is keyword-only, replaces the classification head with a fresh `num_classes` one, and attaches a
`ModelSpec` that names the head module and the preprocessing the weights expect. A user's own module works
everywhere once it carries a spec: `attach_spec(module, ModelSpec(...))`.
"""
from .core import (MODELS, PREPROCESS, RANDOM, ModelSpec, attach_spec, build_model, get_spec, load_backbone,
                   load_state_dict_file, model_preprocess, with_preprocess)
from . import efficientnet_lite, minilm, mobilenet, resnet, smollm  # noqa: E402,F401  (register builders)

__all__ = ["MODELS", "PREPROCESS", "RANDOM", "ModelSpec", "attach_spec", "build_model", "get_spec", "load_backbone",
           "load_state_dict_file", "model_preprocess", "with_preprocess"]
