"""Predictor: every scorer learns a planted ranking, not shuffled labels; portable save/load (no pickle); version 1
files still load; bad files are clear errors; held-out evaluation and the ground truth's ceiling."""
import json

import numpy as np
import pytest
from scipy.stats import kendalltau

from zest_edge.corpus import combination_name
from zest_edge.errors import ZestError
from zest_edge.io import write_json
from zest_edge.features import feature_matrix, feature_set
from zest_edge.predictor import SCORERS, Combination, Predictor, train
from zest_edge.bench.predictor_eval import (ceilings, evaluate, markdown, nested, noise_ceiling, perfect_ranker_tau,
                                           tau)

METRICS = ["snip", "grad_norm", "fisher"]


def synthetic_combo(rng, n=30, scale=1.0, planted=True):
    """Layers whose contribution is a hidden function of snip and depth; raw scales differ per combination."""
    snip = rng.lognormal(0, 2, n) * scale
    depth = np.linspace(0, 1, n)
    contribution = np.log(snip) + 2 * depth if planted else rng.normal(size=n)
    layers = [{"name": f"l{i}", "index": i, "type": "conv_pw", "params": int(rng.integers(100, 10000)),
               "depth": float(depth[i]), "kernel": 1, "in_channels": 8, "out_channels": 8,
               "metrics": {"snip": float(snip[i]), "grad_norm": float(rng.random()), "fisher": float(rng.random() * scale)},
               "contribution": float(contribution[i])} for i in range(n)]
    return layers, contribution


def fit(combos, **kwargs):
    return train([Combination([layers], y) for layers, y in combos], METRICS, **kwargs)


@pytest.mark.parametrize("scorer,kwargs", [("pairwise", {"l2": 1e-3}), ("lambdarank", {}), ("ensemble", {})])
@pytest.mark.parametrize("features", ["v1", "v2"])
def test_learns_planted_ranking_across_scales(scorer, kwargs, features):
    rng = np.random.default_rng(0)
    combos = [synthetic_combo(rng, scale=10.0 ** k) for k in range(-3, 4)]
    p = fit(combos[:-1], scorer=scorer, features=features, **kwargs)   # pairwise: the default L2 suits a noisy corpus
    layers, y = combos[-1]
    assert tau(p.score(layers), y) > (0.9 if scorer == "pairwise" else 0.75)


def test_does_not_learn_shuffled_labels():
    rng = np.random.default_rng(1)
    combos = [synthetic_combo(rng, planted=False) for _ in range(6)]
    held = [synthetic_combo(rng, planted=False) for _ in range(20)]
    for scorer in SCORERS:
        p = fit(combos[:-1], scorer=scorer)
        assert abs(np.mean([tau(p.score(l), y) for l, y in held])) < 0.1, scorer


@pytest.mark.parametrize("scorer", list(SCORERS))
def test_save_load_round_trip(tmp_path, scorer):
    rng = np.random.default_rng(2)
    combos = [synthetic_combo(rng) for _ in range(3)]
    p = fit(combos, scorer=scorer, features="v2", **({"epochs": 50} if scorer == "pairwise" else {}))
    p.save(tmp_path / "p.json")
    q = Predictor.load(tmp_path / "p.json")
    layers, _ = combos[0]
    assert np.array_equal(p.score(layers), q.score(layers))
    text = (tmp_path / "p.json").read_text()
    assert json.loads(text)["scorer"] == scorer and "pickle" not in text


