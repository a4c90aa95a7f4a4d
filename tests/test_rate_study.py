"""tools/rate_study.py on the committed rate-study sweep: it picks the predictor that has not seen the model, its
probed-rate column is eval-predictor's held-out row, best of two is the per-layer maximum of the pooled sweeps; a
study file without its corpus combination, or no unseen predictor, is a one-line error."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zest_edge.bench.predictor_eval import tau
from zest_edge.corpus import load_corpus, pool_retests
from zest_edge.predictor import Predictor

ROOT = Path(__file__).parent.parent
TOOL = [sys.executable, str(ROOT / "tools" / "rate_study.py"), "--predictor", "zest_edge/predictors/default.json",
        *(arg for m in ("mnv2", "lite0", "lite1", "lite2", "minilm")
          for arg in ("--predictor", f"reports/predictors/held_out_{m}.json"))]


def test_rate_study_agrees_with_the_predictor_eval_and_takes_the_better_rate(tmp_path):
    run = subprocess.run(TOOL + ["--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    rows = json.loads((tmp_path / "rate_study.json").read_text())["rows"]
    row = next(r for r in rows if r["file"] == "mnv2_fashion_5-9.json")
    results = json.loads((ROOT / "reports" / "predictor_eval" / "eval.json").read_text())["results"]
    held = next(r for r in results["model"]["rows"] if r["combination"] == row["combination"])
    assert row["predictor_tau"]["probed"] == pytest.approx(held["predictor_tau"][results["chosen"]], abs=1e-9)
    probed = pool_retests(ROOT / "corpus", load_corpus(ROOT / "corpus" / "mnv2_fashion_5-9.json"))[0]
    study = pool_retests(ROOT / "corpus" / "rate_study", load_corpus(ROOT / "corpus" / "rate_study" /
                                                                      "mnv2_fashion_5-9.json"))[0]    # retested too
    other = {l["name"]: l["contribution"] for l in study["layers"]}
    best = [max(l["contribution"], other[l["name"]]) for l in probed["layers"]]
    scores = Predictor.load(ROOT / "reports" / "predictors" / "held_out_mnv2.json").score(probed["layers"])
    assert row["predictor_tau"]["best_of_two"] == pytest.approx(tau(scores, np.array(best)), abs=1e-12)
    assert row["better_at_other"] == sum(other[l["name"]] > l["contribution"] for l in probed["layers"])
    assert row["probed_lr"] == 0.003 and row["other_lr"] == 0.001 and row["probed_sweeps"] == row["other_sweeps"] == 2
    assert row["predictor"] == "reports/predictors/held_out_mnv2.json"          # default.json has seen MobileNetV2


def test_a_study_without_its_corpus_combination_is_one_line(tmp_path):
    (tmp_path / "rate_study").mkdir()
    shutil.copy(ROOT / "corpus" / "rate_study" / "mnv2_fashion_5-9.json", tmp_path / "rate_study" / "lonely.json")
    run = subprocess.run(TOOL + ["--corpus", str(tmp_path), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1
    assert "lonely.json has no corpus combination" in run.stderr and not (tmp_path / "out").exists()


def test_without_a_predictor_that_has_not_seen_the_model_is_one_line(tmp_path):
    run = subprocess.run(TOOL[:4] + ["--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert "every predictor given has seen " in run.stderr and not any(tmp_path.iterdir())
