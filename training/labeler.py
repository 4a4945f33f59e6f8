"""Stage 1 of SENSE: an EfficientNetV2 labeler trained on the hand-labeled members, and
pseudo-labels with confidence for the others.

Training (:func:`train_labeler`):

- the hand-labeled members are split train / validation / test
  (:func:`sense_core.ensemble.split_labeled`: stratified, deterministic by member id);
  normalisation statistics come from the training members (or from the bundle when it already
  has them, so that every model of a bundle sees the same inputs);
- a timm model (``pretrained=False``: nothing is downloaded) with ``in_chans`` = the members'
  channels and ``num_classes`` = the ensemble's classes, trained with AdamW, a per-step cosine
  learning rate after one warm-up epoch, a class-balanced loss (or sampler), optional
  physics-aware augmentation, seeded per epoch;
- early stopping on the validation loss (the best epoch's weights are kept); the test split is
  evaluated once, at the end;
- a checkpoint after every epoch (``<work dir>/checkpoint.pt``): ``resume=True`` continues a run
  and ends with the same weights as an uninterrupted run with the same seed (on the same device);
- under ``torchrun --nproc_per_node K`` (:mod:`sense_training.distributed`) each process trains
  a DistributedDataParallel replica on its share of every epoch's batches; every rank scores the
  validation part (the same weights give the same decisions), rank 0 alone checkpoints, exports
  and writes;
- outputs: ``metrics.json`` (accuracy, balanced accuracy, per-class precision/recall,
  confusion matrices), ``confusion_matrix.png``, ``training_curves.png``, and the model exported
  to ONNX into the bundle (``labeler.onnx`` + ``sense.json`` with the architecture, exporter,
  opset, parity figures, command line, configuration, metrics and library versions).

Pseudo-labelling (:func:`pseudo_label`, :func:`pseudo_labeled_store`) runs the bundle's ONNX
labeler with onnxruntime over every member; see docs/labeler.md for the output contract.
"""

from __future__ import annotations

import json
import math
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
    LABEL_SOURCE_KEY,
    PRESET_SPLIT_KEY,
    UNLABELED,
    MemberStore,
    NormalizationStats,
    Split,
    manual_mask,
    split_labeled,
)
from sense_core.errors import EnsembleError, SenseError
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
from sense_training.data import (
    Augmentation,
    EnsembleDataset,
    class_weights,
    make_loader,
    set_epoch,
)
from sense_training.distributed import (
    barrier,
    broadcast_flag,
    device_for,
    init_distributed,
    mean_over_ranks,
    shutdown,
    wrap_model,
)
from sense_training.export import export_onnx

ROLE = "labeler"
DEFAULT_ARCHITECTURE = "tf_efficientnetv2_b0"
INPUT_NAME = "fields"
OUTPUT_NAME = "logits"
RUN_FOLDER = "labeler_run"
CHECKPOINT = "checkpoint.pt"
BALANCE_CHOICES = ("loss", "sampler", "none")
# Metadata written by pseudo-labelling (see pseudo_labeled_store), next to LABEL_SOURCE_KEY.
CONFIDENCE_KEY = "confidence"
PSEUDO_LABEL_KEY = "pseudo_label"
PSEUDO_CONFIDENCE_KEY = "pseudo_confidence"
NO_SPLIT = "none"