def test_version_1_files_load_as_pairwise_scorers(tmp_path):
    """A file written by the version-1 format (`weights`, no `scorer`) scores as the same linear model."""
    rng = np.random.default_rng(8)
    combos = [synthetic_combo(rng) for _ in range(3)]
    p = fit(combos, epochs=50)
    obj = json.loads(json.dumps({"format": "zest-edge/predictor", "version": 1, "metric_names": METRICS,
                                 "features": p.features, "weights": p.scorer.to_json(), "provenance": {}}))
    (tmp_path / "v1.json").write_text(json.dumps(obj))
    layers, _ = combos[0]
    assert np.array_equal(Predictor.load(tmp_path / "v1.json").score(layers), p.score(layers))
    assert np.allclose(p.score(layers), feature_matrix(layers, p.features) @ np.array(obj["weights"]["skip"]))
    obj["weights"]["skip"] = obj["weights"]["skip"][:-1]
    (tmp_path / "v1.json").write_text(json.dumps(obj))
    with pytest.raises(ZestError, match="malformed: weights do not match its"):
        Predictor.load(tmp_path / "v1.json")


def test_feature_sets_and_the_v2_features():
    rng = np.random.default_rng(9)
    layers, _ = synthetic_combo(rng, n=6)
    layers[1].update(in_channels=16, out_channels=96)         # an expanding pointwise conv
    layers[2].update(in_channels=96, out_channels=24)         # a projection
    v1, v2 = feature_set("v1", METRICS), feature_set("v2", METRICS)
    assert set(v1) < set(v2) and len(v1) == 2 * len(METRICS) + 9 and len(v2) == len(v1) + len(METRICS) + 2
    structure, metrics = feature_set("structure", METRICS), feature_set("metrics", METRICS)
    assert sorted(structure + metrics) == sorted(v2) and not set(structure) & set(metrics)
    x = feature_matrix(layers, v2)
    col = {n: x[:, i] for i, n in enumerate(v2)}
    assert col["channel_ratio"][1] == pytest.approx(np.log(6)) and col["channel_ratio"][2] == pytest.approx(np.log(24 / 96))
    per_param = np.log([l["metrics"]["snip"] / l["params"] for l in layers])
    assert col["snip:per_param:zlog"] == pytest.approx((per_param - per_param.mean()) / per_param.std(), abs=1e-5)
    with pytest.raises(ZestError, match="unknown feature set 'v3'"):
        feature_set("v3", METRICS)


def test_predictor_for_other_feature_set_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    fit([synthetic_combo(rng)], epochs=5).save(tmp_path / "p.json")
    obj = json.loads((tmp_path / "p.json").read_text())
    obj["features"] = obj["features"][:-1] + ["something_else"]
    (tmp_path / "p.json").write_text(json.dumps(obj))
    with pytest.raises(ZestError, match="different feature set"):
        Predictor.load(tmp_path / "p.json")
    (tmp_path / "q.json").write_text(json.dumps({"format": "zest-edge/ranking"}))
    with pytest.raises(ZestError, match="not a zest-edge predictor"):
        Predictor.load(tmp_path / "q.json")


def test_missing_metric_is_a_clear_error():
    rng = np.random.default_rng(4)
    p = fit([synthetic_combo(rng)], epochs=5)
    layers, _ = synthetic_combo(rng)
    for layer in layers:
        del layer["metrics"]["fisher"]
    with pytest.raises(ZestError, match="fisher"):
        p.score(layers)


