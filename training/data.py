"""Torch datasets and samplers over SENSE ensembles, with physics-aware augmentation.

:class:`EnsembleDataset` serves chosen members of any :class:`~sense_core.ensemble.MemberStore`
(an in-memory :class:`~sense_core.ensemble.Ensemble` or a lazy source from
:func:`sense_core.io.open_ensemble`) as ``(fields, label, index)``: the normalised float32
``(C, H, W)`` tensor, the member's label (hand label, or an override such as pseudo-labels;
``-1`` = none) and the member's index in the store (to look up ids, confidences, metadata).

Augmentation is off unless asked for, because which symmetries are legal depends on the physics
of the ensemble: a left/right flip of a flow that runs left to right reverses it, a vertical flip
of a falling drop puts gravity upside down, and a 90° rotation of a non-square field changes its
shape. :class:`Augmentation` applies the chosen flips/rotations/shifts and, for vector fields,
also transforms the components (a flip negates one component, a rotation mixes them).

Randomness is derived from ``(seed, epoch, member index)`` (see :meth:`EnsembleDataset.set_epoch`
and the samplers' ``set_epoch``), so an epoch sees the same augmentations and order whether the
run was resumed or not, and whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sense_core.ensemble import UNLABELED, MemberStore, NormalizationStats
from sense_core.errors import SenseError
from sense_training.common import epoch_seed, torch_generator
from sense_training.config import AUGMENTATION_OPS, augmentation_ops, view_ops
from sense_training.distributed import DistributedContext, RankShare

# ``shift`` moves a field by up to this fraction of its height / width (rounded, at least 1 px).
SHIFT_FRACTION = 1 / 8
# Members whose raw fields fit under this many bytes are read once and kept in memory.
DEFAULT_CACHE_BYTES = 1 << 30


# --------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class Augmentation:
    """Random symmetries applied to a member's raw ``(C, H, W)`` field.

    - ``hflip``: mirror left/right (columns reversed) with probability 1/2;
    - ``vflip``: mirror top/bottom (rows reversed) with probability 1/2;
    - ``rot90``: rotate by a random multiple of 90° (square fields only);
    - ``shift``: translate by a random whole number of pixels, up to ``SHIFT_FRACTION`` of the
      size along each axis, the uncovered border filled by mirroring (the "random crop of a
      padded image" of image classification, with reflection instead of zeros so that no
      artificial edge appears). Legal where *where* a structure lies is not part of its class
      (channels: offsets are nuisance parameters);
    - ``hshift``: the same along the rows only (left/right), for fields whose vertical position
      means something (a wall at the bottom, gravity);
    - ``vector_pairs``: channel pairs ``(x, y)`` holding the components of a vector along +x
      (to the right) and +y (up, as displayed: towards row 0). They are transformed as vectors:
      ``hflip`` negates x, ``vflip`` negates y, a counter-clockwise quarter turn maps
      ``(x, y) -> (-y, x)``. Other channels are scalars.
    """

    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    shift: bool = False
    hshift: bool = False
    vector_pairs: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, text: str | None, vector_pairs: Sequence[Sequence[int]] = ()) -> Augmentation:
        """From a comma-separated list of ops (``"hflip,vflip"``, ``"rot90"``) or ``"none"``."""
        ops = augmentation_ops(text)
        pairs = tuple((int(a), int(b)) for a, b in vector_pairs)
        return cls(hflip="hflip" in ops, vflip="vflip" in ops, rot90="rot90" in ops,
                   shift="shift" in ops, hshift="hshift" in ops,
                   vector_pairs=pairs)  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.hflip or self.vflip or self.rot90 or self.shift or self.hshift

    def describe(self) -> str:
        """``"hflip,rot90"`` or ``"none"`` (the form :meth:`parse` reads)."""
        ops = [op for op in AUGMENTATION_OPS if getattr(self, op)]
        return ",".join(ops) or "none"

    def to_dict(self) -> dict:
        return {"ops": self.describe(), "vector_pairs": [list(p) for p in self.vector_pairs]}

    def check(self, member_shape: Sequence[int]) -> None:
        """Refuse rotations of non-square fields and vector pairs naming missing channels."""
        channels, height, width = (int(s) for s in member_shape)
        if (self.shift and min(height, width) < 2) or (self.hshift and width < 2):
            raise SenseError(
                f"shift augmentation needs members at least 2 pixels across, these are "
                f"{height}x{width}"
            )
        if self.rot90 and height != width:
            raise SenseError(
                f"rot90 augmentation needs square members, these are {height}x{width} "
                "(a quarter turn would change their shape); use flips only"
            )
        used: set[int] = set()
        for pair in self.vector_pairs:
            if len(set(pair)) != 2 or not all(0 <= c < channels for c in pair):
                raise SenseError(
                    f"vector channel pair {list(pair)} is not two distinct channels of "
                    f"0..{channels - 1}"
                )
            if used & set(pair):
                raise SenseError(f"channel of vector pair {list(pair)} is in another pair too")
            used |= set(pair)

    def apply(self, fields: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A randomly transformed copy of ``fields`` (C, H, W); the same draws for the same
        ``rng`` state. Draws are made for every op so that enabling one op does not change the
        others' draws."""
        flip_h, flip_v = rng.random(2) < 0.5
        turns = int(rng.integers(4))
        height, width = fields.shape[1:]
        reach = [max(1, round(size * SHIFT_FRACTION)) for size in (height, width)]
        moves = [int(rng.integers(-r, r + 1)) for r in reach]
        out = np.array(fields, dtype=np.float32, copy=True)
        if self.hflip and flip_h:
            out = out[:, :, ::-1]
            for x, _ in self.vector_pairs:
                out[x] = -out[x]
        if self.vflip and flip_v:
            out = out[:, ::-1, :]
            for _, y in self.vector_pairs:
                out[y] = -out[y]
        if self.rot90 and turns:
            out = np.rot90(out, k=turns, axes=(1, 2))  # counter-clockwise as displayed
            for x, y in self.vector_pairs:
                vx, vy = out[x].copy(), out[y].copy()
                for _ in range(turns):
                    vx, vy = -vy, vx
                out[x], out[y] = vx, vy
        if self.shift and any(moves):
            out = _shifted(out, *moves)
        elif self.hshift and moves[1]:
            out = _shifted(out, 0, moves[1])
        return np.ascontiguousarray(out)


