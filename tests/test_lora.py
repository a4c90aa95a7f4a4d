"""LoRA through PEFT on a tiny random LLaMA: exactly the chosen modules get adapters, only adapters + head train,
nothing before the earliest adapted layer records autograd state, training moves the factors, and the PEFT round
trip (save_pretrained -> load -> merge) gives the trained model's logits."""
import json

import peft
import pytest
import torch

from zest_edge.data import Preprocess
from zest_edge.data.core import LabeledDataset
from zest_edge.errors import ZestError
from zest_edge.lora import ADAPTER_DIR, LoraSpec, lora_sparsify, merge_adapter
from zest_edge.models.smollm import SMOLLM2_135M, llama_classifier
from zest_edge.ranking import peft_config
from zest_edge.task import Task
from zest_edge.training import Schedule, finetune, load_run

TINY = dict(SMOLLM2_135M, vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8)
CHOSEN = ["model.layers.1.self_attn.v_proj", "model.layers.2.mlp.gate_proj"]


def tiny(seed=0):
    torch.manual_seed(seed)
    return llama_classifier(TINY, 2, preprocess=Preprocess(kind="text", max_length=10))


class Tokens(LabeledDataset):
    """Label 1 when token 7 occurs: learnable from the tokens alone."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(8, 300, (n, 10), generator=g)
        labels = torch.arange(n) % 2
        self.ids[labels == 1, 3] = 7
        super().__init__("tokens", "text", ["no", "yes"], labels.numpy())

    def x_at(self, i):
        return self.ids[i]


def task(seed=0):
    model = tiny(seed)
    return Task("smollm2_135m", "tokens", model, Tokens(32, 1), Tokens(16, 2), model.zest_spec.preprocess, 0, {})


def adapted(model):
    return sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A") and not n.endswith(".base_layer"))


def test_only_the_chosen_modules_get_adapters_and_only_adapters_and_head_train():
    model = tiny()
    sm = lora_sparsify(model, CHOSEN, LoraSpec(r=4))
    assert adapted(model) == CHOSEN
    names = [n for n, _ in sm.trainable]
    assert names and all(".lora_A." in n or ".lora_B." in n or n.startswith("classifier.modules_to_save.") for n in names)
    assert {n.split(".lora_")[0] for n in names if ".lora_" in n} == set(CHOSEN)
    assert any(n.startswith("classifier.") for n in names)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "base_layer" in n)


def test_full_lora_adapts_every_linear_layer():
    model = tiny()
    lora_sparsify(model, None, LoraSpec(r=2))
    assert len(adapted(model)) == 7 * 3


def test_backprop_stops_at_the_earliest_adapted_layer():
    model = tiny()
    sm = lora_sparsify(model, CHOSEN, LoraSpec(r=4))
    assert len(sm.prefix) == 2                    # embedding + block 0: no adapter there
    x = Tokens(4, 0).ids
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        state = sm.features(x)
    assert saved == [] and all(t.grad_fn is None for t in state)
    sm.forward_features(state).sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {n for n, _ in sm.trainable}


def test_training_updates_the_factors_and_the_peft_round_trip_gives_the_same_logits(tmp_path):
    t = task()
    base = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    record = finetune(t, CHOSEN, Schedule(epochs=2, lr=0.01, optimizer="adamw", batch_size=8), tmp_path / "run",
                      progress=False, lora=LoraSpec(r=4))
    assert record["lora"] == {"r": 4, "alpha": 8.0, "dropout": 0.0} and record["layers"] == CHOSEN
    lora_b = {n: p for n, p in t.model.named_parameters() if ".lora_B." in n}
    assert lora_b and all(p.abs().max() > 0 for p in lora_b.values())            # initialised to zero by PEFT
    for n, p in t.model.named_parameters():                                       # base weights never move
        key = n.replace(".base_layer", "")
        if key in base:
            assert torch.equal(p, base[key]), n
    x = t.val.ids
    t.model.eval()
    with torch.no_grad():
        trained = t.model(x)
    assert (tmp_path / "run" / ADAPTER_DIR / "adapter_config.json").is_file()
    fresh = task()                                                                # same init, no adapters
    with torch.no_grad():
        assert not torch.allclose(fresh.model(x), trained, atol=1e-4)
    sm = load_run(fresh, tmp_path / "run")
    assert adapted(fresh.model) == [] and type(fresh.model.classifier) is torch.nn.Linear      # merged and unloaded
    with torch.no_grad():
        torch.testing.assert_close(sm.model(x), trained, atol=1e-5, rtol=1e-4)


def test_emitted_peft_config_loads_in_lora_config_and_targets_exactly_the_selection():
    record = {"selected": CHOSEN}
    config = peft.LoraConfig(**json.loads(json.dumps(peft_config(record, "classifier"))))
    assert set(config.target_modules) == set(CHOSEN) and config.r == 8 and config.modules_to_save == ["classifier"]
    model = tiny()
    peft.get_peft_model(model, config)
    assert adapted(model) == CHOSEN


def test_bad_lora_requests_are_one_line_errors(tmp_path):
    with pytest.raises(ZestError, match="--lora must be a positive"):
        LoraSpec(r=0).check()
    with pytest.raises(ZestError, match="at least one layer"):
        lora_sparsify(tiny(), [], LoraSpec())
    with pytest.raises(ZestError, match="no PEFT adapter"):
        merge_adapter(tiny(), tmp_path)


def test_profile_plans_lora_all_and_lora_on_the_zest_layers_next_to_full_and_zest():
    from zest_edge.bench.profile import check_args, plan_configs
    plan = plan_configs(tiny(), [2], ["full", "zest", "lora", "lora-zest"], order=CHOSEN, ranking=None, label="zest",
                        lora_r=4)
    assert [(c["name"], c["layers"], c["lora"]) for c in plan] == [
        ("full", None, None), ("zest@2", CHOSEN, None), ("lora-all", None, 4), ("lora+zest@2", CHOSEN, 4)]
    with pytest.raises(ZestError, match="torch backend only"):
        check_args(["torch", "ort"], ["full", "lora"], "adamw", "cpu", 1, 0, 1, [2], None)
