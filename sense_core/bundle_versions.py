"""Every bundle trained for an ensemble kept as a numbered version next to it.

Training from ParaView (or ``sense train-version``) writes each new bundle into the ensemble's
sidecar (:mod:`sense_core.label_store`): ``<ensemble>.sense/bundles/001/``, ``002/``, ... Each
version folder is a complete bundle plus ``version.json``: what made it (``kind``: ``head`` — a
classifier head on an existing bundle's latent space, ``full`` — a whole ``sense fit``,
``label-free`` — a fit without hand labels), from which bundle (``base``), how many hand labels
it learned from, when, how long it took and the accuracy its training measured.

A version is written atomically: the training writes into a hidden temporary folder beside the
final one, which is renamed to ``NNN`` only once the bundle loads and its record is written; a
failure, a SIGTERM or a cancel leaves no version behind (a SIGKILL's leftover is removed by
the next write, :mod:`sense_core.io.atomic`). One writer at a time takes a number.

Where the ensemble's folder (or its sidecar) is read-only, versions go to the sidecar's place
under the labels home (``$SENSE_LABELS_HOME``, default ``$XDG_DATA_HOME/sense/labels``; see
:func:`sense_core.label_store.labels_home`); listing looks in both places.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sense_core import label_store
from sense_core.errors import SenseError

VERSIONS_FOLDER = "bundles"
RECORD = "version.json"
TRAINING_KINDS = ("head", "full")  # what a user asks for (label-free: a full fit, no labels)
KINDS = (*TRAINING_KINDS, "label-free")
_NAME = re.compile(r"^\d{3,}$")


@dataclass
class BundleVersion:
    """One kept bundle: its number and folder, and what made it."""

    number: int
    path: Path
    kind: str
    labels: int = 0  # hand-labeled members it learned from
    classes: list[str] = field(default_factory=list)
    time: str = ""  # ISO 8601 UTC, when it was finished
    seconds: float | None = None
    accuracy: float | None = None  # as its training measured it (cross-validated for a head)
    base: str | None = None  # the bundle a head was put on
    command: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.number:03d}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready record (the folder is not stored: versions may move with their sidecar)."""
        record = asdict(self)
        record.pop("path")
        return record

    def describe(self) -> str:
        """One line for the user."""
        accuracy = "" if self.accuracy is None else f", accuracy {self.accuracy:.3f}"
        seconds = "" if self.seconds is None else f", {self.seconds:.1f} s"
        return (
            f"version {self.name}: {self.kind}, {self.labels} hand labels{accuracy}{seconds}, "
            f"{self.time} ({self.path})"
        )


