"""Stage 2 of SENSE: train an AE / β-VAE whose latent space is shaped by the (pseudo-)labels, and
export its encoder into the model bundle.

Data and labels (:func:`training_parts`):

- the **hand-labeled** members are split train / validation / test
  (:func:`sense_core.ensemble.split_labeled`, stratified and deterministic by member id; a
  pseudo-labelled ensemble written by the labeler carries that split as metadata ``split``, so
  the labeler and the encoder see the same test members);
- members labelled by the labeler (metadata ``label_source`` = ``pseudo``, with
  ``confidence``) join the training part with their pseudo-labels; members without any label
  join it for the reconstruction term only. Validation and test stay purely hand-labeled;
  the test members are never seen in training (they are for :mod:`sense_training.evaluation`);
- normalisation statistics come from the training members, or from the bundle when it already
  has them (one normalisation per bundle).

Training (:func:`train_encoder`): Adam, the joint loss of :mod:`sense_training.losses`, batches
from :class:`~sense_training.losses.ClassBatchSampler` when a latent term is used (every class in
a batch has a positive). After every epoch the model is scored *in evaluation mode* on the whole
validation part and on a fixed sample (``monitor_members``) of the *hand-labeled* training
members (:func:`monitor_pool`), each loss term separately: ``train_cluster`` vs
``val_cluster`` is the overfitting gap the paper ran into.
Remedies offered: the trimmed silhouette loss (``trim_fraction``, ramped over
``trim_warmup_epochs``), a silhouette target (``silhouette_target``), a memory bank of earlier
batches' codes (``memory_size``), a linear warm-up of λ (``warmup_epochs``), confidence-weighted
or soft memberships, stronger dropout, augmentation (``augment``), an exponential moving average
of the weights (``ema_decay``: scoring, selection and export use the averaged model), and
keeping the epoch with the lowest validation
objective (``select="best"``, early stopping with ``patience``); see docs/encoder.md for which
of them helped. A checkpoint is written after each epoch;
``resume=True`` continues a run and ends with the same weights as an uninterrupted one (every
epoch's randomness is derived from ``(seed, epoch)``).

Outputs in the run folder (default ``<bundle>/encoder_run``): ``checkpoint.pt``,
``history.json``, ``loss_curves.png``, ``metrics.json``; in the bundle: ``encoder.onnx``
(normalised fields → latent; the VAE exports μ) verified against torch (≤ 1e-4) and its entry in
``sense.json``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sense_core.bundle import Bundle, add_model, new_manifest, read_manifest
from sense_core.ensemble import (
    PRESET_SPLIT_KEY,
    UNLABELED,
    MemberStore,
    NormalizationStats,
    Split,
    split_hand_labeled,
)
from sense_core.errors import SenseError
from sense_core.io.atomic import atomic_write_text
from sense_training.common import (
    History,
    choose_device,
    configure_threads,
    describe_device,
    epoch_seed,
    load_checkpoint,
    plot_history,
    save_checkpoint,
    seed_everything,
    training_versions,
)
from sense_training.data import Augmentation, EnsembleDataset, EpochShuffleSampler
from sense_training.distributed import (
    RankShare,
    barrier,
    broadcast_flag,
    device_for,
    init_distributed,
    mean_over_ranks,
    shutdown,
    wrap_model,
)
from sense_training.export import export_onnx
from sense_training.losses import (
    CONTRASTIVE_KINDS,
    ClassBatchSampler,
    JointLoss,
    LossConfig,
    parse_terms,
)
from sense_training.models.autoencoder import (
    ARCHITECTURES,
    AutoencoderConfig,
    ConvAutoencoder,
    LatentEncoder,
    build_autoencoder,
    count_parameters,
)

ROLE = "encoder"
INPUT_NAME = "fields"
OUTPUT_NAME = "latent"
RUN_FOLDER = "encoder_run"
CHECKPOINT = "checkpoint.pt"
CONFIDENCE_KEY = "confidence"
SELECT_CHOICES = ("best", "last")


# --------------------------------------------------------------------------- configuration
@dataclass
class EncoderConfig:
    """Everything that decides an encoder training run (stored in checkpoints and bundles)."""

    arch: str = "ae"
    latent_dim: int = 32
    dropout: float = 0.0
    batch_norm: bool = True
    base_channels: int = 32
    losses: tuple[str, ...] = ("recon",)
    beta: float = 1.0
    cluster_weight: float = 1.0
    contrastive_weight: float = 1.0
    contrastive: str = "margin"
    margin: float = 1.0
    temperature: float = 0.1
    soft_memberships: bool = False
    confidence_weights: bool = False
    silhouette_target: float = 1.0  # s* of the silhouette hinge; 1 = plain 1 - mean silhouette
    memory_size: int = 0  # codes of earlier batches the silhouette also runs over; 0 = off
    trim_fraction: float = 0.0  # share of a batch's worst-placed members left out of L_clu
    trim_warmup_epochs: int = 0  # the trimmed share ramps from 0 over these epochs
    min_confidence: float = 0.0  # pseudo-labels below this confidence are not used
    label_noise: float = 0.0  # fraction of training pseudo-labels flipped (ablation)
    warmup_epochs: int = 0  # λ_clu and λ_con ramp linearly from 0 over these epochs
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.0  # weights averaged as w_ema ← d·w_ema + (1−d)·w per step; 0 = off
    patience: int = 0  # epochs without a better validation objective before stopping; 0 = never
    select: str = "best"  # export the best epoch (lowest validation objective) or the last
    augment: str = "none"
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    seed: int = 0
    threads: int | None = 2
    device: str = "auto"
    eval_batch_size: int = 256
    monitor_members: int = 512

    def __post_init__(self) -> None:
        self.losses = parse_terms(self.losses)
        self.fractions = tuple(float(f) for f in self.fractions)  # type: ignore[assignment]
        if self.arch not in ARCHITECTURES:
            raise SenseError(f"unknown architecture {self.arch!r}; choose {ARCHITECTURES}")
        if self.contrastive not in CONTRASTIVE_KINDS:
            raise SenseError(f"contrastive must be one of {CONTRASTIVE_KINDS}")
        if self.select not in SELECT_CHOICES:
            raise SenseError(f"select must be one of {SELECT_CHOICES}, got {self.select!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "latent_dim", "monitor_members"):
            if int(getattr(self, name)) < 1:
                raise SenseError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise SenseError("learning rate must be > 0 and weight decay >= 0")
        if not 0 <= self.ema_decay < 1:
            raise SenseError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.trim_warmup_epochs < 0:
            raise SenseError(f"trim_warmup_epochs must be >= 0, got {self.trim_warmup_epochs}")
        if not 0 <= self.label_noise <= 1 or not 0 <= self.min_confidence <= 1:
            raise SenseError("label_noise and min_confidence must be in [0, 1]")
        self.loss_config()  # validates weights
        self.model_config((1, 32, 32))
        Augmentation.parse(self.augment)

    def loss_config(self) -> LossConfig:
        return LossConfig(
            terms=self.losses,
            beta=self.beta,
            cluster_weight=self.cluster_weight,
            contrastive_weight=self.contrastive_weight,
            contrastive=self.contrastive,
            margin=self.margin,
            temperature=self.temperature,
            soft_memberships=self.soft_memberships,
            confidence_weights=self.confidence_weights,
            silhouette_target=self.silhouette_target,
            memory_size=self.memory_size,
            trim_fraction=self.trim_fraction,
        )

    def model_config(self, input_shape: Sequence[int]) -> AutoencoderConfig:
        return AutoencoderConfig(
            input_shape=tuple(input_shape),  # type: ignore[arg-type]
            arch=self.arch,
            latent_dim=self.latent_dim,
            dropout=self.dropout,
            batch_norm=self.batch_norm,
            base_channels=self.base_channels,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fractions"] = list(self.fractions)
        data["losses"] = list(self.losses)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- data
@dataclass
class TrainingParts:
    """Which members train, validate and test, with the labels and confidences training uses."""

    split: Split  # hand-labeled members only
    train: np.ndarray  # store indices: hand-labeled train + pseudo-labelled + unlabelled
    labels: np.ndarray  # (N,) labels used in training (-1: reconstruction only)
    confidence: np.ndarray  # (N,) 1 for hand labels, the labeler's confidence for pseudo-labels
    manual: np.ndarray  # (N,) bool
    counts: dict[str, int] = field(default_factory=dict)


def training_parts(store: MemberStore, config: EncoderConfig) -> TrainingParts:
    """Split the hand labels, add pseudo-labelled and unlabelled members to training (see the
    module docstring), apply ``min_confidence`` and the ``label_noise`` ablation."""
    manual, split = split_hand_labeled(store, config.fractions, config.split_seed)
    count = len(store)
    if CONFIDENCE_KEY in store.metadata:
        confidence = np.asarray(store.metadata[CONFIDENCE_KEY], dtype=np.float32).copy()
    else:
        confidence = np.ones(count, dtype=np.float32)
    confidence[manual] = 1.0
    labels = np.full(count, UNLABELED, dtype=np.int64)
    labels[split.train] = store.labels[split.train]
    pseudo = (~manual) & (np.asarray(store.labels) != UNLABELED)
    if PRESET_SPLIT_KEY in store.metadata:  # pseudo-labelled members the labeler put aside
        preset = np.asarray(store.metadata[PRESET_SPLIT_KEY]).astype(str)
        pseudo &= np.isin(preset, ("train", "none"))
    pseudo &= confidence >= config.min_confidence
    labels[pseudo] = store.labels[pseudo]
    held_out = np.zeros(count, dtype=bool)
    held_out[split.validation] = True
    held_out[split.test] = True
    if "recon" in config.losses:
        train = np.flatnonzero(~held_out)  # every member not held out, labelled or not
    else:
        train = np.flatnonzero(labels != UNLABELED)
    if config.label_noise > 0:
        labels = flip_labels(
            labels,
            pseudo if pseudo.any() else labels != UNLABELED,
            config.label_noise,
            len(store.class_names),
            epoch_seed(config.seed, 0, "label-noise"),
        )
    counts = {
        "members": count,
        "train": int(len(train)),
        "train_manual": int(len(split.train)),
        "train_pseudo": int(pseudo.sum()),
        "train_unlabeled": int(np.sum(labels[train] == UNLABELED)),
        "validation": int(len(split.validation)),
        "test": int(len(split.test)),
    }
    return TrainingParts(split, train, labels, confidence, manual, counts)


def flip_labels(
    labels: np.ndarray, eligible: np.ndarray, fraction: float, num_classes: int, seed: int
) -> np.ndarray:
    """A copy of ``labels`` in which ``round(fraction · eligible)`` eligible labels are replaced
    by a different class drawn uniformly (seeded): the pseudo-label noise ablation."""
    labels = labels.copy()
    candidates = np.flatnonzero(eligible & (labels != UNLABELED))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=int(round(fraction * len(candidates))), replace=False)
    shift = rng.integers(1, num_classes, size=len(chosen))
    labels[chosen] = (labels[chosen] + shift) % num_classes
    return labels


def _fingerprint(store: MemberStore, parts: TrainingParts) -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256()
    for index in parts.train:
        digest.update(f"t:{store.member_ids[index]}:{parts.labels[index]}\n".encode())
    for index in parts.split.validation:
        digest.update(f"v:{store.member_ids[index]}:{store.labels[index]}\n".encode())
    return {"members": len(store), "sha256": digest.hexdigest()}


# --------------------------------------------------------------------------- evaluation helpers
def _batches(dataset: EnsembleDataset, positions: np.ndarray, size: int):
    for start in range(0, len(positions), size):
        chunk = positions[start : start + size]
        samples = dataset.__getitems__(list(chunk))
        yield (
            torch.stack([s[0] for s in samples]),
            torch.tensor([s[1] for s in samples], dtype=torch.long),
            torch.tensor([s[2] for s in samples], dtype=torch.long),
        )


@torch.no_grad()
def encode_dataset(
    model: ConvAutoencoder,
    dataset: EnsembleDataset,
    device: torch.device,
    batch_size: int = 256,
    positions: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Evaluation-mode pass over (some of) ``dataset``: ``code`` (n, M), ``logvar`` (VAE),
    per-member mean squared reconstruction error ``recon_error`` (n,), ``labels``, ``index``."""
    model.eval()
    positions = np.arange(len(dataset)) if positions is None else np.asarray(positions)
    codes, logvars, errors, labels, indices = [], [], [], [], []
    for fields_, label, index in _batches(dataset, positions, batch_size):
        fields_ = fields_.to(device)
        out = model(fields_)
        codes.append(out["code"].cpu())
        if "logvar" in out:
            logvars.append(out["logvar"].cpu())
        errors.append((out["reconstruction"] - fields_).pow(2).flatten(1).mean(1).cpu())
        labels.append(label)
        indices.append(index)
    result = {
        "code": torch.cat(codes).numpy() if codes else np.empty((0, model.latent_dim), np.float32),
        "recon_error": torch.cat(errors).numpy() if errors else np.empty(0, np.float32),
        "labels": torch.cat(labels).numpy() if labels else np.empty(0, np.int64),
        "index": torch.cat(indices).numpy() if indices else np.empty(0, np.int64),
    }
    if logvars:
        result["logvar"] = torch.cat(logvars).numpy()
    return result


