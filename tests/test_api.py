"""The Python API (`import zest_edge` only): rank -> select -> sparsify -> finetune -> export -> device steps on real
data; the package's import structure: no cycles, nothing imports upward into cli/bench, and the on-device runner
loads none of the exporter's modules."""
import ast
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import zest_edge as ze

PACKAGE = Path(ze.__file__).parent


def test_rank_select_finetune_export_and_train_on_device_through_the_api(tmp_path):
    task = ze.load_task("mobilenet_v2", "fashion_mnist", resolution=32, limit=60, val_limit=40, seed=0)
    ranking = ze.rank_task(task, top_k=3, batch_size=16)
    chosen = ze.select_layers(task, "ranking", ranking=ranking)
    assert len(chosen.layers) == 3 and set(chosen.layers) == set(ranking["selected"])
    sm = ze.sparsify(task.model, chosen.layers)
    assert {n.rsplit(".", 1)[0] for n, _ in sm.trainable} == set(chosen.layers) | {"classifier.1"}
    record = ze.finetune(task, chosen.layers, ze.Schedule(epochs=1, lr=0.01, batch_size=16), tmp_path / "run",
                         progress=False)
    assert len(record["epochs"]) == 1 and 0.0 <= record["epochs"][0]["val_acc"] <= 1.0 and (tmp_path / "run" / "metrics.json").exists()
    manifest = ze.export_artifacts(task.model, chosen.layers, tmp_path / "art", preprocess=task.preprocess,
                                   classes=task.train.classes, batch_size=16)
    assert [layer["name"] for layer in manifest["selected_layers"]] == chosen.layers
    run = ze.device_train(tmp_path / "art", task.train, task.val, epochs=1, batch_size=16,
                          out_dir=tmp_path / "device", progress_bar=False, echo=lambda *a: None)
    assert run["epochs"][0]["steps"] == 4 and run["inference_val_accuracy"] == run["final_val_accuracy"]


def test_the_api_names_what_it_exports():
    assert set(ze.__all__) >= {"load_task", "rank_task", "select_layers", "sparsify", "finetune", "export_artifacts",
                               "device_train"}
    for module in ("device", "export", "ranking", "selection", "sparse", "task", "training"):
        importlib.import_module(f"zest_edge.{module}")          # a submodule import must not shadow an API name
    assert not [name for name in ze.__all__ if isinstance(getattr(ze, name), types.ModuleType)]
    try:
        ze.no_such_function
    except AttributeError as e:
        assert "no_such_function" in str(e)
    else:
        raise AssertionError("unknown attribute did not raise")


def internal_imports() -> dict[str, set[str]]:
    """module -> the zest_edge modules it imports (relative or absolute), from the source."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if parts[-1] == "__init__" else module.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
                if target.startswith("zest_edge"):
                    deps.add(target)
                    deps.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("zest_edge"))
        graph[module] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_the_import_graph_has_no_cycles_and_nothing_imports_cli_or_bench():
    graph = internal_imports()
    assert "zest_edge.selection" in graph and "zest_edge.export.manifest" in graph
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in graph[m]:
            assert state.get(d) != "open", "import cycle: " + " -> ".join(path + [d])
            if d not in state:
                visit(d, path + [d])
        state[m] = "done"
    for m in graph:
        if m not in state:
            visit(m, [m])
    for m, deps in graph.items():
        if not m.startswith(("zest_edge.cli", "zest_edge.bench", "zest_edge.demo")):
            assert not {d for d in deps if d.startswith(("zest_edge.cli", "zest_edge.bench"))}, m


def test_the_device_runner_loads_none_of_the_exporter():
    code = ("import sys, zest_edge.device; "
            "print(sorted(m for m in sys.modules if m.startswith(('zest_edge', 'torch.onnx', 'onnxscript'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                        .stdout.replace("'", '"'))
    assert "zest_edge.export.manifest" in loaded
    assert not [m for m in loaded if m.startswith("torch.onnx") or m in (
        "zest_edge.export.torch_export", "zest_edge.export.graph", "zest_edge.export.artifacts", "zest_edge.task")]
