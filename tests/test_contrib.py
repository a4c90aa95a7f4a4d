"""Contribution sweep: learning-rate probe, resume after a real kill (and a torn last row), shard merge, Ray backend, corpus checks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zest_edge.config import load_config
from zest_edge.contrib import HEAD, SweepConfig, chosen_lr, load_sweep, probe_names, run_sweep
from zest_edge.corpus import load_corpus, still_rising
from zest_edge.errors import ZestError

CLI = [str(Path(sys.executable).parent / "zest-edge")]
TINY = dict(model="resnet18", data="fashion_mnist", limit=40, val_limit=20, resolution=32, seed=0, epochs=1,
            score_epochs=1, batch_size=16, lr_grid=[0.01])


def tiny(**changes) -> SweepConfig:
    return SweepConfig(**{**TINY, **changes})


def layer_rows(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines() if '"type": "layer"' in l]


def test_sweep_resumes_after_kill_without_redoing_rows(tmp_path):
    out = tmp_path / "sweep"
    cmd = CLI + ["contrib", "--model", "resnet18", "--data", "fashion_mnist", "--limit", "40", "--val-limit", "20",
                 "--resolution", "32", "--epochs", "1", "--score-epochs", "1", "--lr", "0.01", "--batch-size", "16",
                 "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    store = out / "rows.jsonl"
    deadline = time.time() + 1800                   # hang guard only: waits for 3 finished rows
    while time.time() < deadline and not (store.exists() and len(layer_rows(store)) >= 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = layer_rows(store)
    assert 3 <= len(before) < 21, "kill landed before or after the sweep"
    with open(store, "a") as f:                               # and a row torn mid-write, as a kill can leave it
        f.write('{"type": "layer", "layer": "layer4.1.conv2", "contrib')
    subprocess.run(cmd, check=True, capture_output=True)
    after = layer_rows(store)
    assert after[:len(before)] == before                      # finished rows kept as they were
    names = [r["layer"] for r in after]
    assert len(names) == len(set(names)) == 21                # 20 layers + head, none twice
    assert HEAD in names


def test_shards_merge_to_the_unsharded_sweep(tmp_path):
    whole = run_sweep(tiny(), tmp_path / "whole", progress=False)
    for i in range(2):
        run_sweep(tiny(), tmp_path / "sharded", shard=(i, 2), progress=False)
    merged = load_sweep(tmp_path / "sharded")
    assert set(merged["rows"]) == set(whole["rows"])
    for name, row in whole["rows"].items():
        assert merged["rows"][name]["acc"] == row["acc"]
        assert merged["rows"][name]["curve"] == row["curve"]
    again = run_sweep(tiny(), tmp_path / "sharded", progress=False)  # unsharded after the shards: nothing to redo,
    assert again["rows"] == merged["rows"]
    assert not (tmp_path / "sharded" / "rows.jsonl").exists()       # and no empty store file left behind


def test_changed_config_is_refused(tmp_path):
    run_sweep(tiny(), tmp_path / "s", shard=(0, 10), progress=False)
    for shard in (0, 10), (1, 10):                            # its own store file, or another shard's
        with pytest.raises(ZestError, match="different configuration"):
            run_sweep(tiny(epochs=2), tmp_path / "s", shard=shard, progress=False)


def test_ray_backend_matches_local(tmp_path):
    pytest.importorskip("ray")
    import ray
    config = tiny(lr_grid=[0.003, 0.01], probe_layers=1)
    local = run_sweep(config, tmp_path / "local", shard=(0, 7), progress=False)
    try:
        remote = run_sweep(config, tmp_path / "ray", shard=(0, 7), backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert set(remote["rows"]) == set(local["rows"]) and remote["lr"] == local["lr"]
    for name, row in local["rows"].items():
        assert remote["rows"][name]["acc"] == pytest.approx(row["acc"], abs=1e-9)


def test_probe_picks_the_smallest_rate_within_one_se_of_the_best(tmp_path):
    config = tiny(lr_grid=[1e-5, 0.01], probe_layers=2, epochs=2)
    sweep = run_sweep(config, tmp_path / "s", shard=(0, 21), progress=False)
    probes = sweep["probes"]
    assert len(probes) == 2 * 3 and {p["lr"] for p in probes} == {1e-5, 0.01}
    mean = {lr: sum(p["acc"] for p in probes if p["lr"] == lr) / 3 for lr in (1e-5, 0.01)}
    se = sum(p["se"] for p in probes) / len(probes)
    assert sweep["lr"] == min(lr for lr in mean if mean[lr] >= max(mean.values()) - se)
    assert all(r["lr"] == sweep["lr"] for r in sweep["rows"].values())
    assert HEAD in {p["layer"] for p in probes}
    # the rule on probes made by hand: 0.01 is best, 0.003 within one SE of it, 0.001 not
    config = {"protocol": {"lr_grid": [1e-3, 3e-3, 1e-2]}, "probe_count": 2}
    hand = [{"lr": lr, "acc": acc, "se": 0.006} for lr, accs in
            {1e-3: (0.90, 0.92), 3e-3: (0.93, 0.93), 1e-2: (0.935, 0.935)}.items() for acc in accs]
    assert chosen_lr(config, hand) == 3e-3
    assert chosen_lr(config, [{**p, "se": 0.001} for p in hand]) == 1e-2
    assert chosen_lr(config, hand[:-1]) is None                     # a probe still missing


def test_layer_rows_at_another_rate_are_redone(tmp_path):
    """A store whose probes now choose another rate (e.g. made under an earlier rule) keeps its old layer rows
    but does not count them: resuming trains those layers again at the chosen rate."""
    config = tiny(lr_grid=[1e-5, 0.01], probe_layers=2, epochs=1)
    first = run_sweep(config, tmp_path / "s", shard=(20, 21), progress=False)
    store = tmp_path / "s" / "rows.shard-20-of-21.jsonl"
    rows = [json.loads(line) for line in store.read_text().splitlines()]
    other = 0.01 if first["lr"] == 1e-5 else 1e-5
    store.write_text("".join(json.dumps({**r, "lr": other} if r["type"] == "layer" else r) + "\n" for r in rows))
    assert load_sweep(tmp_path / "s")["rows"] == {}
    again = run_sweep(config, tmp_path / "s", shard=(20, 21), progress=False)
    assert set(again["rows"]) == set(first["rows"]) and all(r["lr"] == first["lr"] for r in again["rows"].values())
    assert again["rows"][HEAD]["acc"] == pytest.approx(first["rows"][HEAD]["acc"], abs=1e-6)


def test_score_averages_the_last_epochs_and_the_head_init_follows_train_seed(tmp_path):
    a = run_sweep(tiny(epochs=3, score_epochs=2), tmp_path / "a", shard=(20, 21), progress=False)["rows"][HEAD]
    assert a["acc"] == pytest.approx(sum(a["curve"][-2:]) / 2)
    assert a["se"] == pytest.approx((a["acc"] * (1 - a["acc"]) / 20) ** 0.5)
    b = run_sweep(tiny(epochs=3, score_epochs=2, train_seed=5), tmp_path / "b", shard=(20, 21), progress=False)
    assert b["rows"][HEAD]["val_loss_curve"] != a["val_loss_curve"]


def test_probe_layers_spread_over_depth():
    names = [f"l{i}" for i in range(10)]
    assert probe_names(names, 3) == [HEAD, "l2", "l5", "l7"]      # a quarter, half, three quarters of the way
    assert probe_names(names, 0) == [HEAD]


def test_bad_sweep_yaml_is_one_line(tmp_path):
    for text, expected in [("model: resnet18\ndata: fashion_mnist\nepochs: three\n", "epochs must be an integer"),
                           ("model: resnet18\ndata: fashion_mnist\nlr_grid: [0.1, -1]\n", "lr_grid"),
                           ("model: resnet18\ndata: fashion_mnist\nepoch: 3\n", "unknown setting 'epoch'")]:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        res = subprocess.run(CLI + ["contrib", "--config", str(cfg), "--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and expected in res.stderr, res.stderr
        assert not (tmp_path / "o").exists()


def test_a_config_takes_its_base_and_overrides_what_it_names(tmp_path):
    (tmp_path / "first.yaml").write_text("model: resnet18\ndata: fashion_mnist\nlr_grid: [0.001, 0.01]\n")
    (tmp_path / "retest").mkdir()
    (tmp_path / "retest" / "again.yaml").write_text("base: ../first.yaml\ntrain_seed: 1\nlr_grid: [0.01]\n")
    assert load_config(tmp_path / "retest" / "again.yaml", None) == dict(model="resnet18", data="fashion_mnist",
                                                                         lr_grid=[0.01], train_seed=1)
    (tmp_path / "first.yaml").write_text("base: retest/again.yaml\nmodel: resnet18\n")
    with pytest.raises(ZestError, match="cycle"):
        load_config(tmp_path / "retest" / "again.yaml", None)
    (tmp_path / "lost.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ZestError, match="config not found: .*nowhere.yaml"):
        load_config(tmp_path / "lost.yaml", None)


def test_each_retest_config_is_its_first_sweep_but_for_train_seed_and_rate():
    """A retest measures training-seed noise only: the same task and protocol, another seed, at most the rate pinned."""
    folder = Path(__file__).resolve().parents[1] / "configs" / "corpus"
    retests = sorted((folder / "retest").glob("*.yaml"))
    assert len(retests) >= 2
    for path in retests:
        retest, first = load_config(path, None), load_config(folder / path.name, None)
        assert retest["train_seed"] != first.get("train_seed", first["seed"]), path.name
        if len(retest["lr_grid"]) == 1:                         # pinned: to the rate the first sweep chose
            first_sweep = load_sweep(folder.parents[1] / "corpus" / "sweeps" / path.stem)
            assert retest["lr_grid"] == [first_sweep["lr"]], path.name
        changed = {k for k in retest.keys() | first.keys() if retest.get(k) != first.get(k)}
        assert changed <= {"train_seed", "lr_grid"}, (path.name, changed)


def test_each_rate_study_config_is_its_combination_at_a_third_of_the_probed_rate():
    """rate_study/X.yaml changes X.yaml's rate only (to about a third of the one its probe chose); its retest/
    changes the rate study's training seed only: so the better of two rates compares rates, nothing else."""
    root = Path(__file__).resolve().parents[1]
    folder = root / "configs" / "corpus" / "rate_study"
    studies = sorted(folder.glob("*.yaml"))
    assert len(studies) == len(list((root / "configs" / "corpus").glob("*.yaml")))      # every combination
    for path in studies:
        study, first = load_config(path, None), load_config(folder.parent / path.name, None)
        probed = json.loads((root / "corpus" / f"{path.stem}.json").read_text())["lr"]
        assert len(study["lr_grid"]) == 1 and probed / 3.5 < study["lr_grid"][0] < probed, path.name
        assert {k for k in study.keys() | first.keys() if study.get(k) != first.get(k)} == {"lr_grid"}, path.name
    for path in sorted((folder / "retest").glob("*.yaml")):
        retest, study = load_config(path, None), load_config(folder / path.name, None)
        assert {k for k in retest.keys() | study.keys() if retest.get(k) != study.get(k)} == {"train_seed"}


