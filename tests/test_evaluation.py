"""Evaluation: the paper's 2D test silhouette, extra metrics, baselines and reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from helpers import write_plain_npz  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402
from test_encoder import QUIET, tiny, wave_ensemble  # noqa: E402

from sense_core.errors import SenseError  # noqa: E402
from sense_training.encoder import train_encoder  # noqa: E402
from sense_training.evaluation import (  # noqa: E402
    evaluate,
    evaluation_members,
    score_points,
    write_report,
)

torch.set_num_threads(2)


def test_evaluation_members_keep_test_members_hand_labeled_and_in_the_fit_set():
    ensemble = wave_ensemble(count=120)
    fit, test, train, labels = evaluation_members(ensemble, max_fit=80)
    assert len(fit) == 80 and len(set(fit)) == 80
    assert (ensemble.labels[fit[test]] >= 0).all()
    assert not set(test) & set(train)
    np.testing.assert_array_equal(labels[test], ensemble.labels[fit[test]])
    only_test, test_positions, _, _ = evaluation_members(ensemble, fit="test")
    np.testing.assert_array_equal(np.sort(only_test), np.sort(fit[test]))
    assert len(test_positions) == len(only_test)
    with pytest.raises(SenseError, match="fit"):
        evaluation_members(ensemble, fit="everything")


def test_score_points_with_pca_matches_sklearn():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(loc=k * 4, size=(20, 6)) for k in range(3)])
    labels = np.repeat(np.arange(3), 20)
    test = np.arange(0, 60, 3)
    train = np.setdiff1d(np.arange(60), test)
    row = score_points("x", "baseline", points, labels, test, train, seeds=[0, 1], method="pca")
    xy = PCA(2, svd_solver="full").fit_transform(points)
    expected = silhouette_score(xy[test], labels[test])
    assert row.scores["silhouette_2d_test_mean"] == pytest.approx(expected, abs=1e-5)
    assert row.per_seed == [pytest.approx(expected, abs=1e-5)]  # PCA: one seed is enough
    assert row.scores["silhouette_latent_test"] == pytest.approx(
        silhouette_score(points[test], labels[test])
    )
    assert row.scores["knn_accuracy_latent"] == 1.0


def test_evaluate_encoders_and_baselines_and_write_report(tmp_path):
    ensemble = wave_ensemble(count=120)
    sense = tmp_path / "sense"
    plain = tmp_path / "plain"
    train_encoder(ensemble, sense, tiny(losses="recon,cluster"), **QUIET)
    train_encoder(ensemble, plain, tiny(), **QUIET)
    evaluation = evaluate(
        ensemble, {"sense": sense, "plain_ae": plain}, seeds=(0, 1), log=QUIET["log"]
    )
    names = [row.name for row in evaluation.rows]
    assert names == ["sense", "plain_ae", "pca_raw", "umap_raw"]
    for row in evaluation.rows:
        assert len(row.per_seed) == (1 if row.name == "pca_raw" else 2)
        assert -1 <= row.scores["silhouette_2d_test_mean"] <= 1
        assert 0 <= row.scores["trustworthiness"] <= 1
    assert evaluation.row("sense").scores["recon_error_test"] > 0
    assert evaluation.row("umap_raw").scores["recon_error_test"] is None
    # repeatable: seeded UMAP
    again = evaluate(ensemble, {"sense": sense}, baselines=(), seeds=(0, 1), log=QUIET["log"])
    assert again.row("sense").per_seed == pytest.approx(evaluation.row("sense").per_seed, abs=1e-6)
    paths = write_report(evaluation, tmp_path / "report", title="waves")
    data = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert [r["name"] for r in data["rows"]] == names
    assert "| sense |" in (tmp_path / "report" / "evaluation.md").read_text()
    assert (tmp_path / "report" / "maps.png").stat().st_size > 1000
    assert set(paths) == {"json", "csv", "md", "png"}
    with pytest.raises(SenseError, match="baseline"):
        evaluate(ensemble, {}, baselines=("tsne",))


def test_experiment_grid_writes_tables_and_summary(tmp_path):
    from sense_core.cli import main

    ensemble = wave_ensemble(count=90)
    data = tmp_path / "waves.npz"
    write_plain_npz(data, ensemble)
    grid = tmp_path / "grid.toml"
    grid.write_text(
        f'data = "{data}"\nout = "{tmp_path / "exp"}"\nseeds = [0]\nprojection = "pca"\n'
        'baselines = ["pca_raw"]\n'
        "[base]\nepochs = 1\nlatent_dim = 4\nbase_channels = 8\nbatch_size = 24\n"
        '[grid]\nlosses = ["recon", "recon,cluster"]\n'
        '[[variant]]\nname = "all_three"\nlosses = "recon,cluster,contrastive"\n'
    )
    assert main(["experiment", "--config", str(grid)]) == 0
    summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert set(summary["silhouette_2d_test"]) == {
        "all_three",
        "losses=recon",
        "losses=recon+cluster",
        "pca_raw",
    }
    assert summary["plain_ae"] == summary["silhouette_2d_test"]["losses=recon"]
    assert summary["best_sense_name"] in ("all_three", "losses=recon+cluster")
    assert (tmp_path / "exp" / "maps.png").exists()
    assert main(["experiment", "--config", str(tmp_path / "missing.toml")]) == 2
