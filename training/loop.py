"""The one training loop every SENSE trainer plugs into (shaped like timm's ``train.py``).

A trainer (:class:`Trainer`: the labeler, the encoder) implements the parts that are its own:
prepare its data (and say which data it is: a fingerprint), build its model and optimiser,
:meth:`~Trainer.train_one_epoch`, :meth:`~Trainer.validate` (which also returns the selection
value, lower is better), its state for checkpoints, and what it does with a finished run
(evaluation, export). :func:`run_training` owns the rest, the same for every trainer:

- **run folder** (default ``<bundle>/<trainer's folder>``) with ``checkpoint.pt`` after every
  epoch, ``history.json`` and the curves;
- **seeding** (:func:`~sense_training.common.seed_everything` once, then every epoch's torch
  draws from ``epoch_seed(seed, epoch)``, so a resumed run equals an uninterrupted one), CPU
  threads, device and, under ``torchrun``, DistributedDataParallel (rank 0 alone logs and writes);
- **one checkpoint format**: plain nested dicts (``role``, ``config`` = ``config.to_dict()``,
  ``data`` = the fingerprint, ``epoch``, ``history``, ``best`` = {epoch, value, weights},
  ``stale``, ``finished``, ``stopped_early``, ``train_seconds``, ``trainer`` = the trainer's state);
- **one resume rule**: ``resume`` continues the run folder's checkpoint with the configuration
  saved there (a configuration passed as well must be the same, threads aside); with no
  checkpoint there it starts a new run and says so; a checkpoint of other members or labels, of
  another configuration or of an older checkpoint format is refused with the reason; a finished
  run is not trained again (only its evaluation and export are redone). Without ``resume`` a
  run folder that holds a checkpoint is refused unless ``overwrite`` starts it over;
- **one early-stopping rule**: an epoch is *better* when its selection value is lower than the
  best so far by more than ``run.min_delta`` (always, when the trainer has no selection value);
  the best epoch's weights are kept, and training stops after ``run.patience`` epochs without a
  better one (0 = never);
- **one export step** (:func:`export_to_bundle`): ONNX export verified against torch and the
  bundle entry with the training record (command, resolved configuration, metrics, split,
  seeding, device, versions, data fingerprint).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sense_core.bundle import Bundle, add_model, new_manifest, read_manifest
from sense_core.ensemble import PRESET_SPLIT_KEY, MemberStore, NormalizationStats, Split
from sense_core.errors import SenseError
from sense_core.io.atomic import atomic_write_text
from sense_training.common import (
    CHECKPOINT_VERSION,
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
from sense_training.config import ConfigSection
from sense_training.distributed import (
    DistributedContext,
    barrier,
    broadcast_flag,
    device_for,
    init_distributed,
    launched_rank,
    shutdown,
)
from sense_training.export import (
    ExportReport,
    export_onnx,
    remove_stale_scratch,
    scratch_folder,
)

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
METRICS = "metrics.json"
# configuration fields that do not change what a run computes (a resume may change them)
RESUMABLE_CHANGES = frozenset({"threads"})


@dataclass
class TrainingRun:
    """What :func:`run_training` set up and tracks; handed to every hook of the trainer."""

    role: str
    config: Any
    store: MemberStore
    out: Path
    run_dir: Path
    command: list[str]
    log: Callable[..., None]
    progress: bool
    export: bool
    manifest: dict[str, Any] | None
    seeding: dict[str, Any]
    threads: int
    device: torch.device
    context: DistributedContext
    fingerprint: dict[str, Any] = field(default_factory=dict)
    history: History = field(default_factory=History)
    next_epoch: int = 0
    best_epoch: int = -1
    best_value: float = math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    stale: int = 0
    finished: bool = False
    stopped_early: bool = False
    train_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def last_epoch(self) -> int:
        """The last epoch trained (0-based; -1 before the first)."""
        return self.next_epoch - 1

    def unfinished_metrics(self) -> dict[str, Any]:
        """The metrics of a run stopped before its end (``stop_after``; resume it later)."""
        return {
            "completed": False,
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch + 1,
            "train_seconds": round(self.train_seconds, 2),
        }

    def device_record(self) -> dict[str, Any]:
        """The device and threads the run used (for metrics and bundles)."""
        return {**describe_device(self.device), "torch_threads": self.threads}

    def split_record(self, split: Split) -> dict[str, Any]:
        """The split's seed, fractions and part sizes (for metrics and bundles)."""
        return {
            "seed": self.config.split.split_seed,
            "fractions": list(self.config.split.fractions),
            **{part: int(len(getattr(split, part))) for part in ("train", "validation", "test")},
            "preset": PRESET_SPLIT_KEY in self.store.metadata,
        }


