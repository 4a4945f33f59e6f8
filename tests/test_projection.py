"""Projection: PCA, UMAP with exact k-NN (seeded, reproducible), the numba cache folder, the
parametric projector's determinism, and warmup. UMAP fits are small and shared."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_mlp_onnx, make_runtime_bundle, mlp_reference

from sense_core.bundle import Bundle
from sense_core.errors import SenseError
from sense_core.projection import (
    ParametricProjector,
    ProjectionOptions,
    exact_knn,
    numba_cache_dir,
    pca_project,
    project,
    umap_project,
)


def blobs(count: int = 150, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    centres = rng.normal(scale=6.0, size=(3, dim))
    return (centres[labels] + rng.normal(size=(count, dim))).astype(np.float32), labels


@pytest.fixture(scope="module")
def umap_maps():
    points, labels = blobs()
    first = umap_project(points, seed=3, n_epochs=100)
    second = umap_project(points, seed=3, n_epochs=100)
    return points, labels, first, second


def test_umap_is_reproducible_with_a_seed_and_uses_exact_knn(umap_maps):
    points, labels, first, second = umap_maps
    assert first.xy.shape == (len(points), 2) and first.xy.dtype == np.float32
    np.testing.assert_array_equal(first.xy, second.xy)
    assert first.params["knn"] == "exact" and first.params["seed"] == 3
    assert first.params["n_neighbors"] == 15
    assert {"import", "knn", "fit"} <= set(first.seconds)
    from sense_core.metrics import silhouette

    assert silhouette(first.xy, labels) > 0.5  # well separated blobs stay separated


def test_umap_without_exact_knn_and_small_inputs(umap_maps):
    points = umap_maps[0][:40]
    own = umap_project(points, seed=0, knn="auto", exact_knn_max=10, n_epochs=30)
    assert own.params["knn"] == "umap-learn"
    tiny = umap_project(points[:8], seed=0, n_epochs=30)
    assert tiny.params["n_neighbors"] == 7  # clamped below the number of points
    with pytest.raises(SenseError, match="at least 5 members.*PCA"):
        umap_project(points[:4])
    with pytest.raises(SenseError, match="knn must be one of"):
        umap_project(points, knn="fast")
    with pytest.raises(SenseError, match="NaN/Inf"):
        umap_project(np.full((10, 2), np.nan))


def test_exact_knn_lists_each_point_first():
    points, _ = blobs(50)
    indices, distances = exact_knn(points, 5)
    assert indices.shape == (50, 5) and distances.dtype == np.float32
    np.testing.assert_array_equal(indices[:, 0], np.arange(50))
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_exact_knn_breaks_ties_the_same_way_whatever_the_thread_settings():
    """Ensembles hold exact duplicates (an MCMC chain that stays in a state). The neighbours,
    hence the seeded UMAP map, must not depend on how many OpenMP threads the process runs
    (torch sets its count when a trainer starts)."""
    from threadpoolctl import threadpool_limits

    base = np.random.default_rng(3).normal(size=(200, 32)).astype(np.float32)
    points = np.repeat(base, 10, axis=0)  # groups of 10 identical members
    exact_knn(points[:50], 5)  # loads scikit-learn's OpenMP runtime, so that the limits apply
    results = []
    for threads in (1, 2, 4):
        with threadpool_limits(limits=threads, user_api="openmp"):
            results.append(exact_knn(points, 15))
    for indices, distances in results[1:]:
        np.testing.assert_array_equal(indices, results[0][0])
        np.testing.assert_array_equal(distances, results[0][1])


def test_pca_is_deterministic_and_degenerate_cases_work():
    points, _ = blobs()
    first, second = pca_project(points), pca_project(points[::-1].copy())
    np.testing.assert_allclose(first.xy[::-1], second.xy, atol=1e-4)
    ratios = first.params["explained_variance_ratio"]
    assert len(ratios) == 2 and ratios[0] >= ratios[1] > 0
    assert pca_project(points[:1]).xy.shape == (1, 2)
    line = pca_project(np.arange(5, dtype=np.float32)[:, None])
    np.testing.assert_allclose(line.xy[:, 0], [-2, -1, 0, 1, 2])


def test_numba_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert numba_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert numba_cache_dir() == tmp_path / "xdg" / "sense" / "numba"
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "xdg" / "sense" / "numba")
    assert (tmp_path / "xdg" / "sense" / "numba").is_dir()


def test_parametric_projector_is_deterministic_across_batching(tmp_path):
    layers = make_mlp_onnx(tmp_path / "p.onnx", latent_dim=8, hidden=64)
    projector = ParametricProjector(tmp_path / "p.onnx", "latent", "xy")
    points = np.random.default_rng(5).normal(size=(2500, 8)).astype(np.float32)
    everything = projector.transform(points)
    np.testing.assert_allclose(everything, mlp_reference(points, layers), atol=1e-4)
    for batch in (1, 7):
        pieces = [
            projector.transform(points[start : start + batch])
            for start in range(0, 300 if batch == 1 else len(points), batch)
        ]
        joined = np.concatenate(pieces)
        np.testing.assert_array_equal(joined, everything[: len(joined)])
    order = np.random.default_rng(6).permutation(len(points))
    np.testing.assert_array_equal(projector.transform(points[order]), everything[order])
    with pytest.raises(SenseError, match="latents of size 8, got 5"):
        projector.transform(points[:, :5])


def test_projector_from_bundle_and_project_dispatch(tmp_path):
    weights = make_runtime_bundle(tmp_path / "bundle", latent_dim=6, projector=True)
    bundle = Bundle.load(tmp_path / "bundle")
    points = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    mapped = project(points, ProjectionOptions(method="projector"), bundle=bundle)
    assert mapped.method == "projector" and mapped.params["latent_dim"] == 6
    assert mapped.params["provider"] == "CPUExecutionProvider"
    np.testing.assert_allclose(mapped.xy, mlp_reference(points, weights["projector"]), atol=1e-4)
    with pytest.raises(SenseError, match="needs a bundle"):
        project(points, ProjectionOptions(method="projector"))
    with pytest.raises(SenseError, match="method must be one of"):
        project(points, ProjectionOptions(method="tsne"))
    bare = tmp_path / "bare"
    make_runtime_bundle(bare, labeler=False)
    with pytest.raises(SenseError, match="no projector model"):
        project(points, ProjectionOptions(method="projector"), bundle=Bundle.load(bare))


def test_warmup_compiles_in_this_process(umap_maps):
    from sense_core.projection import warmup

    timings = warmup(points=60, parallel=False)
    assert set(timings) == {"numba_cache_dir", "import_umap", "fit_seeded"}
    assert timings["fit_seeded"] < 30


def test_importing_sense_core_projection_does_not_import_umap():
    code = (
        "import sys, sense_core.projection, sense_core.metrics, sense_core.embedding;"
        "heavy = [m for m in ('umap', 'numba', 'sklearn', 'onnxruntime', 'matplotlib') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
