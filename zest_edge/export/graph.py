"""ONNX graph rewriting for training exports: BatchNorm freezing, constant folding, the parameter→initializer map,
the fixes ORT's artifact generator needs, and gradient-node counting. Works on ModelProtos; imports no exporter."""
import numpy as np
from torch import nn

from ..errors import ZestError

OPSET = 17

NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                    "Bernoulli", "Dropout"}


def fold_small_constants(proto, limit: int = 4096) -> int:
    """Evaluate nodes whose inputs are all small constants (the exporter leaves chains like
    ConstantOfShape/Concat/Reshape/Slice computing Pad's pads), so shape inference sees constant values."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if int(np.prod(i.dims)) <= limit}
    keep, folded = [], 0
    for node in proto.graph.node:
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in NONDETERMINISTIC
                    and all(i in consts for i in node.input if i)
                    and not any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute))
        if foldable:
            try:
                outs = ReferenceEvaluator(node, opsets={"": opset}).run(
                    None, {i: consts[i] for i in node.input if i})
            except Exception:
                outs = None
            if outs is not None and len(outs) == len(node.output) and all(
                    isinstance(o, np.ndarray) and o.size <= limit for o in outs):
                for name, value in zip(node.output, outs):
                    consts[name] = value
                    proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
                folded += 1
                continue
        keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    drop_unused_initializers(proto)
    return folded


def map_initializers(proto, model: nn.Module, names: list[str]) -> dict[str, str]:
    """torch parameter name -> the ONNX initializer holding it (same name, else the unique tensor of equal value,
    possibly transposed as the exporter does for MatMul). Missing ones are left out."""
    from onnx import numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    params = dict(model.named_parameters())
    found, by_shape = {}, None
    for n in names:
        p = params[n].detach().cpu().numpy()
        if n in inits:
            found[n] = n
            continue
        if by_shape is None:   # decode lazily: most names match directly
            by_shape = {}
            for i in proto.graph.initializer:
                by_shape.setdefault(tuple(i.dims), []).append(i.name)
        hits = []
        for shape, transposed in ((p.shape, False), (p.shape[::-1], True)):
            if transposed and p.ndim != 2:
                continue
            for cand in by_shape.get(tuple(shape), []):
                arr = numpy_helper.to_array(inits[cand])
                if np.array_equal(arr.T if transposed else arr, p) and cand not in found.values():
                    hits.append(cand)
        if len(set(hits)) == 1:
            found[n] = hits[0]
    return found


def _bn_rank(proto) -> dict[str, int]:
    """Rank of each BatchNormalization input, from shape inference."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(proto)
    ranks = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def freeze_batchnorm(proto, keep: set[str] = frozenset()) -> list[str]:
    """Rewrite every BatchNormalization node (except those whose scale initializer is in `keep`: BN that trains)
    into Mul/Add with constant scale/shift; returns the new initializer names (non-trainable). Removes the BN
    initializers no other node reads."""
    import onnx
    from onnx import helper, numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    ranks = None
    new_nodes, created, replaced = [], [], set()
    for node in proto.graph.node:
        if node.op_type != "BatchNormalization" or node.input[1] in keep:
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, gamma, beta, mean, var = node.input[:5]
        missing = [n for n in (gamma, beta, mean, var) if n not in inits]
        if missing:
            raise ZestError(f"BatchNorm node {node.name} reads {missing[0]}, which is not a constant initializer")
        if ranks is None:
            ranks = _bn_rank(proto)
        rank = ranks.get(x)
        if rank is None or rank < 2:
            raise ZestError(f"cannot freeze BatchNorm node {node.name}: the rank of its input is unknown")
        if attrs.get("training_mode", 0):
            raise ZestError(f"internal error: frozen BatchNorm {gamma} was exported in training mode")
        g, b, mu, v = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in (gamma, beta, mean, var))
        eps = float(attrs.get("epsilon", 1e-5))
        scale = g / np.sqrt(v + eps)
        shift = b - mu * scale
        bshape = (-1,) + (1,) * (rank - 2)
        base = gamma[:-len(".weight")] if gamma.endswith(".weight") else node.name.strip("/").replace("/", ".")
        s_name, t_name = f"{base}.frozen_bn_scale", f"{base}.frozen_bn_shift"
        for name, arr in ((s_name, scale), (t_name, shift)):
            proto.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32).reshape(bshape), name))
            created.append(name)
        mid = f"{node.output[0]}_frozen_bn_scaled"
        new_nodes.append(helper.make_node("Mul", [x, s_name], [mid], name=f"{node.name}_frozen_mul"))
        new_nodes.append(helper.make_node("Add", [mid, t_name], [node.output[0]], name=f"{node.name}_frozen_add"))
        used_outputs = {o for n in proto.graph.node for o in n.input} | {o.name for o in proto.graph.output}
        extra = [o for o in node.output[1:] if o and o in used_outputs]
        if extra:
            raise ZestError(f"BatchNorm node {node.name} exposes its batch statistics ({extra[0]}); cannot freeze it")
        replaced.update((gamma, beta, mean, var))
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    still_used = {i for n in proto.graph.node for i in n.input}
    keep = [i for i in proto.graph.initializer if i.name not in replaced or i.name in still_used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    onnx.checker.check_model(proto)
    return created


def expose_saved_statistics(proto) -> int:
    """ORT's LayerNormalization gradient reads the node's optional Mean and InvStdDev outputs, which the exporter
    leaves off: name them so the gradient builder can wire them."""
    added = 0
    for node in proto.graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"{node.output[0]}_saved_mean", f"{node.output[0]}_saved_inv_std"])
            added += 1
    return added


def fix_eval_model(proto) -> int:
    """An eval model needs plain inference BatchNormalization nodes (one output, training_mode=0: generate_artifacts
    only flips the attribute) and no initializer left unused (Dropout's training flag, which it unhooks)."""
    fixed = 0
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization" and (len(node.output) > 1 or any(
                a.name == "training_mode" and a.i for a in node.attribute)):
            for a in node.attribute:
                if a.name == "training_mode":
                    a.i = 0
            del node.output[1:]
            fixed += 1
    return fixed + drop_unused_initializers(proto)


def drop_unused_initializers(proto) -> int:
    """Remove initializers and Constant nodes no node reads (ORT warns about each when it loads the model)."""
    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    dead = [n for n in proto.graph.node if n.op_type == "Constant" and not set(n.output) & used]
    for node in dead:
        proto.graph.node.remove(node)
    unused = [i for i in proto.graph.initializer if i.name not in used]
    for init in unused:
        proto.graph.initializer.remove(init)
    return len(unused) + len(dead)


def gradient_nodes(proto) -> list:
    """Nodes of the gradient graph in a training model (ORT names them `..._Grad/...` and types them `*Grad`)."""
    return [n for n in proto.graph.node if n.op_type.endswith("Grad") or "_Grad/" in n.name or n.name.endswith("_Grad")]


