"""The LLaMA-architecture text model (smollm2_135m) on a tiny random LlamaConfig: layer map, roles, stages, the
staged forward against transformers' own, truncation of a frozen prefix. No 135M load here."""
import pytest
import torch

from zest_edge.data import Preprocess
from zest_edge.errors import ZestError
from zest_edge.layers import layer_map
from zest_edge.models import MODELS, model_preprocess
from zest_edge.models.smollm import SMOLLM2_135M, llama_classifier, role
from zest_edge.report import layer_table
from zest_edge.sparse import sparsify

TINY = dict(SMOLLM2_135M, vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8)
ROLES = ["q", "k", "v", "o", "gate", "up", "down"]


def tiny(num_classes=3, layers=3, seed=0):
    torch.manual_seed(seed)
    return llama_classifier(dict(TINY, num_hidden_layers=layers), num_classes,
                            preprocess=Preprocess(kind="text", max_length=12))


def ids(batch=4, length=12, seed=0):
    x = torch.randint(3, 300, (batch, length), generator=torch.Generator().manual_seed(seed))
    x[0, 7:] = 0                                       # one padded row
    return x


def test_layer_map_is_seven_linears_per_block_in_execution_order():
    for n in (2, 3):
        layers = layer_map(tiny(layers=n))
        assert len(layers) == 7 * n
        assert [role(l.name) for l in layers] == ROLES * n
        assert [l.name for l in layers[:7]] == [f"model.layers.0.{m}" for m in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj")]
        assert all(l.type == "linear" for l in layers) and layers[1].shape == (16, 32)    # 2 kv heads x 8
    table = layer_table(layer_map(tiny()), role=role)
    assert "role" in table.splitlines()[0] and " gate " in table


def test_registered_model_and_its_text_preprocessing():
    assert "smollm2_135m" in MODELS
    pre = model_preprocess("smollm2_135m")
    assert pre.kind == "text" and pre.max_length == 64 and str(pre.tokenizer_dir).endswith(".gguf")


def test_staged_forward_equals_transformers_forward_at_the_last_real_token():
    model = tiny().eval()
    x = ids()
    with torch.no_grad():
        logits = model(x)
        for i, n in enumerate((7, 12, 12, 12)):
            hidden = model.model(input_ids=x[i:i + 1, :n]).last_hidden_state[0, -1]
            torch.testing.assert_close(logits[i], model.classifier(hidden), atol=1e-5, rtol=1e-5)
    # padding does not leak into the result: the padded row equals the unpadded sequence alone
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1, :7]), logits[:1], atol=1e-5, rtol=1e-5)


def test_stages_cut_at_the_block_of_the_earliest_layer_and_the_prefix_records_nothing():
    model = tiny()
    sm = sparsify(model, ["model.layers.2.mlp.up_proj", "model.layers.1.self_attn.v_proj"])
    assert len(sm.prefix) == 2 and len(sm.suffix) == 3          # embedding + block 0 frozen
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        state = sm.features(ids())
    assert saved == [] and all(t.grad_fn is None and not t.requires_grad for t in state)
    loss = sm.forward_features(state).sum()
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"model.layers.1.self_attn.v_proj.weight", "model.layers.2.mlp.up_proj.weight",
                     "classifier.weight", "classifier.bias"}


def test_unknown_layer_is_a_one_line_error():
    with pytest.raises(ZestError, match="unknown layer"):
        sparsify(tiny(), ["model.layers.0.self_attn.qproj"])