# --------------------------------------------------------------------------- configuration
@dataclass
class LabelerConfig:
    """Everything that decides a labeler training run (stored in checkpoints and bundles)."""

    architecture: str = DEFAULT_ARCHITECTURE
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    min_lr_ratio: float = 0.01  # the cosine ends at learning_rate * min_lr_ratio
    drop_rate: float = 0.2  # dropout before the classifier
    label_smoothing: float = 0.0
    patience: int = 6  # epochs without a better validation loss before stopping; 0 = never
    balance: str = "loss"  # class balance: weighted loss, balanced sampler, or none
    augment: str = "none"  # comma-separated hflip, vflip, rot90 (see sense_training.data)
    vector_pairs: list[list[int]] = field(default_factory=list)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    seed: int = 0
    # One thread: on these shared 2-core machines a 2-thread train step took 8-22 s under load
    # against 0.8-1.1 s with one thread (OpenMP threads wait for each other); see docs/labeler.md.
    threads: int | None = 1
    device: str = "auto"
    eval_batch_size: int = 128
    # Recompute batch-norm statistics on training members after every epoch (see
    # recalibrate_batch_norm); 0 turns it off.
    bn_recalibration_members: int = 1024

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)  # type: ignore[assignment]
        self.vector_pairs = [[int(a), int(b)] for a, b in self.vector_pairs]
        if self.balance not in BALANCE_CHOICES:
            raise SenseError(f"balance must be one of {BALANCE_CHOICES}, got {self.balance!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise SenseError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or not 0 <= self.drop_rate < 1:
            raise SenseError("learning rate must be > 0, weight decay >= 0, drop rate in [0, 1)")
        Augmentation.parse(self.augment)  # fail early on a typo

    def augmentation(self) -> Augmentation:
        return Augmentation.parse(self.augment, self.vector_pairs)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fractions"] = list(self.fractions)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelerConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    base, floor = config.learning_rate, config.learning_rate * config.min_lr_ratio
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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of ``logits`` against ``labels`` (unweighted)."""
    if len(labels) == 0:
        return float("nan")
    log_probs = np.log(np.clip(softmax(logits)[np.arange(len(labels)), labels], 1e-300, None))
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


def _bundle_inputs(
    out: Path, store: MemberStore, class_names: tuple[str, ...], overwrite: bool, resume: bool
) -> dict | None:
    """The existing manifest to extend (same input shape and classes), or None for a new one."""
    manifest = read_manifest(out)
    if manifest is None:
        return None
    existing = Bundle(out, manifest, verify_checksums=False)
    if existing.input_shape != tuple(store.member_shape):
        raise SenseError(
            f"{out}: the bundle holds models for members {existing.input_shape}, these are "
            f"{tuple(store.member_shape)}; write the labeler to a new bundle folder"
        )
    if existing.class_names and existing.class_names != class_names:
        raise SenseError(
            f"{out}: the bundle's classes {list(existing.class_names)} differ from the "
            f"ensemble's {list(class_names)}; write the labeler to a new bundle folder"
        )
    if ROLE in existing.models and not (overwrite or resume):
        raise SenseError(f"{out}: the bundle already has a labeler (pass overwrite to replace it)")
    return manifest


def _data_fingerprint(store: MemberStore, split: Split) -> dict[str, Any]:
    """Which members a run trains on, to refuse resuming with other data."""
    import hashlib

    digest = hashlib.sha256()
    for part in ("train", "validation", "test"):
        for index in getattr(split, part):
            digest.update(f"{part}:{store.member_ids[index]}:{store.labels[index]}\n".encode())
    return {"members": len(store), "split_sha256": digest.hexdigest()}


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
    ``resume`` continues from its checkpoint with the configuration saved there (``config`` is
    then ignored). ``stop_after`` ends this call after that many epochs (checkpoint written, no
    export; resume later). ``command`` is recorded in the bundle (default ``sys.argv``).
    ``progress``: a tqdm bar per epoch (default: when stderr is a terminal). ``log`` receives
    one line per epoch.
    """
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else out / RUN_FOLDER
    checkpoint_path = run_dir / CHECKPOINT
    command = list(sys.argv if command is None else command)
    if progress is None:
        progress = sys.stderr.isatty()

    state: dict[str, Any] | None = None
    if resume:
        state = load_checkpoint(checkpoint_path)
        config = LabelerConfig.from_dict(json.loads(state["config_json"]))
    elif checkpoint_path.exists() and not overwrite:
        raise SenseError(
            f"{run_dir}: a labeler run is there already; resume it or pass overwrite to start over"
        )
    config = config or LabelerConfig()

    class_names = tuple(store.class_names)
    split = split_labeled(store, config.fractions, config.split_seed)
    fingerprint = _data_fingerprint(store, split)
    if state is not None and json.loads(state["data_json"]) != fingerprint:
        raise SenseError(
            f"{checkpoint_path}: the checkpoint was trained on other members or labels than "
            f"{getattr(store, 'path', 'this ensemble')}; resume with the same data"
        )
    manifest = _bundle_inputs(out, store, class_names, overwrite, resume)

    seeding = seed_everything(config.seed)
    threads = configure_threads(config.threads)
    device = choose_device(config.device)
    context = init_distributed(device)
    device = device_for(device, context)
    if not context.is_main:
        log, progress = (lambda *_: None), False
    if manifest is not None:
        normalization = NormalizationStats.from_dict(manifest["normalization"])
    else:
        normalization = NormalizationStats.from_store(store, split.train)
    augmentation = config.augmentation()
    train_set = EnsembleDataset(
        store, split.train, normalization, augmentation=augmentation, seed=config.seed
    )
    eval_sets = {
        name: EnsembleDataset(store, getattr(split, name), normalization)
        for name in ("train", "validation", "test")
    }
    train_loader = make_loader(
        train_set,
        config.batch_size,
        shuffle=True,
        balanced=config.balance == "sampler",
        seed=config.seed,
        context=context,
    )
    eval_loaders = {
        name: make_loader(dataset, config.eval_batch_size) for name, dataset in eval_sets.items()
    }

    num_classes = len(class_names)
    model = build_labeler(config.architecture, store.member_shape[0], num_classes, config.drop_rate)
    model.to(device)
    trained = wrap_model(model, context)  # DDP on several ranks; the model itself on one
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    weights = class_weights(train_set.labels, num_classes) if config.balance == "loss" else None
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device),
        label_smoothing=config.label_smoothing,
    )
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = min(total_steps, steps_per_epoch * config.warmup_epochs)

    history = History()
    start_epoch, best_loss, best_epoch, stale, train_seconds = 0, math.inf, -1, 0, 0.0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finished = False
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best_state = state["best_model"]
        history = History.from_dict(json.loads(state["history_json"]))
        start_epoch = int(state["epoch"]) + 1
        best_loss, best_epoch = float(state["best_loss"]), int(state["best_epoch"])
        stale, train_seconds = int(state["stale"]), float(state["train_seconds"])
        finished = bool(state["finished"])
        log(f"resuming {checkpoint_path} after epoch {start_epoch} of {config.epochs}")
    run_dir.mkdir(parents=True, exist_ok=True)

    epochs_now = 0
    epoch = start_epoch
    while not finished and epoch < config.epochs:
        if stop_after is not None and epochs_now >= stop_after:
            break
        started = time.perf_counter()
        set_epoch(train_loader, epoch)
        torch.manual_seed(epoch_seed(config.seed, epoch, "torch"))  # dropout draws
        trained.train()
        total_loss, correct, seen = 0.0, 0, 0
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="batch", leave=False)  # fmt: skip
        for step_in_epoch, (batch, labels, _) in enumerate(train_loader):
            step = epoch * steps_per_epoch + step_in_epoch
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, total_steps, warmup_steps, config)
            batch, labels = batch.to(device), labels.to(device)
            logits = trained(batch)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        if bar is not None:
            bar.close()
        total_loss, correct, seen = mean_over_ranks([total_loss, correct, seen], context)

        recalibrate_batch_norm(
            model, eval_loaders["train"], device, config.bn_recalibration_members
        )
        val_logits, val_labels, _ = predict(model, eval_loaders["validation"], device)
        val_loss = cross_entropy(val_logits, val_labels)
        val_accuracy = float(np.mean(val_logits.argmax(1) == val_labels)) if len(val_labels) else 0
        seconds = time.perf_counter() - started
        train_seconds += seconds
        history.append(
            epoch,
            train_loss=total_loss / max(seen, 1),
            train_accuracy=correct / max(seen, 1),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=optimizer.param_groups[0]["lr"],
            seconds=seconds,
        )
        improved = not len(val_labels) or val_loss < best_loss - 1e-4
        if improved:
            best_loss, best_epoch, stale = (val_loss if len(val_labels) else 0.0), epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        log(
            f"epoch {epoch + 1}/{config.epochs}: train loss {total_loss / max(seen, 1):.4f} "
            f"acc {correct / max(seen, 1):.4f} | val loss {val_loss:.4f} acc {val_accuracy:.4f}"
            f"{' *' if improved else ''} | {seconds:.1f} s"
        )
        finished = epoch + 1 >= config.epochs or (config.patience > 0 and stale >= config.patience)
        finished = broadcast_flag(finished, context)  # rank 0 decides for all
        if finished and epoch + 1 < config.epochs:
            log(f"early stop: no better validation loss for {stale} epochs")
        if context.is_main:
            save_checkpoint(
                checkpoint_path,
                {
                    "role": ROLE,
                    "config_json": json.dumps(config.to_dict()),
                    "data_json": json.dumps(fingerprint),
                    "history_json": json.dumps(history.to_dict()),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_model": best_state,
                    "epoch": epoch,
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "stale": stale,
                    "train_seconds": train_seconds,
                    "finished": finished,
                },
            )
        barrier(context)
        epoch += 1
        epochs_now += 1

    del trained, train_loader  # the DDP wrapper holds the process group (see shutdown)
    if not (finished and context.is_main):
        shutdown(context)
        return LabelerResult(None, {}, run_dir, history, finished, is_main=context.is_main)

    # ------------------------------------------------------------- evaluation, once
    model.load_state_dict(best_state)
    model.eval()
    evaluations = {}
    for name, loader in eval_loaders.items():
        logits, labels, _ = predict(model, loader, device)
        evaluations[name] = classification_metrics(labels, logits.argmax(1), class_names)
        evaluations[name]["loss"] = cross_entropy(logits, labels) if len(labels) else None
    counts = np.bincount(store.labels[store.labeled_mask], minlength=num_classes)
    stopped_early = len(history) < config.epochs
    metrics: dict[str, Any] = {
        "architecture": config.architecture,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "class_names": list(class_names),
        "chance_accuracy": 1.0 / num_classes,
        "majority_accuracy": float(counts.max() / counts.sum()),
        "split": {
            "seed": config.split_seed,
            "fractions": list(config.fractions),
            **{part: int(len(getattr(split, part))) for part in ("train", "validation", "test")},
            "preset": PRESET_SPLIT_KEY in store.metadata,
        },
        **evaluations,
        "best_epoch": best_epoch + 1,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(train_seconds / max(len(history), 1), 2),
        "augmentation": augmentation.to_dict(),
        "seeding": seeding,
        "device": {**describe_device(device), "torch_threads": threads},
        "distributed": context.describe(),
        "versions": training_versions(),
    }

    # ------------------------------------------------------------- export and bundle
    onnx_tmp = run_dir / "labeler.onnx"
    real_inputs = next(iter(eval_loaders["validation"]))[0] if len(split.validation) else None
    if real_inputs is None:
        real_inputs = next(iter(eval_loaders["train"]))[0]
    example = torch.zeros((1, *store.member_shape))
    report = export_onnx(
        model, example, onnx_tmp, INPUT_NAME, OUTPUT_NAME, real_inputs=real_inputs[:64]
    )
    metrics["export"] = report.to_dict()
    if manifest is None:
        manifest = new_manifest(tuple(store.member_shape), normalization, class_names)
    manifest.setdefault("software", {}).update(training_versions())
    bundle = add_model(
        out,
        ROLE,
        onnx_tmp,
        manifest,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        opset=report.opset,
        details={
            "architecture": config.architecture,
            "framework": "timm",
            "parameters": metrics["parameters"],
            "num_classes": num_classes,
            "output": "logits (apply softmax for class probabilities)",
            "exporter": report.exporter,
            "dynamic_batch": report.dynamic_batch,
            "parity": {
                "max_abs_diff_real": report.max_abs_diff_real,
                "max_abs_diff_random": report.max_abs_diff_random,
                "torch_float32_error_random": report.torch_float32_error_random,
                "real_inputs": report.real_inputs,
            },
        },
        training={
            "command": shlex.join(command),
            "argv": command,
            "config": config.to_dict(),
            "metrics": {k: metrics[k] for k in ("validation", "test", "best_epoch", "epochs_run")},
            "split": metrics["split"],
            "seeding": seeding,
            "device": metrics["device"],
            "train_seconds": metrics["train_seconds"],
            "versions": metrics["versions"],
            "data": {"source": str(getattr(store, "path", "")), **fingerprint},
        },
    )
    onnx_tmp.unlink(missing_ok=True)

    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    test_part = "test" if len(split.test) else "validation"
    accuracy = evaluations[test_part]["accuracy"]
    plot_confusion_matrix(
        evaluations[test_part]["confusion_matrix"],
        class_names,
        run_dir / "confusion_matrix.png",
        f"labeler, {test_part} members: accuracy {accuracy:.3f}",
    )
    plot_history(
        history,
        run_dir / "training_curves.png",
        title=f"{config.architecture} labeler (best epoch {best_epoch + 1})",
        marker_epoch=best_epoch,
    )
    shutdown(context)
    return LabelerResult(bundle, metrics, run_dir, history, completed=True)


