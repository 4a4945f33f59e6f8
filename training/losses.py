"""Losses that shape an encoder's latent space, and a batch sampler that feeds them.

Notation: a batch of ``B`` members, each an input of ``N = C·H·W`` values, encoded into a
latent vector of ``M`` values (for a β-VAE: mean ``μ`` and log-variance ``log σ²``).

- **Reconstruction** (:func:`reconstruction_loss`): mean squared error on *normalised* fields,
  averaged over every value of the batch: ``L_rec = 1/(B·N) Σ_b Σ_n (x̂_bn − x_bn)²``.
- **β-VAE KL** (:func:`kl_divergence`, :func:`normalized_beta`): the KL divergence of
  ``q(z|x) = N(μ, σ²)`` from ``N(0, I)`` *averaged* over batch and latent units,
  ``KL = 1/(B·M) Σ_b Σ_m ½(μ² + σ² − log σ² − 1)``, weighted by
  ``β_norm = β · M / N`` (Higgins et al. 2017). With both terms as means, the objective
  ``L_rec + β_norm·KL`` equals ``(1/N)·(Σ_n (x̂−x)² + β·Σ_m KL_m)`` per member, i.e. exactly
  Higgins' per-member *sums* weighted by β, divided by the constant N: β keeps its meaning
  (β = 1 is the plain VAE under a unit-variance Gaussian decoder up to that factor) whatever the
  image size and latent size.
- **Soft silhouette** (:func:`soft_silhouette`, Vardakas et al. 2024) on latent vectors with
  memberships ``P`` (B, K) from (pseudo-)labels; ``L_clu = 1 − s̄``. With one-hot memberships
  ``s̄`` equals ``sklearn.metrics.silhouette_score`` of the batch (tested).
  Three remedies against its overfitting (:func:`silhouette_hinge_loss`): **trimming**
  (the batch's worst-placed members are left out of the loss), a **silhouette target** ``s*``
  (``L_clu = Σ_i w_i max(0, s* − s(i)) / Σ_i w_i``: members already at ``s*`` stop pulling;
  ``s* = 1`` is ``1 − s̄``) and a **memory bank** (:class:`LatentMemory`: the batch's
  silhouette is computed against the batch plus detached codes of earlier batches, so ``a`` and
  ``b`` are not estimated from a few in-batch members).
- **Contrastive**: the margin pairwise loss (:func:`margin_contrastive_loss`, Hadsell et al.
  2006) and supervised contrastive loss (:func:`supcon_loss`, Khosla et al. 2020).
- **Instance-contrastive** (:func:`nt_xent_loss`, SimCLR's NT-Xent, Chen et al. 2020): two views
  of each member (:class:`~sense_training.data.InstanceViews`) are a positive pair, the other
  members' views negatives; needs no label, so every member takes part.
- **Joint objective** (:class:`JointLoss`):
  ``L = w_rec·L_rec (+ β_norm·KL) + λ_clu·L_clu + λ_con·L_con + λ_ins·L_ins`` with any subset
  of terms.

Members labelled ``-1`` (no label, no pseudo-label) take part in the reconstruction only.
:class:`ClassBatchSampler` builds batches in which every class present has at least two
members, so that every labelled member has a positive (same-class) partner and every class
has an own-cluster distance in the silhouette.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from sense_core.errors import SenseError
from sense_training.config import (  # noqa: F401 (re-exported: the loss options live there)
    CONTRASTIVE_KINDS,
    LOSS_TERMS,
    LossConfig,
    parse_terms,
)

UNLABELED = -1


# --------------------------------------------------------------------------- reconstruction, KL
def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1/(B·N) Σ (x̂ − x)²``: the mean squared error over every value of the batch."""
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} differ"
        )
    return F.mse_loss(reconstruction, target, reduction="mean")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``1/(B·M) Σ_b Σ_m ½(μ² + σ² − log σ² − 1)``: KL(N(μ, σ²) ‖ N(0, I)) averaged over the
    batch and the M latent units (multiply by :func:`normalized_beta`)."""
    return 0.5 * torch.mean(mu.pow(2) + logvar.exp() - logvar - 1.0)


def normalized_beta(beta: float, latent_dim: int, input_dim: int) -> float:
    """``β_norm = β · M / N`` (Higgins et al. 2017) for the mean conventions of this module."""
    if latent_dim < 1 or input_dim < 1:
        raise ValueError("latent_dim and input_dim must be positive")
    return float(beta) * latent_dim / input_dim


# --------------------------------------------------------------------------- memberships
def one_hot_memberships(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K) one-hot memberships; rows of unlabelled members (``-1``) are all zero."""
    labels = labels.long()
    memberships = torch.zeros(len(labels), num_classes, dtype=torch.float32, device=labels.device)
    labeled = labels >= 0
    memberships[labeled, labels[labeled]] = 1.0
    return memberships