def test_leave_one_out_evaluation_reports_every_baseline():
    rng = np.random.default_rng(5)
    combos = []
    for i, (model, data) in enumerate([("a", "x"), ("a", "y"), ("a", "z"), ("b", "x")]):
        layers, _ = synthetic_combo(rng, scale=10.0 ** i)
        combos.append({"model": model, "data": data, "sweep": {"task": {"resolution": 32}}, "layers": layers})
    candidates = {"pairwise/v1": {"scorer": "pairwise", "features": "v1"},
                  "lambdarank/v2": {"scorer": "lambdarank", "features": "v2"}}
    res = evaluate(combos, METRICS, candidates=candidates, epochs=100, lr=0.03)
    assert {"combination", "dataset", "model"} <= set(res)
    assert res["chosen_by"] == "mean leave-one-model-out τ, each held-out model weighted once"
    rows = res["model"]["rows"]                          # model a has three combinations, b one: each counts once
    by_model = {n: np.mean([np.mean([r["predictor_tau"][n] for r in rows if r["held_out"] == m]) for m in "ab"])
                for n in candidates}
    assert res["model"]["mean"]["predictor_tau_by_group"] == pytest.approx(by_model)
    assert res["chosen"] == max(by_model, key=by_model.get)
    row = res["combination"]["rows"][0]
    for key in ("predictor_tau", "best_train_metric_tau", "oracle_tau", "random_tau", "predictor_top5",
                "single_metric_taus", "ceiling_tau"):
        assert key in row
    assert set(row["predictor_tau"]) == set(candidates)
    assert min(res["combination"]["mean"]["predictor_tau"].values()) > 0.75
    assert abs(res["combination"]["mean"]["random_tau"]) < 0.1
    # the baselines, recomputed here with scipy from the raw files: the oracle is the best |τ| of any single metric
    # on the held-out combination, the best-on-train metric's τ is that metric's (signed) τ there
    by_name = {f"{c['model']}/{c['data']}@32px": c for c in combos}
    for row in res["combination"]["rows"]:
        c = by_name[row["combination"]]
        y = [l["contribution"] for l in c["layers"]]
        taus = {m: kendalltau([l["metrics"][m] for l in c["layers"]], y).statistic for m in METRICS}
        assert row["oracle_tau"] == pytest.approx(max(abs(t) for t in taus.values()), abs=1e-12)
        name = row["best_train_metric"]
        assert row["best_train_metric_tau"] == pytest.approx((-1 if name[0] == "-" else 1) * taus[name.lstrip("-")],
                                                             abs=1e-12)


def test_nested_selection_chooses_on_the_other_models_only():
    """Each held-out model is scored with the candidate that leave-one-model-out on the other models picks (there
    computed again here), at the τ the outer leave-one-model-out rows give it."""
    rng = np.random.default_rng(6)
    combos = []
    for i, (model, data) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("c", "y"), ("c", "z")]):
        layers, _ = synthetic_combo(rng, scale=10.0 ** (i % 3))
        combos.append({"model": model, "data": data, "sweep": {"task": {"resolution": 32}}, "layers": layers})
    candidates = {"pairwise/v1": {"scorer": "pairwise", "features": "v1"},
                  "lambdarank/structure": {"scorer": "lambdarank", "features": "structure"}}
    outer = evaluate(combos, METRICS, schemes=("model",), candidates=candidates, epochs=30, lr=0.03)["model"]
    res = nested(combos, METRICS, candidates, outer, epochs=30, lr=0.03)
    assert [f["held_out"] for f in res["folds"]] == ["a", "b", "c"]
    for fold in res["folds"]:
        rest = [c for c in combos if c["model"] != fold["held_out"]]
        assert fold["chosen"] == evaluate(rest, METRICS, schemes=("model",), candidates=candidates, epochs=30,
                                          lr=0.03)["chosen"]
        rows = [r for r in outer["rows"] if r["held_out"] == fold["held_out"]]
        assert fold["tau"] == pytest.approx(np.mean([r["predictor_tau"][fold["chosen"]] for r in rows]))
    assert res["mean"] == pytest.approx(np.mean([f["tau"] for f in res["folds"]]))


def test_nested_needs_the_model_scheme_first(monkeypatch, capsys, tmp_path):
    from pathlib import Path
    from cli_helpers import one_line_error, run_main
    corpus = Path(__file__).parent.parent / "corpus"
    code, _, err = run_main(monkeypatch, capsys, "eval-predictor", "--corpus", str(corpus), "--schemes",
                            "dataset,model", "--nested", "--out", str(tmp_path / "e"))
    one_line_error(code, err, "--nested compares with the choice leave-one-model-out makes")
    assert not (tmp_path / "e").exists()


