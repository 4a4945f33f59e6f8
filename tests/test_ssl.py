"""Self-supervised labeling (issue 15): the instance-contrastive loss (NT-Xent), the views it
is computed on, the self-training head, the choice among the labeler candidates, and
``sense fit --labeler-method ssl`` end to end on a tiny ensemble."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from sense_core.ensemble import UNLABELED, Ensemble  # noqa: E402
from sense_core.errors import SenseError  # noqa: E402
from sense_training.config import VIEW_PRESETS, LossConfig, view_ops  # noqa: E402
from sense_training.data import InstanceViews  # noqa: E402
from sense_training.heads import (  # noqa: E402
    SSL_CANDIDATES,
    choose_head,
    fit_candidate,
    self_train,
)
from sense_training.losses import JointLoss, nt_xent_loss  # noqa: E402


# --------------------------------------------------------------------------- NT-Xent
def test_nt_xent_is_low_for_identical_views_and_high_for_swapped_ones():
    """Orthogonal codes, the second view identical: each code's partner has similarity 1/T and
    the 2B − 2 others 0, so the loss is exactly -log(e^(1/T) / (e^(1/T) + 2B − 2)); with the
    second view's rows swapped the partner is orthogonal and a stranger is identical."""
    count, temperature = 4, 0.2
    codes = torch.eye(count) * 3.0  # scale does not matter: cosine similarity
    same = nt_xent_loss(codes, codes.clone(), temperature)
    expected = -math.log(math.exp(5.0) / (math.exp(5.0) + 2 * count - 2))
    assert float(same) == pytest.approx(expected, rel=1e-5)
    swapped = nt_xent_loss(codes, codes[[1, 0, 3, 2]], temperature)
    assert float(swapped) > math.log(2 * count - 1) > float(same)  # worse than a uniform guess


def test_nt_xent_leaves_repeats_of_a_member_out_of_its_negatives():
    """A batch that holds member 7 twice: without ids its other copy is a hard negative, with
    them it is left out (the loss drops) and the gradient stays finite."""
    rng = np.random.default_rng(0)
    codes = torch.tensor(rng.normal(size=(5, 8)), dtype=torch.float32)
    codes[4] = codes[0]
    codes.requires_grad_(True)
    index = torch.tensor([7, 1, 2, 3, 7])
    plain = nt_xent_loss(codes, codes * 1.01, 0.5)
    masked = nt_xent_loss(codes, codes * 1.01, 0.5, index)
    assert float(masked.detach()) < float(plain.detach())
    masked.backward()
    assert torch.isfinite(codes.grad).all()


def test_joint_loss_adds_the_instance_term_only_with_a_second_view():
    config = LossConfig(terms=("recon", "instance"), instance_weight=0.5)
    objective = JointLoss(config, num_classes=2, latent_dim=4, input_dim=16)
    inputs = torch.zeros(6, 1, 4, 4)
    code = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.full((6,), UNLABELED)
    without = objective(inputs, inputs, code, labels)
    assert "instance" not in without.parts
    with_view = objective(inputs, inputs, code, labels, view_code=code.flip(0))
    assert with_view.parts["instance"] > 0
    assert with_view.parts["total"] == pytest.approx(0.5 * with_view.parts["instance"], rel=1e-5)
    assert not config.uses_labels  # the instance term needs no label


