"""Training the parametric projector: it learns a known map, reports fidelity, exports into the
bundle, and the runtime reproduces torch deterministically whatever the batching."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_ensemble, make_runtime_bundle

pytest.importorskip("torch")
projector_module = pytest.importorskip("sense_training.projector")

from sense_core.bundle import Bundle  # noqa: E402
from sense_core.errors import SenseError  # noqa: E402
from sense_core.projection import ParametricProjector  # noqa: E402

LATENT_DIM = 6


def target_map(latents: np.ndarray) -> np.ndarray:
    """A smooth non-linear 2D map of the latents, standing in for UMAP (which is slow here)."""
    return np.stack(
        [3 * np.tanh(latents[:, 0]) + latents[:, 1], latents[:, 2] * latents[:, 3] + 10], axis=1
    ).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(600, LATENT_DIM)).astype(np.float32) * 2 + 1
    xy = target_map(latents)
    fit = projector_module.train_projector(
        latents, xy, hidden=(64, 64), epochs=150, batch_size=64, seed=3, threads=1
    )
    return latents, xy, fit


def test_projector_learns_the_map_and_reports_fidelity(fitted):
    latents, xy, fit = fitted
    assert fit.config["seed"] == 3 and fit.config["points"] == 600
    assert len(fit.history) == 150 and fit.history[-1]["train_mse"] < fit.history[0]["train_mse"]
    assert len(fit.validation_indices) == 60
    validation = fit.fidelity["validation"]
    assert validation["relative_rmse"] < 0.15, fit.fidelity
    assert validation["knn_overlap"] > 0.4, fit.fidelity
    assert set(validation) >= {"trustworthiness_projector", "trustworthiness_umap"}
    np.testing.assert_allclose(fit.predict(latents[:5]).mean(), xy[:5].mean(), atol=1.0)


def test_training_is_reproducible():
    rng = np.random.default_rng(1)
    latents = rng.normal(size=(80, 4)).astype(np.float32)
    xy = target_map(np.pad(latents, ((0, 0), (0, 2))))
    runs = [
        projector_module.train_projector(latents, xy, hidden=(16,), epochs=5, seed=7, threads=1)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].predict(latents), runs[1].predict(latents))
    with pytest.raises(SenseError, match="at least 10 points"):
        projector_module.train_projector(latents[:5], xy[:5])
    with pytest.raises(SenseError, match=r"xy \(N, 2\)"):
        projector_module.train_projector(latents, xy[:, :1])


def test_export_into_bundle_and_deterministic_runtime(fitted, tmp_path):
    latents, _, fit = fitted
    make_runtime_bundle(tmp_path / "bundle", latent_dim=LATENT_DIM, labeler=False)
    bundle = projector_module.add_projector_to_bundle(
        tmp_path / "bundle", fit, latents, umap_params={"n_neighbors": 15}, command="pytest"
    )
    entry = bundle.model("projector")
    assert entry.details["latent_dim"] == LATENT_DIM
    assert entry.details["fidelity"]["validation"] == fit.fidelity["validation"]
    assert bundle.manifest["training"]["projector"]["command"] == "pytest"

    runtime = ParametricProjector.from_bundle(Bundle.load(tmp_path / "bundle"))
    everything = runtime.transform(latents)
    np.testing.assert_allclose(everything, fit.predict(latents), atol=1e-4)
    for batch in (1, 7):
        joined = np.concatenate(
            [runtime.transform(latents[i : i + batch]) for i in range(0, 140, batch)]
        )
        np.testing.assert_array_equal(joined, everything[: len(joined)])

    from sense_core.embedding import embed_ensemble

    embedding = embed_ensemble(make_ensemble(count=20), tmp_path / "bundle", metrics=False)
    assert embedding.provenance["projection"]["method"] == "projector"


def test_latent_size_must_match_the_encoder(fitted, tmp_path):
    latents, _, fit = fitted
    make_runtime_bundle(tmp_path / "other", latent_dim=LATENT_DIM + 1, labeler=False)
    with pytest.raises(SenseError, match="latents of size 7, the projector takes 6"):
        projector_module.add_projector_to_bundle(tmp_path / "other", fit, latents)