class Trainer:
    """The hooks a trainer implements for :func:`run_training` (subclass it)."""

    role: str = ""  # the bundle role: "labeler", "encoder"
    config_type: type[ConfigSection] = ConfigSection
    run_folder: str = ""  # default run folder inside the bundle folder
    curves_file: str = "training_curves.png"
    selection_name: str = "validation value"  # in log lines: "no better <name> for N epochs"

    def prepare(self, run: TrainingRun) -> dict[str, Any]:
        """Choose the members and labels; return the data fingerprint (resume refuses others)."""
        raise NotImplementedError

    def build(self, run: TrainingRun) -> None:
        """Datasets, loaders, model (seeded by the loop just before), optimiser."""
        raise NotImplementedError

    def train_one_epoch(self, run: TrainingRun, epoch: int) -> dict[str, float]:
        """Train one epoch; return its history entries."""
        raise NotImplementedError

    def validate(self, run: TrainingRun, epoch: int) -> tuple[dict[str, float], float | None]:
        """Score the epoch: history entries and the selection value (lower is better; None when
        there is nothing to select on: every epoch then counts as better)."""
        raise NotImplementedError

    def weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the weights that are scored (kept when an epoch is the best)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Model and optimiser states for the checkpoint."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (resume)."""
        raise NotImplementedError

    def epoch_line(
        self, run: TrainingRun, epoch: int, record: Mapping[str, float], improved: bool
    ) -> str:
        """The log line of an epoch."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop DistributedDataParallel wrappers and loaders (they hold the process group)."""

    def select_weights(self, run: TrainingRun) -> None:
        """Put the weights to evaluate and export into the model (default: the best epoch's)."""

    def selected_epoch(self, run: TrainingRun) -> int:
        """The epoch whose weights are exported (default: the best)."""
        return run.best_epoch

    def curves(self, run: TrainingRun) -> tuple[str, int | None, tuple[str, ...]]:
        """Title, marked epoch and entries left out of the curves plot."""
        return run.role, run.best_epoch, ("epoch", "seconds")

    def finish(self, run: TrainingRun) -> tuple[Bundle | None, dict[str, Any]]:
        """Evaluate a finished run and export it (rank 0 only); return the bundle and metrics."""
        raise NotImplementedError

    def result(self, run: TrainingRun, bundle: Bundle | None, metrics: dict[str, Any]) -> Any:
        """What the trainer's public function returns."""
        raise NotImplementedError


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """The log of the ranks other than 0: they print nothing."""


def run_training(
    trainer: Trainer,
    store: MemberStore,
    out: str | os.PathLike,
    config: ConfigSection | None,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    export: bool = True,
    command: Sequence[str] | None = None,
    progress: bool = False,
    stop_after: int | None = None,
    log: Callable[..., None] = print,
) -> Any:
    """Train ``trainer`` on ``store`` into the bundle folder ``out`` (see the module docstring).

    ``stop_after`` ends this call after that many epochs (checkpoint written, no evaluation or
    export; resume later). ``export=False`` trains and evaluates without writing the bundle.
    ``command`` is recorded in the bundle (default ``sys.argv``)."""
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else out / trainer.run_folder
    log = log if launched_rank() == 0 else _quiet
    try:
        state, config = _resume_state(trainer, run_dir / CHECKPOINT, config, resume, overwrite, log)
    except SenseError as exc:
        raise SenseError(f"{exc}{_fit_hint(out)}") from exc
    if export:
        manifest = bundle_manifest(out, store, trainer.role, overwrite, resume)
        remove_stale_scratch(out)  # of exports killed by SIGKILL
    else:
        manifest = read_manifest(out)
    if state is None and (run_dir / CHECKPOINT).is_file() and not overwrite:
        raise SenseError(
            f"{run_dir}: a {trainer.role} run is there already; resume it or pass overwrite to "
            "start over"
        )
    seeding = seed_everything(config.run.seed)
    threads = configure_threads(config.run.threads)
    device = choose_device(config.run.device)
    context = init_distributed(device)
    run = TrainingRun(
        trainer.role, config, store, out, run_dir,
        list(sys.argv if command is None else command), log, bool(progress and context.is_main),
        export, manifest, seeding, threads, device_for(device, context), context,
    )  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    run.fingerprint = trainer.prepare(run)
    if state is not None and state["data"] != run.fingerprint:
        raise SenseError(
            f"{run.checkpoint_path}: the checkpoint was made with other members or labels than "
            f"{getattr(store, 'path', None) or 'this ensemble'}; resume with the same data or "
            f"start over with overwrite{_fit_hint(out)}"
        )
    trainer.build(run)
    if state is not None:
        _restore(run, trainer, state)
    _train_epochs(run, trainer, stop_after)
    trainer.release()
    trainer.select_weights(run)
    bundle, metrics = None, {}
    if run.is_main:
        _write_history(run, trainer)
        bundle, metrics = trainer.finish(run) if run.finished else (None, run.unfinished_metrics())
        atomic_write_text(run_dir / METRICS, json.dumps(metrics, indent=2) + "\n")
    shutdown(context)
    return trainer.result(run, bundle, metrics)


