"""The ensemble data model: members' fields, labels, ids and metadata; splits and normalisation.

An ensemble is N members of one 2D system, each a (C, H, W) float32 field (C = 1 for a scalar
field). Arrays are in image order: row 0 is the top row, as in PNG files and ``imshow``.
Labels are class indices with ``UNLABELED`` (-1) for members nobody labeled by hand.

Two kinds of objects hold ensembles and share one reading interface (:class:`MemberStore`):
:class:`Ensemble` keeps everything in memory; the sources in :mod:`sense_core.io` read members
from disk on demand so that ensembles larger than memory can be listed and streamed in batches.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sense_core.errors import EnsembleError, SenseError

UNLABELED = -1
# Metadata key of a split decided by whoever made the ensemble (see split_labeled).
PRESET_SPLIT_KEY = "split"

_MEMBER_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*")
# Without class names, labels name classes class_0 .. class_<max label>: more classes than this
# (or than members) means a corrupt label, not a class list worth building.
MAX_IMPLIED_CLASSES = 10_000
# Bytes of bookkeeping per member (its id string, label, index entries), for the memory guard.
MEMBER_BOOKKEEPING_BYTES = 128


def check_member_id(member_id: str, where: str = "") -> str:
    """Return ``member_id`` if it is usable as a file stem; raise a clear error otherwise.

    The one id rule of every reader and writer. Member ids become file names when an ensemble
    is written as a folder, so they may not contain path separators, spaces or line breaks, or
    start with a dot. The whole id must match (``fullmatch``: a ``$`` anchor would let an id
    ending in a newline through).
    """
    if not isinstance(member_id, str) or not _MEMBER_ID_PATTERN.fullmatch(member_id):
        prefix = f"{where}: " if where else ""
        raise EnsembleError(
            f"{prefix}member id {member_id!r} is not valid: use letters, digits and _ . + - "
            "(not starting with '.' or '-')"
        )
    return member_id


def natural_key(text: str) -> list:
    """Sort key that orders 'm2' before 'm10'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def check_class_names(class_names: Iterable[object], where: str = "") -> tuple[str, ...]:
    """Return the class names as a tuple if every name is a non-blank string and no name repeats
    (two classes of one name would silently merge); raise naming ``where`` otherwise."""
    prefix = f"{where}: " if where else ""
    names = tuple(class_names)
    seen: set[str] = set()
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise EnsembleError(
                f"{prefix}class name #{index} is {name!r} ({type(name).__name__}), not a string"
            )
        if not name.strip():
            raise EnsembleError(f"{prefix}class name #{index} is empty ({name!r})")
        if name in seen:
            raise EnsembleError(
                f"{prefix}class names are not unique: {name!r} appears more than once (two "
                "classes of one name would merge)"
            )
        seen.add(name)
    return tuple(str(name) for name in names)


def class_limit(count: int) -> int:
    """The most classes an ensemble of ``count`` members may have (see MAX_IMPLIED_CLASSES)."""
    return max(MAX_IMPLIED_CLASSES, int(count))


def implied_class_names(top: int, count: int, where: str = "") -> tuple[str, ...]:
    """``class_0 .. class_<top>`` for integer labels (largest ``top``) given without class
    names; a label implying more than :func:`class_limit` classes is refused before any name is
    built."""
    if top + 1 > class_limit(count):
        prefix = f"{where}: " if where else ""
        raise EnsembleError(
            f"{prefix}label {top} implies {top + 1} classes for {count} members (at most "
            f"{class_limit(count)} without class names); the labels are corrupt, or give the "
            "class names"
        )
    return tuple(f"class_{i}" for i in range(top + 1))


def check_member_count(count: int, where: str = "") -> None:
    """Refuse, before building ids and labels, a member count whose bookkeeping alone would not
    fit in memory (a header may claim any number of members)."""
    check_memory(
        int(count) * MEMBER_BOOKKEEPING_BYTES,
        f"the ids and labels of {count} members",
        where,
        "is the member count in the file right?",
    )


def default_member_ids(count: int) -> tuple[str, ...]:
    width = max(6, len(str(max(count - 1, 0))))
    return tuple(f"m{i:0{width}d}" for i in range(count))