def test_held_out_evaluation_does_not_leak_labels():
    """With contributions that no feature explains, a held-out predictor must score τ ≈ 0. The pairwise scorer here
    can memorise (16 hidden units, almost no L2): trained with the held-out combination included it scores τ = 1.0
    (measured), honestly 0.04; LambdaRank's trees memorise too."""
    rng = np.random.default_rng(7)
    combos = [{"model": f"m{i}", "data": "x", "sweep": {"task": {"resolution": 32}},
               "layers": synthetic_combo(rng, n=12, planted=False)[0]} for i in range(6)]
    candidates = {"pairwise/v1": {"scorer": "pairwise", "features": "v1"},
                  "lambdarank/v2": {"scorer": "lambdarank", "features": "v2"}}
    res = evaluate(combos, METRICS, schemes=("combination",), candidates=candidates, epochs=300, lr=0.03, l2=1e-4,
                   hidden=16)
    assert len(res["combination"]["rows"]) == 6
    for name, value in res["combination"]["mean"]["predictor_tau"].items():
        assert abs(value) < 0.3, name


def test_ceilings_measured_on_retests_estimated_elsewhere():
    """A retested combination's ceiling is its measured τ; the training-seed noise per unit of SE is measured on the
    retests and gives the others an estimated ceiling; combinations under 0.5 are down-weighted in training."""
    rng = np.random.default_rng(10)
    def combo(model, spread, se, shift=0.0):
        layers, _ = synthetic_combo(rng, n=30)
        for i, l in enumerate(layers):
            l.update(contribution=0.8 + spread * i / 30 + shift * rng.normal(), contribution_se=se)
        return {"model": model, "data": "x", "sweep": {"task": {"resolution": 64}}, "layers": layers}
    single = combo("a", 0.05, 0.01)
    again = {**single, "layers": [{**l, "contribution": l["contribution"] + 0.004 * rng.normal()} for l in single["layers"]]}
    first = {**single, "sweeps": [single, again]}          # as corpus.pool_retests leaves it (its mean: not needed here)
    clean, noisy = combo("b", 0.2, 0.01), combo("c", 0.002, 0.01)
    out = ceilings([first, clean, noisy])
    a, b = np.array([l["contribution"] for l in single["layers"]]), np.array([l["contribution"] for l in again["layers"]])
    assert out["a/x@64px"] == {"tau": pytest.approx(kendalltau(a, b).statistic), "source": "retest", "sweeps": 2,
                               "perfect": pytest.approx(perfect_ranker_tau(kendalltau(a, b).statistic, sweeps=2))}
    assert out["noise_per_se"] == pytest.approx(np.sqrt(np.mean((a - b) ** 2) / 2) / 0.01)
    assert out["b/x@64px"]["source"] == "estimated" and out["b/x@64px"]["tau"] > 0.9
    assert out["c/x@64px"]["tau"] < 0.3
    assert noise_ceiling(clean, 0.0) == pytest.approx(1.0)
    res = evaluate([first, clean, noisy], METRICS, schemes=("model",), epochs=20)
    assert res["ceilings"]["c/x@64px"]["tau"] < res["low_ceiling"]
    text = markdown(res, METRICS)
    assert "Down-weighted (ceiling < 0.5): c/x@64px." in text and "| b/x@64px | 30 | 0.9" in text and " est. |" in text
    assert f"| a/x@64px | 30 | {out['a/x@64px']['tau']:.2f} | {out['a/x@64px']['perfect']:.2f}² |" in text
    row = next(r for r in res["model"]["rows"] if r["combination"] == "a/x@64px")
    by_sweep = row["predictor_tau_by_sweep"]["pairwise/v1"]           # first's own layers are sweep 1
    assert by_sweep[0] == pytest.approx(row["predictor_tau"]["pairwise/v1"]) and len(by_sweep) == 2
    assert f"| a/x@64px | {out['a/x@64px']['tau']:.3f} | {by_sweep[0]:.3f} | {by_sweep[1]:.3f} |" in text
    assert "Curves not flat" not in text                                  # these layers record no curves
    for l in clean["layers"]:
        l["curve"] = [0.5, 0.7, 0.8] if l["index"] < 4 else [0.5, 0.8, 0.8]   # 4 layers gain 10 SE in the last epoch
    res = evaluate([first, clean, noisy], METRICS, schemes=("model",), epochs=20)
    assert res["still_rising"]["b/x@64px"] == ["l0", "l1", "l2", "l3"]
    assert "still rose by > 2 SE in the last epoch: b/x@64px 4." in markdown(res, METRICS)