# --------------------------------------------------------------------------- views
def test_views_keep_the_shape_and_periodic_ones_are_exact_permutations():
    rng = np.random.default_rng(1)
    field = rng.normal(size=(2, 8, 8)).astype(np.float32)
    for preset in VIEW_PRESETS:
        view = InstanceViews.parse(preset).apply(field, np.random.default_rng(3))
        assert view.shape == field.shape and view.dtype == np.float32
    rolled = InstanceViews(("roll", "hflip", "vflip", "rot90"))
    for seed in range(6):
        view = rolled.apply(field, np.random.default_rng(seed))
        for channel in range(2):  # each channel's values, rearranged: nothing made up or lost
            assert np.array_equal(np.sort(view[channel].ravel()), np.sort(field[channel].ravel()))
    roll = InstanceViews(("roll",)).apply(field, np.random.default_rng(5))
    assert any(
        np.array_equal(roll, np.roll(field, (r, c), axis=(1, 2)))
        for r in range(8)
        for c in range(8)
    )
    flipped = [InstanceViews(("negate",)).apply(field, np.random.default_rng(s)) for s in range(8)]
    assert all(np.array_equal(v, field) or np.array_equal(v, -field) for v in flipped)
    assert any(np.array_equal(v, -field) for v in flipped)
    noisy = InstanceViews(("noise",)).apply(field, np.random.default_rng(2))
    assert 0.05 < np.std(noisy - field) < 0.2  # NOISE_STD = 0.1 in normalised units


def test_views_are_reproducible_per_member_and_checked_against_the_shape():
    views = InstanceViews.parse("image")
    batch = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    first = views.batch(batch, torch.tensor([4, 9, 2]), seed=0, epoch=1)
    again = views.batch(batch, torch.tensor([4, 9, 2]), seed=0, epoch=1)
    other = views.batch(batch, torch.tensor([4, 9, 2]), seed=0, epoch=2)
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(SenseError, match="square"):
        InstanceViews.parse("lattice").check((1, 6, 8))
    with pytest.raises(SenseError, match="not understood"):
        view_ops("roll,twirl")
    assert view_ops("periodic") == ("roll", "hflip", "vflip", "rot90")


# --------------------------------------------------------------------------- heads
def separable(count: int = 240, classes: int = 3, seed: int = 0):
    """Latents of three blobs and raw 'fields' (the latents behind a random linear map, plus
    noise); a tenth of the members hand-labeled."""
    rng = np.random.default_rng(seed)
    truth = np.arange(count) % classes
    centres = rng.normal(size=(classes, 6)) * 3.0
    latents = centres[truth] + rng.normal(size=(count, 6))
    fields = latents @ rng.normal(size=(6, 40)) + rng.normal(size=(count, 40))
    labels = np.full(count, UNLABELED)
    labels[::10] = truth[::10]
    return latents.astype(np.float32), fields.astype(np.float32), labels, truth


@pytest.mark.parametrize("name", SSL_CANDIDATES)
def test_each_candidate_trains_and_beats_chance(name):
    latents, fields, labels, truth = separable()
    head = fit_candidate(name, latents, labels, 3, threshold=0.9, fields=fields)
    inputs = fields if name == "raw_linear" else latents
    hidden = labels == UNLABELED
    assert np.mean(head.predict(inputs[hidden]) == truth[hidden]) > 0.8  # chance 1/3


def test_self_training_accepts_confident_members_and_counts_the_others():
    latents, _, labels, truth = separable()
    trained = self_train(latents, labels, 3, threshold=0.9)
    record = trained.record(0.9)
    assert record["labels_given"] == 24
    assert record["accepted"] == sum(record["accepted_per_round"]) > 0
    assert record["labels_given"] + record["accepted"] + record["below_threshold"] == 240
    accepted = (trained.targets != UNLABELED) & (labels == UNLABELED)
    assert np.mean(trained.targets[accepted] == truth[accepted]) > 0.9
    assert np.array_equal(trained.targets[labels != UNLABELED], labels[labels != UNLABELED])
    strict = self_train(latents, labels, 3, threshold=0.999999).record(0.999999)
    assert strict["accepted"] < record["accepted"]