# --------------------------------------------------------------------------- pseudo-labels
def onnx_session(path: str | os.PathLike, device: str = "auto"):
    """An onnxruntime session on CUDA when asked/available, else CPU; the provider really used
    is ``session.get_providers()[0]`` (onnxruntime falls back to CPU silently)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wants_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise SenseError("device 'cuda' was asked for but this onnxruntime has no CUDA provider")
    providers = (["CUDAExecutionProvider"] if wants_cuda else []) + ["CPUExecutionProvider"]
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise SenseError(
            "device 'cuda' was asked for but onnxruntime could not load CUDA "
            f"(providers in use: {session.get_providers()})"
        )
    return session


@dataclass
class PseudoLabels:
    """The labeler's verdict on every member, and the labels to use downstream.

    ``predicted``/``probability`` are the model's class and softmax confidence for every
    member. ``labels`` are the hand label where there is one, else the prediction when its
    confidence reaches ``threshold``, else -1; ``source`` says which (manual / pseudo / none).
    """

    predicted: np.ndarray
    probability: np.ndarray
    labels: np.ndarray
    source: np.ndarray
    manual: np.ndarray  # bool: hand-labeled
    threshold: float
    provider: str
    seconds: float

    @property
    def confidence(self) -> np.ndarray:
        """1.0 for hand labels, the softmax confidence otherwise."""
        return np.where(self.manual, 1.0, self.probability).astype(np.float32)

    def summary(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Counts per class and source, confidence quantiles, agreement with the hand labels."""
        pseudo = self.source == "pseudo"
        unlabeled = ~self.manual
        agreement = (
            float(np.mean(self.predicted[self.manual] == self.labels[self.manual]))
            if self.manual.any()
            else None
        )
        return {
            "members": int(len(self.labels)),
            "manual": int(self.manual.sum()),
            "pseudo": int(pseudo.sum()),
            "none": int((self.source == "none").sum()),
            "threshold": self.threshold,
            "pseudo_per_class": {
                name: int(np.sum(self.labels[pseudo] == i)) for i, name in enumerate(class_names)
            },
            "confidence_of_unlabeled": {
                q: float(np.quantile(self.probability[unlabeled], float(q)))
                for q in ("0.05", "0.25", "0.5", "0.75")
            }
            if unlabeled.any()
            else {},
            "agreement_with_manual_labels": agreement,
            "provider": self.provider,
            "seconds": round(self.seconds, 3),
        }