def confidence_memberships(
    labels: torch.Tensor, confidence: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Soft memberships from a labeler's confidences: ``c`` for the (pseudo-)label's class and
    ``(1 − c)/(K − 1)`` for every other class; rows of unlabelled members are zero. Manual labels
    should carry confidence 1 (their rows are then one-hot)."""
    if num_classes < 2:
        raise ValueError("soft memberships need at least two classes")
    labels = labels.long()
    conf = confidence.to(torch.float32).clamp(0.0, 1.0)
    rest = ((1.0 - conf) / (num_classes - 1)).unsqueeze(1)
    memberships = rest.expand(len(labels), num_classes).clone()
    labeled = labels >= 0
    memberships[labeled, labels[labeled]] = conf[labeled]
    memberships[~labeled] = 0.0
    return memberships


# --------------------------------------------------------------------------- soft silhouette
def pairwise_distances(latent: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, B), computed from differences (exact, no Gram-matrix rounding,
    memory B²) with a zero (finite) gradient at zero distance (the diagonal, duplicates)."""
    return torch.cdist(latent, latent, compute_mode="donot_use_mm_for_euclid_dist")


def silhouette_per_member(
    latent: torch.Tensor,
    memberships: torch.Tensor,
    reference: torch.Tensor | None = None,
    reference_memberships: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft silhouette value ``s(i)`` of each member and its weight (its membership mass).

    For member i and cluster k (Vardakas et al. 2024):
    ``a_k(i) = Σ_{j≠i} p_jk d_ij / Σ_{j≠i} p_jk`` (weighted mean distance to cluster k),
    ``b_k(i) = min_{k'≠k} a_k'(i)`` over the clusters with mass, and
    ``s_k(i) = (b_k(i) − a_k(i)) / max(a_k(i), b_k(i))``; ``s(i) = Σ_k p_ik s_k(i)``.
    As in scikit-learn, ``s_k(i) = 0`` when i is alone in cluster k (no other member has mass
    there) and when ``max(a, b) = 0``. Clusters with no mass in the batch are ignored.

    ``reference`` (R, M) with ``reference_memberships`` (R, K): further points (a memory bank)
    that the sums over j also run over; only the batch members are scored. ``exclude`` (B, R)
    bool drops reference points from member i's sums (e.g. an older code of i itself).
    """
    if latent.ndim != 2 or memberships.ndim != 2 or len(latent) != len(memberships):
        raise ValueError(
            f"latent {tuple(latent.shape)} and memberships {tuple(memberships.shape)} must be "
            "(B, M) and (B, K)"
        )
    memberships = memberships.to(latent.dtype)
    count, clusters = memberships.shape
    distances = pairwise_distances(latent)
    not_self = 1.0 - torch.eye(count, dtype=latent.dtype, device=latent.device)
    # mass[i, k] = Σ_{j≠i} p_jk ; weighted[i, k] = Σ_{j≠i} p_jk d_ij
    mass = not_self @ memberships
    weighted = (distances * not_self) @ memberships
    if reference is not None and len(reference):
        if reference_memberships is None or reference_memberships.shape != (
            len(reference),
            clusters,
        ):
            raise ValueError(
                f"reference {tuple(reference.shape)} needs memberships of shape "
                f"({len(reference)}, {clusters})"
            )
        keep = torch.ones(count, len(reference), dtype=latent.dtype, device=latent.device)
        if exclude is not None:
            keep = keep * (~exclude.to(latent.device)).to(latent.dtype)
        to_reference = torch.cdist(
            latent, reference.to(latent), compute_mode="donot_use_mm_for_euclid_dist"
        )
        reference_memberships = reference_memberships.to(latent)
        mass = mass + keep @ reference_memberships
        weighted = weighted + (to_reference * keep) @ reference_memberships
    has_mass = mass > 0
    mean_distance = weighted / torch.where(has_mass, mass, torch.ones_like(mass))
    infinity = torch.full_like(mean_distance, math.inf)
    candidates = torch.where(has_mass, mean_distance, infinity)
    # b_k(i): the smallest mean distance among the *other* clusters with mass.
    if clusters == 1:
        nearest_other = infinity
    else:
        smallest, smallest_at = candidates.min(dim=1, keepdim=True)
        masked = candidates.scatter(1, smallest_at, math.inf)
        second = masked.min(dim=1, keepdim=True).values
        is_smallest = torch.arange(clusters, device=latent.device).unsqueeze(0) == smallest_at
        nearest_other = torch.where(is_smallest, second, smallest.expand_as(candidates))
    valid = has_mass & torch.isfinite(nearest_other)
    a = torch.where(valid, mean_distance, torch.zeros_like(mean_distance))
    b = torch.where(valid, nearest_other, torch.zeros_like(mean_distance))
    denominator = torch.maximum(a, b)
    valid = valid & (denominator > 0)
    scores = torch.where(
        valid, (b - a) / torch.where(valid, denominator, torch.ones_like(denominator)), 0.0 * a
    )
    per_member = (memberships * scores).sum(dim=1)
    weight = memberships.sum(dim=1)
    return per_member / torch.where(weight > 0, weight, torch.ones_like(weight)), weight


def _weighted_member_mean(
    values: torch.Tensor,
    mass: torch.Tensor,
    clusters_present: int,
    sample_weights: torch.Tensor | None,
) -> torch.Tensor | None:
    """``Σ_i w_i v_i / Σ_i w_i`` over members with membership mass; None when fewer than two
    clusters have mass or no member has weight."""
    weights = (mass > 0).to(values.dtype)
    if sample_weights is not None:
        weights = weights * sample_weights.to(values.dtype)
    total = weights.sum()
    if clusters_present < 2 or float(total) <= 0:
        return None
    return (weights * values).sum() / total


def _clusters_present(memberships: torch.Tensor, reference_memberships: torch.Tensor | None) -> int:
    mass = memberships.sum(dim=0)
    if reference_memberships is not None and len(reference_memberships):
        mass = mass + reference_memberships.to(mass).sum(dim=0)
    return int((mass > 0).sum())


def soft_silhouette(
    latent: torch.Tensor,
    memberships: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    reference_memberships: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean soft silhouette ``s̄ = Σ_i w_i s(i) / Σ_i w_i`` over members with membership
    mass (``w_i`` = ``sample_weights`` or 1). With one-hot memberships of the labelled members
    this is ``sklearn.metrics.silhouette_score`` of those members (euclidean); with a
    ``reference`` (memory bank, see :func:`silhouette_per_member`) it is the mean of
    ``sklearn.metrics.silhouette_samples`` of batch ∪ reference over the batch rows. Returns 0
    when fewer than two clusters have mass (the silhouette is undefined)."""
    per_member, mass = silhouette_per_member(
        latent, memberships, reference, reference_memberships, exclude
    )
    present = _clusters_present(memberships, reference_memberships)
    value = _weighted_member_mean(per_member, mass, present, sample_weights)
    return latent.sum() * 0.0 if value is None else value  # 0 keeps the graph, no signal


def soft_silhouette_loss(
    latent: torch.Tensor,
    memberships: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_clu = 1 − s̄`` (0 = perfectly separated clusters, 1 = no structure, up to 2)."""
    return 1.0 - soft_silhouette(latent, memberships, sample_weights)


def hardest_members(per_member: torch.Tensor, mass: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B,) bool: the ``floor(fraction · n)`` members with membership mass and the lowest
    silhouette (ties: the earlier row), n = members with mass."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the trimmed fraction must be in [0, 1), got {fraction}")
    labelled = torch.nonzero(mass > 0).flatten()
    count = int(math.floor(fraction * len(labelled)))
    hardest = torch.zeros(len(per_member), dtype=torch.bool, device=per_member.device)
    if count:
        order = torch.sort(per_member.detach()[labelled], stable=True).indices
        hardest[labelled[order[:count]]] = True
    return hardest


def silhouette_hinge_loss(
    latent: torch.Tensor,
    memberships: torch.Tensor,
    target: float = 1.0,
    sample_weights: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    reference_memberships: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    trim: float = 0.0,
) -> torch.Tensor:
    """Silhouette with a target ``s*`` and trimming: ``L = Σ_{i∉T} w_i max(0, s* − s(i)) /
    Σ_{i∉T} w_i``, where T holds the ``floor(trim · n)`` members of the batch with the lowest
    silhouette (:func:`hardest_members`).

    - ``s*``: members whose silhouette already reaches ``s*`` give no gradient, so training
      clusters are not tightened beyond what unseen members can follow (the per-member
      analogue of "flooding", Ishida et al. 2020). ``s* = 1`` gives ``1 − s̄`` exactly.
    - ``trim``: the worst-placed members (ambiguous or wrongly labelled ones, near a class
      boundary) are not forced into their class: "small-loss" selection against memorising
      noisy labels (Han et al. 2018, co-teaching). They still count in everyone's a and b.
    ``trim = 0, s* = 1`` is ``1 − s̄``. ``reference``/``exclude``: a memory bank as in
    :func:`silhouette_per_member`. Returns 0 when fewer than two clusters have mass."""
    if not -1.0 <= target <= 1.0:
        raise ValueError(f"the silhouette target must be in [-1, 1], got {target}")
    per_member, mass = silhouette_per_member(
        latent, memberships, reference, reference_memberships, exclude
    )
    present = _clusters_present(memberships, reference_memberships)
    if trim > 0:
        mass = torch.where(hardest_members(per_member, mass, trim), 0.0, mass)
    value = _weighted_member_mean(
        torch.clamp(target - per_member, min=0.0), mass, present, sample_weights
    )
    return latent.sum() * 0.0 if value is None else value


class LatentMemory:
    """A first-in-first-out bank of detached latent codes of labelled members from earlier
    batches (MoCo-style queue, He et al. 2020), with their memberships and member indices.

    :class:`JointLoss` computes the silhouette of each batch against the batch plus this bank
    (an older code of the same member is excluded), so a_k(i) and b_k(i) average over up to
    ``size`` members instead of the few per class in one batch. The codes are as old as the
    last ``size / labelled-per-batch`` steps; :meth:`clear` at every epoch start keeps runs
    resumable (the bank is not checkpointed).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"memory size must be >= 1, got {size}")
        self.size = int(size)
        self.clear()

    def clear(self) -> None:
        self.codes: torch.Tensor | None = None
        self.memberships: torch.Tensor | None = None
        self.index: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.codes is None else len(self.codes)

    def exclusion(self, index: torch.Tensor | None) -> torch.Tensor | None:
        """(B, R) bool: bank entries that are older codes of the batch's members."""
        if index is None or self.index is None:
            return None
        return index.to(self.index.device).unsqueeze(1) == self.index.unsqueeze(0)

    def push(
        self, codes: torch.Tensor, memberships: torch.Tensor, index: torch.Tensor | None
    ) -> None:
        """Add the labelled rows (membership mass > 0) of a batch, dropping the oldest."""
        keep = memberships.sum(dim=1) > 0
        codes = codes.detach()[keep]
        memberships = memberships.detach().to(codes.dtype)[keep]
        if index is None:
            index = torch.full((len(codes),), -1, dtype=torch.long, device=codes.device)
        else:
            index = index.to(codes.device)[keep]
        if self.codes is not None:
            codes = torch.cat([self.codes.to(codes.dtype), codes])
            memberships = torch.cat([self.memberships.to(codes.dtype), memberships])
            index = torch.cat([self.index, index])
        self.codes = codes[-self.size :]
        self.memberships = memberships[-self.size :]
        self.index = index[-self.size :]


# --------------------------------------------------------------------------- contrastive
def _labeled_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = labels.long()
    labeled = labels >= 0
    pair = labeled.unsqueeze(0) & labeled.unsqueeze(1)
    pair.fill_diagonal_(False)
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)) & pair
    return pair, same, pair & ~same


def margin_contrastive_loss(
    latent: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hadsell et al. (2006): over all pairs i≠j of labelled members,
    ``½ D_ij²`` for the same class and ``½ max(0, m − D_ij)²`` for different classes,
    averaged over the pairs (weighted by ``w_i w_j`` when ``sample_weights`` are given).
    Returns 0 when the batch has no labelled pair."""
    pair, same, _ = _labeled_pairs(labels)
    distances = pairwise_distances(latent)
    per_pair = torch.where(
        same, 0.5 * distances.pow(2), 0.5 * torch.clamp(margin - distances, min=0).pow(2)
    )
    weights = pair.to(latent.dtype)
    if sample_weights is not None:
        w = sample_weights.to(latent.dtype)
        weights = weights * w.unsqueeze(0) * w.unsqueeze(1)
    total = weights.sum()
    if float(total) <= 0:
        return latent.sum() * 0.0
    return (weights * per_pair).sum() / total


def supcon_loss(
    latent: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, ``L_out``) on L2-normalised latents:
    for each labelled anchor i with positives P(i) (same class, j≠i),
    ``−1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) )``, where a runs over
    the labelled members; averaged over anchors with at least one positive (weighted by
    ``w_i``). Returns 0 when no anchor has a positive."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    pair, same, _ = _labeled_pairs(labels)
    normalised = F.normalize(latent, dim=1)
    logits = normalised @ normalised.T / temperature
    logits = logits.masked_fill(~pair, -math.inf)
    # log-softmax over a ≠ i (labelled); rows without any pair stay -inf and are dropped below.
    log_denominator = torch.logsumexp(logits, dim=1, keepdim=True)
    log_probability = torch.where(same, logits - log_denominator, torch.zeros_like(logits))
    positives = same.sum(dim=1)
    anchors = positives > 0
    if not bool(anchors.any()):
        return latent.sum() * 0.0
    per_anchor = -log_probability.sum(dim=1)[anchors] / positives[anchors].to(latent.dtype)
    if sample_weights is None:
        return per_anchor.mean()
    w = sample_weights.to(latent.dtype)[anchors]
    return (w * per_anchor).sum() / w.sum().clamp_min(1e-12)


def nt_xent_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    temperature: float = 0.2,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020) between two views (B, M) of the same B members: for each of
    the 2B codes, the cross-entropy of picking its partner view among the other 2B − 1 codes by
    cosine similarity / ``temperature``, averaged. ``index`` (B,) member ids: other rows of the
    same member (a batch that repeats a member) are left out of the negatives."""
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(f"views {tuple(first.shape)} and {tuple(second.shape)} must be (B, M)")
    count = len(first)
    if count < 2:
        return first.sum() * 0.0
    codes = F.normalize(torch.cat([first, second]), dim=1)
    logits = codes @ codes.T / float(temperature)
    ids = torch.arange(count, device=first.device) if index is None else index.to(first.device)
    ids = torch.cat([ids, ids])
    partner = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(first.device)
    same = ids[:, None] == ids[None, :]
    same[torch.arange(2 * count), partner] = False  # the partner stays: it is the positive
    logits = logits.masked_fill(same, float("-inf"))  # self and repeats of the member
    return F.cross_entropy(logits, partner)


# --------------------------------------------------------------------------- joint objective
@dataclass
class LossParts:
    """The total loss and its (detached) components for logging."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


class JointLoss:
    """``L = w_rec·L_rec (+ β_norm·KL) + λ_clu·L_clu + λ_con·L_con`` over the chosen terms.

    The latent losses act on the deterministic code (the AE's z, the VAE's μ: what is exported
    and projected). ``latent_scale`` multiplies λ_clu and λ_con (a warm-up schedule sets it).
    With ``memory_size > 0`` the silhouette term uses (and, when ``index`` is given, feeds)
    :attr:`memory`; call ``memory.clear()`` where the bank should start empty.
    """

    def __init__(self, config: LossConfig, num_classes: int, latent_dim: int, input_dim: int):
        self.config = config
        self.num_classes = int(num_classes)
        self.beta_norm = normalized_beta(config.beta, latent_dim, input_dim)
        self.memory = LatentMemory(config.memory_size) if config.memory_size > 0 else None

    def __call__(
        self,
        inputs: torch.Tensor,
        reconstruction: torch.Tensor | None,
        code: torch.Tensor,
        labels: torch.Tensor,
        confidence: torch.Tensor | None = None,
        logvar: torch.Tensor | None = None,
        mu: torch.Tensor | None = None,
        latent_scale: float = 1.0,
        index: torch.Tensor | None = None,
        trim_fraction: float | None = None,
        view_code: torch.Tensor | None = None,
    ) -> LossParts:
        """The joint loss of a batch; ``index`` (member ids of the rows) feeds the memory bank
        (without it the bank is neither used nor filled); ``trim_fraction`` overrides the
        configured one (a schedule sets it); ``view_code``: the codes of a second view of the
        batch, for the ``instance`` term (left out without it, e.g. when scoring)."""
        config = self.config
        total = code.sum() * 0.0
        parts: dict[str, float] = {}
        if "recon" in config.terms:
            if reconstruction is None:
                raise ValueError("the reconstruction term needs the model's reconstruction")
            rec = reconstruction_loss(reconstruction, inputs)
            total = total + config.recon_weight * rec
            parts["recon"] = float(rec.detach())
            if logvar is not None:
                kl = kl_divergence(code if mu is None else mu, logvar)
                total = total + self.beta_norm * kl
                parts["kl"] = float(kl.detach())
        weights = None
        if config.confidence_weights and confidence is not None:
            weights = confidence.to(code.dtype)
        if "cluster" in config.terms:
            if config.soft_memberships and confidence is not None:
                memberships = confidence_memberships(labels, confidence, self.num_classes)
            else:
                memberships = one_hot_memberships(labels, self.num_classes)
            memberships = memberships.to(code.device)
            memory = self.memory if index is not None else None
            reference = None if memory is None or not len(memory) else memory
            clu = silhouette_hinge_loss(
                code,
                memberships,
                config.silhouette_target,
                weights,
                reference=None if reference is None else reference.codes,
                reference_memberships=None if reference is None else reference.memberships,
                exclude=None if reference is None else reference.exclusion(index),
                trim=config.trim_fraction if trim_fraction is None else trim_fraction,
            )
            if memory is not None:
                memory.push(code, memberships, index)
            total = total + latent_scale * config.cluster_weight * clu
            parts["cluster"] = float(clu.detach())
        if "contrastive" in config.terms:
            if config.contrastive == "margin":
                con = margin_contrastive_loss(code, labels, config.margin, weights)
            else:
                con = supcon_loss(code, labels, config.temperature, weights)
            total = total + latent_scale * config.contrastive_weight * con
            parts["contrastive"] = float(con.detach())
        if "instance" in config.terms and view_code is not None:
            ins = nt_xent_loss(code, view_code, config.instance_temperature, index)
            total = total + config.instance_weight * ins  # label-free: no warm-up
            parts["instance"] = float(ins.detach())
        parts["total"] = float(total.detach())
        return LossParts(total=total, parts=parts)


# --------------------------------------------------------------------------- batch sampler
class ClassBatchSampler(Sampler[list[int]]):
    """Batches (lists of dataset positions) in which every class present has ≥ 2 members.

    Each batch takes ``classes_per_batch`` classes (default: as many as fit with
    ``samples_per_class``, at most all), cycling through the classes so that all are visited
    equally often, and ``samples_per_class`` members of each, drawn without replacement from a
    per-class shuffled pool that is refilled when exhausted (small classes repeat within an
    epoch). Labelled members get their share of the batch, but at least
    ``min(batch_size // 2, 4·K)`` slots; unlabelled positions (``-1``) fill the rest (they
    serve the reconstruction term). An epoch has
    ``ceil(len(labels) / batch_size)`` batches. Draws come from ``(seed, epoch)``: call
    :meth:`set_epoch`.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        batch_size: int,
        samples_per_class: int | None = None,
        seed: int = 0,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        self.labels = labels
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.pools = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels[labels >= 0])}
        self.unlabeled = np.flatnonzero(labels < 0)
        if not self.pools:
            raise SenseError("no labelled members: a class batch sampler needs labels")
        labeled_share = 1.0 - len(self.unlabeled) / len(labels)
        # proportional to the labelled share, but at least 4 members per class (up to half the
        # batch) so that the silhouette sees more than one distance per class
        labeled_slots = max(
            2,
            int(round(self.batch_size * labeled_share)),
            min(self.batch_size // 2, 4 * len(self.pools)),
        )
        if samples_per_class is None:
            # as many classes as possible, at least 2 members each
            samples_per_class = max(2, labeled_slots // len(self.pools))
        if samples_per_class < 2:
            raise SenseError("samples_per_class must be >= 2 (every member needs a positive)")
        self.samples_per_class = int(samples_per_class)
        self.classes_per_batch = max(1, min(len(self.pools), labeled_slots // samples_per_class))
        if self.batch_size < 2 * min(2, len(self.pools)):
            raise SenseError(
                f"batch size {batch_size} is too small for two classes with two members each"
            )
        self.unlabeled_per_batch = max(
            0, self.batch_size - self.classes_per_batch * self.samples_per_class
        )
        if not len(self.unlabeled):
            self.unlabeled_per_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return max(1, math.ceil(len(self.labels) / self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        from sense_training.common import epoch_seed

        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch, "class-batches"))
        classes = list(self.pools)
        queues: dict[int, list[int]] = {c: [] for c in classes}
        unlabeled_queue: list[int] = []
        class_order: list[int] = []

        def take(queue: list[int], pool: np.ndarray, count: int) -> list[int]:
            out: list[int] = []
            while len(out) < count:
                if not queue:
                    fresh = rng.permutation(pool).tolist()
                    # members already in this batch go last, so a refill repeats as few as possible
                    queue.extend(
                        [i for i in fresh if i not in out] + [i for i in fresh if i in out]
                    )
                need = count - len(out)
                out.extend(queue[:need])
                del queue[:need]
            return out

        for _ in range(len(self)):
            chosen: list[int] = []
            deferred: list[int] = []
            while len(chosen) < self.classes_per_batch:
                if not class_order:
                    class_order.extend(rng.permutation(classes).tolist())
                candidate = class_order.pop(0)
                (deferred if candidate in chosen else chosen).append(candidate)
            class_order[:0] = deferred
            batch: list[int] = []
            for c in chosen:
                batch.extend(take(queues[c], self.pools[c], self.samples_per_class))
            if self.unlabeled_per_batch:
                batch.extend(take(unlabeled_queue, self.unlabeled, self.unlabeled_per_batch))
            yield [int(i) for i in rng.permutation(batch)]