def check_finite(fields: np.ndarray, member_id: str, where: str = "") -> None:
    """Raise naming the member (and file) when its field holds NaN or Inf values."""
    finite = np.isfinite(fields)
    if not finite.all():
        bad = int(fields.size - np.count_nonzero(finite))
        prefix = f"{where}: " if where else ""
        raise EnsembleError(
            f"{prefix}member {member_id!r} has {bad} non-finite value(s) (NaN/Inf) of "
            f"{fields.size}; read it with nan_policy='fill' to replace them (see docs/data.md)"
        )


MEMORY_LIMIT_ENV = "SENSE_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise EnsembleError(
            f"{MEMORY_LIMIT_ENV}={text!r} is not a size (examples: 500M, 8G, 1073741824)"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def memory_budget() -> tuple[int | None, str]:
    """The bytes one read may allocate and where the number comes from: ``SENSE_MEMORY_LIMIT``
    (e.g. ``8G``) when set, else the memory the system reports as available (None: unknown)."""
    limit = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if limit:
        return _parse_bytes(limit), f"the limit {MEMORY_LIMIT_ENV}={limit}"
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "the available memory"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the available memory"
    except (AttributeError, ValueError, OSError):
        return None, ""


def format_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def check_memory(nbytes: int, what: str, where: str = "", hint: str = "") -> None:
    """Refuse, before allocating, a read that needs more memory than :func:`memory_budget`
    allows, with a message that names the data and what to do instead of crashing the process
    (or ParaView) out of memory."""
    budget, source = memory_budget()
    if budget is None or nbytes <= budget:
        return
    prefix = f"{where}: " if where else ""
    raise EnsembleError(
        f"{prefix}{what} needs {format_bytes(nbytes)} of memory, more than {source} "
        f"({format_bytes(budget)})" + (f"; {hint}" if hint else "")
    )


def member_nbytes(shape: Sequence[int], count: int = 1) -> int:
    """float32 bytes of ``count`` members of (C, H, W) ``shape`` (in Python integers: a shape
    from a file's header cannot overflow the product and slip past the memory guard)."""
    return int(count) * int(np.prod([int(s) for s in shape], dtype=object)) * 4


