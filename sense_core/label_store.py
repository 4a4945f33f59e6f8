"""Hand labels kept beside an ensemble (the label sidecar), with provenance and undo.

A person labels members while exploring a map; the ensemble itself is never rewritten. The
labels go to a sidecar folder next to it: ``<ensemble>.sense/`` (``F.sense/`` for a member
folder ``F``, ``x.npz.sense/`` for ``x.npz``; symbolic links resolved), holding

- ``labels.csv``: ``member_id,class,source,time,step``, one row per member the sidecar decides.
  ``source`` is ``hand`` (labeled by a person), ``corrected`` (a hand label that replaces a
  pseudo-label or a prediction) or ``unlabeled`` (an ``unlabel`` of a member the ensemble itself
  labels: the row removes that label; its class is empty). ``time`` is ISO 8601 UTC and
  ``step`` the labeling step that wrote the row.
- ``labels_history.jsonl``: one JSON line per labeling step (what it changed, and each changed
  member's row before it), so that :func:`undo` can take the last step back, any number of
  times.

Every reader of ensembles applies it (:func:`sense_core.io.open_ensemble`; ``sidecar=False``
or ``--no-sidecar`` ignores it): its labels win over the ensemble's own; class names it adds
come after the ensemble's, in the order they were first used.

Where the ensemble's folder is read-only (a shared data set), the sidecar goes to
``$SENSE_LABELS_HOME/<name>-<hash>/`` (default ``$XDG_DATA_HOME/sense/labels``, i.e.
``~/.local/share/sense/labels``), the hash being of the ensemble's resolved path; a sidecar that
already exists is used wherever it is. Writes are atomic and one writer at a time holds the
sidecar's lock (:mod:`sense_core.io.atomic`); CSV cells are escaped like every SENSE CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.ensemble import (
    UNLABELED,
    MemberStore,
    check_class_names,
    check_member_id,
    validate_labels,
)
from sense_core.errors import EnsembleError, SenseError

SIDECAR_SUFFIX = ".sense"
LABELS_CSV = "labels.csv"
HISTORY_FILE = "labels_history.jsonl"
LABELS_HOME_ENV = "SENSE_LABELS_HOME"
HEADER = ("member_id", "class", "source", "time", "step")
HAND, CORRECTED, UNLABELED_SOURCE = "hand", "corrected", "unlabeled"
LABEL_SOURCES = (HAND, CORRECTED)
MAX_CLASS_NAME = 200


@dataclass(frozen=True)
class LabelRecord:
    """One row of the sidecar: a member's label, where it came from and when."""

    member_id: str
    class_name: str  # "" when source is "unlabeled"
    source: str  # hand | corrected | unlabeled
    time: str  # ISO 8601 UTC
    step: int

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "source": self.source,
            "time": self.time,
            "step": self.step,
        }

    @classmethod
    def from_json(cls, member_id: str, value: Mapping[str, Any]) -> LabelRecord:
        return cls(
            member_id,
            str(value["class"]),
            str(value["source"]),
            str(value["time"]),
            int(value["step"]),
        )


@dataclass
class LabelSidecar:
    """What a sidecar holds: its folder, the rows by member id (in step order), the class names
    it adds in the order they were first used, and its history (one dict per step)."""

    folder: Path
    records: dict[str, LabelRecord] = field(default_factory=dict)
    class_order: tuple[str, ...] = ()
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def labels_path(self) -> Path:
        return self.folder / LABELS_CSV

    @property
    def exists(self) -> bool:
        return self.labels_path.is_file()

    @property
    def last_step(self) -> int:
        steps = [int(h["step"]) for h in self.history] + [r.step for r in self.records.values()]
        return max(steps, default=0)

    def counts(self) -> dict[str, int]:
        """Rows per source (hand, corrected, unlabeled)."""
        counts = {HAND: 0, CORRECTED: 0, UNLABELED_SOURCE: 0}
        for record in self.records.values():
            counts[record.source] = counts.get(record.source, 0) + 1
        return counts


