"""Latent-space losses against independent numpy / scikit-learn computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from sklearn.metrics import silhouette_samples, silhouette_score  # noqa: E402

from sense_core.errors import SenseError  # noqa: E402
from sense_training import losses  # noqa: E402

torch.set_num_threads(2)


def _clusters(rng, counts, dim=5, spread=1.0):
    centres = rng.normal(scale=3.0, size=(len(counts), dim))
    points = np.concatenate(
        [c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, counts)]
    )
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    order = rng.permutation(len(labels))
    return points[order], labels[order]


@pytest.mark.parametrize("seed", range(6))
def test_soft_silhouette_with_one_hot_memberships_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 9, size=rng.integers(2, 6))
    points, labels = _clusters(
        rng, counts, dim=int(rng.integers(2, 12)), spread=rng.uniform(0.3, 4)
    )
    latent = torch.tensor(points, dtype=torch.float64)
    memberships = losses.one_hot_memberships(torch.tensor(labels), int(counts.size)).double()
    ours = float(losses.soft_silhouette(latent, memberships))
    assert ours == pytest.approx(silhouette_score(points, labels), abs=1e-10)
    per_member, _ = losses.silhouette_per_member(latent, memberships)
    np.testing.assert_allclose(per_member.numpy(), silhouette_samples(points, labels), atol=1e-10)
    loss = float(losses.soft_silhouette_loss(latent, memberships))
    assert loss == pytest.approx(1 - silhouette_score(points, labels), abs=1e-10)


def test_soft_silhouette_singletons_absent_classes_and_unlabelled_members_match_sklearn():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(12, 3))
    # class 3 is a singleton (sklearn gives it 0), class 4 is absent, three members unlabelled
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, -1, -1, -1])
    memberships = losses.one_hot_memberships(torch.tensor(labels), 6).double()
    ours = float(losses.soft_silhouette(torch.tensor(points), memberships))
    keep = labels >= 0
    assert ours == pytest.approx(silhouette_score(points[keep], labels[keep]), abs=1e-10)


def test_soft_silhouette_float32_and_duplicates():
    rng = np.random.default_rng(2)
    points, labels = _clusters(rng, [6, 7, 5], dim=32)
    points[1] = points[0]  # a zero distance off the diagonal
    latent = torch.tensor(points, dtype=torch.float32, requires_grad=True)
    memberships = losses.one_hot_memberships(torch.tensor(labels), 3)
    value = losses.soft_silhouette(latent, memberships)
    assert float(value.detach()) == pytest.approx(silhouette_score(points, labels), abs=1e-5)
    (1 - value).backward()
    assert torch.isfinite(latent.grad).all()


def _numpy_soft_silhouette(points, memberships):
    """Vardakas et al.'s definition written with plain loops."""
    n, k = memberships.shape
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    total = 0.0
    weight = 0.0
    for i in range(n):
        a = np.full(k, np.nan)
        for c in range(k):
            mass = sum(memberships[j, c] for j in range(n) if j != i)
            if mass > 0:
                a[c] = sum(memberships[j, c] * dist[i, j] for j in range(n) if j != i) / mass
        s_i = 0.0
        for c in range(k):
            others = [a[o] for o in range(k) if o != c and not np.isnan(a[o])]
            if np.isnan(a[c]) or not others:
                continue
            b = min(others)
            s_i += memberships[i, c] * (b - a[c]) / max(a[c], b)
        if memberships[i].sum() > 0:
            total += s_i / memberships[i].sum()
            weight += 1
    return total / weight


def test_soft_memberships_from_confidences_match_a_loop_implementation():
    rng = np.random.default_rng(3)
    points, labels = _clusters(rng, [5, 4, 6], dim=4, spread=2.0)
    confidence = rng.uniform(0.4, 1.0, size=len(labels))
    memberships = losses.confidence_memberships(
        torch.tensor(labels), torch.tensor(confidence), 3
    ).double()
    row = memberships[0].numpy()
    assert row.sum() == pytest.approx(1.0)
    assert row[labels[0]] == pytest.approx(confidence[0])
    ours = float(losses.soft_silhouette(torch.tensor(points), memberships))
    assert ours == pytest.approx(_numpy_soft_silhouette(points, memberships.numpy()), abs=1e-10)
    # confidence 1 everywhere is the one-hot case
    one = losses.confidence_memberships(torch.tensor(labels), torch.ones(len(labels)), 3)
    assert float(losses.soft_silhouette(torch.tensor(points), one.double())) == pytest.approx(
        silhouette_score(points, labels), abs=1e-10
    )


