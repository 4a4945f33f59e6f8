"""`sense fit` end to end (labeler -> pseudo-labels -> encoder -> projector -> evaluation) on a
tiny ensemble, and the projector step on its own (fit_bundle_projector)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_runtime_bundle, write_plain_npz

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("umap")

from sense_core.bundle import Bundle  # noqa: E402
from sense_core.ensemble import Ensemble  # noqa: E402
from sense_core.errors import SenseError  # noqa: E402
from sense_core.inference import Encoder  # noqa: E402
from sense_core.projection import ParametricProjector  # noqa: E402
from sense_training.projector import fit_bundle_projector  # noqa: E402


def blob_ensemble(count: int, shape=(1, 12, 10), classes: int = 3, seed: int = 0) -> Ensemble:
    """Members whose mean level and a gradient differ by class, half of them labelled."""
    rng = np.random.default_rng(seed)
    truth = np.arange(count) % classes
    yy = np.linspace(-1, 1, shape[1])[:, None] * np.ones(shape[2])
    fields = np.stack([(k - 1) * 2.0 + k * yy for k in truth])[:, None]
    fields = fields + 0.4 * rng.normal(size=(count, *shape))
    labels = np.where(np.arange(count) % 2 == 0, truth, -1)
    return Ensemble(
        fields=fields.astype(np.float32),
        labels=labels,
        class_names=[f"c{i}" for i in range(classes)],
    )


def test_fit_bundle_projector_samples_trains_and_exports(tmp_path):
    ensemble = blob_ensemble(300)
    folder = tmp_path / "bundle"
    make_runtime_bundle(folder, shape=(1, 12, 10), latent_dim=6, class_names=("c0", "c1", "c2"))
    indices = np.arange(0, 300, 2)  # 150 "training" members
    logged: list[str] = []
    result = fit_bundle_projector(
        ensemble,
        folder,
        indices,
        max_points=130,
        seed=4,
        hidden=(32, 32),
        epochs=60,
        command="sense fit --test",
        log=logged.append,
    )
    assert len(result.indices) == 130 and np.all(np.diff(result.indices) > 0)
    assert set(result.indices) <= set(indices.tolist())
    assert set(result.seconds) == {"encode", "umap", "train", "export"}
    assert any("k-NN overlap" in line for line in logged)
    record = result.record()
    assert record["points"] == 130 and record["epochs"] == 60
    assert record["umap"]["seed"] == 4 and record["umap"]["knn"] == "exact"

    bundle = Bundle.load(folder)
    entry = bundle.model("projector")
    assert entry.details["latent_dim"] == 6 and entry.details["imitates"] == "umap"
    fidelity = entry.details["fidelity"]
    assert 0.0 <= fidelity["validation"]["knn_overlap"] <= 1.0
    assert fidelity["all"]["trustworthiness_projector"] > 0.5, fidelity
    assert bundle.manifest["training"]["projector"]["command"] == "sense fit --test"
    # the runtime projector over the ONNX encoder reproduces the torch projector
    latents = Encoder(bundle, device="cpu").encode_store(ensemble, indices=result.indices)
    np.testing.assert_allclose(
        ParametricProjector.from_bundle(bundle).transform(latents),
        result.fit.predict(latents),
        atol=1e-4,
    )
    # same seed, same sample
    again = fit_bundle_projector(
        ensemble, folder, indices, max_points=130, seed=4, hidden=(8,), epochs=1, log=str
    )
    np.testing.assert_array_equal(again.indices, result.indices)
    with pytest.raises(SenseError, match="at least 10 training members"):
        fit_bundle_projector(ensemble, folder, indices[:9], log=str)


def test_sense_fit_writes_a_bundle_with_projector_and_a_fit_report(tmp_path, monkeypatch):
    import sys

    from sense_core.cli import main

    ensemble = blob_ensemble(150, shape=(1, 16, 16))
    data = tmp_path / "blobs.npz"
    write_plain_npz(data, ensemble)
    out = tmp_path / "bundle"
    argv = [
        "fit", "--data", str(data), "--out", str(out), "--labeler-epochs", "1",
        "--epochs", "1", "--latent", "4", "--batch-size", "24", "--threads", "1",
        "--seeds", "0", "--projection", "pca", "--baselines", "pca_raw",
        "--projector-points", "120", "--min-confidence", "0",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["sense", *argv])  # the recorded command
    assert main(argv) == 0
    bundle = Bundle.load(out)
    assert set(bundle.models) == {"labeler", "encoder", "projector"}
    projector = bundle.model("projector")
    assert projector.details["latent_dim"] == 4
    assert set(projector.details["fidelity"]) >= {"all", "validation"}
    training = bundle.manifest["training"]["projector"]
    assert training["command"].startswith("sense fit --data")
    assert training["config"]["points"] == 120

    report = json.loads((out / "fit_report.json").read_text())
    seconds = report["seconds"]
    for stage in ("labeler", "pseudo_labels", "encoder", "projector", "evaluation", "total"):
        assert seconds[stage] >= 0, stage
    assert seconds["total"] >= sum(seconds[s] for s in ("labeler", "encoder", "projector"))
    assert report["members"] == 150 and report["profile"] == "quick"
    assert report["labeler"]["epochs_run"] == 1
    assert 0.0 <= report["labeler"]["validation_accuracy"] <= 1.0
    assert report["projector"]["points"] == 120
    assert report["projector"]["fidelity"] == projector.details["fidelity"]
    silhouette = report["projector"]["silhouette_2d_test"]
    assert silhouette is None or -1.0 <= silhouette <= 1.0
    assert set(report["silhouette_2d_test"]) == {"sense", "pca_raw"}
    assert report["machine"]["cpus"] >= 1 and len(report["machine"]["load_average_before"]) == 3


def test_sense_fit_skips_the_projector_when_too_few_members_train(tmp_path, monkeypatch, capsys):
    """With fewer than MIN_POINTS training members the bundle gets no projector (and says so),
    and an earlier run's projector is removed; the labeler is replaced by a linear ONNX model
    to keep this fast."""
    from conftest import make_linear_onnx

    from sense_core.bundle import add_model, new_manifest, read_manifest
    from sense_core.cli import main
    from sense_core.ensemble import NormalizationStats
    from sense_training import labeler

    def fake_train_labeler(store, out, config, **_):
        onnx_file = tmp_path / "linear.onnx"
        make_linear_onnx(onnx_file, store.member_shape, len(store.class_names))
        manifest = read_manifest(out) or new_manifest(
            store.member_shape, NormalizationStats.from_store(store), store.class_names
        )
        bundle = add_model(
            out, "labeler", onnx_file, manifest, input_name="fields", output_name="output",
            opset=17, training={"config": {"fractions": list(config.fractions), "split_seed": 0}},
        )  # fmt: skip
        return labeler.LabelerResult(bundle, {}, tmp_path, None, True)

    monkeypatch.setattr(labeler, "train_labeler", fake_train_labeler)
    ensemble = blob_ensemble(16, shape=(1, 12, 12), classes=2)
    data = tmp_path / "few.npz"
    write_plain_npz(data, ensemble, labels=np.arange(16) % 2)  # all hand-labelled
    out = tmp_path / "bundle"
    make_runtime_bundle(out, (1, 12, 12), 3, ("c0", "c1"), labeler=False, projector=True)
    assert (out / "projector.onnx").exists()
    argv = [
        "fit", "--data", str(data), "--out", str(out), "--epochs", "1", "--latent", "3",
        "--batch-size", "8", "--fractions", "0.4,0.2,0.4", "--seeds", "0", "--projection",
        "pca", "--baselines", "none",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "projector skipped: 6 training members" in capsys.readouterr().out
    assert set(Bundle.load(out).models) == {"labeler", "encoder"}
    assert not (out / "projector.onnx").exists()
    assert "projector" not in read_manifest(out).get("training", {})
    report = json.loads((out / "fit_report.json").read_text())
    assert report["projector"] is None and "projector" not in report["seconds"]