def _writable(folder: Path) -> bool:
    """Whether a version can be written under ``folder`` (its nearest existing ancestor)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and label_store._writable(folder)


def version_folders(ensemble: str | os.PathLike) -> list[Path]:
    """Where versions of the ensemble may be: beside it (or where its sidecar is), then under
    the labels home; the first writable one takes new versions (:func:`versions_folder`)."""
    places = [label_store.sidecar_folder(ensemble) / VERSIONS_FOLDER]
    with contextlib.suppress(SenseError):  # no home folder at all: only beside the ensemble
        home = label_store.home_folder(ensemble) / VERSIONS_FOLDER
        if home not in places:
            places.append(home)
    return places


def versions_folder(ensemble: str | os.PathLike) -> Path:
    """The folder new versions of the ensemble go to: its sidecar's ``bundles``, or, where
    that is read-only, the sidecar's place under the labels home. A clear error when neither
    is writable."""
    places = version_folders(ensemble)
    for place in places:
        if _writable(place):
            return place
    raise SenseError(
        f"{ensemble}: trained bundles cannot be kept: neither "
        f"{' nor '.join(str(p) for p in places)} is writable; set "
        f"{label_store.LABELS_HOME_ENV} to a writable folder"
    )


def read_version(path: str | os.PathLike) -> BundleVersion:
    """The version in the folder ``path`` (an error naming the file when its record is bad)."""
    path = Path(path)
    record_path = path / RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        kind = str(record["kind"])
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        return BundleVersion(
            number=int(path.name),
            path=path,
            kind=kind,
            labels=int(record.get("labels", 0)),
            classes=[str(c) for c in record.get("classes", [])],
            time=str(record.get("time", "")),
            seconds=None if record.get("seconds") is None else float(record["seconds"]),
            accuracy=None if record.get("accuracy") is None else float(record["accuracy"]),
            base=None if record.get("base") is None else str(record["base"]),
            command=[str(c) for c in record.get("command", [])],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SenseError(f"{record_path}: not a bundle version record ({exc})") from None


def list_versions(ensemble: str | os.PathLike) -> list[BundleVersion]:
    """The ensemble's kept versions, oldest first. Folders without a readable record
    (something else, or damaged) are left out; temporaries of a training are hidden."""
    found: dict[int, BundleVersion] = {}
    for place in version_folders(ensemble):
        if not place.is_dir():
            continue
        for entry in sorted(place.iterdir()):
            if not _NAME.match(entry.name) or not (entry / RECORD).is_file():
                continue
            with contextlib.suppress(SenseError):
                version = read_version(entry)
                found.setdefault(version.number, version)
    return [found[n] for n in sorted(found)]


def latest_version(ensemble: str | os.PathLike) -> BundleVersion | None:
    """The newest kept version, or None."""
    versions = list_versions(ensemble)
    return versions[-1] if versions else None


def next_number(ensemble: str | os.PathLike) -> int:
    """The number the next version gets: one more than any folder named like a version."""
    numbers = [0]
    for place in version_folders(ensemble):
        if place.is_dir():
            numbers += [int(e.name) for e in place.iterdir() if _NAME.match(e.name)]
    return max(numbers) + 1


def find_version(ensemble: str | os.PathLike, number: int | str) -> BundleVersion:
    """Version ``number`` (``3`` or ``"003"``) of the ensemble; an error listing the others."""
    versions = list_versions(ensemble)
    for version in versions:
        if version.number == int(number):
            return version
    kept = ", ".join(v.name for v in versions) or "none"
    raise SenseError(f"{ensemble}: no bundle version {number} (kept: {kept})")


@dataclass
class VersionDraft:
    """A version being trained: train into ``folder`` (temporary), set the record's fields."""

    number: int
    path: Path  # where it goes once complete
    folder: Path  # where to train now
    kind: str
    labels: int = 0
    classes: list[str] = field(default_factory=list)
    accuracy: float | None = None
    base: str | None = None
    command: list[str] = field(default_factory=list)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def new_version(
    ensemble: str | os.PathLike,
    kind: str,
    *,
    base: str | os.PathLike | None = None,
    command: Sequence[str] = (),
) -> Iterator[VersionDraft]:
    """Reserve the next version and yield its draft; train the bundle into ``draft.folder``.

    On leaving the block without an error the bundle must load (:class:`sense_core.bundle.
    Bundle`); its record is written and the folder renamed to ``bundles/NNN``. Any exception
    (a cancel's SIGTERM included) removes the draft: no half-written version is ever listed."""
    from sense_core.bundle import Bundle
    from sense_core.io.atomic import atomic_directory

    if kind not in KINDS:
        raise SenseError(f"unknown bundle version kind {kind!r}; choose from {', '.join(KINDS)}")
    place = versions_folder(ensemble)
    place.mkdir(parents=True, exist_ok=True)
    number = next_number(ensemble)
    path = place / f"{number:03d}"
    started = time.perf_counter()
    with atomic_directory(path) as folder:
        draft = VersionDraft(
            number,
            path,
            folder,
            kind,
            base=None if base is None else str(base),
            command=list(command),
        )
        yield draft
        Bundle.load(folder)
        version = BundleVersion(
            number=number,
            path=path,
            kind=draft.kind,
            labels=int(draft.labels),
            classes=list(draft.classes),
            time=_now(),
            seconds=round(time.perf_counter() - started, 2),
            accuracy=draft.accuracy,
            base=draft.base,
            command=list(draft.command),
        )
        (folder / RECORD).write_text(json.dumps(version.to_json(), indent=2) + "\n")


_TEMPORARY = re.compile(r"^\.(\d{3,})\.\d+\.[^.]+\.(part|old)$")


def remove_abandoned(ensemble: str | os.PathLike) -> list[Path]:
    """Remove what killed trainings left (hidden temporaries of versions whose writer is
    gone; :func:`sense_core.io.atomic.remove_stale_temporaries`); return what was removed."""
    from sense_core.io.atomic import remove_stale_temporaries

    removed: list[Path] = []
    for place in version_folders(ensemble):
        if not place.is_dir():
            continue
        names = {m.group(1) for m in map(_TEMPORARY.match, os.listdir(place)) if m}
        for name in sorted(names):
            removed += remove_stale_temporaries(place / name)
    return removed


def default_bundle(
    member_shape: Sequence[int], class_names: Sequence[str] = (), ensemble: str | None = None
) -> Path:
    """The bundle a SENSE Embedding without one uses: the shipped bundle for ``member_shape``;
    else the newest version kept for ``ensemble`` (its path), e.g. the label-free bundle trained
    on first use; else an error that says how to get one."""
    from sense_core.bundle import BundleError, find_shipped_bundle

    try:
        return find_shipped_bundle(tuple(member_shape), class_names)
    except BundleError as exc:
        latest = latest_version(ensemble) if ensemble else None
        if latest is not None:
            return latest.path
        raise BundleError(
            f"{exc.args[0].split('; ')[0]}, and none was trained for this ensemble yet; train "
            "one (label-free without hand labels): sense_paraview.train(embedding, 'full') or "
            "sense train-version ENSEMBLE --kind full"
        ) from None


def check_training_labels(store, kind: str, where: str) -> int:
    """The number of classes among the hand labels of ``store``, if a ``kind`` training can
    learn from them; else one line saying why not (nothing is written): hand labels of one class
    only, or none for a head (a full fit without any is label-free)."""
    import numpy as np

    from sense_core.ensemble import manual_mask

    classes = np.unique(np.asarray(store.labels)[manual_mask(store)])
    if len(classes) == 1:
        raise SenseError(
            f"{where}: every hand label is class {store.class_names[classes[0]]!r}: training "
            "needs hand labels of at least two classes; label members of another class "
            "(nothing was written)"
        )
    if len(classes) == 0 and kind == "head":
        raise SenseError(
            f"{where}: no hand labels: a head learns from them; label members of at least two "
            "classes, or train kind 'full' for a label-free map and suggested groups"
        )
    return len(classes)