def test_soft_silhouette_sample_weights_and_single_class():
    rng = np.random.default_rng(4)
    points, labels = _clusters(rng, [4, 4], dim=3)
    memberships = losses.one_hot_memberships(torch.tensor(labels), 2).double()
    weights = rng.uniform(0.1, 1.0, size=len(labels))
    ours = float(losses.soft_silhouette(torch.tensor(points), memberships, torch.tensor(weights)))
    expected = np.average(silhouette_samples(points, labels), weights=weights)
    assert ours == pytest.approx(expected, abs=1e-10)
    single = losses.one_hot_memberships(torch.zeros(5, dtype=torch.long), 2)
    assert float(losses.soft_silhouette(torch.randn(5, 3), single)) == 0.0


def test_reconstruction_kl_and_normalized_beta():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 2, 4, 5))
    y = rng.normal(size=(3, 2, 4, 5))
    assert float(losses.reconstruction_loss(torch.tensor(y), torch.tensor(x))) == pytest.approx(
        ((y - x) ** 2).sum() / x.size
    )
    mu = rng.normal(size=(3, 6))
    logvar = rng.normal(size=(3, 6))
    var = np.exp(logvar)
    # closed form of KL(N(mu, var) || N(0, 1)) per unit, averaged over batch and units
    expected = np.mean(0.5 * (mu**2 + var - logvar - 1))
    got = float(losses.kl_divergence(torch.tensor(mu), torch.tensor(logvar)))
    assert got == pytest.approx(expected)
    # ... and against torch.distributions (an independent implementation)
    q = torch.distributions.Normal(torch.tensor(mu), torch.tensor(np.sqrt(var)))
    p = torch.distributions.Normal(torch.zeros(3, 6, dtype=torch.float64), 1.0)
    assert got == pytest.approx(float(torch.distributions.kl_divergence(q, p).mean()))
    assert losses.normalized_beta(4.0, 32, 64 * 64) == pytest.approx(4 * 32 / 4096)
    # mean convention: L_rec + beta_norm * KL == (sum_rec + beta * sum_KL) / N per member
    n_input = 2 * 4 * 5
    beta = 3.0
    joint = float(losses.reconstruction_loss(torch.tensor(y), torch.tensor(x))) + (
        losses.normalized_beta(beta, 6, n_input) * got
    )
    per_member_sums = ((y - x) ** 2).reshape(3, -1).sum(1) + beta * (
        0.5 * (mu**2 + var - logvar - 1)
    ).sum(1)
    assert joint == pytest.approx(per_member_sums.mean() / n_input)


def test_margin_contrastive_loss_matches_pair_loop():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(9, 4))
    labels = np.array([0, 1, 0, 2, 1, -1, 2, 0, 1])
    margin = 2.5
    terms = []
    for i in range(9):
        for j in range(9):
            if i == j or labels[i] < 0 or labels[j] < 0:
                continue
            d = np.linalg.norm(z[i] - z[j])
            terms.append(0.5 * d**2 if labels[i] == labels[j] else 0.5 * max(0, margin - d) ** 2)
    got = losses.margin_contrastive_loss(torch.tensor(z), torch.tensor(labels), margin)
    assert float(got) == pytest.approx(np.mean(terms))