def test_a_perfect_ranker_scores_above_the_retest():
    """Against one noisy sweep the true ranking scores the τ `perfect_ranker_tau` predicts from two sweeps' τ."""
    rng = np.random.default_rng(12)
    true = rng.normal(size=4000)
    one, two = true + 0.6 * rng.normal(size=4000), true + 0.6 * rng.normal(size=4000)
    retest = kendalltau(one, two).statistic
    assert perfect_ranker_tau(retest) == pytest.approx(kendalltau(true, one).statistic, abs=0.02)
    assert perfect_ranker_tau(retest) > retest + 0.05 and perfect_ranker_tau(1.0) == pytest.approx(1.0)
    assert perfect_ranker_tau(0.0) == 0.0 and perfect_ranker_tau(-0.2) == 0.0
    mean = kendalltau(true, (one + two) / 2).statistic             # the mean of both sweeps: a less noisy truth
    assert perfect_ranker_tau(retest, sweeps=2) == pytest.approx(mean, abs=0.02)
    assert perfect_ranker_tau(retest, sweeps=2) > perfect_ranker_tau(retest) + 0.03


def test_a_retested_combination_is_scored_by_the_mean_of_its_two_sweeps(tmp_path):
    """corpus.pool_retests: the ground truth of a combination with corpus/retest/<same file> is the per-layer mean
    of both sweeps, the sweeps kept for the test-retest τ; others are untouched; a retest missing layers is an error."""
    from zest_edge.corpus import load_corpus, pool_retests
    rng = np.random.default_rng(13)
    layers, _ = synthetic_combo(rng, n=12)
    def record(scores):
        return {"format": "zest-edge/combination", "version": 2, "model": "m", "data": "d",
                "sweep": {"task": {"resolution": 64}},
                "layers": [{**l, "contribution": float(v)} for l, v in zip(layers, scores)]}
    a, b = rng.uniform(0.5, 0.9, 12), rng.uniform(0.5, 0.9, 12)
    write_json(tmp_path / "m.json", record(a))
    write_json(tmp_path / "other.json", record(b))
    write_json(tmp_path / "retest" / "m.json", record(b))
    pooled = pool_retests(tmp_path, load_corpus(tmp_path))
    assert [l["contribution"] for l in pooled[0]["layers"]] == pytest.approx((a + b) / 2)
    assert [l["contribution"] for s in pooled[0]["sweeps"] for l in s["layers"]] == pytest.approx(np.concatenate([a, b]))
    assert "sweeps" not in pooled[1] and [l["contribution"] for l in pooled[1]["layers"]] == pytest.approx(b)
    short = record(b)
    short["layers"] = short["layers"][:-1]
    write_json(tmp_path / "retest" / "m.json", short)
    with pytest.raises(ZestError, match="retest lacks 1 of the combination's layers"):
        pool_retests(tmp_path, load_corpus(tmp_path))