def _shifted(fields: np.ndarray, down: int, right: int) -> np.ndarray:
    """``fields`` (C, H, W) moved ``down`` rows and ``right`` columns (negative: up / left), the
    uncovered border mirrored from the field (``numpy.pad`` reflect mode)."""
    pad_rows, pad_cols = abs(down), abs(right)
    padded = np.pad(fields, ((0, 0), (pad_rows, pad_rows), (pad_cols, pad_cols)), mode="reflect")
    height, width = fields.shape[1:]
    top, left = pad_rows - down, pad_cols - right
    return padded[:, top : top + height, left : left + width]


# --------------------------------------------------------------------------- instance views
# ``noise`` adds Gaussian noise of this standard deviation (normalised units: a tenth of the
# field's spread); ``contrast`` scales by a factor in [1/CONTRAST, CONTRAST] (log-uniform) and
# adds an offset of up to CONTRAST_OFFSET.
NOISE_STD = 0.1
CONTRAST = 1.25
CONTRAST_OFFSET = 0.1


@dataclass(frozen=True)
class InstanceViews:
    """Random views of a member for the instance-contrastive term (two views of one member are
    a positive pair, views of the other members of the batch negatives). Applied to
    *normalised* ``(C, H, W)`` fields. Ops (:data:`sense_training.config.VIEW_OPS`):

    - ``roll``: a periodic (circular) shift by a random offset over the whole field: an exact
      permutation of the values, valid only on a periodic domain (lattices, spectral PDEs);
    - ``hflip``, ``vflip``, ``rot90``, ``shift``, ``hshift``: as :class:`Augmentation`;
    - ``negate``: the sign of the normalised field flipped with probability 1/2 (the spin-flip
      symmetry of an Ising lattice; valid where the class does not depend on the sign);
    - ``noise``: Gaussian noise of ``NOISE_STD``; ``contrast``: a random gain and offset.
    """

    ops: tuple[str, ...] = ("noise",)

    @classmethod
    def parse(cls, text: str | None) -> InstanceViews:
        """From a preset name (``"lattice"``) or a comma-separated list of ops."""
        return cls(view_ops(text))

    @property
    def geometric(self) -> Augmentation:
        return Augmentation(**{op: True for op in AUGMENTATION_OPS if op in self.ops})

    def check(self, member_shape: Sequence[int]) -> None:
        """Refuse views the member shape does not allow (rotating non-square fields)."""
        self.geometric.check(member_shape)

    def apply(self, fields: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random view of ``fields`` (C, H, W). Every op draws whether used or not, so
        that the draws of one op do not depend on the others."""
        out = self.geometric.apply(fields, rng)
        height, width = out.shape[1:]
        rows, cols = int(rng.integers(height)), int(rng.integers(width))
        negate = rng.random() < 0.5
        noise = rng.standard_normal(out.shape).astype(np.float32) * NOISE_STD
        gain = float(np.exp(rng.uniform(-np.log(CONTRAST), np.log(CONTRAST))))
        offset = float(rng.uniform(-CONTRAST_OFFSET, CONTRAST_OFFSET))
        if "roll" in self.ops:
            out = np.roll(out, (rows, cols), axis=(1, 2))
        if "negate" in self.ops and negate:
            out = -out
        if "contrast" in self.ops:
            out = out * gain + offset
        if "noise" in self.ops:
            out = out + noise
        return np.ascontiguousarray(out, dtype=np.float32)

    def batch(
        self, fields: torch.Tensor, index: torch.Tensor, seed: int, epoch: int
    ) -> torch.Tensor:
        """A view of every member of a batch (B, C, H, W), drawn from ``(seed, epoch, member
        index)`` so that a resumed run sees the same views."""
        values = fields.detach().cpu().numpy()
        views = [
            self.apply(member, np.random.default_rng([seed, epoch, int(i), 7]))
            for member, i in zip(values, index.tolist())
        ]
        return torch.from_numpy(np.stack(views)).to(fields.device)


# --------------------------------------------------------------------------- dataset
class EnsembleDataset(Dataset):
    """Members ``indices`` of ``store``, normalised, as ``(fields, label, index)`` samples.

    Parameters
    ----------
    store:
        Any member store (in memory or lazy).
    indices:
        Store indices of the members to serve (e.g. ``split.train``); default: all members.
    normalization:
        Statistics applied after augmentation (augmenting raw values keeps vector components'
        signs meaningful).
    labels:
        Labels for *every* store member (length ``len(store)``) that replace ``store.labels``,
        e.g. pseudo-labels; ``-1`` = none.
    augmentation:
        Random symmetries (default none); checked against the member shape.
    seed:
        Seed of the augmentation draws (with the epoch from :meth:`set_epoch`).
    cache:
        ``"auto"`` (read the members once when they fit in ``DEFAULT_CACHE_BYTES``), ``True`` or
        ``False`` (read from the store at every access, in batches via ``__getitems__``).
    """

    def __init__(
        self,
        store: MemberStore,
        indices: Sequence[int] | np.ndarray | None = None,
        normalization: NormalizationStats | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        cache: bool | str = "auto",
    ) -> None:
        self.store = store
        self.indices = np.arange(len(store)) if indices is None else np.asarray(indices, np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(store)):
            raise SenseError(f"member indices outside 0..{len(store) - 1}")
        all_labels = np.asarray(store.labels if labels is None else labels, dtype=np.int64)
        if all_labels.shape != (len(store),):
            raise SenseError(
                f"label override has shape {all_labels.shape}; expected one label per member "
                f"({len(store)},)"
            )
        self.all_labels = all_labels
        self.labels = all_labels[self.indices]
        self.normalization = normalization
        self.augmentation = augmentation or Augmentation()
        self.augmentation.check(store.member_shape)
        self.seed = int(seed)
        self.epoch = 0
        if normalization is not None and len(normalization.mean) != store.member_shape[0]:
            raise SenseError(
                f"normalisation has {len(normalization.mean)} channel(s), members have "
                f"{store.member_shape[0]}"
            )
        member_bytes = 4 * int(np.prod(store.member_shape))
        if cache == "auto":
            cache = member_bytes * len(self.indices) <= DEFAULT_CACHE_BYTES
        self._cache: np.ndarray | None = None
        if cache and len(self.indices):
            self._cache = np.empty((len(self.indices), *store.member_shape), dtype=np.float32)
            order = np.argsort(self.indices, kind="stable")  # read in store order (fast for files)
            for start in range(0, len(order), 256):
                positions = order[start : start + 256]
                self._cache[positions] = store.read_members(self.indices[positions])

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def _raw(self, positions: Sequence[int]) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if self._cache is not None:
            return self._cache[positions]
        return self.store.read_members(self.indices[positions])

    def _prepare(self, fields: np.ndarray, position: int) -> tuple[torch.Tensor, int, int]:
        index = int(self.indices[position])
        if self.augmentation.enabled:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            fields = self.augmentation.apply(fields, rng)
        if self.normalization is not None:
            fields = self.normalization.apply(fields)
        tensor = torch.from_numpy(np.ascontiguousarray(fields, dtype=np.float32))
        return tensor, int(self.labels[position]), index

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        return self._prepare(self._raw([position])[0], position)

    def __getitems__(self, positions: Sequence[int]) -> list[tuple[torch.Tensor, int, int]]:
        """A batch read in one call to the store (used by ``DataLoader`` automatically)."""
        fields = self._raw(positions)
        return [self._prepare(f, p) for f, p in zip(fields, positions)]

    def member_ids(self) -> list[str]:
        """Ids of the served members, in dataset order."""
        return [self.store.member_ids[i] for i in self.indices]


# --------------------------------------------------------------------------- class balance
def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Members per class (labels ``-1`` are ignored)."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels[labels != UNLABELED], minlength=num_classes)[:num_classes]


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> torch.Tensor:
    """Per-class loss weights ``n / (K_present * n_k)`` for a class-balanced loss.

    Each present class then contributes equally to the loss and the weights average to 1 over
    the members; absent classes get weight 0.
    """
    counts = class_counts(labels, num_classes).astype(np.float64)
    present = counts > 0
    if not present.any():
        raise SenseError("no labeled members to weight")
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(size)`` drawn from ``(seed, epoch)``; call :meth:`set_epoch`."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch_generator(epoch_seed(self.seed, self.epoch, "shuffle"))
        return iter(torch.randperm(self.size, generator=generator).tolist())


class BalancedSampler(Sampler[int]):
    """Draws dataset positions with replacement so that every present class is equally likely.

    ``labels`` are the dataset's labels (``dataset.labels``; members labelled ``-1`` are never
    drawn). An epoch has ``num_samples`` draws (default: the number of labeled members).
    Draws come from ``(seed, epoch)``; call :meth:`set_epoch`.
    """

    def __init__(
        self, labels: Sequence[int] | np.ndarray, seed: int = 0, num_samples: int | None = None
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        labeled = labels != UNLABELED
        if not labeled.any():
            raise SenseError("no labeled members to sample")
        counts = np.bincount(labels[labeled])
        weights = np.zeros(len(labels))
        weights[labeled] = 1.0 / counts[labels[labeled]]
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.num_samples = int(labeled.sum() if num_samples is None else num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch_generator(epoch_seed(self.seed, self.epoch, "balanced"))
        draws = torch.multinomial(self.weights, self.num_samples, True, generator=generator)
        return iter(draws.tolist())


def set_epoch(loader: torch.utils.data.DataLoader, epoch: int) -> None:
    """Tell a loader's dataset and sampler which epoch starts (those that care), also a sampler
    behind a batch sampler (a rank's share of the batches, see :func:`make_loader`)."""
    parts = [loader.dataset, loader.sampler]
    batches = getattr(loader.batch_sampler, "batches", None)  # sense_training.distributed.RankShare
    if batches is not None:
        parts.append(getattr(batches, "sampler", None))
    for part in parts:
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def make_loader(
    dataset: EnsembleDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    balanced: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    context: DistributedContext | None = None,
) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``dataset`` (no worker processes): in order, shuffled per epoch,
    or class-balanced (with replacement). Call :func:`set_epoch` before each epoch. With a
    distributed ``context`` (torchrun), this rank loads only its share of the batches
    (:class:`~sense_training.distributed.RankShare`)."""
    if balanced:
        sampler: Sampler[int] = BalancedSampler(dataset.labels, seed=seed)
    elif shuffle:
        sampler = EpochShuffleSampler(len(dataset), seed=seed)
    else:
        sampler = torch.utils.data.SequentialSampler(dataset)
    if context is not None and context.enabled:
        batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=drop_last)
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=RankShare(batches, context), num_workers=0
        )
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=0
    )