def test_supcon_matches_khosla_formula_loop():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(10, 5))
    labels = np.array([0, 1, 0, 2, 1, -1, 2, 0, 1, 3])  # class 3 has no positive
    tau = 0.2
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    values = []
    for i in range(10):
        if labels[i] < 0:
            continue
        positives = [p for p in range(10) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        others = [a for a in range(10) if a != i and labels[a] >= 0]
        denominator = sum(math.exp(unit[i] @ unit[a] / tau) for a in others)
        values.append(
            -np.mean([math.log(math.exp(unit[i] @ unit[p] / tau) / denominator) for p in positives])
        )
    got = losses.supcon_loss(torch.tensor(z), torch.tensor(labels), tau)
    assert float(got) == pytest.approx(np.mean(values))


def test_losses_without_pairs_are_zero_and_differentiable():
    z = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, -1])
    total = losses.supcon_loss(z, labels) + losses.margin_contrastive_loss(z, -torch.ones(4))
    assert float(total.detach()) == 0.0
    total.backward()


def test_joint_loss_all_three_terms_and_parse_terms():
    assert losses.parse_terms("cluster, recon") == ("recon", "cluster")
    assert losses.parse_terms(["contrastive", "recon", "cluster"]) == losses.LOSS_TERMS[:3]
    with pytest.raises(SenseError, match="not understood"):
        losses.parse_terms("recon,kmeans")
    with pytest.raises(SenseError):
        losses.parse_terms("")
    config = losses.LossConfig(
        terms="recon,cluster,contrastive",
        beta=2.0,
        cluster_weight=0.5,
        contrastive_weight=0.25,
        contrastive="supcon",
    )
    joint = losses.JointLoss(config, num_classes=3, latent_dim=4, input_dim=16)
    rng = np.random.default_rng(8)
    x = torch.tensor(rng.normal(size=(6, 1, 4, 4)))
    rec = torch.tensor(rng.normal(size=(6, 1, 4, 4)))
    mu = torch.tensor(rng.normal(size=(6, 4)), requires_grad=True)
    logvar = torch.tensor(rng.normal(size=(6, 4)))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = joint(x, rec, mu, labels, logvar=logvar)
    expected = (
        float(losses.reconstruction_loss(rec, x))
        + 2.0 * 4 / 16 * float(losses.kl_divergence(mu.detach(), logvar))
        + 0.5 * (1 - silhouette_score(mu.detach().numpy(), labels.numpy()))
        + 0.25 * float(losses.supcon_loss(mu.detach(), labels, 0.1))
    )
    assert float(out.total.detach()) == pytest.approx(expected)
    assert set(out.parts) == {"recon", "kl", "cluster", "contrastive", "total"}
    out.total.backward()
    assert torch.isfinite(mu.grad).all()


@pytest.mark.parametrize(
    ("labels", "batch_size"),
    [
        (np.repeat(np.arange(5), [40, 3, 17, 1, 25]), 16),
        (np.concatenate([np.repeat(np.arange(3), 10), -np.ones(30, int)]), 12),
        (np.repeat(np.arange(12), 6), 8),
    ],
)
def test_class_batch_sampler_gives_every_class_in_a_batch_a_positive(labels, batch_size):
    sampler = losses.ClassBatchSampler(labels, batch_size, seed=3)
    seen = set()
    batches = list(sampler)
    assert len(batches) == math.ceil(len(labels) / batch_size)
    for batch in batches:
        assert len(batch) <= batch_size
        batch_labels = labels[batch]
        classes, counts = np.unique(batch_labels[batch_labels >= 0], return_counts=True)
        assert len(classes) >= 2
        assert (counts >= 2).all()
        seen.update(batch)
    sampler.set_epoch(0)
    assert list(sampler) == batches  # deterministic per (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    if (labels < 0).any():
        assert any(labels[i] < 0 for i in seen)