class MemberStore(abc.ABC):
    """What every ensemble container offers: ids, labels, classes, metadata and batched reads."""

    member_ids: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    metadata: Mapping[str, np.ndarray]

    @property
    @abc.abstractmethod
    def member_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every member."""

    @abc.abstractmethod
    def read_members(self, indices: Sequence[int]) -> np.ndarray:
        """Fields of the members at ``indices`` as float32 (k, C, H, W)."""

    def __len__(self) -> int:
        return len(self.member_ids)

    @property
    def labeled_mask(self) -> np.ndarray:
        return self.labels != UNLABELED

    def iter_batches(
        self, batch_size: int = 256, indices: Sequence[int] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (indices, fields) in order, at most ``batch_size`` members at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            yield chunk, self.read_members(chunk)

    def load(self) -> Ensemble:
        """Read every member into an in-memory :class:`Ensemble`."""
        if len(self) == 0:
            raise EnsembleError("ensemble is empty: no members to load")
        check_memory(
            member_nbytes(self.member_shape, len(self)),
            f"loading all {len(self)} members of (C, H, W) = {tuple(self.member_shape)}",
            str(getattr(self, "path", "")),
            "stream it in batches instead (sense convert and sense embed do)",
        )
        fields = np.empty((len(self), *self.member_shape), dtype=np.float32)
        for chunk, batch in self.iter_batches():
            fields[chunk] = batch
        return Ensemble(
            fields=fields,
            labels=self.labels.copy(),
            class_names=self.class_names,
            member_ids=self.member_ids,
            metadata={key: np.array(value) for key, value in self.metadata.items()},
        )

    def class_counts(self) -> dict[str, int]:
        """Number of hand-labeled members per class name."""
        counts = np.bincount(self.labels[self.labeled_mask], minlength=len(self.class_names))
        return {name: int(count) for name, count in zip(self.class_names, counts)}


def label_values(labels: object, count: int, where: str = "") -> np.ndarray:
    """Labels as int64 (N,): integers, or floats with integral values; -1 = unlabeled. Strings,
    booleans, complex numbers, objects, fractions and non-finite values are refused naming
    ``where``."""
    prefix = f"{where}: " if where else ""
    labels = np.asarray(labels)
    if labels.shape != (count,):
        raise EnsembleError(f"{prefix}labels have shape {labels.shape}, expected ({count},)")
    kind = labels.dtype.kind
    if kind not in "iuf":
        raise EnsembleError(
            f"{prefix}'labels' must be integers (-1 = unlabeled), got {labels.dtype} values"
        )
    if labels.size == 0:
        return labels.astype(np.int64)
    if kind == "f":
        bad = ~np.isfinite(labels)
        bad[~bad] = np.mod(labels[~bad], 1) != 0
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise EnsembleError(
                f"{prefix}label {labels[first]!r} of member #{first} is not an integer "
                "(labels must be integers, -1 = unlabeled)"
            )
    out_of_range = (labels < -(2**62)) | (labels > 2**62)
    if out_of_range.any():
        first = int(np.flatnonzero(out_of_range)[0])
        raise EnsembleError(f"{prefix}label {labels[first]} of member #{first} is out of range")
    return labels.astype(np.int64)


def validate_labels(
    labels: np.ndarray, class_names: Sequence[str], count: int, where: str = ""
) -> np.ndarray:
    """Check labels (see :func:`label_values`) against the class list (see
    :func:`check_class_names`); return them as int64 (N,)."""
    prefix = f"{where}: " if where else ""
    class_names = check_class_names(class_names, where)
    labels = label_values(labels, count, where)
    bad = (labels < UNLABELED) | (labels >= len(class_names))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        shown = list(class_names[:20]) + (["..."] if len(class_names) > 20 else [])
        raise EnsembleError(
            f"{prefix}label {int(labels[first])} of member #{first} is outside "
            f"-1..{len(class_names) - 1} ({len(class_names)} classes: {shown})"
        )
    return labels


@dataclass(frozen=True, eq=False)
class Ensemble(MemberStore):
    """An ensemble held in memory.

    ``fields`` may be given as (N, H, W) for scalar fields; it is stored as float32 (N, C, H, W).
    ``labels`` defaults to all unlabeled, ``member_ids`` to m000000, m000001, ...
    ``metadata`` maps a name to one value per member (numbers or strings), e.g. the parameters
    a generator drew for each member.
    """

    fields: np.ndarray
    labels: np.ndarray | None = None
    class_names: Sequence[str] = ()
    member_ids: Sequence[str] | None = None
    metadata: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fields = np.asarray(self.fields)
        if fields.ndim == 3:
            fields = fields[:, None]
        if fields.ndim != 4:
            raise EnsembleError(
                f"fields must be (N, C, H, W) or (N, H, W), got an array of shape {fields.shape}"
            )
        if fields.shape[0] == 0:
            raise EnsembleError("ensemble is empty: no members")
        if min(fields.shape[1:]) == 0:
            raise EnsembleError(f"members have an empty shape {fields.shape[1:]}")
        if not (np.issubdtype(fields.dtype, np.number) or fields.dtype == np.bool_):
            raise EnsembleError(f"fields must be numeric, got dtype {fields.dtype}")
        fields = np.ascontiguousarray(fields, dtype=np.float32)
        count = fields.shape[0]

        member_ids = default_member_ids(count) if self.member_ids is None else self.member_ids
        member_ids = tuple(str(m) for m in member_ids)
        if len(member_ids) != count:
            raise EnsembleError(f"{len(member_ids)} member ids for {count} members")
        for member_id in member_ids:
            check_member_id(member_id)
        if len(set(member_ids)) != count:
            seen: set[str] = set()
            dup = next(m for m in member_ids if m in seen or seen.add(m))
            raise EnsembleError(f"member id {dup!r} appears more than once")

        class_names = check_class_names(self.class_names)
        labels = np.full(count, UNLABELED) if self.labels is None else self.labels
        labels = validate_labels(labels, class_names, count)

        metadata = {}
        for key, values in dict(self.metadata).items():
            values = np.asarray(values)
            if values.shape[:1] != (count,):
                raise EnsembleError(
                    f"metadata {key!r} has {values.shape[:1]} values for {count} members"
                )
            if values.dtype == object:
                raise EnsembleError(f"metadata {key!r} must be numbers or strings, not objects")
            metadata[str(key)] = values

        bad_rows = ~np.isfinite(fields.reshape(count, -1)).all(axis=1)
        if bad_rows.any():
            first = int(np.flatnonzero(bad_rows)[0])
            check_finite(fields[first], member_ids[first])

        for name, value in (
            ("fields", fields),
            ("labels", labels),
            ("class_names", class_names),
            ("member_ids", member_ids),
            ("metadata", metadata),
        ):
            object.__setattr__(self, name, value)

    @property
    def member_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.fields.shape[1:])  # type: ignore[return-value]

    def read_members(self, indices: Sequence[int]) -> np.ndarray:
        return self.fields[np.asarray(indices, dtype=np.int64)]

    def subset(self, indices: Sequence[int]) -> Ensemble:
        """The members at ``indices`` (in that order), with their labels and metadata."""
        indices = np.asarray(indices, dtype=np.int64)
        return Ensemble(
            fields=self.fields[indices],
            labels=self.labels[indices],
            class_names=self.class_names,
            member_ids=[self.member_ids[i] for i in indices],
            metadata={key: value[indices] for key, value in self.metadata.items()},
        )


@dataclass(frozen=True)
class Split:
    """Indices of the hand-labeled members in the train, validation and test parts."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    seed: int
    fractions: tuple[float, float, float]

    def to_dict(self, member_ids: Sequence[str]) -> dict:
        """JSON-ready description by member id (stable across reorderings of the ensemble)."""
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            **{
                part: [member_ids[i] for i in getattr(self, part)]
                for part in ("train", "validation", "test")
            },
        }