def _score(
    objective: JointLoss, encoded: dict[str, np.ndarray], confidence: np.ndarray | None
) -> dict[str, float]:
    """Every loss term on a whole evaluated part (latent terms over all its members at once).

    ``cluster`` is always ``1 − s̄`` of the part (comparable between runs and the quantity of
    the train–validation gap); with a silhouette target ``s* < 1`` or trimming, the trained
    term (:func:`~sense_training.losses.silhouette_hinge_loss` over the whole part) is
    ``cluster_objective`` and enters ``total`` instead."""
    code = torch.from_numpy(encoded["code"]).double()
    labels = torch.from_numpy(encoded["labels"])
    parts: dict[str, float] = {}
    config = objective.config
    total = 0.0
    if "recon" in config.terms:
        parts["recon"] = float(np.mean(encoded["recon_error"]))
        total += config.recon_weight * parts["recon"]
        if "logvar" in encoded:
            logvar = torch.from_numpy(encoded["logvar"]).double()
            parts["kl"] = float(0.5 * torch.mean(code.pow(2) + logvar.exp() - logvar - 1.0))
            total += objective.beta_norm * parts["kl"]
    plain = {"silhouette_target": 1.0, "memory_size": 0, "trim_fraction": 0.0}
    latent_only = LossConfig(**{**config.to_dict(), "terms": ("cluster", "contrastive"), **plain})
    scorer = JointLoss(latent_only, objective.num_classes, 1, 1)
    conf = None if confidence is None else torch.from_numpy(confidence).double()
    latent = scorer(code, None, code, labels, confidence=conf)
    if "cluster" in config.terms:
        parts["cluster"] = latent.parts["cluster"]
        if config.silhouette_target < 1.0 or config.trim_fraction > 0:
            trained = LossConfig(**{**config.to_dict(), "terms": ("cluster",), "memory_size": 0})
            value = JointLoss(trained, objective.num_classes, 1, 1)(
                code, None, code, labels, confidence=conf
            )
            parts["cluster_objective"] = value.parts["cluster"]
            total += config.cluster_weight * parts["cluster_objective"]
        else:
            total += config.cluster_weight * parts["cluster"]
    else:  # still worth watching: the silhouette of the latent space (1 - s)
        parts["cluster_monitor"] = latent.parts["cluster"]
    if "contrastive" in config.terms:
        parts["contrastive"] = latent.parts["contrastive"]
        total += config.contrastive_weight * parts["contrastive"]
    parts["total"] = total
    return parts


