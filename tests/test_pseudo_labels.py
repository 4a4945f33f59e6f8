"""Pseudo-labelling on the core runtime (sense_core.pseudo_labels): counts, ranges, sources,
the split kept from the labeler, the metadata written, and the errors.

The labeler is a nearest-centroid ONNX model on the members' mean (no torch): class k's members
have mean level 2(k - 1), so the model is right on most members but not sure of all of them.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from sense_core.bundle import Bundle, BundleError, add_model, new_manifest  # noqa: E402
from sense_core.ensemble import Ensemble, NormalizationStats, split_labeled  # noqa: E402
from sense_core.errors import SenseError  # noqa: E402
from sense_core.io import read_ensemble, write_ensemble  # noqa: E402
from sense_core.pseudo_labels import (  # noqa: E402
    PseudoLabelOptions,
    labeler_split_settings,
    pseudo_label,
    pseudo_labeled_store,
)

CLASSES = ("low", "middle", "high")
SHAPE = (1, 8, 8)


def levels(count: int = 120, labeled: float = 0.6, seed: int = 0, shape=SHAPE) -> Ensemble:
    """Members of mean level 2(k - 1) plus noise; ``labeled`` of them keep their class, the true
    class is metadata 'truth'."""
    rng = np.random.default_rng(seed)
    truth = np.arange(count) % 3
    fields = (truth - 1.0)[:, None, None, None] * 2.0 + rng.normal(0, 1.0, (count, *shape))
    fields += rng.normal(0, 0.8, (count, 1, 1, 1))  # a per-member offset: some are ambiguous
    labels = np.where(rng.random(count) < labeled, truth, -1)
    return Ensemble(fields.astype(np.float32), labels, CLASSES, metadata={"truth": truth})


def centroid_labeler(path, ensemble: Ensemble, stats: NormalizationStats) -> None:
    """An ONNX model: logits_k = mu_k * mean(x) - mu_k^2 / 2 on normalised fields (nearest
    class mean of the members' mean level)."""
    from onnx import TensorProto, helper, numpy_helper

    normalised = stats.apply(ensemble.fields).reshape(len(ensemble), -1).mean(axis=1)
    known = ensemble.labels >= 0
    means = np.array([normalised[known & (ensemble.labels == k)].mean() for k in range(3)])
    pixels = int(np.prod(SHAPE))
    weights = np.tile(means / pixels, (pixels, 1)).astype(np.float32)
    bias = (-(means**2) / 2).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["fields"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        ],
        "centroids",
        [helper.make_tensor_value_info("fields", TensorProto.FLOAT, ["batch", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def ensemble() -> Ensemble:
    return levels()


@pytest.fixture(scope="module")
def bundle(ensemble, tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo")
    stats = NormalizationStats.from_store(ensemble)
    centroid_labeler(root / "centroids.onnx", ensemble, stats)
    manifest = new_manifest(SHAPE, stats, CLASSES)
    split = {"fractions": [0.7, 0.15, 0.15], "split_seed": 0}
    add_model(
        root / "bundle", "labeler", root / "centroids.onnx", manifest, input_name="fields",
        output_name="logits", opset=17, training={"config": {"split": split}},
    )  # fmt: skip
    return root / "bundle"


def test_pseudo_labels_counts_ranges_sources_and_split(bundle, ensemble, tmp_path):
    out = bundle
    result = pseudo_label(ensemble, out)
    manual = ensemble.labels >= 0
    assert result.provider == "CPUExecutionProvider"
    assert (result.source[manual] == "manual").all() and (result.source[~manual] == "pseudo").all()
    assert np.array_equal(result.labels[manual], ensemble.labels[manual])
    assert np.array_equal(result.labels[~manual], result.predicted[~manual])
    assert ((result.probability >= 1 / 3 - 1e-6) & (result.probability <= 1)).all()
    assert (result.confidence[manual] == 1).all()
    truth = ensemble.metadata["truth"]
    assert np.mean(result.predicted[~manual] == truth[~manual]) > 0.5  # chance is 1/3

    threshold = float(np.median(result.probability[~manual]))
    strict = pseudo_label(ensemble, out, threshold=threshold)
    kept = strict.source == "pseudo"
    assert (strict.probability[kept] >= threshold).all()
    assert (strict.labels[strict.source == "none"] == -1).all()
    assert 0 < kept.sum() < (~manual).sum()
    summary = strict.summary(CLASSES)
    assert summary["manual"] + summary["pseudo"] + summary["none"] == len(ensemble)
    assert summary["provider"] == "CPUExecutionProvider"
    assert 0.5 < summary["agreement_with_manual_labels"] <= 1.0

    store = pseudo_labeled_store(ensemble, strict, out)
    path = write_ensemble(store, tmp_path / "pseudo.npz")
    back = read_ensemble(path)
    assert np.array_equal(back.labels, strict.labels)
    assert np.array_equal(back.fields, ensemble.fields)
    assert list(back.metadata["label_source"]) == list(strict.source)
    assert np.allclose(back.metadata["confidence"], strict.confidence)
    assert np.array_equal(back.metadata["pseudo_label"], strict.predicted)
    assert np.allclose(back.metadata["pseudo_confidence"], strict.probability)
    assert np.array_equal(back.metadata["truth"], truth)  # earlier metadata kept
    # the split keeps validation and test hand-labeled, exactly the labeler's
    labeler_split, later = split_labeled(ensemble), split_labeled(back)
    assert np.array_equal(later.test, labeler_split.test)
    assert np.array_equal(later.validation, labeler_split.validation)
    assert set(later.train) == set(labeler_split.train) | set(np.flatnonzero(kept))

    # pseudo-labelling a pseudo-labeled ensemble keeps manual = hand labels only
    again = pseudo_label(back, out)
    assert np.array_equal(again.manual, manual)

    # members without any hand label (and no class names) are all pseudo-labeled
    unlabeled = Ensemble(ensemble.fields[:10])
    fresh = pseudo_label(unlabeled, out)
    assert (fresh.source == "pseudo").all() and not fresh.manual.any()
    fresh_store = pseudo_labeled_store(unlabeled, fresh, out)
    assert fresh_store.class_names == CLASSES
    assert set(fresh_store.metadata["split"]) == {"train"}


def test_pseudo_labels_are_the_runtime_labelers_predictions(bundle, ensemble):
    """One way to run the labeler: the core runtime's Labeler gives the same classes and
    confidences, and the batch size does not change them."""
    from sense_core.inference import Labeler

    prediction = Labeler(Bundle.load(bundle)).predict(ensemble.fields)
    result = pseudo_label(ensemble, bundle, batch_size=7)
    np.testing.assert_array_equal(result.predicted, prediction.labels)
    np.testing.assert_allclose(result.probability, prediction.confidence, rtol=1e-6)


def test_errors_name_the_problem(bundle, ensemble):
    with pytest.raises(BundleError, match="expects"):
        pseudo_label(levels(count=6, shape=(1, 6, 6)), bundle)
    with pytest.raises(SenseError, match="threshold"):
        pseudo_label(ensemble, bundle, threshold=1.5)
    with pytest.raises(SenseError, match="batch size"):
        PseudoLabelOptions(batch_size=0)
    renamed = Ensemble(ensemble.fields, ensemble.labels, ("a", "b", "c"))
    with pytest.raises(SenseError, match="differ"):
        pseudo_label(renamed, bundle)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(SenseError, match="cuda"):
            pseudo_label(ensemble, bundle, device="cuda")


def test_the_labelers_split_is_read_nested_or_flat(bundle, tmp_path):
    loaded = Bundle.load(bundle)
    assert labeler_split_settings(loaded) == ((0.7, 0.15, 0.15), 0)
    loaded.manifest["training"]["labeler"]["config"] = {"fractions": [0.5, 0.25, 0.25]}
    assert labeler_split_settings(loaded) == ((0.5, 0.25, 0.25), 0)
    loaded.manifest["training"]["labeler"]["config"] = {"split": {"split_seed": 3}}
    assert labeler_split_settings(loaded) == ((0.7, 0.15, 0.15), 3)
