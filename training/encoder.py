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

Training (:func:`train_encoder`, an :class:`EncoderTrainer` run by :mod:`sense_training.loop`):
Adam, the joint loss of :mod:`sense_training.losses`, batches from
:class:`~sense_training.losses.ClassBatchSampler` when a latent term is used (every class in
a batch has a positive). After every epoch the model is scored *in evaluation mode* on the whole
validation part and on a fixed sample (``monitor_members``) of the *hand-labeled* training
members (:func:`monitor_pool`), each loss term separately: ``train_cluster`` vs
``val_cluster`` is the overfitting gap the paper ran into.
Remedies offered: the trimmed silhouette loss (``trim_fraction``, ramped over
``trim_warmup_epochs``), a silhouette target (``silhouette_target``), a memory bank of earlier
batches' codes (``memory_size``), a linear warm-up of λ (``warmup_epochs``), confidence-weighted
or soft memberships, stronger dropout, augmentation (``augment``), an exponential moving average
of the weights (``ema_decay``: scoring, selection and export use the averaged model), and
keeping the epoch with the lowest validation objective (the loop's selection value;
``select="best"``, early stopping with ``run.patience``); see docs/encoder.md for which of them
helped. Checkpoints, resume (the same weights as an uninterrupted run: every epoch's randomness
is derived from ``(seed, epoch)``), ``torchrun`` and the export are the loop's.

Outputs in the run folder (default ``<bundle>/encoder_run``): ``checkpoint.pt``,
``history.json``, ``loss_curves.png``, ``metrics.json``; in the bundle: ``encoder.onnx``
(normalised fields → latent; the VAE exports μ) and ``decoder.onnx`` (latent → normalised
fields, :func:`export_decoder`), each verified against torch (≤ 1e-4), and their entries in
``sense.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sense_core.bundle import Bundle
from sense_core.ensemble import (
    PRESET_SPLIT_KEY,
    UNLABELED,
    MemberStore,
    NormalizationStats,
    Split,
    manual_mask,
    split_hand_labeled,
)
from sense_core.errors import SenseError
from sense_training.common import History, epoch_seed, load_checkpoint
from sense_training.config import SELECT_CHOICES, EncoderConfig
from sense_training.data import (
    Augmentation,
    EnsembleDataset,
    EpochShuffleSampler,
    InstanceViews,
)
from sense_training.distributed import RankShare, mean_over_ranks, wrap_model
from sense_training.export import ExportError, ExportReport
from sense_training.loop import (
    Trainer,
    TrainingRun,
    bundle_normalization,
    export_to_bundle,
    run_training,
)
from sense_training.losses import ClassBatchSampler, JointLoss
from sense_training.models.autoencoder import (
    BOTTLENECK,
    AutoencoderConfig,
    ConvAutoencoder,
    LatentEncoder,
    build_autoencoder,
    count_parameters,
)