GAP_LIMIT = 0.10  # the clustering-loss gap above which training warns (docs/encoder.md)


def gap_advice(record: Mapping[str, float]) -> str | None:
    """A warning with the remedies when the epoch ``record``'s clustering gap exceeds
    ``GAP_LIMIT`` (the clustering loss fits the training members better than unseen ones)."""
    gap = record.get("cluster_gap")
    if gap is None or not gap > GAP_LIMIT:
        return None
    return (
        f"note: clustering-loss gap {gap:.3f} (validation {record['val_cluster']:.3f} vs "
        f"training {record['train_cluster']:.3f}) is above {GAP_LIMIT:.2f}: the latent classes "
        "fit the training members better than unseen ones. Remedies that worked in "
        "docs/encoder.md: pseudo-labels for the unlabelled members (sense fit), --augment shift "
        "where position is not part of the class, --trim-fraction 0.3 with more epochs."
    )


def monitor_pool(parts: TrainingParts, train_labels: np.ndarray) -> tuple[str, np.ndarray]:
    """Which training members ``train_cluster`` is scored on (positions in ``parts.train``).

    The gap compares like with like: the validation part is hand-labeled, so the training side
    is the hand-labeled training members (``"hand"``). Pseudo-labels come from a classifier of
    the same fields and are easier to separate than hand labels even before any training, so
    they would widen the gap with no overfitting at all. Only when the hand labels of the
    training part cover fewer than two classes are all labelled members used (``"all"``), and
    with no labels at all every member (``"none"``, for the monitored silhouette only)."""
    labelled = np.flatnonzero(train_labels != UNLABELED)
    hand = labelled[parts.manual[parts.train[labelled]]]
    if len(np.unique(train_labels[hand])) >= 2:
        return "hand", hand
    if len(labelled):
        return "all", labelled
    return "none", np.arange(len(train_labels))