def _fit_hint(out: Path) -> str:
    """For a refused resume in a bundle that `sense fit` writes: how to continue that fit (its
    encoder trains on the fit's pseudo-labels, which the plain ensemble does not have)."""
    from sense_training.pipeline import FIT_RUN, FIT_STATE, FitState, resume_command

    if not (out / FIT_RUN / FIT_STATE).is_file():
        return ""
    try:
        record = FitState.read(out) or {}
    except SenseError:
        return ""
    if record.get("finished"):
        return ""
    command = shlex.join(resume_command(record.get("command") or ["sense", "fit"]))
    return (
        f". This run belongs to an interrupted `sense fit` (its encoder trains on the fit's "
        f"pseudo-labels): continue it with: {command}"
    )


def _resume_state(
    trainer: Trainer,
    path: Path,
    config: ConfigSection | None,
    resume: bool,
    overwrite: bool,
    log: Callable[..., None],
) -> tuple[dict[str, Any] | None, Any]:
    """The checkpoint to continue (or None) and the configuration to run with."""
    if not resume or overwrite:
        return None, config if config is not None else trainer.config_type()
    if not path.is_file():
        log(f"resume: no checkpoint in {path.parent}; starting a new run")
        return None, config if config is not None else trainer.config_type()
    state = load_checkpoint(path)
    if int(state.get("format_version", 1)) < CHECKPOINT_VERSION or state.get("role") != (
        trainer.role
    ):
        raise SenseError(
            f"{path}: not a {trainer.role} checkpoint of this SENSE version; start the run over "
            "with overwrite"
        )
    saved = trainer.config_type.from_dict(state["config"])
    if config is not None:
        given, kept = config.flat(), saved.flat()
        changed = sorted(k for k in given if given[k] != kept[k] and k not in RESUMABLE_CHANGES)
        if changed:
            raise SenseError(
                f"{path}: the checkpoint was made with another configuration ("
                + ", ".join(f"{k} {kept[k]!r} -> {given[k]!r}" for k in changed)
                + "); resume with its configuration or start over with overwrite"
            )
        saved = saved.updated({k: given[k] for k in RESUMABLE_CHANGES if k in given})
    epochs = saved.run.epochs
    log(f"resuming {path} after epoch {int(state['epoch']) + 1} of {epochs}")
    return state, saved


def _restore(run: TrainingRun, trainer: Trainer, state: Mapping[str, Any]) -> None:
    trainer.load_state_dict(state["trainer"])
    run.history = History.from_dict(state["history"])
    run.next_epoch = int(state["epoch"]) + 1
    best = state["best"]
    run.best_epoch, run.best_value = int(best["epoch"]), float(best["value"])
    run.best_weights = best["weights"]
    run.stale, run.train_seconds = int(state["stale"]), float(state["train_seconds"])
    run.finished, run.stopped_early = bool(state["finished"]), bool(state["stopped_early"])


def _train_epochs(run: TrainingRun, trainer: Trainer, stop_after: int | None) -> None:
    """Epochs until the last, early stopping, or ``stop_after`` epochs in this call."""
    settings = run.config.run
    trained_now = 0
    while not run.finished and run.next_epoch < settings.epochs:
        if stop_after is not None and trained_now >= stop_after:
            break
        epoch, tick = run.next_epoch, time.perf_counter()
        torch.manual_seed(epoch_seed(settings.seed, epoch, "torch"))  # dropout, VAE noise
        record = trainer.train_one_epoch(run, epoch)
        scores, selection = trainer.validate(run, epoch)
        record.update(scores)
        record["seconds"] = time.perf_counter() - tick
        run.train_seconds += record["seconds"]
        run.history.append(epoch, **record)
        improved = selection is None or selection < run.best_value - settings.min_delta
        if improved:
            run.best_epoch, run.stale = epoch, 0
            run.best_value = math.inf if selection is None else float(selection)
            run.best_weights = trainer.weights()
        else:
            run.stale += 1
        run.log(trainer.epoch_line(run, epoch, record, improved))
        patience_spent = settings.patience > 0 and run.stale >= settings.patience
        run.finished = broadcast_flag(epoch + 1 >= settings.epochs or patience_spent, run.context)
        run.stopped_early = run.finished and epoch + 1 < settings.epochs
        if run.stopped_early:
            run.log(f"early stop: no better {trainer.selection_name} for {run.stale} epochs")
        run.next_epoch = epoch + 1
        if run.is_main:
            save_checkpoint(run.checkpoint_path, _checkpoint(run, trainer))
        barrier(run.context)
        trained_now += 1