def pseudo_label(
    store: MemberStore,
    bundle: Bundle | str | os.PathLike,
    threshold: float = 0.0,
    *,
    batch_size: int = 256,
    device: str = "auto",
    progress: bool = False,
) -> PseudoLabels:
    """Run the bundle's labeler over every member of ``store`` (streamed in batches)."""
    from sense_core.progress import batches_with_progress

    if not 0.0 <= threshold <= 1.0:
        raise SenseError(f"confidence threshold must be in [0, 1], got {threshold}")
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    entry = bundle.model(ROLE)
    bundle.check_compatible(store)
    if store.class_names and tuple(store.class_names) != bundle.class_names:
        raise SenseError(
            f"{getattr(store, 'path', 'the ensemble')}: classes {list(store.class_names)} differ "
            f"from the bundle's {list(bundle.class_names)} ({bundle.folder})"
        )
    started = time.perf_counter()
    session = onnx_session(entry.path, device)
    provider = session.get_providers()[0]
    probabilities = np.empty((len(store), len(bundle.class_names)), dtype=np.float64)
    for indices, batch in batches_with_progress(store, batch_size, progress, "pseudo-labels"):
        normalised = bundle.normalization.apply(batch)
        (logits,) = session.run([entry.output_name], {entry.input_name: normalised})
        probabilities[indices] = softmax(logits)
    predicted = probabilities.argmax(axis=1)
    probability = probabilities.max(axis=1)
    manual = manual_mask(store)
    confident = probability >= threshold
    labels = np.where(manual, store.labels, np.where(confident, predicted, UNLABELED))
    source = np.where(manual, "manual", np.where(confident, "pseudo", "none"))
    return PseudoLabels(
        predicted=predicted.astype(np.int64),
        probability=probability.astype(np.float32),
        labels=labels.astype(np.int64),
        source=source.astype("<U6"),
        manual=manual,
        threshold=float(threshold),
        provider=provider,
        seconds=time.perf_counter() - started,
    )


