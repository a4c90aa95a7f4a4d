"""Layer maps in execution order, stage splits equal to forward(), the offline weights, and bad weight files."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from zest_edge.data.images import to_model_input
from zest_edge.errors import ZestError
from zest_edge.layers import layer_map
from zest_edge.models import build_model, get_spec, load_state_dict_file
from zest_edge.models.efficientnet_lite import packaged_weights, rename_packaged

ZEST = str(Path(sys.executable).with_name("zest-edge"))


def executed_order(model, x, head):
    """Conv2d/Linear modules (outside the head) in the order their forward runs, by our own hooks."""
    order = []
    hooks = [m.register_forward_hook(lambda *_, n=n: order.append(n)) for n, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear)) and n != head and not n.startswith(head + ".")]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return build_model("mobilenet_v2", num_classes=10)


@pytest.fixture(scope="module")
def lite0():
    return build_model("efficientnet_lite0", num_classes=10)


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return build_model("minilm_l6", num_classes=3)


def test_mobilenet_v2_layers_in_execution_order(mobilenet):
    layers = layer_map(mobilenet, torch.zeros(1, 3, 64, 64))
    names = [l.name for l in layers]
    assert len(layers) == 52 and names[0] == "features.0.0" and names[-1] == "features.18.0"
    assert "classifier.1" not in names and get_spec(mobilenet).head == "classifier.1"
    assert names == executed_order(mobilenet, torch.randn(1, 3, 64, 64), "classifier.1")
    assert [l.index for l in layers] == list(range(52))
    assert layers[0].depth == 0.0 and layers[-1].depth == 1.0
    types = {l.name: l.type for l in layers}
    assert types["features.0.0"] == "conv"                    # 3x3, groups 1
    assert types["features.1.conv.0.0"] == "conv_dw"          # 3x3 depthwise
    assert types["features.1.conv.1"] == "conv_pw"            # 1x1 projection
    assert types["features.2.conv.1.0"] == "conv_dw" and types["features.18.0"] == "conv_pw"
    first = layers[1]
    assert (first.shape, first.kernel, first.in_channels, first.out_channels, first.params) == \
        ((32, 1, 3, 3), 3, 32, 32, 32 * 9)                    # no bias in torchvision's convs


def test_efficientnet_lite0_layers_in_execution_order(lite0):
    layers = layer_map(lite0, torch.zeros(1, 3, 64, 64))
    names = [l.name for l in layers]
    assert len(layers) == 49 and names[0] == "conv_stem" and names[-1] == "conv_head"
    assert names[1:3] == ["blocks.0.0.conv_dw", "blocks.0.0.conv_pw"]
    assert names[3:6] == ["blocks.1.0.conv_pw", "blocks.1.0.conv_dw", "blocks.1.0.conv_pwl"]
    assert all(n.startswith("blocks.") for n in names[1:-1]) and "classifier" not in names
    assert names == executed_order(lite0, torch.randn(1, 3, 64, 64), "classifier")
    types = {l.name: l.type for l in layers}
    assert (types["conv_stem"], types["blocks.0.0.conv_dw"], types["blocks.1.0.conv_pw"], types["conv_head"]) == \
        ("conv", "conv_dw", "conv_pw", "conv_pw")


def test_minilm_lists_36_linears(minilm):
    layers = layer_map(minilm)
    per_block = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense"]
    assert [l.name for l in layers] == [f"bert.encoder.layer.{i}.{s}" for i in range(6) for s in per_block]
    assert {l.type for l in layers} == {"linear"}
    assert layers[0].shape == (384, 384) and layers[4].shape == (1536, 384) and layers[0].params == 384 * 385
    ids = torch.randint(1, 1000, (2, 16))
    assert [l.name for l in layers] == executed_order(minilm, ids, "classifier")


def run_stages(model, x):
    state = x
    for _, fn in get_spec(model).stages(model):
        state = fn(state)
    return state


def check_stage_prefixes(model, example):
    """Every candidate layer sits in exactly one stage, and stages follow execution order."""
    stages = get_spec(model).stages(model)
    owner = []
    for layer in layer_map(model, example):
        hits = [i for i, (prefixes, _) in enumerate(stages)
                if any(layer.name == p or layer.name.startswith(p + ".") for p in prefixes)]
        assert len(hits) == 1, layer.name
        owner.append(hits[0])
    assert owner == sorted(owner)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "efficientnet_lite0"])
def test_image_model_stages_compose_to_forward(name, mobilenet, lite0):
    torch.manual_seed(0)
    model = {"mobilenet_v2": mobilenet, "efficientnet_lite0": lite0}.get(name) or build_model(name, num_classes=7)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = model(x), run_stages(model, x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    check_stage_prefixes(model, x[:1])


def test_minilm_stages_match_bert_with_mean_pooling(minilm):
    minilm.eval()
    ids = torch.randint(1000, 5000, (3, 12))
    ids[0, 7:] = 0                                             # padding: masked and excluded from the mean
    ids[2, 3:] = 0
    with torch.no_grad():
        mask = (ids != 0).float()
        hidden = minilm.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        expected = minilm.classifier(pooled)
        got, forward = run_stages(minilm, ids), minilm(ids)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(forward, expected, rtol=1e-4, atol=1e-5)
    check_stage_prefixes(minilm, ids[:1])


def test_efficientnet_lite0_weights_recognise_real_photos():
    """The packaged ImageNet weights, loaded through build_model, classify a cat and a coffee cup."""
    skimage_data = pytest.importorskip("skimage.data")
    model = build_model("efficientnet_lite0", num_classes=1000)
    packaged = rename_packaged(load_state_dict_file(packaged_weights("efficientnet_lite0")), model)
    for k, v in model.state_dict().items():                    # the backbone came from the packaged file
        if not k.startswith("classifier.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(v, packaged[k]), k
    model.classifier.load_state_dict({"weight": packaged["classifier.weight"], "bias": packaged["classifier.bias"]})
    model.eval()
    half = torch.full((3, 1, 1), 0.5)
    x = torch.stack([to_model_input(img, 224, half, half) for img in (skimage_data.chelsea(), skimage_data.coffee())])
    with torch.no_grad():
        top = model(x).topk(3, dim=1).indices.tolist()
    assert top[0][0] in (281, 282, 285), top[0]               # tabby / tiger cat / Egyptian cat
    assert {967, 968, 504} & set(top[1]), top[1]              # espresso / cup / coffee mug


# ---------------------------------------------------------------- weight files

def test_valid_weights_replace_the_backbone_but_not_the_head(tmp_path):
    torch.manual_seed(1)
    source = build_model("mobilenet_v2", num_classes=5)
    path = tmp_path / "mb.pt"
    torch.save({"state_dict": source.state_dict()}, path)      # the {"state_dict": ...} wrapper is accepted
    model = build_model("mobilenet_v2", num_classes=10, weights=str(path))
    for k, v in source.state_dict().items():
        if not k.startswith("classifier."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model.classifier[1].out_features == 10 and get_spec(model).weights == str(path)


def bad_weights(tmp_path):
    torch.manual_seed(0)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a torch file " * 20)
    other = tmp_path / "resnet18.pt"
    torch.save(build_model("resnet18", num_classes=10).state_dict(), other)
    shape = tmp_path / "shape.pt"
    sd = build_model("mobilenet_v2", num_classes=10).state_dict()
    sd["features.0.0.weight"] = sd["features.0.0.weight"][:16]
    torch.save(sd, shape)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    pickled = tmp_path / "object.pt"
    torch.save({"model": nn.ReLU()}, pickled)                  # refused by weights_only=True
    return {"missing": (tmp_path / "nope.pt", "weights file not found"),
            "corrupt": (corrupt, "cannot read weights"),
            "other model": (other, "do not match this model: missing"),
            "shape": (shape, r"features.0.0.weight has shape \(16, 3, 3, 3\), expected \(32, 3, 3, 3\)"),
            "tensor": (tensor, "is not a state_dict"),
            "pickle": (pickled, "cannot read weights")}


def test_bad_weights_are_one_line_zest_errors(tmp_path):
    for case, (path, message) in bad_weights(tmp_path).items():
        with pytest.raises(ZestError, match=message) as e:
            build_model("mobilenet_v2", num_classes=10, weights=str(path))
        assert "\n" not in str(e.value), case
    with pytest.raises(ZestError, match="weights file not found"):
        build_model("efficientnet_lite0", num_classes=10, weights=str(tmp_path / "nope.pt"))


def run_cli(*args):
    return subprocess.run([ZEST, *args], capture_output=True, text=True, timeout=120)


def test_cli_layers_with_bad_weights_exits_2_with_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all " * 20)
    for path, message in ((tmp_path / "nope.pt", "weights file not found"), (corrupt, "cannot read weights")):
        r = run_cli("layers", "--model", "mobilenet_v2", "--weights", str(path))
        assert r.returncode == 2, r.stderr
        assert r.stdout == "" and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
