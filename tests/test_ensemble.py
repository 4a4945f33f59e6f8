"""The in-memory data model: validation, deterministic split, normalisation statistics."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_ensemble

from sense_core.ensemble import (
    UNLABELED,
    Ensemble,
    NormalizationStats,
    split_labeled,
)
from sense_core.errors import EnsembleError


def test_scalar_fields_get_a_channel_axis_and_float32():
    ensemble = Ensemble(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))
    assert ensemble.fields.shape == (2, 1, 3, 4)
    assert ensemble.fields.dtype == np.float32
    assert ensemble.member_ids == ("m000000", "m000001")
    assert (ensemble.labels == UNLABELED).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fields": np.zeros((0, 1, 4, 4))}, "empty"),
        ({"fields": np.zeros((3, 4))}, "shape"),
        ({"fields": np.zeros((2, 4, 4)), "member_ids": ["a", "a"]}, "'a' appears more than once"),
        ({"fields": np.zeros((2, 4, 4)), "member_ids": ["a/b", "c"]}, "'a/b' is not valid"),
        ({"fields": np.zeros((2, 4, 4)), "member_ids": ["a"]}, "1 member ids for 2"),
        ({"fields": np.zeros((2, 4, 4)), "labels": [0, 2], "class_names": ["x", "y"]}, "outside"),
        ({"fields": np.zeros((2, 4, 4)), "labels": [0]}, "shape"),
        ({"fields": np.zeros((2, 4, 4)), "class_names": ["x", "x"]}, "not unique"),
        ({"fields": np.zeros((2, 4, 4)), "metadata": {"t": [1.0]}}, "metadata 't'"),
    ],
)
def test_bad_ensembles_are_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(EnsembleError, match=message):
        Ensemble(**kwargs)


def test_non_finite_values_name_the_member():
    fields = np.zeros((3, 4, 4), dtype=np.float32)
    fields[2, 1, 1] = np.nan
    with pytest.raises(EnsembleError, match="member 'c' has 1 non-finite"):
        Ensemble(fields, member_ids=["a", "b", "c"])


def test_subset_keeps_labels_ids_and_metadata(ensemble):
    part = ensemble.subset([5, 1])
    assert part.member_ids == ("run5", "run1")
    assert list(part.labels) == [ensemble.labels[5], ensemble.labels[1]]
    np.testing.assert_array_equal(part.metadata["chain"], ensemble.metadata["chain"][[5, 1]])
    np.testing.assert_array_equal(part.fields, ensemble.fields[[5, 1]])


def test_iter_batches_covers_every_member_once(ensemble):
    seen = np.concatenate([indices for indices, _ in ensemble.iter_batches(batch_size=7)])
    np.testing.assert_array_equal(seen, np.arange(len(ensemble)))
    _, batch = next(ensemble.iter_batches(batch_size=7, indices=[3, 1]))
    np.testing.assert_array_equal(batch, ensemble.fields[[3, 1]])


def test_split_is_disjoint_stratified_and_covers_the_labeled_members():
    ensemble = make_ensemble(count=400)
    split = split_labeled(ensemble, fractions=(0.6, 0.2, 0.2), seed=3)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(np.flatnonzero(ensemble.labels != UNLABELED))
    for label in range(3):
        in_class = np.flatnonzero(ensemble.labels == label)
        assert np.isin(in_class, split.test).sum() == round(len(in_class) * 0.2)
        assert np.isin(in_class, split.validation).sum() == round(len(in_class) * 0.2)


def test_split_depends_on_member_ids_not_on_order():
    ensemble = make_ensemble(count=60)
    order = np.random.default_rng(1).permutation(len(ensemble))
    shuffled = ensemble.subset(order)
    ids = ensemble.member_ids
    for seed in (0, 1):
        first = split_labeled(ensemble, seed=seed).to_dict(ids)
        second = split_labeled(shuffled, seed=seed).to_dict(shuffled.member_ids)
        for part in ("train", "validation", "test"):
            assert sorted(first[part]) == sorted(second[part])
    other_seed = split_labeled(ensemble, seed=1).to_dict(ids)
    assert sorted(other_seed["test"]) != sorted(
        split_labeled(ensemble, seed=0).to_dict(ids)["test"]
    )


def test_split_needs_two_classes_and_some_labels():
    single = Ensemble(np.zeros((6, 4, 4)), labels=[0, 0, 0, -1, 0, 0], class_names=["only"])
    with pytest.raises(EnsembleError, match=r"1 class\(es\) \['only'\]"):
        split_labeled(single)
    unlabeled = Ensemble(np.zeros((3, 4, 4)), class_names=["a", "b"])
    with pytest.raises(EnsembleError, match="no hand-labeled members"):
        split_labeled(unlabeled)
    with pytest.raises(ValueError, match="fractions"):
        split_labeled(make_ensemble(), fractions=(0.5, 0.5, 0.5))


def test_tiny_classes_keep_a_training_member():
    ensemble = Ensemble(np.zeros((4, 4, 4)), labels=[0, 1, 1, 1], class_names=["a", "b"])
    split = split_labeled(ensemble, fractions=(0.2, 0.4, 0.4))
    assert 0 in split.train
    assert len(set(split.train) & {1, 2, 3}) >= 1


def test_preset_split_in_metadata_is_kept():
    preset = np.array(["train", "test", "", "validation", "train", "test"])
    ensemble = Ensemble(
        np.zeros((6, 4, 4)),
        labels=[0, 1, -1, 0, 1, 0],
        class_names=["a", "b"],
        metadata={"split": preset},
    )
    split = split_labeled(ensemble)
    assert list(split.train) == [0, 4]
    assert list(split.validation) == [3]
    assert list(split.test) == [1, 5]


def test_normalisation_matches_numpy_on_the_training_members():
    ensemble = make_ensemble(count=50, channels=2)
    split = split_labeled(ensemble)
    stats = NormalizationStats.from_store(ensemble, split.train, batch_size=4)
    train = ensemble.fields[split.train].astype(np.float64)
    np.testing.assert_allclose(stats.mean, train.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(stats.std, train.std(axis=(0, 2, 3)), rtol=1e-9)
    normalised = stats.apply(ensemble.fields[split.train])
    np.testing.assert_allclose(normalised.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(axis=(0, 2, 3)), 1, atol=1e-5)
    assert NormalizationStats.from_dict(stats.to_dict()) == stats


def test_constant_channel_keeps_unit_std_and_bad_statistics_are_rejected():
    fields = np.stack([np.full((3, 4, 4), 5.0), np.arange(48.0).reshape(3, 4, 4)], axis=1)
    stats = NormalizationStats.from_batches([fields])
    assert stats.std[0] == 1.0 and stats.mean[0] == 5.0
    assert np.all(stats.apply(fields)[:, 0] == 0)
    with pytest.raises(EnsembleError, match="statistics have 1"):
        NormalizationStats.from_batches([fields[:, :1]]).apply(fields)
    with pytest.raises(EnsembleError, match="positive std"):
        NormalizationStats.from_dict({"mean": [0.0], "std": [0.0]})
    with pytest.raises(EnsembleError, match="malformed"):
        NormalizationStats.from_dict({"mean": [0.0]})


def test_split_hand_labeled_leaves_pseudo_labels_out_of_every_part():
    """Members a pseudo-labelling marked (metadata label_source) are not hand labels: they join
    no train/validation/test part, and the mask says which members are hand-labeled."""
    from sense_core.ensemble import manual_mask, split_hand_labeled

    labels = np.arange(40) % 2
    source = np.where(np.arange(40) < 20, "manual", "pseudo")
    store = Ensemble(
        np.zeros((40, 1, 2, 2), np.float32),
        labels=labels,
        class_names=["a", "b"],
        metadata={"label_source": source},
    )
    manual, split = split_hand_labeled(store, (0.5, 0.25, 0.25), seed=3)
    np.testing.assert_array_equal(manual, np.arange(40) < 20)
    np.testing.assert_array_equal(manual_mask(store), manual)
    parts = np.concatenate([split.train, split.validation, split.test])
    assert sorted(parts.tolist()) == list(range(20))
    plain = Ensemble(store.fields, labels=labels, class_names=["a", "b"])
    assert manual_mask(plain).all()