@pytest.mark.parametrize("seed", range(4))
def test_silhouette_against_a_memory_bank_equals_sklearn_on_batch_and_bank(seed):
    rng = np.random.default_rng(20 + seed)
    points, labels = _clusters(rng, rng.integers(3, 8, size=4), dim=6, spread=1.5)
    batch = int(rng.integers(3, len(labels) - 3))
    latent = torch.tensor(points[:batch], requires_grad=True)
    memberships = losses.one_hot_memberships(torch.tensor(labels[:batch]), 4).double()
    bank = torch.tensor(points[batch:])
    bank_memberships = losses.one_hot_memberships(torch.tensor(labels[batch:]), 4).double()
    expected_rows = silhouette_samples(points, labels)[:batch]
    per_member, _ = losses.silhouette_per_member(latent, memberships, bank, bank_memberships)
    np.testing.assert_allclose(per_member.detach().numpy(), expected_rows, atol=1e-10)
    value = losses.soft_silhouette(
        latent, memberships, reference=bank, reference_memberships=bank_memberships
    )
    assert float(value.detach()) == pytest.approx(expected_rows.mean(), abs=1e-10)
    value.backward()
    assert torch.isfinite(latent.grad).all() and latent.grad.abs().sum() > 0


def test_memory_bank_exclusion_drops_a_members_own_older_code():
    rng = np.random.default_rng(30)
    points, labels = _clusters(rng, [5, 6, 4], dim=3)
    batch = 6
    stale = points[:batch] + 0.05 * rng.normal(size=(batch, 3))  # older codes of the batch
    bank = np.concatenate([stale, points[batch:]])
    bank_labels = np.concatenate([labels[:batch], labels[batch:]])
    bank_index = np.concatenate([np.arange(batch), np.arange(batch, len(labels))])
    exclude = torch.tensor(np.arange(batch)[:, None] == bank_index[None, :])
    per_member, _ = losses.silhouette_per_member(
        torch.tensor(points[:batch]),
        losses.one_hot_memberships(torch.tensor(labels[:batch]), 3).double(),
        torch.tensor(bank),
        losses.one_hot_memberships(torch.tensor(bank_labels), 3).double(),
        exclude,
    )
    for i in range(batch):  # sklearn on batch ∪ bank without i's own older code
        keep = np.ones(batch + len(bank), dtype=bool)
        keep[batch + i] = False
        everything = np.concatenate([points[:batch], bank])[keep]
        classes = np.concatenate([labels[:batch], bank_labels])[keep]
        assert float(per_member[i]) == pytest.approx(
            silhouette_samples(everything, classes)[i], abs=1e-10
        )


@pytest.mark.parametrize("target", [1.0, 0.6, 0.2, -0.1])
def test_silhouette_hinge_matches_sklearn_samples(target):
    rng = np.random.default_rng(40)
    points, labels = _clusters(rng, [6, 5, 7], dim=4, spread=2.5)
    weights = rng.uniform(0.2, 1.0, size=len(labels))
    memberships = losses.one_hot_memberships(torch.tensor(labels), 3).double()
    ours = losses.silhouette_hinge_loss(
        torch.tensor(points), memberships, target, torch.tensor(weights)
    )
    expected = np.average(
        np.maximum(0.0, target - silhouette_samples(points, labels)), weights=weights
    )
    assert float(ours) == pytest.approx(expected, abs=1e-10)
    if target == 1.0:  # the plain loss 1 - s̄
        plain = losses.soft_silhouette_loss(
            torch.tensor(points), memberships, torch.tensor(weights)
        )
        assert float(ours) == pytest.approx(float(plain), abs=1e-12)
    with pytest.raises(ValueError, match="target"):
        losses.silhouette_hinge_loss(torch.tensor(points), memberships, 1.5)


def test_latent_memory_is_a_fifo_of_labelled_rows():
    memory = losses.LatentMemory(5)
    codes = torch.arange(12.0).reshape(4, 3).requires_grad_()
    labels = torch.tensor([0, -1, 1, 0])
    memory.push(codes, losses.one_hot_memberships(labels, 2), torch.tensor([10, 11, 12, 13]))
    assert len(memory) == 3 and memory.index.tolist() == [10, 12, 13]
    assert not memory.codes.requires_grad
    memory.push(codes[:3], losses.one_hot_memberships(torch.tensor([1, 1, 1]), 2), None)
    assert len(memory) == 5 and memory.index.tolist() == [12, 13, -1, -1, -1]
    exclusion = memory.exclusion(torch.tensor([13, 7]))
    assert exclusion.tolist() == [[False, True, False, False, False], [False] * 5]
    memory.clear()
    assert len(memory) == 0 and memory.exclusion(torch.tensor([1])) is None
    with pytest.raises(ValueError):
        losses.LatentMemory(0)