def _checkpoint(run: TrainingRun, trainer: Trainer) -> dict[str, Any]:
    """The checkpoint of the run after its last epoch (plain nested dicts)."""
    return {
        "role": run.role,
        "config": run.config.to_dict(),
        "data": run.fingerprint,
        "epoch": run.last_epoch,
        "history": run.history.to_dict(),
        "best": {"epoch": run.best_epoch, "value": run.best_value, "weights": run.best_weights},
        "stale": run.stale,
        "finished": run.finished,
        "stopped_early": run.stopped_early,
        "train_seconds": run.train_seconds,
        "trainer": trainer.state_dict(),
    }


def _write_history(run: TrainingRun, trainer: Trainer) -> None:
    atomic_write_text(run.run_dir / HISTORY, json.dumps(run.history.to_dict(), indent=1) + "\n")
    if len(run.history):
        title, marker, skip = trainer.curves(run)
        plot_history(
            run.history, run.run_dir / trainer.curves_file, title, marker_epoch=marker, skip=skip
        )


# --------------------------------------------------------------------------- bundle
def bundle_manifest(
    out: Path, store: MemberStore, role: str, overwrite: bool, resume: bool
) -> dict[str, Any] | None:
    """The manifest of the bundle ``out`` to add the model to (same member shape and classes),
    or None for a new bundle; a bundle that has the role already needs ``overwrite``/``resume``."""
    manifest = read_manifest(out)
    if manifest is None:
        return None
    existing = Bundle(out, manifest, verify_checksums=False)
    if existing.input_shape != tuple(store.member_shape):
        raise SenseError(
            f"{out}: the bundle holds models for members {existing.input_shape}, these are "
            f"{tuple(store.member_shape)}; write the {role} to a new bundle folder"
        )
    if existing.class_names and tuple(existing.class_names) != tuple(store.class_names):
        raise SenseError(
            f"{out}: the bundle's classes {list(existing.class_names)} differ from the "
            f"ensemble's {list(store.class_names)}; write the {role} to a new bundle folder"
        )
    if role in existing.models and not (overwrite or resume):
        article = "an" if role[0] in "aeiou" else "a"
        raise SenseError(
            f"{out}: the bundle already has {article} {role} (pass overwrite to replace it)"
        )
    return manifest


def bundle_normalization(
    manifest: Mapping[str, Any] | None, store: MemberStore, train: np.ndarray
) -> NormalizationStats:
    """The bundle's normalisation (one per bundle) or, for a new bundle, the training members'."""
    if manifest is not None:
        return NormalizationStats.from_dict(manifest["normalization"])
    return NormalizationStats.from_store(store, train)


def export_to_bundle(
    run: TrainingRun,
    module: torch.nn.Module,
    example: torch.Tensor,
    real_inputs: torch.Tensor,
    normalization: NormalizationStats,
    *,
    input_name: str,
    output_name: str,
    details: Callable[[ExportReport], dict[str, Any]],
    metrics: Mapping[str, Any],
    split: Mapping[str, Any],
    seed: int = 0,
) -> tuple[Bundle, ExportReport]:
    """Export ``module`` to ONNX (verified against torch on ``real_inputs``) and add it to the
    bundle with its ``details`` and the run's training record."""
    run.out.mkdir(parents=True, exist_ok=True)
    with scratch_folder(run.out, f"{run.role}-export") as tmp:
        onnx_path = Path(tmp) / f"{run.role}.onnx"
        report = export_onnx(
            module, example, onnx_path, input_name, output_name, real_inputs=real_inputs, seed=seed
        )
        manifest = run.manifest
        if manifest is None:
            shape, classes = tuple(run.store.member_shape), run.store.class_names
            manifest = new_manifest(shape, normalization, classes)
        manifest.setdefault("software", {}).update(training_versions())
        bundle = add_model(
            run.out,
            run.role,
            onnx_path,
            manifest,
            input_name=input_name,
            output_name=output_name,
            opset=report.opset,
            details=details(report),
            training={
                "command": shlex.join(run.command),
                "argv": run.command,
                "config": run.config.to_dict(),
                "metrics": dict(metrics),
                "split": dict(split),
                "seeding": run.seeding,
                "device": run.device_record(),
                "train_seconds": round(run.train_seconds, 2),
                "versions": training_versions(),
                "data": {"source": str(getattr(run.store, "path", "") or ""), **run.fingerprint},
            },
        )
    return bundle, report