def test_the_better_of_two_rates_takes_each_layers_higher_pooled_score(tmp_path):
    """corpus.best_of_two_rates: a layer's ground truth is the higher of its (pooled) scores at the probed rate and at
    rate_study/<file> (pooled with rate_study/retest/); "sweeps" become the per-seed maxima only where both rates
    were retested; a combination without a study, or a study lacking layers, is a named error."""
    from zest_edge.corpus import best_of_two_rates, load_corpus, pool_retests
    rng = np.random.default_rng(17)
    layers, _ = synthetic_combo(rng, n=10)
    def record(scores, lr):
        return {"format": "zest-edge/combination", "version": 2, "model": "m", "data": "d", "lr": lr,
                "sweep": {"task": {"resolution": 64}},
                "layers": [{**l, "contribution": float(v)} for l, v in zip(layers, scores)]}
    a0, a1, b0, b1, c0 = (rng.uniform(0.5, 0.9, 10) for _ in range(5))
    for path, scores, lr in [("m.json", a0, 3e-3), ("retest/m.json", a1, 3e-3), ("rate_study/m.json", b0, 1e-3),
                             ("rate_study/retest/m.json", b1, 1e-3), ("n.json", c0, 3e-3),
                             ("rate_study/n.json", c0[::-1], 1e-3)]:
        write_json(tmp_path / path, record(scores, lr))
    m, n = best_of_two_rates(tmp_path, pool_retests(tmp_path, load_corpus(tmp_path)))
    assert [l["contribution"] for l in m["layers"]] == pytest.approx(np.maximum((a0 + a1) / 2, (b0 + b1) / 2))
    assert [l["contribution"] for s in m["sweeps"] for l in s["layers"]] == pytest.approx(
        np.concatenate([np.maximum(a0, b0), np.maximum(a1, b1)]))
    assert m["rates"] == [3e-3, 1e-3] and "sweeps" not in n           # n: neither rate retested
    assert [l["contribution"] for l in n["layers"]] == pytest.approx(np.maximum(c0, c0[::-1]))
    assert ceilings([m, n])[combination_name(m)]["source"] == "retest"
    (tmp_path / "rate_study" / "n.json").unlink()
    with pytest.raises(ZestError, match=r"needs .*rate_study/<file> for every combination: 1 lack one \(e.g. n.json"):
        best_of_two_rates(tmp_path, load_corpus(tmp_path))
    short = record(c0, 1e-3)
    short["layers"] = short["layers"][:-1]
    write_json(tmp_path / "rate_study" / "n.json", short)
    with pytest.raises(ZestError, match="n.json: lacks 1 of the combination's layers"):
        best_of_two_rates(tmp_path, load_corpus(tmp_path))


def test_eval_on_the_better_of_two_rates_needs_every_study(monkeypatch, capsys, tmp_path):
    from pathlib import Path
    from cli_helpers import one_line_error, run_main
    corpus = Path(__file__).parent.parent / "corpus"
    code, _, err = run_main(monkeypatch, capsys, "eval-predictor", "--corpus", str(corpus), "--ground-truth",
                            "best-of-two-rates", "--out", str(tmp_path / "e"))
    one_line_error(code, err, "the better-of-two-rates ground truth needs ")
    assert not (tmp_path / "e").exists()


def test_a_corrupt_scorer_model_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(11)
    fit([synthetic_combo(rng) for _ in range(2)], scorer="ensemble").save(tmp_path / "p.json")
    good = json.loads((tmp_path / "p.json").read_text())
    for change, message in [(lambda o: o["model"]["members"][1]["model"].update(lightgbm_model="tree\nnonsense"),
                             "is malformed: its LightGBM model does not load"),
                            (lambda o: o["model"]["members"][1]["model"].update(lightgbm_model=3),
                             r"model\.members\[1\]\.model\.lightgbm_model must be a string"),
                            (lambda o: o.update(scorer="lambdarnk"), "unknown scorer 'lambdarnk' \\(did you mean lambdarank")]:
        obj = json.loads(json.dumps(good))
        change(obj)
        (tmp_path / "bad.json").write_text(json.dumps(obj))
        with pytest.raises(ZestError, match=message):
            Predictor.load(tmp_path / "bad.json")