def test_joint_loss_with_memory_and_target():
    rng = np.random.default_rng(50)
    points, labels = _clusters(rng, [8, 8, 8], dim=4, spread=2.0)
    config = losses.LossConfig(terms="cluster", silhouette_target=0.5, memory_size=10)
    joint = losses.JointLoss(config, num_classes=3, latent_dim=4, input_dim=16)
    first, second = np.arange(12), np.arange(12, 24)
    z = torch.tensor(points)
    out = joint(None, None, z[first], torch.tensor(labels[first]), index=torch.tensor(first))
    expected = np.maximum(0, 0.5 - silhouette_samples(points[first], labels[first])).mean()
    assert float(out.total) == pytest.approx(expected, abs=1e-10)
    assert len(joint.memory) == 10  # the last 10 of the first batch
    out = joint(None, None, z[second], torch.tensor(labels[second]), index=torch.tensor(second))
    union = np.concatenate([second, first[2:]])
    rows = silhouette_samples(points[union], labels[union])[: len(second)]
    assert float(out.total) == pytest.approx(np.maximum(0, 0.5 - rows).mean(), abs=1e-10)
    with pytest.raises(SenseError, match="silhouette_target"):
        losses.LossConfig(terms="cluster", silhouette_target=2.0)
    with pytest.raises(SenseError, match="memory_size"):
        losses.LossConfig(terms="cluster", memory_size=-1)


@pytest.mark.parametrize(("trim", "target"), [(0.2, 1.0), (0.34, 0.6), (0.05, 1.0)])
def test_trimmed_silhouette_loss_leaves_out_the_worst_placed_members(trim, target):
    rng = np.random.default_rng(60)
    points, labels = _clusters(rng, [7, 6, 8], dim=3, spread=3.0)
    labels_with_unlabelled = np.concatenate([labels, [-1, -1]])
    points_with_unlabelled = np.concatenate([points, rng.normal(size=(2, 3))])
    weights = rng.uniform(0.2, 1.0, size=len(labels_with_unlabelled))
    memberships = losses.one_hot_memberships(torch.tensor(labels_with_unlabelled), 3).double()
    ours = losses.silhouette_hinge_loss(
        torch.tensor(points_with_unlabelled), memberships, target, torch.tensor(weights), trim=trim
    )
    samples = silhouette_samples(points, labels)
    kept = np.argsort(samples, kind="stable")[int(np.floor(trim * len(labels))) :]
    expected = np.average(np.maximum(0.0, target - samples[kept]), weights=weights[kept])
    assert float(ours) == pytest.approx(expected, abs=1e-10)
    per_member, mass = losses.silhouette_per_member(torch.tensor(points), memberships[:-2])
    hardest = losses.hardest_members(per_member, mass, trim).numpy()
    assert hardest.sum() == int(np.floor(trim * len(labels)))
    assert samples[hardest].max() <= samples[~hardest].min()
    with pytest.raises(ValueError, match="trimmed fraction"):
        losses.hardest_members(per_member, mass, 1.0)
    with pytest.raises(SenseError, match="trim_fraction"):
        losses.LossConfig(terms="cluster", trim_fraction=-0.1)


def test_joint_loss_trim_override_equals_the_configured_trim():
    rng = np.random.default_rng(70)
    points, labels = _clusters(rng, [6, 6, 6], dim=3, spread=3.0)
    z, y = torch.tensor(points), torch.tensor(labels)
    configured = losses.JointLoss(losses.LossConfig(terms="cluster", trim_fraction=0.3), 3, 3, 9)
    plain = losses.JointLoss(losses.LossConfig(terms="cluster"), 3, 3, 9)
    assert float(plain(None, None, z, y, trim_fraction=0.3).total) == pytest.approx(
        float(configured(None, None, z, y).total), abs=1e-12
    )
    assert float(configured(None, None, z, y, trim_fraction=0.0).total) == pytest.approx(
        1 - silhouette_score(points, labels), abs=1e-10
    )