def _member_rank(member_id: str, seed: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{member_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def split_labeled(
    store: MemberStore,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    min_classes: int = 2,
) -> Split:
    """Split the hand-labeled members into train / validation / test, stratified by class.

    Deterministic by member id: each member gets a rank from a hash of (seed, member id) and
    each class is cut by rank, so the split does not depend on the order of the members, and
    adding members moves few existing ones. Unlabeled members are in no part.

    An ensemble that carries a preset split (metadata ``split`` = train / validation / test per
    member, e.g. region-based splits of crops that must not overlap) keeps it as given.
    """
    fractions = tuple(float(f) for f in fractions)  # type: ignore[assignment]
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    labels = np.asarray(store.labels)
    labeled = np.flatnonzero(labels != UNLABELED)
    if labeled.size == 0:
        raise EnsembleError("no hand-labeled members: label some members (labels.csv) to split")
    present = np.unique(labels[labeled])
    if present.size < min_classes:
        names = [store.class_names[i] for i in present]
        raise EnsembleError(
            f"the labeled members cover {present.size} class(es) {names}; at least {min_classes} "
            "are needed (a silhouette or a classifier is undefined with one class)"
        )
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    if PRESET_SPLIT_KEY in store.metadata:
        preset = np.asarray(store.metadata[PRESET_SPLIT_KEY]).astype(str)
        unknown = set(preset[labeled]) - set(parts)
        if unknown:
            raise EnsembleError(
                f"metadata {PRESET_SPLIT_KEY!r} has values {sorted(unknown)} for labeled members; "
                "expected train, validation or test"
            )
        for name in parts:
            parts[name] = list(labeled[preset[labeled] == name])
        present = ()
    for label in present:
        members = labeled[labels[labeled] == label]
        ranks = [_member_rank(store.member_ids[i], seed) for i in members]
        members = members[np.argsort(ranks, kind="stable")]
        n = members.size
        n_test = int(round(n * fractions[2]))
        n_val = int(round(n * fractions[1]))
        while n_test + n_val >= n and n_test + n_val > 0 and fractions[0] > 0:
            if n_test >= n_val and n_test > 0:
                n_test -= 1
            else:
                n_val -= 1
        parts["test"].extend(members[:n_test])
        parts["validation"].extend(members[n_test : n_test + n_val])
        parts["train"].extend(members[n_test + n_val :])
    return Split(
        **{name: np.sort(np.asarray(idx, dtype=np.int64)) for name, idx in parts.items()},
        seed=seed,
        fractions=fractions,  # type: ignore[arg-type]
    )


LABEL_SOURCE_KEY = "label_source"  # metadata: manual / pseudo / none per member


def manual_mask(store: MemberStore) -> np.ndarray:
    """Hand-labeled members: labels >= 0, except members that a pseudo-labelling marked
    otherwise in the metadata ``label_source``."""
    manual = np.asarray(store.labels) != UNLABELED
    if LABEL_SOURCE_KEY in store.metadata:
        manual &= np.asarray(store.metadata[LABEL_SOURCE_KEY]).astype(str) == "manual"
    return manual


class _HandLabels:
    """Just enough of a store for :func:`split_labeled`: the hand labels only."""

    def __init__(self, store: MemberStore, manual: np.ndarray) -> None:
        self.labels = np.where(manual, store.labels, UNLABELED)
        self.class_names = store.class_names
        self.member_ids = store.member_ids
        self.metadata = store.metadata


def split_hand_labeled(
    store: MemberStore, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> tuple[np.ndarray, Split]:
    """``(manual_mask, split)``: :func:`split_labeled` of the hand-labeled members only, so that
    pseudo-labels of a pseudo-labelled ensemble never enter the validation or test parts."""
    manual = manual_mask(store)
    return manual, split_labeled(_HandLabels(store, manual), tuple(fractions), seed)  # type: ignore[arg-type]


@dataclass(frozen=True)
class NormalizationStats:
    """Per-channel mean and standard deviation, computed on training members and reused.

    A channel whose standard deviation is (numerically) zero keeps ``std = 1`` so that
    normalising a constant channel gives zeros instead of dividing by zero.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int

    ZERO_STD = 1e-12

    @classmethod
    def from_batches(cls, batches: Iterable[np.ndarray]) -> NormalizationStats:
        """Accumulate over (B, C, H, W) batches in float64 (Chan et al. parallel variance)."""
        total = 0
        mean = m2 = None
        for batch in batches:
            batch = np.asarray(batch, dtype=np.float64)
            per_channel = batch.transpose(1, 0, 2, 3).reshape(batch.shape[1], -1)
            n_b = per_channel.shape[1]
            if n_b == 0:
                continue
            mean_b = per_channel.mean(axis=1)
            m2_b = ((per_channel - mean_b[:, None]) ** 2).sum(axis=1)
            if mean is None:
                total, mean, m2 = n_b, mean_b, m2_b
                continue
            if mean_b.shape != mean.shape:
                raise EnsembleError(
                    f"channel count changed between batches ({mean.shape[0]} vs {mean_b.shape[0]})"
                )
            delta = mean_b - mean
            new_total = total + n_b
            mean = mean + delta * n_b / new_total
            m2 = m2 + m2_b + delta**2 * total * n_b / new_total
            total = new_total
        if mean is None:
            raise EnsembleError("cannot compute normalisation statistics of zero members")
        std = np.sqrt(m2 / total)
        std = np.where(std > cls.ZERO_STD, std, 1.0)
        return cls(mean=tuple(map(float, mean)), std=tuple(map(float, std)), count=int(total))

    @classmethod
    def from_store(
        cls, store: MemberStore, indices: Sequence[int] | None = None, batch_size: int = 256
    ) -> NormalizationStats:
        """Statistics of the members at ``indices`` (e.g. ``split.train``), read in batches."""
        return cls.from_batches(batch for _, batch in store.iter_batches(batch_size, indices))

    def apply(self, fields: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of (B, C, H, W) or (C, H, W) fields."""
        fields = np.asarray(fields, dtype=np.float32)
        channels = fields.shape[-3]
        if channels != len(self.mean):
            raise EnsembleError(
                f"fields have {channels} channel(s) but the statistics have {len(self.mean)}"
            )
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (fields - mean) / std

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "count": self.count}

    @classmethod
    def from_dict(cls, data: Mapping) -> NormalizationStats:
        try:
            mean = tuple(float(v) for v in data["mean"])
            std = tuple(float(v) for v in data["std"])
            count = int(data.get("count", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise EnsembleError(f"normalisation statistics are malformed: {exc!r}") from exc
        if len(mean) != len(std) or not mean:
            raise EnsembleError("normalisation statistics need one mean and one std per channel")
        if not all(np.isfinite(mean)) or not all(s > 0 and np.isfinite(s) for s in std):
            raise EnsembleError("normalisation statistics must be finite with positive std")
        return cls(mean=mean, std=std, count=count)


def describe_ensemble(
    store: MemberStore,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stats: bool = False,
) -> dict:
    """A JSON-ready summary: members, shape, classes, labeled counts, the split of the labeled
    members (or why there is none) and, with ``stats``, the training normalisation statistics."""
    summary = {
        "path": str(getattr(store, "path", "")),
        "members": len(store),
        "member_shape": list(store.member_shape),
        "labeled": int(store.labeled_mask.sum()),
        "unlabeled": int((~store.labeled_mask).sum()),
        "class_counts": store.class_counts(),
        "metadata": sorted(store.metadata),
    }
    try:
        split = split_labeled(store, fractions=fractions, seed=seed)
    except SenseError as exc:
        summary["split"] = {"error": str(exc)}
        return summary
    summary["split"] = {
        "seed": seed,
        **{part: int(len(getattr(split, part))) for part in ("train", "validation", "test")},
    }
    if stats:
        summary["normalization"] = NormalizationStats.from_store(store, split.train).to_dict()
    return summary