def test_cli_train_and_eval_agree_on_the_committed_corpus(monkeypatch, capsys, tmp_path):
    """On the committed corpus-v2 sweeps: `train-predictor --exclude` of every Lite1 combination, then scoring Lite1 ×
    Animal (against the mean of its two sweeps) gives the τ `eval-predictor` reports for it held out by model,
    recomputed here with scipy."""
    from pathlib import Path
    from cli_helpers import run_main
    corpus = Path(__file__).parent.parent / "corpus"
    code, out, _ = run_main(monkeypatch, capsys, "train-predictor", "--corpus", str(corpus), "--exclude", "lite1_",
                            "--scorer", "lambdarank", "--features", "v1", "--out", str(tmp_path / "p.json"))
    n = len([f for f in corpus.glob("*.json") if "lite1_" not in f.name])      # every Lite1 file: the model held out
    assert code == 0 and f"trained a lambdarank scorer on {n} combination{'s' * (n != 1)} ({3 * n} metric batches" in out
    from zest_edge.corpus import load_corpus, pool_retests
    held = pool_retests(corpus, load_corpus(corpus / "lite1_animal.json"))[0]        # retested: the mean of both
    y = [l["contribution"] for l in held["layers"]]
    assert len(held["sweeps"]) == 2
    expected = kendalltau(Predictor.load(tmp_path / "p.json").score(held["layers"]), y).statistic
    code, _, _ = run_main(monkeypatch, capsys, "eval-predictor", "--corpus", str(corpus), "--candidates",
                          "lambdarank/v1,pairwise/v1", "--schemes", "model", "--out", str(tmp_path / "eval"))
    results = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]
    row = next(r for r in results["model"]["rows"] if r["combination"].startswith("efficientnet_lite1/animal_mnist"))
    assert code == 0 and row["predictor_tau"]["lambdarank/v1"] == pytest.approx(expected, abs=1e-9)
    assert results["chosen"] in ("lambdarank/v1", "pairwise/v1") and (tmp_path / "eval" / "eval.md").is_file()


def test_combinations_differing_only_in_training_set_size_have_distinct_names():
    from zest_edge.corpus import combination_name
    task = {"model": "m", "data": "d", "resolution": 64, "train_examples": 2000}
    big = {"model": "m", "data": "d", "sweep": {"task": task}}
    small = {"model": "m", "data": "d", "sweep": {"task": {**task, "train_examples": 500}}}
    assert combination_name(big) == "m/d@64px/n2000" and combination_name(small) == "m/d@64px/n500"
    assert combination_name({"model": "m", "data": "d", "sweep": {"task": {"max_length": 32}}}) == "m/d@32tok"


