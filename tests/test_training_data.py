"""Training plumbing: seeds, checkpoints, history, the ensemble dataset, augmentation, sampling."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from helpers import make_ensemble

torch = pytest.importorskip("torch")

from sense_core.ensemble import NormalizationStats, split_labeled  # noqa: E402
from sense_core.errors import SenseError  # noqa: E402
from sense_core.io import open_ensemble, write_ensemble  # noqa: E402
from sense_training.common import (  # noqa: E402
    History,
    choose_device,
    configure_threads,
    epoch_seed,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    training_versions,
)
from sense_training.data import (  # noqa: E402
    Augmentation,
    BalancedSampler,
    EnsembleDataset,
    EpochShuffleSampler,
    _shifted,
    class_weights,
    make_loader,
    set_epoch,
)

torch.set_num_threads(1)  # 2 threads collapse when the machine is shared


# --------------------------------------------------------------------------- common
def test_seed_everything_repeats_draws_and_records_seed():
    record = seed_everything(7)
    first = (np.random.rand(), torch.rand(3))  # noqa: NPY002
    seed_everything(7)
    second = (np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert first[0] == second[0] and torch.equal(first[1], second[1])
    assert record["seed"] == 7 and json.dumps(record)
    with pytest.raises(SenseError):
        seed_everything(-1)


def test_epoch_seed_is_stable_and_distinct():
    assert epoch_seed(0, 3) == epoch_seed(0, 3)
    seeds = {epoch_seed(s, e, p) for s in (0, 1) for e in range(5) for p in ("a", "b")}
    assert len(seeds) == 20
    assert all(0 <= s < 2**63 for s in seeds)


def test_threads_and_devices():
    previous = torch.get_num_threads()
    assert configure_threads(1) == 1
    configure_threads(previous)
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type in ("cpu", "cuda")
    with pytest.raises(SenseError, match="unknown device"):
        choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SenseError, match="no CUDA"):
            choose_device("cuda")


def test_checkpoint_round_trip_is_atomic_and_safe(tmp_path):
    model = torch.nn.Linear(3, 2)
    history = History()
    history.append(0, loss=1.5, accuracy=0.5)
    path = save_checkpoint(
        tmp_path / "ck.pt",
        {"model": model.state_dict(), "epoch": 4, "history": history.to_dict(), "name": "x"},
    )
    state = load_checkpoint(path)
    assert state["epoch"] == 4 and state["name"] == "x"
    assert torch.equal(state["model"]["weight"], model.weight.detach())
    assert History.from_dict(state["history"]).series("loss") == [1.5]
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left over

    # a failing save leaves the previous checkpoint intact
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"bad": Unpicklable()})
    assert load_checkpoint(path)["epoch"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]

    # arbitrary pickles and foreign files are refused
    torch.save({"obj": Fraction(1, 3)}, tmp_path / "evil.pt")  # not on the allow list
    with pytest.raises(SenseError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(SenseError, match="not a SENSE checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(SenseError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_history_best_and_json():
    history = History()
    for epoch, loss in enumerate([3.0, 1.0, 2.0, 1.0]):
        history.append(epoch, loss=loss, acc=1 / (1 + loss))
    assert history.best("loss")["epoch"] == 1  # earliest on ties
    assert history.best("acc", "max")["epoch"] == 1
    assert history.best("missing") is None
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))).records == history.records


def test_training_versions_lists_torch():
    versions = training_versions()
    assert torch.__version__.startswith(versions["torch"].split("+")[0])
    assert "python" in versions and "sense" in versions


# --------------------------------------------------------------------------- dataset
def test_dataset_serves_normalised_members_labels_and_indices():
    ensemble = make_ensemble(count=24, height=8, width=6)
    split = split_labeled(ensemble)
    stats = NormalizationStats.from_store(ensemble, split.train)
    dataset = EnsembleDataset(ensemble, split.train, stats)
    assert len(dataset) == len(split.train)
    fields, label, index = dataset[0]
    assert fields.dtype == torch.float32 and fields.shape == (1, 8, 6)
    assert index == split.train[0] and label == ensemble.labels[index]
    np.testing.assert_allclose(fields.numpy(), stats.apply(ensemble.fields[index]), atol=1e-6)
    stacked = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert abs(float(stacked.mean())) < 1e-5 and abs(float(stacked.std(unbiased=False)) - 1) < 1e-4
    assert dataset.member_ids()[0] == ensemble.member_ids[index]


def test_dataset_label_override_and_lazy_store(tmp_path):
    ensemble = make_ensemble(count=20, height=8, width=8)
    path = write_ensemble(ensemble, tmp_path / "e.npz")
    lazy = open_ensemble(path)
    pseudo = np.arange(20) % 3
    for cache in (True, False):
        dataset = EnsembleDataset(lazy, None, None, labels=pseudo, cache=cache)
        batch = next(iter(make_loader(dataset, batch_size=7)))
        fields, labels, indices = batch
        assert fields.shape == (7, 1, 8, 8)
        assert labels.tolist() == pseudo[:7].tolist() and indices.tolist() == list(range(7))
        np.testing.assert_array_equal(fields.numpy(), ensemble.fields[:7])
    with pytest.raises(SenseError, match="one label per member"):
        EnsembleDataset(ensemble, labels=pseudo[:5])
    with pytest.raises(SenseError, match="outside"):
        EnsembleDataset(ensemble, [0, 99])
    with pytest.raises(SenseError, match="channel"):
        EnsembleDataset(ensemble, normalization=NormalizationStats((0.0, 0.0), (1.0, 1.0), 1))


def _gradient_field(size: int = 9, seed: int = 0) -> np.ndarray:
    """Scalar phi with its gradient as (x to the right, y up) vector channels: (3, H, W)."""
    phi = np.random.default_rng(seed).normal(size=(size, size))
    d_row, d_col = np.gradient(phi)
    return np.stack([phi, d_col, -d_row]).astype(np.float32)


def test_augmentation_transforms_vector_components_like_the_gradient():
    augmentation = Augmentation.parse("hflip,vflip,rot90", vector_pairs=[(1, 2)])
    field = _gradient_field()
    seen = set()
    for draw in range(40):
        out = augmentation.apply(field, np.random.default_rng(draw))
        seen.add(out[0].tobytes())
        d_row, d_col = np.gradient(out[0].astype(np.float64))
        np.testing.assert_allclose(out[1], d_col, atol=1e-5)
        np.testing.assert_allclose(out[2], -d_row, atol=1e-5)
    assert len(seen) == 8  # the whole dihedral group is reached
    np.testing.assert_array_equal(field, _gradient_field())  # input untouched


def test_augmentation_parse_and_checks():
    assert not Augmentation.parse("none").enabled
    assert Augmentation.parse("vflip, hflip").describe() == "hflip,vflip"
    with pytest.raises(SenseError, match="unknown augmentation"):
        Augmentation.parse("shear")
    with pytest.raises(SenseError, match="square"):
        Augmentation.parse("rot90").check((1, 8, 6))
    Augmentation.parse("hflip").check((1, 8, 6))
    with pytest.raises(SenseError, match="vector channel pair"):
        Augmentation(vector_pairs=((0, 3),)).check((2, 4, 4))
    only_flip = Augmentation(hflip=True)
    field = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    outs = {only_flip.apply(field, np.random.default_rng(s)).tobytes() for s in range(20)}
    assert outs == {field.tobytes(), field[:, :, ::-1].copy().tobytes()}


def test_shift_translates_by_whole_pixels_with_a_mirrored_border():
    field = np.random.default_rng(1).normal(size=(2, 16, 24)).astype(np.float32)
    shift = Augmentation.parse("shift")
    assert shift.enabled and shift.describe() == "shift"
    moves = set()
    for draw in range(200):
        out = shift.apply(field, np.random.default_rng(draw))
        assert out.shape == field.shape
        # find the move: the part of the field still inside the frame is unchanged
        found = [
            (down, right)
            for down in range(-2, 3)
            for right in range(-3, 4)
            if np.array_equal(
                out[:, max(down, 0) : 16 + min(down, 0), max(right, 0) : 24 + min(right, 0)],
                field[:, max(-down, 0) : 16 - max(down, 0), max(-right, 0) : 24 - max(right, 0)],
            )
        ]
        assert len(found) == 1  # at most 16/8 = 2 rows and 24/8 = 3 columns
        down, right = found[0]
        moves.add((down, right))
        if down > 0 and right == 0:  # uncovered top rows mirror the field (row -k is row k)
            np.testing.assert_array_equal(out[:, :down], field[:, down:0:-1])
        if right < 0 and down == 0:  # uncovered right columns mirror the last ones
            np.testing.assert_array_equal(out[:, :, right:], field[:, :, -2 : right - 2 : -1])
    assert len(moves) == 5 * 7  # every move within reach is drawn
    with pytest.raises(SenseError, match="2 pixels across"):
        shift.check((1, 1, 8))
    Augmentation.parse("hshift").check((1, 1, 8))  # one row: moving left/right still works
    rows_only = Augmentation.parse("hshift")
    for draw in range(20):
        out = rows_only.apply(field, np.random.default_rng(draw))
        assert any(np.array_equal(out, _shifted(field, 0, r)) for r in range(-3, 4))
    # enabling shift leaves the flips' draws as they were
    both = Augmentation.parse("hflip,shift")
    for draw in range(20):
        flipped = Augmentation.parse("hflip").apply(field, np.random.default_rng(draw))
        combined = both.apply(field, np.random.default_rng(draw))
        assert any(
            np.array_equal(combined, _shifted(flipped, d, r))
            for d in range(-2, 3)
            for r in range(-3, 4)
        )


def test_dataset_augmentation_depends_on_seed_epoch_and_member_only():
    ensemble = make_ensemble(count=12, height=8, width=8)
    augmentation = Augmentation.parse("hflip,vflip,rot90")
    a = EnsembleDataset(ensemble, augmentation=augmentation, seed=3)
    b = EnsembleDataset(ensemble, augmentation=augmentation, seed=3, cache=False)
    a.set_epoch(2)
    b.set_epoch(2)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(12))
    first = [a[i][0] for i in range(12)]
    a.set_epoch(3)
    assert any(not torch.equal(a[i][0], first[i]) for i in range(12))
    with pytest.raises(SenseError, match="square"):
        EnsembleDataset(make_ensemble(height=8, width=6), augmentation=augmentation)


# --------------------------------------------------------------------------- balance
def test_class_weights_balance_the_loss():
    labels = np.array([0] * 8 + [1] * 2 + [-1] * 5)
    weights = class_weights(labels, 3)
    assert weights.tolist() == pytest.approx([10 / 16, 10 / 4, 0.0])
    per_member = weights[labels[labels >= 0]]
    assert float(per_member.mean()) == pytest.approx(1.0)
    assert float(per_member[:8].sum()) == pytest.approx(float(per_member[8:].sum()))


def test_balanced_sampler_draws_classes_equally_and_repeats_per_epoch():
    labels = np.array([0] * 90 + [1] * 10 + [-1] * 20)
    sampler = BalancedSampler(labels, seed=1, num_samples=4000)
    draws = np.array(list(sampler))
    assert not np.isin(draws, np.arange(100, 120)).any()
    share = np.mean(labels[draws] == 1)
    assert 0.45 < share < 0.55
    sampler.set_epoch(1)
    again = BalancedSampler(labels, seed=1, num_samples=4000)
    again.set_epoch(1)
    assert list(sampler) == list(again) and list(sampler) != draws.tolist()


def test_shuffle_sampler_and_set_epoch():
    ensemble = make_ensemble(count=16, height=4, width=4)
    loader = make_loader(EnsembleDataset(ensemble), batch_size=16, shuffle=True, seed=5)
    set_epoch(loader, 0)
    epoch0 = next(iter(loader))[2].tolist()
    set_epoch(loader, 1)
    epoch1 = next(iter(loader))[2].tolist()
    assert sorted(epoch0) == sorted(epoch1) == list(range(16)) and epoch0 != epoch1
    set_epoch(loader, 0)
    assert next(iter(loader))[2].tolist() == epoch0
    assert len(EpochShuffleSampler(5)) == 5
    balanced = make_loader(EnsembleDataset(ensemble), batch_size=4, balanced=True)
    assert isinstance(balanced.sampler, BalancedSampler)
