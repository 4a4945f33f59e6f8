"""Latent labelers (sense_training.heads): each candidate learns, the cross-validated choice picks
the better one on a constructed case, and the exported ONNX head gives the same logits."""

from __future__ import annotations

import numpy as np
import pytest

from sense_training.heads import (
    CANDIDATES,
    LinearHead,
    choose_head,
    cross_validation_folds,
    fit_candidate,
)


def strips(per_class: int = 300, labeled_per_class: int = 4, seed: int = 0):
    """Three long parallel strips in a 4-D latent space, a few hand labels per strip: a linear
    boundary through a few labeled points is tilted, the strips' own neighbourhoods are not."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), per_class)
    latents = np.c_[
        rng.uniform(-10, 10, len(truth)),
        truth + rng.normal(0, 0.08, len(truth)),
        rng.normal(0, 0.05, (len(truth), 2)),
    ].astype(np.float32)
    labels = np.full(len(truth), -1)
    for label in range(3):
        members = rng.choice(np.flatnonzero(truth == label), labeled_per_class, replace=False)
        labels[members] = label
    return latents, truth, labels


def blobs(per_class: int = 100, classes: int = 4, labeled_per_class: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, 8))
    truth = np.repeat(np.arange(classes), per_class)
    latents = (centres[truth] + rng.normal(0, 1, (len(truth), 8))).astype(np.float32)
    labels = np.full(len(truth), -1)
    for label in range(classes):
        members = rng.choice(np.flatnonzero(truth == label), labeled_per_class, replace=False)
        labels[members] = label
    return latents, truth, labels


@pytest.mark.parametrize("name", CANDIDATES)
def test_each_candidate_learns_from_few_labels(name):
    latents, truth, labels = blobs()
    head = fit_candidate(name, latents, labels, classes=4)
    accuracy = np.mean(head.predict(latents) == truth)
    assert accuracy > 0.9, accuracy  # chance is 0.25


def test_choice_picks_propagation_where_the_data_shape_beats_a_linear_fit():
    wins = 0
    for seed in range(3):
        latents, truth, labels = strips(seed=seed)
        choice = choose_head(latents, labels, classes=3, seed=seed)
        linear = fit_candidate("linear", latents, labels, classes=3)
        assert choice.name == "propagation", choice.record()
        chosen = np.mean(choice.head.predict(latents) == truth)
        wins += chosen > np.mean(linear.predict(latents) == truth) + 0.1
        assert chosen > 0.9
        assert choice.scores["propagation"]["folds"] == 4
        assert "cross-validated" in choice.reason
    assert wins == 3


def test_ties_go_to_the_simpler_linear_head():
    latents, _, labels = blobs(labeled_per_class=10)
    choice = choose_head(latents, labels, classes=4)
    scores = {name: s["cv_accuracy"] for name, s in choice.scores.items()}
    assert scores["linear"] == scores["propagation"] == 1.0
    assert choice.name == "linear"


def test_one_label_in_a_class_gives_no_cross_validation_and_says_so():
    latents, _, labels = blobs(labeled_per_class=3)
    labels[np.flatnonzero(labels == 0)[1:]] = -1
    assert cross_validation_folds(labels[labels >= 0]) == []
    choice = choose_head(latents, labels, classes=4)
    assert choice.name == "linear"
    assert "no cross-validation" in choice.reason
    assert choice.scores["linear"]["cv_accuracy"] is None


def test_classes_without_labels_are_never_predicted_and_two_classes_work():
    latents, truth, labels = blobs(classes=2)
    head = LinearHead.fit(latents[labels >= 0], labels[labels >= 0], classes=3)
    assert head.weights.shape == (3, 8)
    predicted = head.predict(latents)
    assert set(np.unique(predicted)) <= {0, 1}
    assert np.mean(predicted == truth) > 0.95


def test_exported_head_gives_the_same_logits_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    latents, _, labels = blobs()
    head = fit_candidate("linear", latents, labels, classes=4)
    path = head.export_onnx(tmp_path / "head.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"latent": latents})
    assert logits.shape == (len(latents), 4)
    np.testing.assert_allclose(logits, head.logits(latents), atol=1e-4)


def test_a_latent_head_is_the_bundles_labeler_and_runs_on_the_encoders_latents(tmp_path):
    """Embedding runs the encoder once and the head on its latents; pseudo-labelling (labeler
    alone) encodes first; both give the head's classes of the encoder's latents."""
    from helpers import make_ensemble, make_runtime_bundle

    from sense_core.bundle import Bundle
    from sense_core.embedding import embed_ensemble
    from sense_core.inference import Encoder, Labeler
    from sense_core.pseudo_labels import pseudo_label
    from sense_training.heads import add_head_to_bundle

    folder = tmp_path / "bundle"
    make_runtime_bundle(folder, labeler=False)
    ensemble = make_ensemble(count=30)
    latents = Encoder(Bundle.load(folder)).encode(ensemble.fields)
    truth = (latents[:, 0] > np.median(latents[:, 0])).astype(np.int64)
    head = LinearHead.fit(latents, truth, classes=3)
    bundle = add_head_to_bundle(folder, head, record={"chosen": "linear"})
    assert bundle.model("labeler").details["input"] == "latent"
    assert bundle.model("labeler").details["choice"] == {"chosen": "linear"}

    expected = head.predict(latents)
    assert np.mean(expected == truth) > 0.9
    embedding = embed_ensemble(ensemble, folder, projection=None)
    np.testing.assert_array_equal(embedding.predicted_labels, expected)
    labeler = Labeler(Bundle.load(folder))
    assert labeler.takes_latents
    np.testing.assert_allclose(labeler.logits(ensemble.fields), head.logits(latents), atol=1e-4)
    result = pseudo_label(ensemble, folder)
    np.testing.assert_array_equal(result.predicted, expected)


def test_a_latent_head_of_the_wrong_width_is_refused_naming_the_file(tmp_path):
    from helpers import make_runtime_bundle

    from sense_core.bundle import Bundle
    from sense_core.errors import SenseError
    from sense_core.inference import Labeler
    from sense_training.heads import add_head_to_bundle

    folder = tmp_path / "bundle"
    make_runtime_bundle(folder, labeler=False, latent_dim=6)
    wrong = LinearHead(np.zeros((3, 4), np.float32), np.zeros(3, np.float32))
    add_head_to_bundle(folder, wrong)
    with pytest.raises(SenseError, match=r"labeler\.onnx.*\(B, 6\) latent vectors"):
        Labeler(Bundle.load(folder))


def test_a_head_on_the_fields_is_exported_with_a_flatten(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    fields = rng.normal(size=(40, 2, 5, 4)).astype(np.float32)
    truth = (fields[:, 0, 0, 0] > 0).astype(np.int64)
    head = LinearHead.fit(fields.reshape(40, -1), truth, classes=2)
    path = head.export_onnx(tmp_path / "fields.onnx", "fields", input_shape=(2, 5, 4))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"fields": fields})
    np.testing.assert_allclose(logits, head.logits(fields.reshape(40, -1)), atol=1e-4)
    with pytest.raises(ValueError, match="does not hold 40 values"):
        head.export_onnx(tmp_path / "bad.onnx", "fields", input_shape=(2, 5, 5))