# --------------------------------------------------------------------------- training
@dataclass
class EncoderResult:
    """What :func:`train_encoder` produced."""

    bundle: Bundle | None
    metrics: dict[str, Any]
    run_dir: Path
    history: History
    model: ConvAutoencoder
    parts: TrainingParts
    normalization: NormalizationStats
    completed: bool  # False when stopped by ``stop_after`` (resume later)
    is_main: bool = True  # False on the other ranks of a torchrun run (they write nothing)


def _bundle_manifest(
    out: Path, store: MemberStore, overwrite: bool, resume: bool
) -> dict[str, Any] | None:
    manifest = read_manifest(out)
    if manifest is None:
        return None
    existing = Bundle(out, manifest, verify_checksums=False)
    if existing.input_shape != tuple(store.member_shape):
        raise SenseError(
            f"{out}: the bundle holds models for members {existing.input_shape}, these are "
            f"{tuple(store.member_shape)}; write the encoder to a new bundle folder"
        )
    if existing.class_names and tuple(existing.class_names) != tuple(store.class_names):
        raise SenseError(
            f"{out}: the bundle's classes {list(existing.class_names)} differ from the "
            f"ensemble's {list(store.class_names)}"
        )
    if ROLE in existing.models and not (overwrite or resume):
        raise SenseError(
            f"{out}: the bundle already has an encoder (use --overwrite to replace it)"
        )
    return manifest


