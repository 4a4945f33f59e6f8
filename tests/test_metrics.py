"""Embedding metrics: known values on separated / random data, unlabeled members ignored,
undefined cases give NaN, sampling stays close to the full score."""

from __future__ import annotations

import numpy as np
import pytest

from sense_core.metrics import (
    embedding_metrics,
    kmeans_ari,
    knn_accuracy,
    knn_overlap,
    silhouette,
    trustworthiness,
)


def separated(count: int = 120, dim: int = 2, spread: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    centres = np.eye(3, dim) * 10
    return centres[labels] + rng.normal(scale=spread, size=(count, dim)), labels


def test_silhouette_known_cases_and_unlabeled_members():
    points, labels = separated()
    assert silhouette(points, labels) > 0.95
    random_labels = np.random.default_rng(1).integers(0, 3, len(points))
    assert silhouette(points, random_labels) < 0.1
    with_unlabeled = labels.copy()
    with_unlabeled[::4] = -1
    noisy = points.copy()
    noisy[::4] = np.random.default_rng(2).normal(scale=50, size=(30, 2))  # ignored: unlabeled
    assert silhouette(noisy, with_unlabeled) > 0.95
    assert np.isnan(silhouette(points, np.zeros(len(points), int)))
    assert np.isnan(silhouette(points, np.full(len(points), -1)))


def test_silhouette_sample_is_close_to_the_full_score():
    points, labels = separated(3000, spread=3.0)
    full = silhouette(points, labels, sample_size=None)
    sampled = silhouette(points, labels, sample_size=800, seed=4)
    assert abs(full - sampled) < 0.03
    assert sampled == silhouette(points, labels, sample_size=800, seed=4)


def test_knn_accuracy_leave_one_out_and_train_test():
    points, labels = separated()
    assert knn_accuracy(points, labels, k=5) == 1.0
    assert knn_accuracy(points[:60], labels[:60], points[60:], labels[60:]) == 1.0
    # Leave-one-out must not use the point's own label: alternate labels on a line.
    line = np.arange(20, dtype=float)[:, None]
    assert knn_accuracy(line, np.arange(20) % 2, k=1) == 0.0
    assert np.isnan(knn_accuracy(points[:1], labels[:1]))
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(points, labels, points)


def test_kmeans_ari():
    points, labels = separated()
    assert kmeans_ari(points, labels) == pytest.approx(1.0)
    shuffled = np.random.default_rng(0).permutation(labels)
    assert abs(kmeans_ari(points, shuffled)) < 0.1
    assert np.isnan(kmeans_ari(points, np.zeros(len(points), int)))


def test_trustworthiness_and_knn_overlap():
    rng = np.random.default_rng(0)
    high = rng.normal(size=(300, 10))
    assert trustworthiness(high, high[:, :10]) == pytest.approx(1.0)
    assert trustworthiness(high, rng.normal(size=(300, 2))) < 0.7
    rotation = np.array([[0.0, -1.0], [1.0, 0.0]])
    low = high[:, :2]
    assert knn_overlap(low, 3 * low @ rotation + 5) == pytest.approx(1.0)
    assert knn_overlap(low, rng.normal(size=(300, 2)), k=10) < 0.15
    assert knn_overlap(low, low, sample_size=100) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="300 points"):
        knn_overlap(low, low[:10])


def test_embedding_metrics_row():
    points, labels = separated(90, dim=4)
    labels = labels.copy()
    labels[::5] = -1
    test = np.arange(0, 90, 4)
    train = np.setdiff1d(np.arange(90), test)
    row = embedding_metrics(points, points[:, :2], labels, test_indices=test, train_indices=train)
    assert row["labeled"] == int(np.count_nonzero(labels >= 0))
    for key in (
        "silhouette_2d",
        "knn_accuracy_2d",
        "kmeans_ari_2d",
        "silhouette_latent",
        "knn_accuracy_latent",
        "trustworthiness",
        "silhouette_2d_test",
        "knn_accuracy_2d_test",
    ):
        assert key in row and np.isfinite(row[key]), key
    assert row["knn_accuracy_2d_test"] == 1.0