ROLE = "encoder"
DECODER_ROLE = "decoder"
INPUT_NAME = "fields"
OUTPUT_NAME = "latent"
RUN_FOLDER = "encoder_run"
CONFIDENCE_KEY = "confidence"


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
    if not config.loss.uses_labels and not manual_mask(store).any():
        # no hand label at all (a label-free fit): every member trains, none is held out
        none = np.empty(0, dtype=np.int64)
        fractions = tuple(config.split.fractions)
        manual, split = np.zeros(len(store), bool), Split(none, none, none, 0, fractions)
    else:
        manual, split = split_hand_labeled(store, config.split.fractions, config.split.split_seed)
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
    if "recon" in config.loss.terms:
        train = np.flatnonzero(~held_out)  # every member not held out, labelled or not
    else:
        train = np.flatnonzero(labels != UNLABELED)
    if config.label_noise > 0:
        labels = flip_labels(
            labels,
            pseudo if pseudo.any() else labels != UNLABELED,
            config.label_noise,
            len(store.class_names),
            epoch_seed(config.run.seed, 0, "label-noise"),
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
    return {
        "members": len(store),
        "member_shape": list(store.member_shape),
        "sha256": digest.hexdigest(),
    }


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
    if objective.num_classes == 0:  # a label-free fit: no class to score the latent space by
        parts["total"] = total
        return parts
    plain = {"silhouette_target": 1.0, "memory_size": 0, "trim_fraction": 0.0}
    latent_only = config.updated({"terms": ("cluster", "contrastive"), **plain})
    scorer = JointLoss(latent_only, objective.num_classes, 1, 1)
    conf = None if confidence is None else torch.from_numpy(confidence).double()
    latent = scorer(code, None, code, labels, confidence=conf)
    if "cluster" in config.terms:
        parts["cluster"] = latent.parts["cluster"]
        if config.silhouette_target < 1.0 or config.trim_fraction > 0:
            trained = config.updated({"terms": ("cluster",), "memory_size": 0})
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


def gap_advice(record: Mapping[str, float], pseudo_labelled: bool = False) -> str | None:
    """A warning with the remedies when the epoch ``record``'s clustering gap exceeds
    ``GAP_LIMIT`` (the clustering loss fits the training members better than unseen ones).
    Pseudo-labels are suggested only to a run that has none (``sense fit`` gives them)."""
    gap = record.get("cluster_gap")
    if gap is None or not gap > GAP_LIMIT:
        return None
    remedies = [
        "--augment shift where position is not part of the class",
        "--trim-fraction 0.3 with more epochs",
    ]
    if not pseudo_labelled:
        remedies.insert(0, "pseudo-labels for the unlabelled members (sense fit)")
    return (
        f"note: clustering-loss gap {gap:.3f} (validation {record['val_cluster']:.3f} vs "
        f"training {record['train_cluster']:.3f}) is above {GAP_LIMIT:.2f}: the latent classes "
        "fit the training members better than unseen ones. Remedies that worked in "
        f"docs/encoder.md: {', '.join(remedies)}."
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


def _first_half(outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's outputs for the first half of a batch that was doubled with views (whose
    reconstructions were not decoded)."""
    size = len(outputs["code"]) // 2
    return {key: value[:size] for key, value in outputs.items()}


def trim_schedule(epoch: int, config: EncoderConfig) -> float:
    """The trimmed share of epoch ``epoch`` (0-based): ``τ · min(1, epoch / w)`` with
    ``w = trim_warmup_epochs`` (co-teaching's schedule, Han et al. 2018; τ from the start
    when w = 0), so that the model first learns from every member."""
    if config.trim_warmup_epochs <= 0:
        return config.loss.trim_fraction
    return config.loss.trim_fraction * min(1.0, epoch / config.trim_warmup_epochs)


def _latent_scale(epoch: int, config: EncoderConfig) -> float:
    """λ warm-up: 0 → 1 linearly over ``warmup_epochs`` (the first epoch already gets 1/(w+1))."""
    if config.warmup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch + 1) / (config.warmup_epochs + 1))


class EncoderTrainer(Trainer):
    """The encoder's hooks for :func:`sense_training.loop.run_training`."""

    role = ROLE
    config_type = EncoderConfig
    run_folder = RUN_FOLDER
    curves_file = "loss_curves.png"
    selection_name = "validation objective"

    def prepare(self, run: TrainingRun) -> dict[str, Any]:
        if len(run.store.class_names) < 2 and run.config.loss.uses_labels:
            raise SenseError("the clustering and contrastive losses need at least two classes")
        self.parts = training_parts(run.store, run.config)
        if run.config.loss.uses_labels:
            covered = np.unique(self.parts.labels[self.parts.train])
            if np.sum(covered != UNLABELED) < 2:
                raise SenseError("the training members cover fewer than two classes")
        return _fingerprint(run.store, self.parts)

    def build(self, run: TrainingRun) -> None:
        store, config, parts = run.store, run.config, self.parts
        statistics_members = parts.split.train if len(parts.split.train) else parts.train
        self.normalization = bundle_normalization(run.manifest, store, statistics_members)
        self.train_set = EnsembleDataset(
            store,
            parts.train,
            self.normalization,
            labels=parts.labels,
            augmentation=Augmentation.parse(config.augment),
            seed=config.run.seed,
        )
        self.views = InstanceViews.parse(config.loss.instance_views)  # the 'instance' term's
        self.views.check(store.member_shape)
        self.monitor_set = EnsembleDataset(store, parts.train, self.normalization, parts.labels)
        self.val_set = EnsembleDataset(store, parts.split.validation, self.normalization)
        self.loader, self.samplers = self._loader(run)
        self.monitor_kind, pool = monitor_pool(parts, self.train_set.labels)
        rng = np.random.default_rng(epoch_seed(config.run.seed, 0, "monitor"))
        self.monitor_positions = np.sort(
            rng.choice(pool, size=min(config.monitor_members, len(pool)), replace=False)
        )
        model_config = AutoencoderConfig.from_model(config.model, store.member_shape)
        self.model = build_autoencoder(model_config).to(run.device)
        if config.init_from:
            self._start_from(config.init_from, config.select)
        self.trained = wrap_model(self.model, run.context)  # DDP on several ranks
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=config.run.learning_rate,
            weight_decay=config.run.weight_decay,
        )
        self.objective = JointLoss(
            config.loss, len(store.class_names), config.model.latent_dim, self.model.input_dim
        )
        # the model that is scored, selected and exported: ``model`` or its weight average
        self.average = None
        if config.ema_decay > 0:
            self.average = torch.optim.swa_utils.AveragedModel(
                self.model,
                multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
                use_buffers=True,
            )
        self.scored = self.model if self.average is None else self.average.module
        run.log(self._description(run))

    def _start_from(self, path: str, which: str) -> None:
        """Copy the weights of another encoder run (a warm start, e.g. ``sense fit``'s final
        encoder from its first one)."""
        source = load_encoder_checkpoint(path, which)
        try:
            self.model.load_state_dict(source.state_dict())
        except RuntimeError as exc:
            raise SenseError(
                f"{path}: its encoder is another network than this run's (--init-from needs the "
                f"same architecture, latent size and channels): {str(exc).splitlines()[0]}"
            ) from exc

    def _loader(self, run: TrainingRun) -> tuple[torch.utils.data.DataLoader, list]:
        """Batches of the epoch (class batches when a latent term uses labels), this rank's
        share of them, and the samplers to tell each epoch."""
        config, labels = run.config, self.train_set.labels
        if not config.loss.uses_labels or not (labels != UNLABELED).any():
            sampler = EpochShuffleSampler(len(self.train_set), seed=config.run.seed)
            batches = torch.utils.data.BatchSampler(sampler, config.run.batch_size, False)
            samplers = [sampler]
        else:
            batches = ClassBatchSampler(labels, config.run.batch_size, seed=config.run.seed)
            samplers = [batches]
        share = RankShare(batches, run.context)
        loader = torch.utils.data.DataLoader(self.train_set, batch_sampler=share, num_workers=0)
        return loader, samplers

    def _description(self, run: TrainingRun) -> str:
        config, counts = run.config, self.parts.counts
        return (
            f"encoder {config.model.arch} latent {config.model.latent_dim}, losses "
            f"{','.join(config.loss.terms)}: {counts['train']} training members "
            f"({counts['train_manual']} hand-labeled, {counts['train_pseudo']} pseudo-labelled, "
            f"{counts['train_unlabeled']} unlabelled), {counts['validation']} validation, "
            f"{counts['test']} test; {count_parameters(self.model):,} parameters on {run.device}"
        )

    def train_one_epoch(self, run: TrainingRun, epoch: int) -> dict[str, float]:
        config, device = run.config, run.device
        self.train_set.set_epoch(epoch)
        for sampler in self.samplers:
            sampler.set_epoch(epoch)
        scale, trim = _latent_scale(epoch, config), trim_schedule(epoch, config)
        if self.objective.memory is not None:
            self.objective.memory.clear()  # each epoch starts with an empty bank (resumable)
        self.trained.train()
        sums: dict[str, float] = {}
        batches = 0
        for fields_, labels, index in self.loader:
            fields_, labels = fields_.to(device), labels.to(device)
            confidence = torch.from_numpy(self.parts.confidence[index.numpy()]).to(device)
            view_code = None
            if "instance" in config.loss.terms:  # a second view of every member, one pass
                view = self.views.batch(fields_, index, config.run.seed, epoch)
                outputs = self.trained(torch.cat([fields_, view]), reconstruct=len(fields_))
                outputs, view_code = _first_half(outputs), outputs["code"][len(fields_) :]
            else:
                outputs = self.trained(fields_)
            loss = self.objective(
                fields_, outputs["reconstruction"], outputs["code"], labels,
                confidence=confidence, logvar=outputs.get("logvar"), latent_scale=scale,
                index=index.to(device), trim_fraction=trim, view_code=view_code,
            )  # fmt: skip
            self.optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            self.optimizer.step()
            if self.average is not None:
                self.average.update_parameters(self.model)
            for key, value in loss.parts.items():
                sums[key] = sums.get(key, 0.0) + value
            batches += 1
        if not np.isfinite(sums.get("total", 0.0)):
            raise SenseError(
                f"training diverged at epoch {epoch + 1} (loss {sums.get('total')}); "
                "lower the learning rate or the loss weights"
            )
        keys = sorted(sums)
        averaged = mean_over_ranks([sums[k] / max(batches, 1) for k in keys], run.context)
        record = {f"batch_{k}": v for k, v in zip(keys, averaged)}
        record["latent_scale"] = scale
        if config.loss.trim_fraction > 0:
            record["trim_fraction"] = trim
        return record

    def validate(self, run: TrainingRun, epoch: int) -> tuple[dict[str, float], float | None]:
        size = run.config.run.eval_batch_size
        monitored = encode_dataset(
            self.scored, self.monitor_set, run.device, size, self.monitor_positions
        )
        confidence = self.parts.confidence[self.parts.train[self.monitor_positions]]
        train_scores = _score(self.objective, monitored, confidence)
        record = {f"train_{k}": v for k, v in train_scores.items()}
        if len(self.val_set):
            encoded = encode_dataset(self.scored, self.val_set, run.device, size)
            val_scores = _score(self.objective, encoded, None)
            record.update({f"val_{k}": v for k, v in val_scores.items()})
            for key in ("cluster", "cluster_monitor"):
                if key in val_scores:
                    record[f"{key}_gap"] = val_scores[key] - train_scores[key]
        return record, record.get("val_total", record["train_total"])

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.scored.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.average is not None:
            state["averaged_model"] = self.average.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.average is not None:
            self.average.load_state_dict(state["averaged_model"])

    def epoch_line(
        self, run: TrainingRun, epoch: int, record: Mapping[str, float], improved: bool
    ) -> str:
        return _epoch_line(epoch, run.config.run.epochs, record)

    def release(self) -> None:
        del self.trained, self.loader  # the DDP wrapper holds the process group

    def selected_epoch(self, run: TrainingRun) -> int:
        return run.best_epoch if run.config.select == "best" else run.last_epoch

    def select_weights(self, run: TrainingRun) -> None:
        if run.config.select == "best" and run.best_weights is not None:
            self.model.load_state_dict(run.best_weights)
        elif self.average is not None:
            self.model.load_state_dict(self.average.module.state_dict())
        self.model.eval()

    def curves(self, run: TrainingRun) -> tuple[str, int | None, tuple[str, ...]]:
        config = run.config
        title = (
            f"{config.model.arch} z={config.model.latent_dim} {'+'.join(config.loss.terms)} "
            f"(selected epoch {self.selected_epoch(run) + 1})"
        )
        batch_keys = {k for record in run.history for k in record if k.startswith("batch_")}
        skip = ("epoch", "seconds", "latent_scale", "trim_fraction", *sorted(batch_keys))
        return title, run.best_epoch if config.select == "best" else None, skip

    def finish(self, run: TrainingRun) -> tuple[Bundle | None, dict[str, Any]]:
        selected_epoch = self.selected_epoch(run)
        selected = next((r for r in run.history if r["epoch"] == selected_epoch), {})
        advice = gap_advice(selected, pseudo_labelled=self.parts.counts.get("train_pseudo", 0) > 0)
        if advice:
            run.log(advice)
        metrics: dict[str, Any] = {
            "completed": True,
            "epochs_run": len(run.history),
            "stopped_early": run.stopped_early,
            "selected_epoch": int(selected_epoch),
            "selected": selected,
            "monitor": {"members": int(len(self.monitor_positions)), "labels": self.monitor_kind},
            "final": run.history.records[-1] if len(run.history) else {},
            "members": self.parts.counts,
            "parameters": count_parameters(self.model),
            "beta_norm": self.objective.beta_norm,
            "device": run.device_record(),
            "distributed": run.context.describe(),
            "seeding": run.seeding,
            "seconds": round(time.perf_counter() - run.started, 2),
        }
        bundle = None
        if run.export:
            bundle, report = self._export(run, metrics)
            metrics["export"] = report.to_dict()
        return bundle, metrics

    def _export(self, run: TrainingRun, metrics: dict[str, Any]) -> tuple[Bundle, ExportReport]:
        """ONNX export of the encoder and its decoder (each verified against torch) into the
        bundle folder."""
        model, config = self.model.cpu().eval(), run.config
        sample = np.arange(min(len(self.val_set), 64))
        if len(sample):
            real = torch.stack([self.val_set[int(i)][0] for i in sample])
        else:
            members = run.store.read_members(self.parts.train[: min(64, len(self.parts.train))])
            real = torch.from_numpy(self.normalization.apply(members))

        def details(report: ExportReport) -> dict[str, Any]:
            return {
                "architecture": f"conv-{config.model.arch}",
                "latent_dim": config.model.latent_dim,
                "model": model.config.to_dict(),
                "exports": "mu" if config.model.arch == "vae" else "z",
                "exporter": report.exporter,
                "parity_max_abs_diff": max(
                    report.max_abs_diff_random, report.max_abs_diff_real or 0.0
                ),
            }

        bundle, report = export_to_bundle(
            run,
            LatentEncoder(model),
            real[:2],
            real,
            self.normalization,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            details=details,
            metrics={k: v for k, v in metrics.items() if k != "seeding"},
            split=run.split_record(self.parts.split),
            seed=config.run.seed,
        )
        try:
            bundle, decoded = export_decoder(run.out, model, real, seed=config.run.seed)
            metrics["decoder_export"] = decoded.to_dict()
        except ExportError as exc:  # the encoder is usable without it: say so, keep training's work
            drop_decoder(run.out)
            metrics["decoder_export"] = {"error": str(exc)}
            run.log(f"note: no decoder in the bundle (reconstruction scores need one): {exc}")
            bundle = Bundle.load(run.out)
        return bundle, report

    def result(
        self, run: TrainingRun, bundle: Bundle | None, metrics: dict[str, Any]
    ) -> EncoderResult:
        return EncoderResult(
            bundle, metrics, run.run_dir, run.history, self.model.eval(), self.parts,
            self.normalization, run.finished, run.is_main,
        )  # fmt: skip


class LatentDecoder(torch.nn.Module):
    """The decoder as exported: latent (B, M) → normalised fields (B, C, H, W), the space of the
    encoder's input (the model's input adapter crops or resamples back to the member shape).

    The same computation as ``ConvAutoencoder.decode``, but reshaping with ``-1`` for the batch:
    ``decode``'s ``view(len(z), ...)`` makes torch.export fix the batch size of the graph."""

    def __init__(self, model: ConvAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        model = self.model
        features = model.from_latent(latent).reshape(
            -1, model.bottleneck_channels, BOTTLENECK, BOTTLENECK
        )
        return model.adapter.from_working(model.to_fields(model.decoder(features)))


def export_decoder(
    folder: str | os.PathLike,
    model: ConvAutoencoder,
    real_inputs: torch.Tensor,
    *,
    seed: int = 0,
) -> tuple[Bundle, ExportReport]:
    """Export ``model``'s decoder as the bundle's ``decoder`` (``latent`` → ``fields``), verified
    against torch on the latents of ``real_inputs`` (normalised fields) and on random latents.
    The bundle in ``folder`` must hold the encoder exported from the same ``model``: the
    decoder's entry records that encoder's SHA-256 (``encoder_sha256``), so that a decoder left
    from an earlier encoder is recognised instead of used."""
    from sense_core.bundle import add_model, read_manifest
    from sense_training.export import export_onnx, scratch_folder

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or "encoder" not in manifest.get("models", {}):
        raise SenseError(f"{folder}: the bundle has no encoder to export a decoder for")
    model = model.cpu().eval()
    with torch.no_grad():
        latents = model.encode(torch.as_tensor(real_inputs, dtype=torch.float32))[0]
    with scratch_folder(folder, f"{DECODER_ROLE}-export") as tmp:
        path = Path(tmp) / f"{DECODER_ROLE}.onnx"
        try:
            report = export_onnx(
                LatentDecoder(model),
                latents[:2],
                path,
                OUTPUT_NAME,
                INPUT_NAME,
                real_inputs=latents,
                seed=seed,
            )
        except ExportError:
            raise
        except Exception as exc:  # onnxruntime's own errors in the parity check
            raise ExportError(f"{folder / 'decoder.onnx'}: ONNX export failed: {exc}") from exc
        details = {
            "architecture": f"conv-{model.config.arch} decoder",
            "latent_dim": model.latent_dim,
            "input": OUTPUT_NAME,
            "output": "normalised fields",
            "encoder_sha256": manifest["models"]["encoder"]["sha256"],
            "exporter": report.exporter,
            "parity_max_abs_diff": max(report.max_abs_diff_random, report.max_abs_diff_real or 0.0),
        }
        bundle = add_model(
            folder,
            DECODER_ROLE,
            path,
            manifest,
            input_name=OUTPUT_NAME,
            output_name=INPUT_NAME,
            opset=report.opset,
            details=details,
        )
    return bundle, report


def drop_decoder(folder: str | os.PathLike) -> None:
    """Remove the bundle's decoder (its sense.json entry, then the file), if it has one."""
    from sense_core.bundle import MANIFEST, manifest_text, read_manifest
    from sense_core.io.atomic import atomic_write_text

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or DECODER_ROLE not in manifest.get("models", {}):
        return
    entry = manifest["models"].pop(DECODER_ROLE)
    atomic_write_text(folder / MANIFEST, manifest_text(manifest))
    if entry.get("file") == f"{DECODER_ROLE}.onnx":  # the name add_model gives it
        (folder / f"{DECODER_ROLE}.onnx").unlink(missing_ok=True)


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
    metrics. ``resume``, ``overwrite`` and ``stop_after`` follow
    :func:`sense_training.loop.run_training` (resume uses the configuration saved with the
    checkpoint). ``command`` is recorded in the bundle (default ``sys.argv``). Under
    ``torchrun`` the ranks train DistributedDataParallel replicas; rank 0 alone writes.
    """
    return run_training(
        EncoderTrainer(),
        store,
        out,
        config,
        run_dir=run_dir,
        resume=resume,
        overwrite=overwrite,
        export=export,
        command=command,
        stop_after=stop_after,
        log=log,
    )


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


def load_encoder_checkpoint(path: str | os.PathLike, which: str = "best") -> ConvAutoencoder:
    """The model of a run's checkpoint (``best`` or ``last`` epoch), in evaluation mode; reads
    the loop's checkpoints and those of earlier SENSE versions (flat configuration)."""
    if which not in SELECT_CHOICES:
        raise ValueError(f"which must be one of {SELECT_CHOICES}")
    state = load_checkpoint(path)
    config = EncoderConfig.from_dict(state["config"])
    if "trainer" in state:
        shape, best = state["data"]["member_shape"], state["best"]["weights"]
        last = state["trainer"]["model"]
    else:  # format 1: flat keys
        shape, best, last = state["input_shape"], state.get("best_model"), state["model"]
    model = build_autoencoder(AutoencoderConfig.from_model(config.model, shape))
    model.load_state_dict(best if which == "best" and best is not None else last)
    return model.eval()
