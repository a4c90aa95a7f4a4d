"""`zest-edge rank` with the shipped predictor, its files, and its refusals."""
import json

import pytest

from cli_helpers import one_line_error, run_main
from zest_edge.metrics import METRICS
from zest_edge.ranking import DEFAULT_PREDICTOR, load_predictor

SMALL = ["--data", "fashion_mnist", "--limit", "40", "--resolution", "32", "--batch-size", "8"]


def test_shipped_predictor_loads():
    p = load_predictor()
    assert DEFAULT_PREDICTOR.is_file() and p.metric_names == list(METRICS)       # it reads every registered metric
    assert p.provenance["corpus"]                        # trained on the committed corpus


@pytest.mark.parametrize("model, n_layers", [("mobilenet_v2", 52), ("efficientnet_lite0", 49)])
def test_rank_with_default_predictor(monkeypatch, capsys, tmp_path, model, n_layers):
    out, peft = tmp_path / "ranking.json", tmp_path / "lora.json"
    code, stdout, err = run_main(monkeypatch, capsys, "rank", "--model", model, *SMALL, "--top-k", "5",
                                 "--out", str(out), "--emit-peft", str(peft))
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["format"] == "zest-edge/ranking" and r["model"] == model and r["ranked_by"].startswith("predictor:")
    assert [l["rank"] for l in r["layers"]] == list(range(1, n_layers + 1))
    scores = [l["score"] for l in r["layers"]]
    assert scores == sorted(scores, reverse=True)
    assert r["selected"] == [l["name"] for l in r["layers"][:5]]
    assert 0 < r["trainable_share"] < 1
    lora = json.loads(peft.read_text())
    assert lora["target_modules"] == r["selected"]
    picture = tmp_path / "ranking.png"                    # the scores over depth, beside ranking.json
    assert picture.read_bytes()[:4] == b"\x89PNG" and f"wrote {out} and {picture}" in stdout


def test_rank_by_single_metric_with_sign(monkeypatch, capsys, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = run_main(monkeypatch, capsys, "rank", "--model", "mobilenet_v2", *SMALL, "--metric", "-wt_abs_std",
                            "--top-k", "3", "--out", str(out))
    assert code == 0, err
    r = json.loads(out.read_text())
    assert r["ranked_by"] == "metric:-wt_abs_std"


def test_top_k_above_layer_count_is_refused(monkeypatch, capsys, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = run_main(monkeypatch, capsys, "rank", "--model", "resnet18", *SMALL, "--metric", "snip",
                            "--top-k", "21", "--out", str(out))
    one_line_error(code, err, "--top-k must be between 1 and the number of layers of resnet18 (20)")
    assert not out.exists()


def test_ranking_for_another_model_is_refused(monkeypatch, capsys, tmp_path):
    ranking = tmp_path / "r.json"
    assert run_main(monkeypatch, capsys, "rank", "--model", "resnet18", *SMALL, "--metric", "snip", "--top-k", "3",
                    "--out", str(ranking))[0] == 0
    code, _, err = run_main(monkeypatch, capsys, "finetune", "--model", "mobilenet_v2", *SMALL, "--ranking",
                            str(ranking), "--epochs", "1", "--out", str(tmp_path / "run"))
    one_line_error(code, err, "ranks layers of resnet18, not mobilenet_v2")
    assert not (tmp_path / "run").exists()
