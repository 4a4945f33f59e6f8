"""Shared plumbing of the SENSE trainers: seeds, threads, devices, checkpoints, history, versions.

Every trainer (labeler, encoder, projector) uses these so that runs are reproducible and
resumable in the same way:

- :func:`seed_everything` seeds Python, numpy and torch and returns what it did (store it in the
  run's outputs); :func:`epoch_seed` derives an independent seed per epoch (and per purpose), so
  that a run resumed at epoch k draws exactly the random numbers the uninterrupted run drew.
- :func:`configure_threads` and :func:`choose_device` pick torch's CPU threads and the device.
- :func:`save_checkpoint` / :func:`load_checkpoint` write atomically and read without unpickling
  arbitrary objects (``torch.load(weights_only=True)``): a checkpoint holds tensors, numbers,
  strings, lists and dicts only.
- :class:`History` is the per-epoch record of a run (JSON-ready, stored in checkpoints).
- :func:`training_versions` lists the library versions to record in bundles and metrics.

torch is imported at module level: import this module only where torch is needed (never from the
``sense`` parser, see :mod:`sense_training.cli`).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sense_core.bundle import software_versions
from sense_core.errors import SenseError
from sense_core.io.atomic import atomic_path

CHECKPOINT_FORMAT = "sense-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the nested format of sense_training.loop
DEVICE_CHOICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------- seeds and threads
def seed_everything(seed: int, deterministic: bool = True) -> dict[str, Any]:
    """Seed ``random``, numpy's legacy global RNG and torch (CPU and CUDA) with ``seed``.

    With ``deterministic``, cuDNN picks deterministic kernels (no autotuning), so a CUDA run
    repeats too (at some speed cost); CPU kernels used here are deterministic already. Returns
    a JSON-ready record of the seeding to store with the run's outputs.
    """
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise SenseError(f"seed must be in 0..2**32-1, got {seed}")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global RNG that third-party code uses)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return {
        "seed": seed,
        "deterministic": bool(deterministic),
        "seeded": ["python", "numpy", "torch"],
    }


def epoch_seed(seed: int, epoch: int, purpose: str = "") -> int:
    """A 63-bit seed for one epoch (and purpose, e.g. ``"shuffle"``) derived from the run seed.

    Seeding each epoch from (seed, epoch) instead of carrying one RNG through the run makes a
    resumed run identical to an uninterrupted one without saving RNG states.
    """
    digest = hashlib.blake2b(f"{int(seed)}\x00{int(epoch)}\x00{purpose}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") >> 1


def torch_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (for samplers and shuffling)."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads (``None``: leave torch's choice); return the count used.

    These machines have few cores shared by several jobs: trainers default to a small count.
    """
    if threads is not None:
        if threads < 1:
            raise SenseError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def choose_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when a GPU is usable, else CPU; ``cuda`` without a GPU is an error."""
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SenseError(
                f"device {name!r} was asked for but no CUDA GPU is usable here "
                "(use --device cpu or auto)"
            )
        return torch.device(name)
    raise SenseError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def describe_device(device: torch.device) -> dict[str, Any]:
    """JSON-ready description of the device a run used (GPU name, CPU threads)."""
    info: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["cpu_count"] = os.cpu_count()
    return info


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically.

    The file is written under a temporary name next to ``path`` and renamed into place, so an
    interrupted save leaves the previous checkpoint intact.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **dict(state)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only``: nothing arbitrary
    is unpickled). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise SenseError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / foreign files
        raise SenseError(f"{path}: not a readable SENSE checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SenseError(f"{path}: not a SENSE checkpoint")
    if int(state.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise SenseError(f"{path}: checkpoint from a newer SENSE; update SENSE")
    return state


# --------------------------------------------------------------------------- history
@dataclass
class History:
    """Per-epoch metrics of a run: a list of ``{"epoch": e, name: value, ...}`` records.

    JSON-ready (:meth:`to_dict`) and stored in checkpoints, so a resumed run keeps its curves.
    """

    records: list[dict[str, float]] = field(default_factory=list)

    def append(self, epoch: int, **metrics: float) -> dict[str, float]:
        record = {"epoch": int(epoch), **{k: float(v) for k, v in metrics.items()}}
        self.records.append(record)
        return record

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, float]]:
        return iter(self.records)

    def series(self, name: str) -> list[float]:
        """Values of metric ``name`` over the epochs that recorded it."""
        return [r[name] for r in self.records if name in r]

    def best(self, name: str, mode: str = "min") -> dict[str, float] | None:
        """The record with the lowest (``min``) or highest (``max``) value of ``name``; the
        earliest one on ties."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        candidates = [r for r in self.records if name in r]
        if not candidates:
            return None
        sign = 1.0 if mode == "min" else -1.0
        return min(candidates, key=lambda r: sign * r[name])

    def to_dict(self) -> dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        return cls(records=[dict(r) for r in data.get("records", [])])


# --------------------------------------------------------------------------- versions
TRAINING_PACKAGES = ("numpy", "torch", "torchvision", "timm", "onnx", "onnxscript", "onnxruntime")


def training_versions() -> dict[str, str]:
    """Versions of Python, SENSE and the training libraries (for bundles and metrics files)."""
    return software_versions(*TRAINING_PACKAGES)


# --------------------------------------------------------------------------- plots
_NOT_PLOTTED = ("epoch", "seconds")


def plot_history(
    history: History,
    path: str | os.PathLike,
    title: str = "",
    marker_epoch: int | None = None,
    skip: tuple[str, ...] = _NOT_PLOTTED,
) -> Path:
    """Training curves PNG, one panel per quantity: ``train_X`` and ``val_X`` share the panel of
    ``X``; any other metric (e.g. ``lr``) gets its own. ``marker_epoch`` (e.g. the best epoch)
    is drawn as a vertical line. Written atomically with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[str]] = {}
    for record in history:
        for name in record:
            if name in skip:
                continue
            quantity = name.split("_", 1)[1] if name.startswith(("train_", "val_")) else name
            if name not in panels.setdefault(quantity, []):
                panels[quantity].append(name)
    count = max(1, len(panels))
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.4), squeeze=False)
    for ax, (quantity, names) in zip(axes[0], panels.items()):
        for name in names:
            epochs = [r["epoch"] + 1 for r in history if name in r]
            ax.plot(epochs, history.series(name), marker="o", markersize=3, label=name)
        if marker_epoch is not None:
            ax.axvline(marker_epoch + 1, color="grey", linestyle="--", linewidth=1)
        if quantity == "lr":
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(quantity)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