class RelabeledStore(MemberStore):
    """``base``'s members (read from it on demand) with other labels, classes and metadata."""

    def __init__(
        self,
        base: MemberStore,
        labels: np.ndarray,
        class_names: Sequence[str],
        metadata: Mapping[str, np.ndarray],
    ) -> None:
        self.base = base
        self.path = getattr(base, "path", None)
        self.member_ids = tuple(base.member_ids)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = tuple(class_names)
        self.metadata = dict(metadata)

    @property
    def member_shape(self) -> tuple[int, int, int]:
        return self.base.member_shape

    def read_members(self, indices: Sequence[int]) -> np.ndarray:
        return self.base.read_members(indices)


def pseudo_labeled_store(
    store: MemberStore, result: PseudoLabels, bundle: Bundle | str | os.PathLike
) -> RelabeledStore:
    """``store`` with the pseudo-labels applied, ready for :func:`sense_core.io.write_ensemble`.

    Labels: manual where a hand label exists, else the pseudo-label (or -1 below the threshold).
    Metadata added (replacing earlier values): ``label_source`` (manual / pseudo / none),
    ``confidence`` (1.0 for manual), ``pseudo_label`` and ``pseudo_confidence`` (the model's class
    and softmax confidence for every member), and ``split``: the labeler's train / validation /
    test split of the hand-labeled members (same fractions and seed as its training, or the
    ensemble's preset split), ``train`` for pseudo-labeled members and ``none`` for the rest. A
    later :func:`split_labeled` therefore keeps validation and test purely hand-labeled, as the
    labeler saw them.
    """
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    manual_store = RelabeledStore(
        store,
        np.where(result.manual, store.labels, UNLABELED),
        bundle.class_names,
        store.metadata,
    )
    config = bundle.manifest.get("training", {}).get(ROLE, {}).get("config", {})
    parts = np.full(len(store), NO_SPLIT, dtype="<U10")
    parts[result.source == "pseudo"] = "train"
    try:
        split = split_labeled(
            manual_store,
            tuple(config.get("fractions", (0.7, 0.15, 0.15))),
            int(config.get("split_seed", 0)),
        )
    except EnsembleError:  # fewer than two hand-labeled classes: nothing to hold out
        parts[result.manual] = "train"
    else:
        for name in ("train", "validation", "test"):
            parts[getattr(split, name)] = name
    metadata = dict(store.metadata)
    metadata.update(
        {
            LABEL_SOURCE_KEY: result.source,
            CONFIDENCE_KEY: result.confidence,
            PSEUDO_LABEL_KEY: result.predicted,
            PSEUDO_CONFIDENCE_KEY: result.probability,
            PRESET_SPLIT_KEY: parts,
        }
    )
    return RelabeledStore(store, result.labels, bundle.class_names, metadata)