def test_selection_picks_the_candidate_that_is_best_on_held_out_hand_labels():
    """Latents that carry no class (noise) and fields that do: raw_linear wins; the other way
    round a latent head wins. Scores, folds and the reason are recorded."""
    latents, fields, labels, _ = separable()
    noise = np.random.default_rng(9).normal(size=latents.shape).astype(np.float32)
    choice = choose_head(noise, labels, 3, SSL_CANDIDATES, 0.9, fields=fields)
    assert choice.name == "raw_linear"
    record = choice.record()
    assert set(record["candidates"]) == set(SSL_CANDIDATES)
    best = record["candidates"]["raw_linear"]["cv_accuracy"]
    assert best == max(c["cv_accuracy"] for c in record["candidates"].values()) > 0.8
    assert "cross-validated" in record["reason"]
    assert "self_training" in record["candidates"]["selftrain"]
    noisy_fields = np.random.default_rng(8).normal(size=fields.shape).astype(np.float32)
    choice = choose_head(latents, labels, 3, SSL_CANDIDATES, 0.9, fields=noisy_fields)
    assert choice.name != "raw_linear"
    with pytest.raises(SenseError, match="fields"):
        choose_head(latents, labels, 3, SSL_CANDIDATES, 0.9)


# --------------------------------------------------------------------------- sense fit
def test_fit_with_the_ssl_labeler_records_the_choice_and_the_confidence_counts(tmp_path):
    """labeler_method=ssl: a self-supervised first encoder (recon + instance, no label), the
    choice among the candidates in sense.json and fit_report.json, members under the threshold
    left unlabelled, and a bundle labeler well above chance on the hidden members."""
    pytest.importorskip("umap")
    from sense_core.bundle import Bundle
    from sense_core.embedding import embed_ensemble
    from sense_core.projection import ProjectionOptions
    from sense_training.config import EncoderConfig
    from sense_training.evaluation import EvaluationConfig
    from sense_training.pipeline import FIT_REPORT, FIT_RUN, HAND_BUNDLE, fit

    rng = np.random.default_rng(0)
    truth = np.arange(120) % 3
    yy = np.linspace(-1, 1, 16)[:, None] * np.ones(16)
    fields = np.stack([(k - 1) * 2.0 + k * yy for k in truth])[:, None]
    fields = (fields + 0.4 * rng.normal(size=fields.shape)).astype(np.float32)
    labels = np.where(np.arange(120) % 2 == 0, truth, UNLABELED)
    ensemble = Ensemble(fields=fields, labels=labels, class_names=["c0", "c1", "c2"])
    encoder = EncoderConfig().updated(
        epochs=2, latent_dim=4, base_channels=8, batch_size=24, threads=1,
        losses="recon,cluster", instance_views="oriented",
    )  # fmt: skip
    logged: list[str] = []
    report = fit(
        ensemble,
        tmp_path / "bundle",
        encoder=encoder,
        labeler_method="ssl",
        evaluation=EvaluationConfig(seeds=(0,), projection="pca", baselines=()),
        projector=False,
        log=logged.append,
    )
    first = Bundle.load(tmp_path / "bundle" / FIT_RUN / HAND_BUNDLE)
    assert first.manifest["training"]["encoder"]["config"]["loss"]["terms"] == [
        "recon",
        "instance",
    ]
    choice = first.model("labeler").details["choice"]
    assert choice["chosen"] in SSL_CANDIDATES
    assert set(choice["candidates"]) == set(SSL_CANDIDATES)
    saved = json.loads((tmp_path / "bundle" / FIT_REPORT).read_text())
    counts = saved["labeler"]["first_choice"]["candidates"]["selftrain"]["self_training"]
    assert counts["threshold"] == 0.9
    assert counts["labels_given"] + counts["accepted"] + counts["below_threshold"] == 120
    assert saved["labeler"]["choice"]["chosen"] in ("linear", "propagation", "selftrain",
                                                    "raw_linear")  # fmt: skip
    assert report.pseudo_labels["pseudo"] + report.pseudo_labels["none"] == 60
    assert "pseudo-labels (confidence >= 0.9)" in " ".join(logged)
    embedding = embed_ensemble(ensemble, tmp_path / "bundle", projection=ProjectionOptions("pca"))
    hidden = labels == UNLABELED
    assert np.mean(embedding.predicted_labels[hidden] == truth[hidden]) > 0.6  # chance 1/3
