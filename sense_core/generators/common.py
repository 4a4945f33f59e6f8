"""Pieces every generator shares: seeded randomness, label selection, noise/blur, run info."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sense_core.ensemble import UNLABELED
from sense_core.errors import EnsembleError

MIN_SIZE = 16
MAX_SIZE = 1024
# Ensembles at least this large show a progress bar (on a terminal) while they are generated.
PROGRESS_THRESHOLD = 5000


@dataclass
class GenerationInfo:
    """How an ensemble was made: enough to reproduce it and to judge the sampler.

    ``stats`` holds generator-specific figures (e.g. the MCMC acceptance rate of ``channels``).
    """

    name: str
    n: int
    size: int
    labeled_fraction: float
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def command(self) -> str:
        """The ``sense generate`` command line that reproduces this ensemble."""
        parts = [
            "sense",
            "generate",
            self.name,
            "--n",
            str(self.n),
            "--size",
            str(self.size),
            "--labeled-fraction",
            repr(self.labeled_fraction),
            "--seed",
            str(self.seed),
        ]
        for key, value in self.options.items():
            if value is None:
                continue
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                if value:
                    parts.append(flag)
                continue
            if isinstance(value, (list, tuple)):
                parts.append(flag)
                parts.extend(str(v) for v in value)
            else:
                parts.extend([flag, str(value)])
        return shlex.join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "generator": self.name,
            "n": self.n,
            "size": self.size,
            "labeled_fraction": self.labeled_fraction,
            "seed": self.seed,
            "options": _jsonable(self.options),
            "stats": _jsonable(self.stats),
            "seconds": self.seconds,
            "command": self.command(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def check_common_arguments(n: int, size: int, labeled_fraction: float) -> None:
    """Raise a clear error for a member count, size or labeled fraction that cannot work."""
    if int(n) != n or n < 1:
        raise EnsembleError(f"the number of members must be a positive integer, got {n!r}")
    if int(size) != size or not MIN_SIZE <= size <= MAX_SIZE:
        raise EnsembleError(
            f"size must be an integer between {MIN_SIZE} and {MAX_SIZE} pixels (64, 128 or 256 "
            f"are usual), got {size!r}"
        )
    if not 0.0 <= labeled_fraction <= 1.0:
        raise EnsembleError(f"labeled fraction must be between 0 and 1, got {labeled_fraction!r}")


def choose_labeled(
    classes: np.ndarray, labeled_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Labels with ``round(labeled_fraction * n)`` members keeping their class, the rest -1.

    The labeled members are a stratified random sample: each class gets labels in proportion
    to its size (largest remainders), so a rare class is not left without labels by chance.
    """
    classes = np.asarray(classes, dtype=np.int64)
    count = classes.size
    wanted = int(round(labeled_fraction * count))
    labels = np.full(count, UNLABELED, dtype=np.int64)
    if wanted == 0:
        return labels
    present, sizes = np.unique(classes, return_counts=True)
    exact = sizes * wanted / count
    quota = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - quota), kind="stable")
    quota[remainder_order[: wanted - quota.sum()]] += 1
    # Give every class at least one label when there are labels to spare elsewhere.
    for i in np.flatnonzero(quota == 0):
        donor = int(np.argmax(quota))
        if quota[donor] > 1:
            quota[donor] -= 1
            quota[i] = 1
    for value, take in zip(present, quota):
        members = np.flatnonzero(classes == value)
        labels[rng.choice(members, size=int(take), replace=False)] = value
    return labels


def add_noise_and_blur(
    fields: np.ndarray, noise: float, blur: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian blur (sigma in pixels) then additive Gaussian noise (std), in place if possible.

    Measurement-like degradation: blur mimics a coarser sensor or a smoothing inversion, noise
    mimics measurement error. Both default to off.
    """
    if noise < 0 or blur < 0:
        raise EnsembleError(f"noise and blur must be >= 0, got noise={noise}, blur={blur}")
    if blur > 0:
        from scipy.ndimage import gaussian_filter

        sigma = (0,) * (fields.ndim - 2) + (blur, blur)
        fields = gaussian_filter(fields, sigma=sigma, mode="nearest").astype(np.float32)
    if noise > 0:
        fields = fields + rng.normal(0.0, noise, size=fields.shape).astype(np.float32)
    return np.ascontiguousarray(fields, dtype=np.float32)


def chunks(count: int, chunk_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(count)``, at most ``chunk_size`` long."""
    for start in range(0, count, chunk_size):
        yield slice(start, min(start + chunk_size, count))


def progress(iterable: Iterable, total: int, work: int, desc: str, enabled: bool | None):
    """Wrap ``iterable`` in a tqdm bar when the job is large (``work`` members) and on a tty."""
    if enabled is False or (enabled is None and work < PROGRESS_THRESHOLD):
        return iterable
    from tqdm.auto import tqdm

    # disable=None: show the bar only on a terminal unless it was asked for explicitly.
    return tqdm(iterable, total=total, desc=desc, disable=None if enabled is None else False)


def smoothstep(x: np.ndarray, edge0: float, edge1: float) -> np.ndarray:
    """0 below edge0, 1 above edge1, a smooth cubic between (for blends across regime edges)."""
    t = np.clip((np.asarray(x) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def class_counts(classes: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(classes, dtype=np.int64), minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts)}
