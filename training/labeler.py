"""Stage 1 of SENSE: an EfficientNetV2 labeler trained on the hand-labeled members.

Training (:func:`train_labeler`, a :class:`LabelerTrainer` run by :mod:`sense_training.loop`):

- the hand-labeled members are split train / validation / test
  (:func:`sense_core.ensemble.split_labeled`: stratified, deterministic by member id);
  normalisation statistics come from the training members (or from the bundle when it already
  has them, so that every model of a bundle sees the same inputs);
- a timm model (``pretrained=False``: nothing is downloaded) with ``in_chans`` = the members'
  channels and ``num_classes`` = the ensemble's classes, trained with AdamW, a per-step cosine
  learning rate after one warm-up epoch, a class-balanced loss (or sampler), optional
  physics-aware augmentation, seeded per epoch;
- with ``consistency`` > 0, FixMatch (Sohn et al. 2020, "FixMatch: simplifying semi-supervised
  learning with consistency and confidence", NeurIPS): each step also takes a batch of the
  members without a hand label; the labeler's class for their weakly augmented view (the
  ``augment`` symmetries), where its confidence reaches ``consistency_threshold``, is the target
  of a strongly augmented view (``strong_views``), weighted by ``consistency``; the share of
  such members is recorded per epoch (``train_confident_share``);
- the selection value is the validation loss: the loop keeps the best epoch's weights and stops
  early after ``run.patience`` epochs without a better one; the test split is evaluated once,
  at the end;
- checkpoints, resume (the same weights as an uninterrupted run with the same seed, on the same
  device), ``torchrun`` data parallelism and the export into the bundle are the loop's (see
  :mod:`sense_training.loop`);
- outputs: ``metrics.json`` (accuracy, balanced accuracy, per-class precision/recall,
  confusion matrices), ``confusion_matrix.png``, ``training_curves.png``, ``history.json``, and
  the model exported to ONNX into the bundle (``labeler.onnx`` + ``sense.json`` with the
  architecture, exporter, opset, parity figures, command line, configuration, metrics and
  library versions).

Pseudo-labelling runs the exported labeler on the core runtime: :mod:`sense_core.pseudo_labels`.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sense_core.bundle import Bundle
from sense_core.ensemble import MemberStore, Split, split_labeled
from sense_core.errors import SenseError
from sense_training.common import History, training_versions
from sense_training.config import DEFAULT_LABELER_ARCHITECTURE, LabelerConfig
from sense_training.data import (
    Augmentation,
    EnsembleDataset,
    InstanceViews,
    class_weights,
    make_loader,
    set_epoch,
)
from sense_training.distributed import mean_over_ranks, wrap_model
from sense_training.export import ExportReport
from sense_training.loop import (
    Trainer,
    TrainingRun,
    bundle_normalization,
    export_to_bundle,
    run_training,
)

ROLE = "labeler"
DEFAULT_ARCHITECTURE = DEFAULT_LABELER_ARCHITECTURE
INPUT_NAME = "fields"
OUTPUT_NAME = "logits"
RUN_FOLDER = "labeler_run"


# --------------------------------------------------------------------------- model
def build_labeler(
    architecture: str, in_chans: int, num_classes: int, drop_rate: float = 0.2
) -> torch.nn.Module:
    """A timm classifier, randomly initialised (``pretrained=False``: no hub, no download).

    Any timm model name works; the EfficientNetV2 family is ``timm.list_models("*efficientnetv2*")``
    (``tf_efficientnetv2_b0``: 5.9 M parameters, the default; ``efficientnetv2_rw_t``: 12.6 M).
    """
    import timm

    if not timm.is_model(architecture):
        variants = ", ".join(timm.list_models("*efficientnetv2*"))
        raise SenseError(f"unknown timm architecture {architecture!r}; EfficientNetV2: {variants}")
    model = timm.create_model(
        architecture,
        pretrained=False,
        in_chans=int(in_chans),
        num_classes=int(num_classes),
        drop_rate=float(drop_rate),
    )
    # timm's default head init gives logits with a std of ~9 for few classes (initial loss ~7
    # instead of ln K) and unstable first epochs from scratch; a zero head starts at ln K.
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    return model


def learning_rate_at(
    step: int, total_steps: int, warmup_steps: int, config: LabelerConfig
) -> float:
    """Linear warm-up to ``learning_rate``, then a cosine down to ``learning_rate * min_lr_ratio``.

    A pure function of the step (no scheduler state), so resumed runs follow the same curve.
    """
    base = config.run.learning_rate
    floor = base * config.min_lr_ratio
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def recalibrate_batch_norm(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, limit: int
) -> int:
    """Replace every batch-norm layer's running statistics by their exact average over (up to
    ``limit``) members of ``loader``, with the current weights; return the members used.

    The running averages (momentum 0.1) lag behind the weights by tens of steps; with the few
    steps per epoch of a small labeled set, evaluation-mode outputs are then far from the
    training-mode ones and validation accuracy sits at chance while the training loss falls.
    Recalibrating ("precise BN") costs one forward pass over ``limit`` members.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or limit <= 0:
        return 0
    model.eval()
    momenta = []
    for norm in norms:
        momenta.append(norm.momentum)
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
        norm.train()
    used = 0
    try:
        for batch, _, _ in loader:
            batch = batch[: limit - used]
            if len(batch) < 2 and used:
                break
            model(batch.to(device))
            used += len(batch)
            if used >= limit:
                break
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return used


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels and store indices of every sample of ``loader`` (model in eval mode)."""
    model.eval()
    logits, labels, indices = [], [], []
    for batch, batch_labels, batch_indices in loader:
        logits.append(model(batch.to(device)).float().cpu().numpy())
        labels.append(batch_labels.numpy())
        indices.append(batch_indices.numpy())
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(indices)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` against ``labels`` (unweighted)."""
    if len(labels) == 0:
        return float("nan")
    from sense_core.inference import softmax

    probabilities = softmax(np.asarray(logits, dtype=np.float64))
    log_probs = np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-300, None))
    return float(-log_probs.mean())