def trim_schedule(epoch: int, config: EncoderConfig) -> float:
    """The trimmed share of epoch ``epoch`` (0-based): ``τ · min(1, epoch / w)`` with
    ``w = trim_warmup_epochs`` (co-teaching's schedule, Han et al. 2018; τ from the start
    when w = 0), so that the model first learns from every member."""
    if config.trim_warmup_epochs <= 0:
        return config.trim_fraction
    return config.trim_fraction * min(1.0, epoch / config.trim_warmup_epochs)


def _latent_scale(epoch: int, config: EncoderConfig) -> float:
    """λ warm-up: 0 → 1 linearly over ``warmup_epochs`` (the first epoch already gets 1/(w+1))."""
    if config.warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + 1) / (config.warmup_epochs + 1))


def _quiet(*_args, **_kwargs) -> None:
    """The log of the ranks other than 0: they print nothing."""


def train_encoder(
    store: MemberStore,
    out: str | os.PathLike,
    config: EncoderConfig | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    export: bool = True,
    command: Sequence[str] | None = None,
    stop_after: int | None = None,
    log=print,
) -> EncoderResult:
    """Train an encoder on ``store`` and (with ``export``) write it into the bundle folder ``out``.

    ``run_dir`` (default ``out/encoder_run``) receives the checkpoint, history, curves and
    metrics. ``resume`` continues from its checkpoint with the configuration saved there
    (``config`` is then ignored). ``stop_after`` ends this call after that many epochs in total
    (checkpoint written, no export). ``command`` is recorded in the bundle (default ``sys.argv``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks train replicas with DistributedDataParallel
    on their shares of every epoch's batches (:mod:`sense_training.distributed`); rank 0 alone
    writes the checkpoint, history, plots, metrics and the bundle.
    """
    started = time.perf_counter()
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else out / RUN_FOLDER
    checkpoint_path = run_dir / CHECKPOINT
    command = list(sys.argv if command is None else command)
    state = None
    if resume and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        config = EncoderConfig.from_dict(state["config"])
        log(f"resuming {checkpoint_path} after epoch {int(state['epoch']) + 1}")
    config = config or EncoderConfig()
    if len(store.class_names) < 2 and config.losses != ("recon",):
        raise SenseError("the clustering and contrastive losses need at least two classes")
    seeding = seed_everything(config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_threads(config.threads)
    device = choose_device(config.device)
    context = init_distributed(device)
    device = device_for(device, context)
    if not context.is_main:
        log = _quiet

    parts = training_parts(store, config)
    fingerprint = _fingerprint(store, parts)
    if state is not None and state.get("fingerprint") != fingerprint:
        raise SenseError(
            f"{checkpoint_path}: the checkpoint was made with other members or labels; "
            "start a new run (without --resume) or use the original data"
        )
    manifest = _bundle_manifest(out, store, overwrite, resume) if export else read_manifest(out)
    if manifest is not None:
        normalization = NormalizationStats.from_dict(manifest["normalization"])
    else:
        normalization = NormalizationStats.from_store(store, parts.split.train)
    if config.losses != ("recon",):
        missing = [
            store.class_names[c]
            for c in range(len(store.class_names))
            if not np.any(parts.labels[parts.train] == c)
        ]
        if len(missing) == len(store.class_names) - 1 or len(missing) == len(store.class_names):
            raise SenseError("the training members cover fewer than two classes")

    augmentation = Augmentation.parse(config.augment)
    train_set = EnsembleDataset(
        store,
        parts.train,
        normalization,
        labels=parts.labels,
        augmentation=augmentation,
        seed=config.seed,
    )
    monitor_set = EnsembleDataset(store, parts.train, normalization, labels=parts.labels)
    val_set = EnsembleDataset(store, parts.split.validation, normalization)
    if config.losses == ("recon",) or not (train_set.labels != UNLABELED).any():
        batch_sampler = None
        sampler = EpochShuffleSampler(len(train_set), seed=config.seed)
        batches = torch.utils.data.BatchSampler(sampler, config.batch_size, drop_last=False)
    else:
        batch_sampler = ClassBatchSampler(train_set.labels, config.batch_size, seed=config.seed)
        sampler = None
        batches = batch_sampler
    # each rank loads only its share of the epoch's batches (all of them in one process)
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=RankShare(batches, context), num_workers=0
    )
    monitor_kind, pool = monitor_pool(parts, train_set.labels)
    rng = np.random.default_rng(epoch_seed(config.seed, 0, "monitor"))
    monitor_positions = np.sort(
        rng.choice(pool, size=min(config.monitor_members, len(pool)), replace=False)
    )

    model = build_autoencoder(config.model_config(store.member_shape)).to(device)
    trained = wrap_model(model, context)  # DDP on several ranks; the model itself on one
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    objective = JointLoss(
        config.loss_config(), len(store.class_names), config.latent_dim, model.input_dim
    )
    # the model that is scored, selected and exported: ``model`` or the average of its weights
    weight_average = (
        torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,
        )
        if config.ema_decay > 0
        else None
    )
    scored = model if weight_average is None else weight_average.module
    history = History()
    start_epoch = 0
    best_epoch, best_value, best_state = -1, float("inf"), None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = History.from_dict(state["history"])
        start_epoch = int(state["epoch"]) + 1
        best_epoch, best_value = int(state["best_epoch"]), float(state["best_value"])
        best_state = state["best_model"]
        if weight_average is not None:
            weight_average.load_state_dict(state["averaged_model"])

    log(
        f"encoder {config.arch} latent {config.latent_dim}, losses {','.join(config.losses)}: "
        f"{parts.counts['train']} training members ({parts.counts['train_manual']} hand-labeled, "
        f"{parts.counts['train_pseudo']} pseudo-labelled, {parts.counts['train_unlabeled']} "
        f"unlabelled), {parts.counts['validation']} validation, {parts.counts['test']} test; "
        f"{count_parameters(model):,} parameters on {device}"
    )
    stopped_early = False
    last_epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs):
        if stop_after is not None and epoch >= stop_after:
            break
        tick = time.perf_counter()
        torch.manual_seed(epoch_seed(config.seed, epoch, "torch"))  # dropout, VAE noise
        train_set.set_epoch(epoch)
        for part in (sampler, batch_sampler):
            if part is not None:
                part.set_epoch(epoch)
        scale = _latent_scale(epoch, config)
        trim = trim_schedule(epoch, config)
        if objective.memory is not None:
            objective.memory.clear()  # each epoch starts with an empty bank (resumable)
        trained.train()
        sums: dict[str, float] = {}
        batches = 0
        for fields_, labels, index in loader:
            fields_ = fields_.to(device)
            labels = labels.to(device)
            confidence = torch.from_numpy(parts.confidence[index.numpy()]).to(device)
            outputs = trained(fields_)
            loss = objective(
                fields_,
                outputs["reconstruction"],
                outputs["code"],
                labels,
                confidence=confidence,
                logvar=outputs.get("logvar"),
                latent_scale=scale,
                index=index.to(device),
                trim_fraction=trim,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
            if weight_average is not None:
                weight_average.update_parameters(model)
            for key, value in loss.parts.items():
                sums[key] = sums.get(key, 0.0) + value
            batches += 1
        if not np.isfinite(sums.get("total", 0.0)):
            raise SenseError(
                f"training diverged at epoch {epoch + 1} (loss {sums.get('total')}); "
                "lower the learning rate or the loss weights"
            )
        keys = sorted(sums)
        averaged = mean_over_ranks([sums[k] / max(batches, 1) for k in keys], context)
        record: dict[str, float] = {f"batch_{k}": v for k, v in zip(keys, averaged)}
        train_scores = _score(
            objective,
            encode_dataset(scored, monitor_set, device, config.eval_batch_size, monitor_positions),
            parts.confidence[parts.train[monitor_positions]],
        )
        record.update({f"train_{k}": v for k, v in train_scores.items()})
        if len(val_set):
            val_scores = _score(
                objective, encode_dataset(scored, val_set, device, config.eval_batch_size), None
            )
            record.update({f"val_{k}": v for k, v in val_scores.items()})
            for key in ("cluster", "cluster_monitor"):
                if key in val_scores:
                    record[f"{key}_gap"] = val_scores[key] - train_scores[key]
        record["latent_scale"] = scale
        if config.trim_fraction > 0:
            record["trim_fraction"] = trim
        record["seconds"] = time.perf_counter() - tick
        history.append(epoch, **record)
        last_epoch = epoch
        selection = record.get("val_total", record["train_total"])
        if selection < best_value:
            best_epoch, best_value = epoch, selection
            best_state = {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}
        log(_epoch_line(epoch, config.epochs, record))
        if context.is_main:
            save_checkpoint(
                checkpoint_path,
                {
                    "config": config.to_dict(),
                    "input_shape": list(store.member_shape),
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "history": history.to_dict(),
                    "best_epoch": best_epoch,
                    "best_value": best_value,
                    "best_model": best_state,
                    **(
                        {}
                        if weight_average is None
                        else {"averaged_model": weight_average.state_dict()}
                    ),
                },
            )
        barrier(context)
        patience_spent = bool(config.patience and epoch - best_epoch >= config.patience)
        if broadcast_flag(patience_spent, context):
            log(f"early stop: no better validation objective for {config.patience} epochs")
            stopped_early = True
            break
    epoch = last_epoch
    completed = stopped_early or epoch >= config.epochs - 1
    del trained, loader  # the DDP wrapper holds the process group (see shutdown)
    if not context.is_main:
        shutdown(context)
        return EncoderResult(
            None, {}, run_dir, history, model.eval(), parts, normalization, completed, False
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "history.json", json.dumps(history.to_dict(), indent=1) + "\n")
    if len(history):
        plot_history(
            history,
            run_dir / "loss_curves.png",
            title=f"{config.arch} z={config.latent_dim} {'+'.join(config.losses)} "
            f"(selected epoch {best_epoch + 1 if config.select == 'best' else epoch + 1})",
            marker_epoch=best_epoch if config.select == "best" else None,
            skip=(
                "epoch",
                "seconds",
                "latent_scale",
                "trim_fraction",
                *{k for r in history for k in r if k.startswith("batch_")},
            ),
        )
    if config.select == "best" and best_state is not None:
        model.load_state_dict(best_state)
    elif weight_average is not None:
        model.load_state_dict(weight_average.module.state_dict())
    selected_epoch = best_epoch if config.select == "best" else epoch
    model.eval()
    selected = next((r for r in history if r["epoch"] == selected_epoch), {})
    advice = gap_advice(selected)
    if advice:
        log(advice)
    metrics: dict[str, Any] = {
        "completed": bool(completed),
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "selected_epoch": int(selected_epoch),
        "selected": selected,
        "monitor": {"members": int(len(monitor_positions)), "labels": monitor_kind},
        "final": history.records[-1] if len(history) else {},
        "members": parts.counts,
        "parameters": count_parameters(model),
        "beta_norm": objective.beta_norm,
        "device": describe_device(device),
        "distributed": context.describe(),
        "seeding": seeding,
        "seconds": round(time.perf_counter() - started, 2),
    }
    bundle = None
    if completed and export:
        bundle, report = _export(
            model, store, out, manifest, normalization, val_set, config, parts, metrics, command
        )
        metrics["export"] = report
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    shutdown(context)
    return EncoderResult(bundle, metrics, run_dir, history, model, parts, normalization, completed)


def _epoch_line(epoch: int, epochs: int, record: Mapping[str, float]) -> str:
    shown = [f"epoch {epoch + 1}/{epochs}"]
    for key in (
        "train_total",
        "val_total",
        "train_recon",
        "val_recon",
        "train_cluster",
        "val_cluster",
        "train_contrastive",
        "val_contrastive",
        "cluster_gap",
    ):
        if key in record:
            shown.append(f"{key} {record[key]:.4f}")
    shown.append(f"{record['seconds']:.1f}s")
    return "  ".join(shown)


def _export(
    model: ConvAutoencoder,
    store: MemberStore,
    out: Path,
    manifest: dict | None,
    normalization: NormalizationStats,
    val_set: EnsembleDataset,
    config: EncoderConfig,
    parts: TrainingParts,
    metrics: dict[str, Any],
    command: list[str],
) -> tuple[Bundle, dict[str, Any]]:
    """ONNX export of the encoder (verified against torch) into the bundle folder."""
    import tempfile

    cpu_model = model.cpu().eval()
    sample = np.arange(min(len(val_set), 64))
    real = (
        torch.stack([val_set[int(i)][0] for i in sample])
        if len(sample)
        else torch.from_numpy(
            normalization.apply(store.read_members(parts.train[: min(64, len(parts.train))]))
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".encoder-export-") as tmp:
        onnx_path = Path(tmp) / "encoder.onnx"
        report = export_onnx(
            LatentEncoder(cpu_model),
            real[:2],
            onnx_path,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            real_inputs=real,
            seed=config.seed,
        )
        if manifest is None:
            manifest = new_manifest(tuple(store.member_shape), normalization, store.class_names)
        manifest.setdefault("software", {}).update(training_versions())
        bundle = add_model(
            out,
            ROLE,
            onnx_path,
            manifest,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            opset=report.opset,
            details={
                "architecture": f"conv-{config.arch}",
                "latent_dim": config.latent_dim,
                "model": model.config.to_dict(),
                "exports": "mu" if config.arch == "vae" else "z",
                "exporter": report.exporter,
                "parity_max_abs_diff": max(
                    report.max_abs_diff_random, report.max_abs_diff_real or 0.0
                ),
            },
            training={
                "command": shlex.join(command),
                "argv": command,
                "config": config.to_dict(),
                "metrics": {k: v for k, v in metrics.items() if k != "seeding"},
                "split": {
                    "seed": config.split_seed,
                    "fractions": list(config.fractions),
                    **{
                        p: int(len(getattr(parts.split, p)))
                        for p in ("train", "validation", "test")
                    },
                },
                "seeding": metrics["seeding"],
                "versions": training_versions(),
            },
        )
    return bundle, report.to_dict()


def load_encoder_checkpoint(path: str | os.PathLike, which: str = "best") -> ConvAutoencoder:
    """The model of a run's checkpoint (``best`` or ``last`` epoch), in evaluation mode."""
    if which not in SELECT_CHOICES:
        raise ValueError(f"which must be one of {SELECT_CHOICES}")
    state = load_checkpoint(path)
    config = EncoderConfig.from_dict(state["config"])
    model = build_autoencoder(config.model_config(state["input_shape"]))
    best = state.get("best_model")
    model.load_state_dict(best if which == "best" and best is not None else state["model"])
    return model.eval()
