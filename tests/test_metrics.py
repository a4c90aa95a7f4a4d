"""The 19 zero-shot metrics against hand computations on tiny networks, and compute_metrics' side-effect freedom."""
import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zest_edge.data import Preprocess
from zest_edge.errors import ZestError
from zest_edge.metrics import METRICS, compute_metrics
from zest_edge.metrics.probe import data_pass
from zest_edge.models import ModelSpec, attach_spec, build_model

ALL = ["wt_avg", "wt_std", "wt_abs_avg", "wt_abs_std", "act_avg", "act_std", "act_abs_avg", "act_abs_std",
       "grad_norm", "rgn", "grad_avg", "grad_std", "grad_abs_avg", "grad_abs_std", "plain", "snip", "grasp", "fisher",
       "synflow"]
B, CLASSES = 8, 3


def test_registry_holds_the_19_metrics():
    assert sorted(METRICS) == sorted(ALL)


# ---------------------------------------------------------------- tiny networks and their hand computations

def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, CLASSES))
    return attach_spec(net, ModelSpec("tiny", head="2"))


def tiny_conv(seed=0, side=6):
    """Conv2d -> BN -> ReLU6 -> flatten -> Linear head; BN has non-trivial running stats and affine params."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6(), nn.Flatten(),
                        nn.Linear(4 * side * side, CLASSES))
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return attach_spec(net, ModelSpec("tiny", head="4", preprocess=Preprocess(resolution=side)))


def batch(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, *shape, generator=g), torch.randint(0, CLASSES, (B,), generator=g)


def mlp_grads(x, y, w1, b1, w2, b2):
    """Closed-form backprop of mean cross-entropy through Linear-ReLU-Linear: (G1, G2, X, dX)."""
    pre = x @ w1.T + b1
    h = pre.clamp(min=0)
    logits = h @ w2.T + b2
    dlogits = (logits.softmax(1) - F.one_hot(y, CLASSES).to(x.dtype)) / len(x)
    g2 = dlogits.T @ h
    dpre = (dlogits @ w2) * (pre > 0).to(x.dtype)
    g1 = dpre.T @ x
    return g1, g2, pre, dpre


def conv_forward(x, y, wc, bc, bn, wl, bl):
    """The conv net in float64, BN in train mode (batch statistics), as data_pass runs it."""
    X = F.conv2d(x, wc, bc, padding=1)
    z = F.batch_norm(X, None, None, bn.weight.detach().double(), bn.bias.detach().double(), training=True,
                     eps=bn.eps)
    logits = F.linear(F.hardtanh(z, 0.0, 6.0).flatten(1), wl, bl)
    return X, F.cross_entropy(logits, y)


def conv_grads(x, y, net, wc, wl):
    """(G_conv, G_head, X, dX) by autograd on a float64 functional copy; G_conv is also rebuilt from dX by hand."""
    wc, wl = wc.clone().requires_grad_(True), wl.clone().requires_grad_(True)
    bc, bl = net[0].bias.detach().double(), net[4].bias.detach().double()
    X, loss = conv_forward(x, y, wc, bc, net[1], wl, bl)
    gc, gl, dX = torch.autograd.grad(loss, [wc, wl, X])
    # weight gradient of a conv = correlation of dX with the padded input patches
    cols = F.unfold(x, 3, padding=1).view(len(x), 3, 3, 3, -1)            # [B, C, kh, kw, H*W]
    by_hand = torch.einsum("bop,bcklp->ockl", dX.flatten(2), cols)
    torch.testing.assert_close(gc, by_hand, rtol=1e-10, atol=1e-12)
    return gc, gl, X.detach(), dX


def finite_difference_hvp(grad_fn, weights, grads, eps=1e-6):
    """(G(w + eps G) - G(w - eps G)) / 2 eps, per weight, in float64."""
    plus = grad_fn(*[w + eps * g for w, g in zip(weights, grads)])
    minus = grad_fn(*[w - eps * g for w, g in zip(weights, grads)])
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]


def expected_metrics(W, G, X, dX, HG, synflow):
    """Every metric from its definition (all inputs float64), with a magnitude for the tolerance."""
    prod = X * dX
    per_channel = prod.sum((2, 3)) if prod.dim() == 4 else prod
    values = {
        "wt_avg": (W.mean(), W.abs().mean()), "wt_std": (W.std(), W.std()),
        "wt_abs_avg": (W.abs().mean(), W.abs().mean()), "wt_abs_std": (W.abs().std(), W.abs().std()),
        "act_avg": (X.mean(), X.abs().mean()), "act_std": (X.std(), X.std()),
        "act_abs_avg": (X.abs().mean(), X.abs().mean()), "act_abs_std": (X.abs().std(), X.abs().std()),
        "grad_norm": (G.pow(2).sum().sqrt(), G.pow(2).sum().sqrt()),
        "rgn": (G.pow(2).sum().sqrt() / W.pow(2).sum().sqrt(), G.pow(2).sum().sqrt() / W.pow(2).sum().sqrt()),
        "grad_avg": (G.mean(), G.abs().mean()),
        "grad_std": (G.std(), G.std()), "grad_abs_avg": (G.abs().mean(), G.abs().mean()),
        "grad_abs_std": (G.abs().std(), G.abs().std()),
        "plain": ((G * W).sum(), (G * W).abs().sum()), "snip": ((G * W).abs().sum(), (G * W).abs().sum()),
        "grasp": (-(HG * W).sum(), (HG * W).abs().sum()),
        "fisher": ((0.5 * per_channel.pow(2).mean(0)).sum(), (0.5 * per_channel.pow(2).mean(0)).sum()),
        "synflow": (synflow, synflow),
    }
    return {k: (float(v.detach()), float(s.detach())) for k, (v, s) in values.items()}


def check_all(got: dict, expected: dict):
    assert set(got) == set(ALL)
    for name, (value, scale) in expected.items():
        assert math.isfinite(got[name]), name
        assert got[name] == pytest.approx(value, rel=2e-4, abs=2e-5 * scale + 1e-12), \
            f"{name}: got {got[name]!r}, expected {value!r}"


def test_mlp_metrics_match_hand_computation():
    net = tiny_mlp()
    x, y = batch((6,))
    result = compute_metrics(net, x, y)
    assert list(result) == ["0"]                                          # the head "2" is never a candidate
    d = lambda t: t.detach().double()
    w1, b1, w2, b2 = d(net[0].weight), d(net[0].bias), d(net[2].weight), d(net[2].bias)
    xd = x.double()
    g1, g2, X, dX = mlp_grads(xd, y, w1, b1, w2, b2)
    hg1, hg2 = finite_difference_hvp(lambda a, c: mlp_grads(xd, y, a, b1, c, b2)[:2], [w1, w2], [g1, g2])
    # synflow by hand: |W|, |b|, one all-ones example, R = sum of the outputs; everything is positive so ReLU = id
    a1, c1, a2 = w1.abs(), b1.abs(), w2.abs()
    ones = torch.ones(1, 6, dtype=torch.float64)
    pre = ones @ a1.T + c1
    dR_dpre = torch.ones(1, CLASSES, dtype=torch.float64) @ a2 * (pre > 0)
    synflow = (dR_dpre.T @ ones * a1).abs().sum()
    check_all(result["0"], expected_metrics(w1, g1, X, dX, hg1, synflow))

    # the probe's H·G itself, element-wise, against the finite difference (over every probed weight)
    probe = copy.deepcopy(net)
    passed = data_pass(probe, {"0": probe[0], "2": probe[2]}, x, y, with_hvp=True)
    torch.testing.assert_close(passed["0"].hvp.double(), hg1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(passed["2"].hvp.double(), hg2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(passed["0"].grad.double(), g1, rtol=1e-5, atol=1e-7)


def test_conv_metrics_match_hand_computation():
    side = 6
    net = tiny_conv(side=side)
    x, y = batch((3, side, side))
    result = compute_metrics(net, x, y)
    assert list(result) == ["0"]
    d = lambda t: t.detach().double()
    wc, wl, xd = d(net[0].weight), d(net[4].weight), x.double()
    gc, gl, X, dX = conv_grads(xd, y, net, wc, wl)

    def grad_fn(a, c):
        return conv_grads(xd, y, net, a, c)[:2]
    hgc, _ = finite_difference_hvp(grad_fn, [wc, wl], [gc, gl])
    # synflow by hand: BN is the identity, ReLU6 acts as ReLU, |W| and |b| everywhere, one all-ones image
    ac = wc.abs().requires_grad_(True)
    ones = torch.ones(1, 3, side, side, dtype=torch.float64)
    hidden = F.conv2d(ones, ac, d(net[0].bias).abs(), padding=1).clamp(min=0)
    R = F.linear(hidden.flatten(1), wl.abs(), d(net[4].bias).abs()).sum()
    (dR,) = torch.autograd.grad(R, ac)
    synflow = (dR * ac).abs().sum()
    check_all(result["0"], expected_metrics(wc, gc, X, dX, hgc, synflow))


def test_fisher_sums_channels_of_linear_on_sequences():
    """A linear on [B, T, C] (as in a transformer): positions are summed per example before squaring."""
    torch.manual_seed(0)
    net = attach_spec(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, CLASSES)),
                      ModelSpec("tiny", head="3", preprocess=Preprocess(resolution=1)))
    x, y = torch.randn(B, 3, 4), torch.randint(0, CLASSES, (B,))
    X = F.linear(x, net[0].weight, net[0].bias).detach().requires_grad_(True)
    loss = F.cross_entropy(net[3](torch.tanh(X).flatten(1)), y)
    (dX,) = torch.autograd.grad(loss, X)
    expected = (0.5 * (X.detach() * dX).sum(1).pow(2).mean(0)).sum()
    got = compute_metrics(net, x, y, metrics=["fisher"])["0"]
    assert list(got) == ["fisher"]
    assert got["fisher"] == pytest.approx(float(expected), rel=1e-5)


def test_metric_and_layer_subsets():
    net = build_model("mobilenet_v2", num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = compute_metrics(net, x, y, metrics=["snip", "wt_avg"], layers=["features.18.0", "features.0.0"])
    assert list(out) == ["features.0.0", "features.18.0"]                 # execution order, not request order
    assert all(list(v) == ["snip", "wt_avg"] for v in out.values())
    with pytest.raises(ZestError, match="unknown metric 'snipp'.*did you mean snip"):
        compute_metrics(net, x, y, metrics=["snipp"])
    with pytest.raises(ZestError, match="unknown layer 'features.18.1'"):
        compute_metrics(net, x, y, metrics=["snip"], layers=["features.18.1"])


def test_synflow_ignores_the_data():
    net = build_model("mobilenet_v2", num_classes=10)
    a = compute_metrics(net, torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), metrics=["synflow"])
    b = compute_metrics(net, 5 * torch.rand(2, 3, 32, 32), torch.tensor([3, 7]), metrics=["synflow"])
    assert a == b
    assert all(v["synflow"] > 0 and math.isfinite(v["synflow"]) for v in a.values())
    mlp = tiny_mlp()
    assert compute_metrics(mlp, *batch((6,), seed=1), metrics=["synflow"]) == \
        compute_metrics(mlp, *batch((6,), seed=2), metrics=["synflow"])


def test_dropout_masks_come_from_the_seed():
    """MobileNetV2's classifier drops 20% of its features in the train-mode pass: the seed fixes the masks, whatever
    the global RNG holds, and another seed draws others (so the check has teeth)."""
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    a = compute_metrics(net, x, y, metrics=["grad_norm", "snip"])
    torch.rand(1000)                                                      # the global RNG moves on
    state = torch.get_rng_state()
    assert compute_metrics(net, x, y, metrics=["grad_norm", "snip"]) == a
    assert torch.equal(torch.get_rng_state(), state)                      # and is left where it was
    other = compute_metrics(net, x, y, metrics=["grad_norm", "snip"], seed=1)
    assert other["features.18.0"] != a["features.18.0"]


# ---------------------------------------------------------------- the model comes back exactly as it went in

def snapshot(model):
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "flags": {k: p.requires_grad for k, p in model.named_parameters()},
            "grads": {k: (p.grad, None if p.grad is None else p.grad.clone()) for k, p in model.named_parameters()},
            "modes": {k: m.training for k, m in model.named_modules()}}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after[k], v), k                                # weights and BN running stats, bit for bit
    assert {k: p.requires_grad for k, p in model.named_parameters()} == before["flags"]
    for k, p in model.named_parameters():
        obj, value = before["grads"][k]
        if obj is None:
            assert p.grad is None, k
        else:
            assert p.grad is obj and torch.equal(p.grad, value), k
    assert {k: m.training for k, m in model.named_modules()} == before["modes"]


def test_compute_metrics_leaves_a_training_model_untouched():
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=10)
    model.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()                               # every param holds a .grad
    model.features[3].eval()                                              # mixed modes must survive too
    before = snapshot(model)
    assert before["state"]["features.0.1.num_batches_tracked"] == 1
    compute_metrics(model, x, y)
    assert_unchanged(model, before)


def test_compute_metrics_leaves_a_frozen_eval_model_untouched():
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=10)
    for p in model.features[:4].parameters():
        p.requires_grad_(False)
    model.eval()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()                               # grads only where requires_grad
    model.features[10].conv[1][0].weight.grad = None
    before = snapshot(model)
    assert not before["flags"]["features.0.0.weight"] and before["grads"]["features.0.0.weight"][0] is None
    result = compute_metrics(model, x, y)
    assert len(result) == 52 and all(math.isfinite(v) for m in result.values() for v in m.values())
    assert_unchanged(model, before)


# ---------------------------------------------------------------- non-finite values

def test_non_finite_values_warn_and_are_reported_as_is():
    net = tiny_mlp()
    with torch.no_grad():
        net[0].weight[1, 2] = float("inf")
    before = snapshot(net)
    x, y = batch((6,))
    with pytest.warns(UserWarning, match="non-finite values in metrics: .*wt_avg"):
        result = compute_metrics(net, x, y)
    assert result["0"]["wt_avg"] == float("inf") and result["0"]["wt_abs_avg"] == float("inf")
    assert math.isnan(result["0"]["wt_std"])
    assert set(result["0"]) == set(ALL)
    assert_unchanged(net, before)                                         # the inf is still there, nothing else moved


def test_finite_values_do_not_warn():
    net = tiny_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_metrics(net, *batch((6,)))