def classification_metrics(
    labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class precision/recall/support and the confusion matrix
    (rows: true class, columns: predicted class)."""
    k = len(class_names)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    diagonal = np.diag(confusion)
    per_class = {}
    for i, name in enumerate(class_names):
        per_class[name] = {
            "precision": float(diagonal[i] / predicted_count[i]) if predicted_count[i] else None,
            "recall": float(diagonal[i] / support[i]) if support[i] else None,
            "support": int(support[i]),
        }
    recalls = [diagonal[i] / support[i] for i in range(k) if support[i]]
    return {
        "members": int(len(labels)),
        "accuracy": float(diagonal.sum() / len(labels)) if len(labels) else None,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "errors": int(len(labels) - diagonal.sum()),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str
) -> Path:
    """Confusion matrix PNG (counts, rows normalised for the colour), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sense_core.io.atomic import atomic_path

    matrix = np.asarray(confusion, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 1.2 + 0.7 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size + 0.8))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{int(count)}", ha="center", va="center",
                color="white" if share[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- training
@dataclass
class LabelerResult:
    """What :func:`train_labeler` produced."""

    bundle: Bundle | None  # None when stopped by ``stop_after``
    metrics: dict[str, Any]
    run_dir: Path
    history: History
    completed: bool  # False when stopped by ``stop_after`` (resume later)
    is_main: bool = True  # False on the other ranks of a torchrun run (they write nothing)


def _data_fingerprint(store: MemberStore, split: Split) -> dict[str, Any]:
    """Which members a run trains on, to refuse resuming with other data."""
    import hashlib

    digest = hashlib.sha256()
    for part in ("train", "validation", "test"):
        for index in getattr(split, part):
            digest.update(f"{part}:{store.member_ids[index]}:{store.labels[index]}\n".encode())
    return {
        "members": len(store),
        "member_shape": list(store.member_shape),
        "split_sha256": digest.hexdigest(),
    }


class LabelerTrainer(Trainer):
    """The labeler's hooks for :func:`sense_training.loop.run_training`."""

    role = ROLE
    config_type = LabelerConfig
    run_folder = RUN_FOLDER
    curves_file = "training_curves.png"
    selection_name = "validation loss"

    def prepare(self, run: TrainingRun) -> dict[str, Any]:
        split = run.config.split
        self.split = split_labeled(run.store, split.fractions, split.split_seed)
        self.class_names = tuple(run.store.class_names)
        return _data_fingerprint(run.store, self.split)

    def build(self, run: TrainingRun) -> None:
        store, config, device = run.store, run.config, run.device
        self.normalization = bundle_normalization(run.manifest, store, self.split.train)
        self.augmentation = Augmentation.parse(config.augment, config.vector_pairs)
        train_set = EnsembleDataset(
            store,
            self.split.train,
            self.normalization,
            augmentation=self.augmentation,
            seed=config.run.seed,
        )
        self.eval_loaders = {
            name: make_loader(
                EnsembleDataset(store, getattr(self.split, name), self.normalization),
                config.run.eval_batch_size,
            )
            for name in ("train", "validation", "test")
        }
        self.train_loader = make_loader(
            train_set,
            config.run.batch_size,
            shuffle=True,
            balanced=config.balance == "sampler",
            seed=config.run.seed,
            context=run.context,
        )
        classes = len(self.class_names)
        self.model = build_labeler(
            config.architecture, store.member_shape[0], classes, config.drop_rate
        ).to(device)
        self.trained = wrap_model(self.model, run.context)  # DDP on several ranks
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.run.learning_rate,
            weight_decay=config.run.weight_decay,
        )
        weights = class_weights(train_set.labels, classes) if config.balance == "loss" else None
        self.loss_fn = torch.nn.CrossEntropyLoss(
            weight=None if weights is None else weights.to(device),
            label_smoothing=config.label_smoothing,
        )
        self.unlabeled_loader = None
        if config.consistency > 0:
            self.strong_views = InstanceViews.parse(config.strong_views)
            self.strong_views.check(store.member_shape)
            unlabeled = np.flatnonzero(~store.labeled_mask)
            if len(unlabeled) == 0:
                raise SenseError(
                    "the consistency term needs members without a hand label; every member of "
                    f"{len(store)} has one (use --consistency 0)"
                )
            weak = EnsembleDataset(
                store, unlabeled, self.normalization, augmentation=self.augmentation,
                seed=config.run.seed + 1,
            )  # fmt: skip
            self.unlabeled_loader = make_loader(
                weak, config.run.batch_size, shuffle=True, seed=config.run.seed + 1,
                context=run.context,
            )  # fmt: skip
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = self.steps_per_epoch * config.run.epochs
        self.warmup_steps = min(self.total_steps, self.steps_per_epoch * config.warmup_epochs)

    def train_one_epoch(self, run: TrainingRun, epoch: int) -> dict[str, float]:
        set_epoch(self.train_loader, epoch)
        self.trained.train()
        total_loss, correct, seen = 0.0, 0, 0
        confident, unlabeled_seen = 0, 0
        unlabeled = self._unlabeled_batches(epoch)
        bar = self._progress_bar(run, epoch)
        for step_in_epoch, (batch, labels, _) in enumerate(self.train_loader):
            step = epoch * self.steps_per_epoch + step_in_epoch
            rate = learning_rate_at(step, self.total_steps, self.warmup_steps, run.config)
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            batch, labels = batch.to(run.device), labels.to(run.device)
            logits = self.trained(batch)
            loss = self.loss_fn(logits, labels)
            if unlabeled is not None:
                term, mask = self._consistency(run, next(unlabeled), epoch)
                loss = loss + run.config.consistency * term
                confident += int(mask.sum())
                unlabeled_seen += len(mask)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total_loss += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        if bar is not None:
            bar.close()
        total_loss, correct, seen, confident, unlabeled_seen = mean_over_ranks(
            [total_loss, correct, seen, confident, unlabeled_seen], run.context
        )
        record = {
            "train_loss": total_loss / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if unlabeled is not None:
            record["train_confident_share"] = confident / max(unlabeled_seen, 1)
        return record

    def _unlabeled_batches(self, epoch: int):
        """Endless batches of the members without a hand label (weak views), or None."""
        if self.unlabeled_loader is None:
            return None

        def cycle():
            for turn in itertools.count():  # seeded per (epoch, pass over the unlabeled members)
                set_epoch(self.unlabeled_loader, epoch * 1000 + turn)
                yield from self.unlabeled_loader

        return cycle()

    def _consistency(self, run: TrainingRun, batch, epoch: int):
        """FixMatch's term for one batch of weak views: cross-entropy of the strong views
        against the weak views' confident classes (mean over the batch), and the mask."""
        weak, _, index = batch
        weak = weak.to(run.device)
        with torch.no_grad():
            probabilities = torch.softmax(self.trained(weak), dim=1)
        confidence, target = probabilities.max(dim=1)
        mask = confidence >= run.config.consistency_threshold
        strong = self.strong_views.batch(weak, index, run.config.run.seed, epoch)
        losses = torch.nn.functional.cross_entropy(self.trained(strong), target, reduction="none")
        return (losses * mask).mean(), mask

    def _progress_bar(self, run: TrainingRun, epoch: int):
        if not run.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{run.config.run.epochs}",
                    unit="batch", leave=False)  # fmt: skip

    def validate(self, run: TrainingRun, epoch: int) -> tuple[dict[str, float], float | None]:
        limit = run.config.bn_recalibration_members
        recalibrate_batch_norm(self.model, self.eval_loaders["train"], run.device, limit)
        logits, labels, _ = predict(self.model, self.eval_loaders["validation"], run.device)
        loss = cross_entropy(logits, labels)
        accuracy = float(np.mean(logits.argmax(1) == labels)) if len(labels) else 0.0
        return {"val_loss": loss, "val_accuracy": accuracy}, (loss if len(labels) else None)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def epoch_line(
        self, run: TrainingRun, epoch: int, record: Mapping[str, float], improved: bool
    ) -> str:
        share = record.get("train_confident_share")
        confident = "" if share is None else f" confident unlabeled {share:.2f}"
        return (
            f"epoch {epoch + 1}/{run.config.run.epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}{confident} | val loss {record['val_loss']:.4f} "
            f"acc {record['val_accuracy']:.4f}{' *' if improved else ''} | "
            f"{record['seconds']:.1f} s"
        )

    def release(self) -> None:
        del self.trained, self.train_loader  # the DDP wrapper holds the process group

    def select_weights(self, run: TrainingRun) -> None:
        if run.best_weights is not None:
            self.model.load_state_dict(run.best_weights)
        self.model.eval()

    def curves(self, run: TrainingRun) -> tuple[str, int | None, tuple[str, ...]]:
        title = f"{run.config.architecture} labeler (best epoch {run.best_epoch + 1})"
        return title, run.best_epoch, ("epoch", "seconds")

    def finish(self, run: TrainingRun) -> tuple[Bundle | None, dict[str, Any]]:
        metrics = self._metrics(run)
        bundle = None
        if run.export:
            bundle, report = self._export(run, metrics)
            metrics["export"] = report.to_dict()
        test_part = "test" if len(self.split.test) else "validation"
        scores = metrics[test_part]
        if scores["accuracy"] is not None:
            plot_confusion_matrix(
                scores["confusion_matrix"],
                self.class_names,
                run.run_dir / "confusion_matrix.png",
                f"labeler, {test_part} members: accuracy {scores['accuracy']:.3f}",
            )
        return bundle, metrics

    def _metrics(self, run: TrainingRun) -> dict[str, Any]:
        """The finished run's scores on every part (evaluated once) and its record."""
        evaluations = {}
        for name, loader in self.eval_loaders.items():
            logits, labels, _ = predict(self.model, loader, run.device)
            # a part can be empty (e.g. no test member when a class has 3 hand labels)
            predicted = logits.argmax(1) if len(labels) else np.zeros(0, np.int64)
            evaluations[name] = classification_metrics(labels, predicted, self.class_names)
            evaluations[name]["loss"] = cross_entropy(logits, labels) if len(labels) else None
        store, classes = run.store, len(self.class_names)
        counts = np.bincount(store.labels[store.labeled_mask], minlength=classes)
        return {
            "architecture": run.config.architecture,
            "parameters": int(sum(p.numel() for p in self.model.parameters())),
            "class_names": list(self.class_names),
            "chance_accuracy": 1.0 / classes,
            "majority_accuracy": float(counts.max() / counts.sum()),
            "split": run.split_record(self.split),
            **evaluations,
            "best_epoch": run.best_epoch + 1,
            "epochs_run": len(run.history),
            "stopped_early": run.stopped_early,
            "train_seconds": round(run.train_seconds, 2),
            "seconds_per_epoch": round(run.train_seconds / max(len(run.history), 1), 2),
            "augmentation": self.augmentation.to_dict(),
            "seeding": run.seeding,
            "device": run.device_record(),
            "distributed": run.context.describe(),
            "versions": training_versions(),
        }

    def _export(self, run: TrainingRun, metrics: Mapping[str, Any]) -> tuple[Bundle, ExportReport]:
        part = "validation" if len(self.split.validation) else "train"
        real_inputs = next(iter(self.eval_loaders[part]))[0][:64]

        def details(report: ExportReport) -> dict[str, Any]:
            return {
                "architecture": run.config.architecture,
                "framework": "timm",
                "parameters": metrics["parameters"],
                "num_classes": len(self.class_names),
                "output": "logits (apply softmax for class probabilities)",
                "exporter": report.exporter,
                "dynamic_batch": report.dynamic_batch,
                "parity": {
                    "max_abs_diff_real": report.max_abs_diff_real,
                    "max_abs_diff_random": report.max_abs_diff_random,
                    "torch_float32_error_random": report.torch_float32_error_random,
                    "real_inputs": report.real_inputs,
                },
            }

        return export_to_bundle(
            run,
            self.model,
            torch.zeros((1, *run.store.member_shape)),
            real_inputs,
            self.normalization,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            details=details,
            metrics={k: metrics[k] for k in ("validation", "test", "best_epoch", "epochs_run")},
            split=metrics["split"],
        )

    def result(
        self, run: TrainingRun, bundle: Bundle | None, metrics: dict[str, Any]
    ) -> LabelerResult:
        return LabelerResult(bundle, metrics, run.run_dir, run.history, run.finished, run.is_main)


def train_labeler(
    store: MemberStore,
    out: str | os.PathLike,
    config: LabelerConfig | None = None,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
    log=print,
) -> LabelerResult:
    """Train a labeler on ``store``'s hand labels and write it into the bundle folder ``out``.

    ``run_dir`` (default ``out/labeler_run``) receives the checkpoint, metrics and plots.
    ``resume``, ``overwrite`` and ``stop_after`` follow :func:`sense_training.loop.run_training`
    (resume uses the configuration saved with the checkpoint). ``command`` is recorded in the
    bundle (default ``sys.argv``). ``progress``: a tqdm bar per epoch (default: when stderr is a
    terminal). ``log`` receives one line per epoch.
    """
    return run_training(
        LabelerTrainer(),
        store,
        out,
        config,
        run_dir=run_dir,
        resume=resume,
        overwrite=overwrite,
        command=command,
        progress=sys.stderr.isatty() if progress is None else progress,
        stop_after=stop_after,
        log=log,
    )