@dataclass(frozen=True)
class LabelStep:
    """The result of one labeling call: its step number and what it changed."""

    step: int
    action: str  # label | unlabel | undo
    members: tuple[str, ...]
    class_name: str | None
    folder: Path

    @property
    def message(self) -> str:
        """One line for the user."""
        count = len(self.members)
        what = f"{count} member{'s' if count != 1 else ''}"
        if self.action == "undo":
            return f"undid step {self.step} ({what}) in {self.folder / LABELS_CSV}"
        if self.action == "unlabel":
            return f"step {self.step}: unlabeled {what} in {self.folder / LABELS_CSV}"
        named = f" as {self.class_name!r}" if self.class_name is not None else ""
        return f"step {self.step}: labeled {what}{named} in {self.folder / LABELS_CSV}"


# --------------------------------------------------------------------------- where the sidecar is
def labels_home() -> Path:
    """Where sidecars of ensembles in read-only folders go: ``$SENSE_LABELS_HOME``, else
    ``$XDG_DATA_HOME/sense/labels``, else ``~/.local/share/sense/labels``."""
    explicit = os.environ.get(LABELS_HOME_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME", "").strip()
    if not data:
        try:
            data = str(Path.home() / ".local" / "share")
        except RuntimeError:  # no HOME and no password entry
            raise SenseError(
                f"no home folder for labels of read-only ensembles; set {LABELS_HOME_ENV}"
            ) from None
    return Path(data).expanduser() / "sense" / "labels"


def _resolved(ensemble_path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(os.fspath(ensemble_path))).resolve()


def beside_folder(ensemble_path: str | os.PathLike) -> Path:
    """``<ensemble>.sense`` next to the ensemble (symbolic links resolved)."""
    path = _resolved(ensemble_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def home_folder(ensemble_path: str | os.PathLike) -> Path:
    """The sidecar's place under :func:`labels_home` (for a read-only ensemble folder)."""
    path = _resolved(ensemble_path)
    digest = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return labels_home() / f"{path.name}-{digest}"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def sidecar_folder(ensemble_path: str | os.PathLike) -> Path:
    """The folder of the ensemble's sidecar: an existing one (beside the ensemble first, then
    under :func:`labels_home`), else beside the ensemble where its folder is writable, else
    under :func:`labels_home`. Readers and writers agree on it."""
    beside = beside_folder(ensemble_path)
    if beside.exists():
        return beside
    home = home_folder(ensemble_path)
    if home.exists():
        return home
    return beside if _writable(beside.parent) else home


# --------------------------------------------------------------------------- checks
def check_class_name(name: object, where: str = "") -> str:
    """``name`` without surrounding blanks, if it is a usable class name: one line of text
    (commas and quotes are fine: CSV cells are quoted), not empty, at most 200 characters."""
    prefix = f"{where}: " if where else ""
    if not isinstance(name, str):
        raise SenseError(f"{prefix}the class name must be text, got {type(name).__name__}")
    text = name.strip()
    if not text:
        raise SenseError(f"{prefix}the class name is empty; give the class to label the members as")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text):
        raise SenseError(
            f"{prefix}the class name {text!r} holds a line break or control character; use one "
            "line of text"
        )
    if len(text) > MAX_CLASS_NAME:
        raise SenseError(
            f"{prefix}the class name is {len(text)} characters long (at most {MAX_CLASS_NAME})"
        )
    return text


def _selection(member_ids: Iterable[str] | str, known: Mapping[str, int], where: str) -> list[str]:
    """The selected ids (first occurrence order, repeats dropped), each valid and known."""
    if isinstance(member_ids, str):
        member_ids = [member_ids]
    chosen = list(dict.fromkeys(str(m).strip() for m in member_ids))
    if not chosen:
        raise SenseError(f"{where}: nothing selected; give the members to label (member ids)")
    unknown = [m for m in chosen if m not in known]
    for member_id in unknown:
        check_member_id(member_id, where)
    if unknown:
        shown = ", ".join(repr(m) for m in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise SenseError(f"{where}: {len(unknown)} unknown member id(s): {shown}")
    return chosen


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- reading
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnsembleError(f"{path}: cannot read ({exc})") from exc


def _read_records(path: Path) -> dict[str, LabelRecord]:
    from sense_core.io.escape import unescape_cell

    records: dict[str, LabelRecord] = {}
    if not path.is_file():
        return records
    reader = csv.reader(io.StringIO(_read_text(path)))
    try:
        rows = [(n, row) for n, row in enumerate(reader, start=1) if row]
    except csv.Error as exc:
        raise EnsembleError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from exc
    if not rows:
        return records
    header = [unescape_cell(cell.strip()).lower() for cell in rows[0][1]]
    if tuple(header[: len(HEADER)]) != HEADER:
        raise EnsembleError(
            f"{path}: header must be '{','.join(HEADER)}', found {','.join(header)}"
        )
    for line, row in rows[1:]:
        cells = [unescape_cell(cell.strip()) for cell in row] + [""] * len(HEADER)
        member_id, class_name, source, time, step = cells[:5]
        where = f"{path}, line {line}"
        check_member_id(member_id, where)
        if member_id in records:
            raise EnsembleError(f"{where}: member {member_id!r} is listed twice")
        if source not in (*LABEL_SOURCES, UNLABELED_SOURCE):
            raise EnsembleError(
                f"{where}: source {source!r} is not one of hand, corrected, unlabeled"
            )
        if source == UNLABELED_SOURCE:
            if class_name:
                raise EnsembleError(f"{where}: an 'unlabeled' row has the class {class_name!r}")
        else:
            try:
                class_name = check_class_name(class_name)
            except SenseError as exc:
                raise EnsembleError(f"{where}: {exc}") from None
        try:
            number = int(step)
        except ValueError:
            raise EnsembleError(f"{where}: step {step!r} is not a whole number") from None
        records[member_id] = LabelRecord(member_id, class_name, source, time, number)
    return records


def _read_history(path: Path) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    if not path.is_file():
        return history
    for line, text in enumerate(_read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
            int(entry["step"])
            if not isinstance(entry.get("before"), dict) or not isinstance(
                entry.get("after"), dict
            ):
                raise ValueError("no 'before'/'after' members")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise EnsembleError(f"{path}, line {line}: not a labeling step ({exc})") from None
        history.append(entry)
    return history


def _class_order(records: Mapping[str, LabelRecord], history: Sequence[Mapping]) -> tuple[str, ...]:
    """Class names in the order they were first used: by the history, then by the rows."""
    used = {r.class_name for r in records.values() if r.source != UNLABELED_SOURCE}
    order: list[str] = []
    for entry in history:
        for name in entry.get("new_classes", ()):
            if name in used and name not in order:
                order.append(name)
    for record in sorted(records.values(), key=lambda r: r.step):
        if record.class_name in used and record.class_name not in order:
            order.append(record.class_name)
    return tuple(order)


def read_sidecar(ensemble_path: str | os.PathLike) -> LabelSidecar:
    """The ensemble's sidecar (empty when it has none); see :func:`read_labels`."""
    folder = sidecar_folder(ensemble_path)
    if folder.exists() and not folder.is_dir():
        raise EnsembleError(f"{folder}: exists but is not a folder (the label sidecar is one)")
    records = _read_records(folder / LABELS_CSV)
    history = _read_history(folder / HISTORY_FILE)
    ordered = dict(sorted(records.items(), key=lambda item: item[1].step))
    return LabelSidecar(folder, ordered, _class_order(records, history), history)


def read_labels(ensemble_path: str | os.PathLike) -> LabelSidecar:
    """The labels the sidecar holds for ``ensemble_path``: ``.records`` maps member ids to
    :class:`LabelRecord` (class, source, time, step), ``.history`` lists the steps."""
    return read_sidecar(ensemble_path)


# --------------------------------------------------------------------------- applying (readers)
def _origin_name(path: Path) -> str:
    """Where the ensemble's own labels come from, in words."""
    if path.is_dir():
        return LABELS_CSV if (path / LABELS_CSV).is_file() else ""
    return path.name


def apply_sidecar(store: MemberStore, ensemble_path: str | os.PathLike) -> MemberStore:
    """Merge the sidecar's labels over ``store``'s own (the sidecar wins; an ``unlabeled`` row
    removes the ensemble's label) and record where the labels came from in
    ``store.label_origin`` (what ``sense info`` prints). Returns ``store``, changed in place."""
    path = Path(ensemble_path)
    own = np.asarray(store.labels, dtype=np.int64)
    origin: dict[str, Any] = {
        "ensemble": {"file": _origin_name(path), "labels": int(np.count_nonzero(own != UNLABELED))},
    }
    sidecar = read_sidecar(path)
    if sidecar.records:
        where = str(sidecar.labels_path)
        index_of = {m: i for i, m in enumerate(store.member_ids)}
        unknown = [m for m in sidecar.records if m not in index_of]
        if unknown:
            raise EnsembleError(
                f"{where}: member {unknown[0]!r} is not in {path} ({len(unknown)} unknown); "
                f"remove its row (sense label {path} --unlabel --members {unknown[0]}) or read "
                "without the sidecar (--no-sidecar)"
            )
        names = list(store.class_names)
        names += [n for n in sidecar.class_order if n not in names]
        names_t = check_class_names(names, where)
        by_name = {n: i for i, n in enumerate(names_t)}
        labels = own.copy()
        replaced = 0
        for member_id, record in sidecar.records.items():
            index = index_of[member_id]
            replaced += int(own[index] != UNLABELED)
            labels[index] = (
                UNLABELED if record.source == UNLABELED_SOURCE else by_name[record.class_name]
            )
        store.labels = validate_labels(labels, names_t, len(store), where)
        store.class_names = names_t
        counts = sidecar.counts()
        decided = np.zeros(len(own), dtype=bool)
        decided[[index_of[m] for m in sidecar.records]] = True
        origin["ensemble"]["labels"] = int(np.count_nonzero((own != UNLABELED) & ~decided))
        origin["sidecar"] = {
            "file": where,
            "labels": counts[HAND] + counts[CORRECTED],
            "hand": counts[HAND],
            "corrected": counts[CORRECTED],
            "unlabeled": counts[UNLABELED_SOURCE],
            "replaced": replaced,
            "steps": sidecar.last_step,
        }
    store.label_origin = origin  # type: ignore[attr-defined]
    return store


def describe_label_origin(origin: Mapping[str, Any] | None) -> str:
    """``labels: 40 from labels.csv, 12 from the sidecar F.sense/labels.csv`` (one line)."""
    if not origin:
        return ""
    own = origin.get("ensemble", {})
    parts = [f"{own.get('labels', 0)} from {own.get('file') or 'the ensemble'}"]
    side = origin.get("sidecar")
    if side:
        text = f"{side['labels']} from the sidecar {side['file']}"
        extra = []
        if side.get("corrected"):
            extra.append(f"{side['corrected']} corrected")
        if side.get("unlabeled"):
            extra.append(f"{side['unlabeled']} of the ensemble's removed")
        extra.append(f"{side['steps']} step{'s' if side['steps'] != 1 else ''}")
        parts.append(f"{text} ({', '.join(extra)})")
    return "labels: " + ", ".join(parts)


# --------------------------------------------------------------------------- writing
def _open_own(ensemble_path: str | os.PathLike) -> MemberStore:
    """The ensemble without its sidecar (its own ids, labels and classes)."""
    from sense_core.io import open_ensemble

    return open_ensemble(ensemble_path, sidecar=False)


def _csv_text(records: Iterable[LabelRecord]) -> str:
    from sense_core.io.escape import csv_writer

    buffer = io.StringIO()
    writer = csv_writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for r in sorted(records, key=lambda r: r.step):
        writer.writerow([r.member_id, r.class_name, r.source, r.time, r.step])
    return buffer.getvalue()


def _prepare_folder(folder: Path, ensemble_path: str | os.PathLike) -> None:
    if folder.is_dir():
        if not _writable(folder):
            raise SenseError(
                f"{folder}: the label sidecar is not writable; make it writable, or move it away "
                f"(labels then go beside the ensemble or under {labels_home()})"
            )
        return
    if folder.exists():
        raise SenseError(f"{folder}: exists but is not a folder (the label sidecar is one)")
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise SenseError(
            f"{ensemble_path}: labels cannot be saved: {folder} cannot be made "
            f"({exc.strerror or exc}); set {LABELS_HOME_ENV} to a writable folder"
        ) from exc


def _write_step(
    ensemble_path: str | os.PathLike,
    action: str,
    after: Mapping[str, LabelRecord | None],
    sidecar: LabelSidecar,
    step: int,
    class_name: str | None,
    new_classes: Sequence[str],
) -> LabelStep:
    """Write one step: the history line first, then the labels (a crash between the two leaves
    a step whose undo restores what labels.csv still holds: nothing is lost)."""
    from sense_core.io.atomic import atomic_write_text

    folder = sidecar.folder
    before = {m: (r.to_json() if (r := sidecar.records.get(m)) else None) for m in after}
    entry = {
        "step": step,
        "time": _now(),
        "action": action,
        "class": class_name,
        "members": len(after),
        "new_classes": list(new_classes),
        "ensemble": str(_resolved(ensemble_path)),
        "before": before,
        "after": {m: (r.to_json() if r else None) for m, r in after.items()},
    }
    lines = [json.dumps(h, ensure_ascii=False) for h in sidecar.history]
    lines.append(json.dumps(entry, ensure_ascii=False))
    atomic_write_text(folder / HISTORY_FILE, "\n".join(lines) + "\n")
    records = dict(sidecar.records)
    for member_id, record in after.items():
        if record is None:
            records.pop(member_id, None)
        else:
            records[member_id] = record
    atomic_write_text(folder / LABELS_CSV, _csv_text(records.values()))
    return LabelStep(step, action, tuple(after), class_name, folder)


def _locked_step(ensemble_path: str | os.PathLike, change) -> LabelStep:
    """Run ``change(store, sidecar)`` -> (action, after, class_name) under the sidecar's lock
    and write its step."""
    from sense_core.io.atomic import output_lock

    store = _open_own(ensemble_path)
    folder = sidecar_folder(ensemble_path)
    _prepare_folder(folder, ensemble_path)
    with output_lock(folder):
        sidecar = read_sidecar(ensemble_path)
        action, after, class_name = change(store, sidecar)
        step = sidecar.last_step + 1
        after = {
            m: (None if r is None else LabelRecord(m, r.class_name, r.source, r.time, step))
            for m, r in after.items()
        }
        known = set(store.class_names) | set(sidecar.class_order)
        new = [r.class_name for r in after.values() if r and r.class_name not in known]
        return _write_step(
            ensemble_path, action, after, sidecar, step, class_name, list(dict.fromkeys(new))
        )


def assign(
    ensemble_path: str | os.PathLike,
    assignments: Mapping[str, str] | Iterable[tuple[str, str]],
    source: str = HAND,
) -> LabelStep:
    """Label members with classes given per member (``{member_id: class_name}``), in one step
    (one undo takes it back); classes new to the ensemble are added after its own."""
    where = str(ensemble_path)
    if source not in LABEL_SOURCES:
        raise SenseError(
            f"{where}: label source {source!r} is not one of {', '.join(LABEL_SOURCES)}"
        )
    pairs = list(assignments.items() if isinstance(assignments, Mapping) else assignments)
    chosen = {str(m).strip(): check_class_name(c, where) for m, c in pairs}

    def change(store: MemberStore, sidecar: LabelSidecar):
        ids = _selection(list(chosen), {m: i for i, m in enumerate(store.member_ids)}, where)
        time = _now()
        after = {m: LabelRecord(m, chosen[m], source, time, 0) for m in ids}
        classes = set(chosen.values())
        return "label", after, (next(iter(classes)) if len(classes) == 1 else None)

    return _locked_step(ensemble_path, change)


def label(
    ensemble_path: str | os.PathLike,
    member_ids: Iterable[str] | str,
    class_name: str,
    source: str = HAND,
) -> LabelStep:
    """Label ``member_ids`` as ``class_name`` (existing or new) in the ensemble's sidecar, as
    one step. ``source``: ``hand``, or ``corrected`` for a hand label that replaces a
    pseudo-label or prediction. Errors (one line): nothing selected, an empty class name or one
    with a line break, unknown member ids, an unknown source."""
    where = str(ensemble_path)
    name = check_class_name(class_name, where)
    ids = [member_ids] if isinstance(member_ids, str) else list(member_ids)
    if not ids:
        raise SenseError(f"{where}: nothing selected; give the members to label (member ids)")
    return assign(ensemble_path, [(m, name) for m in ids], source)


def unlabel(ensemble_path: str | os.PathLike, member_ids: Iterable[str] | str) -> LabelStep:
    """Remove the labels of ``member_ids``: the sidecar's, and the ensemble's own (recorded as
    an ``unlabeled`` row, since the ensemble is never rewritten), as one step. Ids the sidecar
    lists but the ensemble no longer has are accepted (their rows are removed)."""
    where = str(ensemble_path)

    def change(store: MemberStore, sidecar: LabelSidecar):
        index_of = {m: i for i, m in enumerate(store.member_ids)}
        known = {**index_of, **{m: -1 for m in sidecar.records if m not in index_of}}
        ids = _selection(member_ids, known, where)
        time = _now()
        after: dict[str, LabelRecord | None] = {}
        for member_id in ids:
            index = index_of.get(member_id, -1)
            own = index >= 0 and store.labels[index] != UNLABELED
            if own:
                after[member_id] = LabelRecord(member_id, "", UNLABELED_SOURCE, time, 0)
            elif member_id in sidecar.records:
                after[member_id] = None
        if not after:
            raise SenseError(f"{where}: none of the {len(ids)} member(s) has a label to remove")
        return "unlabel", after, None

    return _locked_step(ensemble_path, change)


def undo(ensemble_path: str | os.PathLike) -> LabelStep:
    """Take back the last labeling step (again for the one before, and so on)."""
    from sense_core.io.atomic import atomic_write_text, output_lock

    folder = sidecar_folder(ensemble_path)
    with output_lock(folder):
        sidecar = read_sidecar(ensemble_path)
        if not sidecar.history:
            raise SenseError(f"{ensemble_path}: no labeling step to undo")
        _prepare_folder(folder, ensemble_path)
        last = sidecar.history[-1]
        records = dict(sidecar.records)
        for member_id, value in last["before"].items():
            if value is None:
                records.pop(member_id, None)
            else:
                records[member_id] = LabelRecord.from_json(member_id, value)
        # labels first: a crash before the history is shortened leaves a step whose second
        # undo restores the same rows
        atomic_write_text(folder / LABELS_CSV, _csv_text(records.values()))
        lines = [json.dumps(h, ensure_ascii=False) for h in sidecar.history[:-1]]
        atomic_write_text(folder / HISTORY_FILE, "".join(line + "\n" for line in lines))
    return LabelStep(int(last["step"]), "undo", tuple(last["before"]), last.get("class"), folder)