def test_corrupt_corpus_row_is_a_clear_error(tmp_path):
    good = {"format": "zest-edge/combination", "version": 1, "model": "m", "data": "d", "metric_names": ["snip"],
            "layers": [{"name": "a", "contribution": 0.5, "metrics": {"snip": 1.0}},
                       {"name": "b", "contribution": "oops", "metrics": {"snip": 2.0}}]}
    (tmp_path / "c.json").write_text(json.dumps(good))
    with pytest.raises(ZestError, match=r"c\.json: layers\[1\]\.contribution must be a number, got 'oops'"):
        load_corpus(tmp_path)
    res = subprocess.run(CLI + ["train-predictor", "--corpus", str(tmp_path), "--out", str(tmp_path / "p.json")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "contribution must be a number" in res.stderr
    assert not (tmp_path / "p.json").exists()


def test_still_rising_names_layers_whose_last_epoch_gained_more_than_two_se():
    layer = lambda name, curve: {"name": name, "curve": curve, "contribution_se": 0.005}
    c = {"layers": [layer("flat", [0.80, 0.90, 0.905]), layer("rising", [0.60, 0.80, 0.85]),
                    layer("falling", [0.9, 0.95, 0.90])]}
    assert still_rising(c) == ["rising"]
    assert still_rising({"layers": [{"name": "v1", "curve": [0.5, 0.6]}]}) is None      # no standard errors
    committed = load_corpus(Path(__file__).parent.parent / "corpus" / "superseded" / "mnv2_animal_4ep.json")[0]
    assert "features.16.conv.2" in still_rising(committed)     # 0.841 -> 0.865 in its last epoch, SE ~0.005


def test_recheck_rising_at_the_sweeps_own_epochs_reproduces_its_scores(tmp_path):
    """tools/recheck_rising.py trains the same jobs as the sweep (task, rate, seed, schedule): at the sweep's own
    epochs every rechecked layer and the head score exactly what the corpus file says."""
    from zest_edge.corpus import combination_record, write_combination
    sweep = tiny(epochs=2, score_epochs=1)
    run_sweep(sweep, tmp_path / "sweep", progress=False)
    record = combination_record(sweep.load_task(), tmp_path / "sweep", batch_size=16, batch_seeds=[0])
    write_combination(tmp_path / "combo.json", record)
    (tmp_path / "sweep.yaml").write_text(json.dumps(TINY | {"epochs": 2, "score_epochs": 1}))
    root = Path(__file__).parent.parent
    run = subprocess.run([sys.executable, str(root / "tools" / "recheck_rising.py"), str(tmp_path / "sweep.yaml"),
                          str(tmp_path / "combo.json"), "--epochs", "2", "--top", "3", "--out", str(tmp_path / "re")],
                         capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, run.stderr
    res = json.loads((tmp_path / "re" / "recheck.json").read_text())
    assert len(res["layers"]) >= 4 and res["layers"][-1]["layer"] == HEAD
    for l in res["layers"]:
        assert l["score_longer"] == pytest.approx(l["score"])
    assert "| layer | still rising |" in (tmp_path / "re" / "recheck.md").read_text()