def test_spot_check_tool_agrees_with_the_committed_leave_one_model_out_row(tmp_path):
    """tools/score_predictor.py with the committed MobileNetV2-held-out predictor scores MobileNetV2 x Animal-MNIST
    at the τ reports/predictor_eval gives that row, and a retested file against the mean of its two sweeps; a file
    without a metric the predictor reads is named, not scored; a missing predictor is a one-line error."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).parent.parent
    tool = [sys.executable, str(root / "tools" / "score_predictor.py")]
    run = subprocess.run(tool + ["--predictor", "reports/predictors/held_out_mnv2.json", "corpus/mnv2_animal.json",
                                 "corpus/lite1_animal.json", "--out", str(tmp_path / "spot")],
                         capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, run.stderr
    spot, retested = json.loads((tmp_path / "spot" / "spot_checks.json").read_text())["rows"]
    from zest_edge.corpus import load_corpus, pool_retests            # a retested file: scored against both sweeps' mean
    pooled = pool_retests(root / "corpus", load_corpus(root / "corpus" / "lite1_animal.json"))[0]
    scores = Predictor.load(root / "reports" / "predictors" / "held_out_mnv2.json").score(pooled["layers"])
    assert retested["tau"] == pytest.approx(tau(scores, [l["contribution"] for l in pooled["layers"]]), abs=1e-12)
    results = json.loads((root / "reports" / "predictor_eval" / "eval.json").read_text())["results"]
    row = next(r for r in results["model"]["rows"] if r["combination"].startswith("mobilenet_v2/animal_mnist"))
    assert spot["tau"] == pytest.approx(row["predictor_tau"][results["chosen"]], abs=1e-9)
    old = subprocess.run(tool + ["--predictor", "reports/predictors/held_out_mnv2.json", "corpus/v1/lite0_animal.json",
                                 "--out", str(tmp_path / "old")], capture_output=True, text=True, cwd=root)
    assert old.returncode == 0, old.stderr                          # built before rgn existed: named, not scored
    [row] = json.loads((tmp_path / "old" / "spot_checks.json").read_text())["rows"]
    assert row["tau"] is None and row["not_scored"] == "the file lacks rgn" and "the file lacks rgn" in old.stdout
    bad = subprocess.run(tool + ["--predictor", "missing.json", "corpus/mnv2_animal.json", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, cwd=root)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and not (tmp_path / "b").exists()


def test_scorer_study_ships_the_leave_one_model_out_rows_of_the_predictor_eval(monkeypatch):
    """tools/scorer_study.py: its shipped-scorer column reproduces reports/predictor_eval's chosen candidate row by
    row (same folds, weights and features), both when run and in the committed study; a variant is a different
    model, not a copy of the shipped one."""
    import importlib.util
    from pathlib import Path
    from zest_edge.corpus import load_corpus, pool_retests
    root = Path(__file__).parent.parent
    spec = importlib.util.spec_from_file_location("scorer_study", root / "tools" / "scorer_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    results = json.loads((root / "reports" / "predictor_eval" / "eval.json").read_text())["results"]
    scorer, features = results["chosen"].split("/")
    assert scorer == "lambdarank"
    expected = {r["combination"]: r["predictor_tau"][results["chosen"]] for r in results["model"]["rows"]}
    committed = json.loads((root / "reports" / "scorer_study" / "study.json").read_text())
    assert committed["features"] == features
    assert {r["combination"]: r["tau"]["lambdarank (shipped)"] for r in committed["rows"]} == pytest.approx(expected,
                                                                                                           abs=1e-9)
    monkeypatch.setattr(study, "VARIANTS", {k: study.VARIANTS[k] for k in ("lambdarank (shipped)", "rank_xendcg")})
    combos = pool_retests(root / "corpus", load_corpus(root / "corpus"))
    fresh = {r["combination"]: r["tau"] for r in study.study(combos, features)}
    assert {n: t["lambdarank (shipped)"] for n, t in fresh.items()} == pytest.approx(expected, abs=1e-9)
    assert any(abs(t["rank_xendcg"] - t["lambdarank (shipped)"]) > 1e-6 for t in fresh.values())


def test_retest_report_compares_finished_layers_and_shows_an_unstarted_retest(tmp_path):
    """tools/retest_report.py: τ over the layers both sweeps finished (the committed Lite0 × Fashion pair gives the
    committed report's τ); a retest with no finished layer yet is a row of dashes, not a crash."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).parent.parent
    sweeps = root / "corpus" / "sweeps"
    shutil.copytree(sweeps / "lite0_fashion", tmp_path / "lite0_fashion")
    shutil.copytree(sweeps / "retest" / "lite0_fashion", tmp_path / "retest" / "lite0_fashion")
    shutil.copytree(sweeps / "lite0_fashion", tmp_path / "started")
    header = (sweeps / "retest" / "lite0_fashion" / "rows.jsonl").read_text().splitlines()[0]
    (tmp_path / "retest" / "started").mkdir()
    (tmp_path / "retest" / "started" / "rows.jsonl").write_text(header + "\n")
    run = subprocess.run([sys.executable, str(root / "tools" / "retest_report.py"), "--sweeps", str(tmp_path),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, run.stderr
    rows = json.loads((tmp_path / "out" / "retest.json").read_text())["combinations"]
    committed = json.loads((root / "reports" / "retest" / "retest.json").read_text())["combinations"]
    assert rows["lite0_fashion"]["kendall_tau"] == pytest.approx(committed["lite0_fashion"]["kendall_tau"], abs=1e-12)
    assert rows["started"]["layers"] == 0 and "| started | 0 | – | – | – |" in run.stdout
