"""Ensembles as a folder of member files plus optional side files.

::

    members/
      m000000.vti  m000001.vti ...   one file per member (.npy, .png, .tif/.tiff, .vti);
                                     the member id is the file name without its suffix
      labels.csv                     optional: member_id,label (class name, class index or blank)
      metadata.csv                   optional: member_id,<name>,... one row per member
      ensemble.json                  optional: class names in index order (written by SENSE)
      ensemble.vtm / ensemble.pvd    ParaView index files (written by SENSE, ignored on read)

Listing a folder reads no member: fields are read on demand, so folders with more members
than fit in memory can be listed and streamed in batches.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sense_core.ensemble import (
    UNLABELED,
    MemberStore,
    check_class_names,
    check_member_id,
    check_memory,
    format_bytes,
    implied_class_names,
    member_nbytes,
    natural_key,
    validate_labels,
)
from sense_core.errors import EnsembleError
from sense_core.io.atomic import atomic_directory
from sense_core.io.escape import csv_writer, unescape_cell
from sense_core.io.members import MEMBER_SUFFIXES, read_member_file
from sense_core.progress import batches_with_progress

LABELS_FILE = "labels.csv"
METADATA_FILE = "metadata.csv"
DESCRIPTION_FILE = "ensemble.json"
FOLDER_FORMAT = "sense-ensemble-folder"
FOLDER_FORMAT_VERSION = 1
_SIDE_FILES = {LABELS_FILE, METADATA_FILE, DESCRIPTION_FILE}
_IGNORED_SUFFIXES = {".vtm", ".pvd", ".md", ".txt"}
# Memory a side file's text may take once parsed, per byte of the file (the memory guard).
SIDE_FILE_MEMORY_FACTOR = 8
# dtypes ensemble.json may give for numeric metadata columns (the writer records these)
_METADATA_DTYPES = frozenset(np.dtype(code).name for code in "?bBhHiIlLqQefdg")


def list_member_files(folder: Path) -> list[Path]:
    """Member files of ``folder`` in natural order of their ids; unknown files are an error."""
    members, unknown = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name in _SIDE_FILES or not entry.is_file():
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in MEMBER_SUFFIXES:
                members.append(Path(entry.path))
            elif suffix not in _IGNORED_SUFFIXES and not name.upper().startswith("README"):
                unknown.append(name)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (" ..." if len(unknown) > 5 else "")
        raise EnsembleError(
            f"{folder}: {len(unknown)} file(s) of unknown type: {shown} "
            f"(member files are {', '.join(MEMBER_SUFFIXES)}; side files {sorted(_SIDE_FILES)})"
        )
    members.sort(key=lambda p: natural_key(p.stem))
    return members


def _read_side_file(path: Path) -> str:
    """The text of a side file, refused before reading when parsing it would not fit in memory."""
    try:
        size = path.stat().st_size
        check_memory(
            SIDE_FILE_MEMORY_FACTOR * size,
            f"reading {path.name} ({format_bytes(size)})",
            str(path),
            "is it the right file?",
        )
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnsembleError(f"{path}: cannot read ({exc})") from exc


def _read_csv(
    path: Path, max_rows: int | None = None
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and non-empty rows (with their line numbers); more than ``max_rows`` rows after
    the header (one per member) is refused as soon as it is seen."""
    text = _read_side_file(path)
    reader = csv.reader(io.StringIO(text))
    rows = []
    try:
        for n, row in enumerate(reader, start=1):
            if not row:
                continue
            rows.append((n, row))
            if max_rows is not None and len(rows) > max_rows + 1:
                raise EnsembleError(
                    f"{path}, line {n}: more rows than the {max_rows} members (one row each)"
                )
    except csv.Error as exc:
        raise EnsembleError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from exc
    if not rows:
        raise EnsembleError(f"{path}: empty file (expected a header row)")
    header = [unescape_cell(cell.strip()) for cell in rows[0][1]]
    return header, rows[1:]


def _member_rows(path: Path, rows, index_of: dict[str, int]):
    """Yield (line, member index, row) and reject unknown or repeated member ids."""
    seen: dict[str, int] = {}
    for line, row in rows:
        member_id = unescape_cell(row[0].strip())
        if member_id not in index_of:
            raise EnsembleError(f"{path}, line {line}: unknown member {member_id!r} (no such file)")
        if member_id in seen:
            raise EnsembleError(
                f"{path}, line {line}: member {member_id!r} is already listed on line "
                f"{seen[member_id]}"
            )
        seen[member_id] = line
        yield line, index_of[member_id], row


def read_labels_csv(
    path: Path, member_ids: Sequence[str], class_names: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels per member and the class names, from ``member_id,label`` rows.

    A label is a class name, a class index, or blank (unlabeled). Without known class names,
    all-integer labels name classes class_0, class_1, ...; otherwise the distinct names, sorted.
    """
    header, rows = _read_csv(path, len(member_ids))
    if [cell.lower() for cell in header[:2]] != ["member_id", "label"]:
        raise EnsembleError(f"{path}: header must be 'member_id,label', found {','.join(header)}")
    index_of = {m: i for i, m in enumerate(member_ids)}
    raw: list[tuple[int, int, str]] = []
    for line, index, row in _member_rows(path, rows, index_of):
        value = unescape_cell(row[1].strip()) if len(row) > 1 else ""
        if value and value != str(UNLABELED):
            raw.append((line, index, value))
    if class_names is None:
        if all(_is_int(v) for _, _, v in raw):
            line, top = max(((n, int(v)) for n, _, v in raw), key=lambda t: t[1], default=(0, -1))
            class_names = implied_class_names(top, len(member_ids), f"{path}, line {line}")
        else:
            class_names = tuple(sorted({v for _, _, v in raw}, key=natural_key))
    class_names = tuple(class_names)
    by_name = {name: i for i, name in enumerate(class_names)}
    labels = np.full(len(member_ids), UNLABELED, dtype=np.int64)
    for line, index, value in raw:
        if value in by_name:
            labels[index] = by_name[value]
        elif _is_int(value) and 0 <= int(value) < len(class_names):
            labels[index] = int(value)
        else:
            raise EnsembleError(
                f"{path}, line {line}: unknown class {value!r} (classes: {list(class_names)})"
            )
    return labels, class_names


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_metadata_csv(
    path: Path, member_ids: Sequence[str], dtypes: dict[str, str] | None = None
) -> dict[str, np.ndarray]:
    """Per-member metadata columns; numeric columns become numbers, others strings."""
    header, rows = _read_csv(path, len(member_ids))
    if not header or header[0].lower() != "member_id":
        raise EnsembleError(f"{path}: the first column must be 'member_id'")
    names = header[1:]
    repeated = sorted({name for name in names if names.count(name) > 1 or not name})
    if repeated:
        raise EnsembleError(f"{path}: column names must be unique and not empty: {repeated}")
    check_memory(
        16 * len(names) * len(member_ids),
        f"{len(names)} metadata columns for {len(member_ids)} members",
        str(path),
    )
    index_of = {m: i for i, m in enumerate(member_ids)}
    columns = {name: [""] * len(member_ids) for name in names}
    for _, index, row in _member_rows(path, rows, index_of):
        for name, cell in zip(names, row[1:]):
            columns[name][index] = unescape_cell(cell.strip())
    metadata = {}
    for name, cells in columns.items():
        dtype = (dtypes or {}).get(name)
        try:
            values = np.array([float(c) if c else np.nan for c in cells])
            # a member without a value keeps NaN: an integer column then stays float
            if dtype is not None and (np.dtype(dtype).kind == "f" or np.isfinite(values).all()):
                values = values.astype(dtype)
        except ValueError:
            values = np.array(cells, dtype=str)
        metadata[name] = values
    return metadata


class MemberFolderSource(MemberStore):
    """A folder of member files, read lazily (see the module docstring for the layout)."""

    def __init__(
        self,
        path: str | os.PathLike,
        nan_policy: str = "raise",
        fill_value: float = 0.0,
        array_name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.nan_policy = nan_policy
        self.fill_value = fill_value
        self.array_name = array_name
        if not self.path.is_dir():
            raise EnsembleError(f"{self.path}: not a folder")
        self.files = list_member_files(self.path)
        if not self.files:
            raise EnsembleError(
                f"{self.path}: ensemble is empty (no {', '.join(MEMBER_SUFFIXES)} files)"
            )
        stems: dict[str, Path] = {}
        for file in self.files:
            if file.stem in stems:
                raise EnsembleError(
                    f"{self.path}: member id {file.stem!r} used by two files: "
                    f"{stems[file.stem].name} and {file.name}"
                )
            stems[file.stem] = file
            check_member_id(file.stem, str(file))
        self.member_ids = tuple(stems)
        description = self._read_description()
        class_names = description.get("class_names")
        labels_path = self.path / LABELS_FILE
        if labels_path.exists():
            self.labels, self.class_names = read_labels_csv(
                labels_path, self.member_ids, class_names
            )
        else:
            self.class_names = tuple(class_names or ())
            self.labels = np.full(len(self.member_ids), UNLABELED, dtype=np.int64)
        self.labels = validate_labels(
            self.labels, self.class_names, len(self.files), str(self.path)
        )
        metadata_path = self.path / METADATA_FILE
        self.metadata = (
            read_metadata_csv(metadata_path, self.member_ids, description.get("metadata_dtypes"))
            if metadata_path.exists()
            else {}
        )
        self._shape: tuple[int, int, int] | None = None
        self._shape_source: Path | None = None

    def _read_description(self) -> dict:
        path = self.path / DESCRIPTION_FILE
        if not path.exists():
            return {}
        try:
            description = json.loads(_read_side_file(path))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, or a huge number
            raise EnsembleError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(description, dict) or description.get("format") != FOLDER_FORMAT:
            raise EnsembleError(f"{path}: not a SENSE ensemble description")
        version = description.get("version")
        if not isinstance(version, int) or version > FOLDER_FORMAT_VERSION:
            raise EnsembleError(
                f"{path}: format version {version!r} is newer than this SENSE understands "
                f"({FOLDER_FORMAT_VERSION}); update SENSE"
            )
        names = description.get("class_names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise EnsembleError(f"{path}: 'class_names' must be a list of strings")
        check_class_names(names, f"{path}: class_names")
        dtypes = description.get("metadata_dtypes", {})
        if not isinstance(dtypes, dict) or not all(
            isinstance(v, str) and v in _METADATA_DTYPES for v in dtypes.values()
        ):
            raise EnsembleError(
                f"{path}: 'metadata_dtypes' must map column names to numeric dtypes "
                f"({', '.join(sorted(_METADATA_DTYPES))})"
            )
        return description

    def _read(self, index: int) -> np.ndarray:
        return read_member_file(
            self.files[index],
            self.member_ids[index],
            nan_policy=self.nan_policy,
            fill_value=self.fill_value,
            array_name=self.array_name,
        )

    @property
    def member_shape(self) -> tuple[int, int, int]:
        if self._shape is None:
            self._shape = self._read(0).shape  # type: ignore[assignment]
            self._shape_source = self.files[0]
        return self._shape  # type: ignore[return-value]

    def read_members(self, indices: Sequence[int]) -> np.ndarray:
        shape = self.member_shape
        indices = np.asarray(indices, dtype=np.int64)
        check_memory(
            member_nbytes(shape, len(indices)),
            f"reading {len(indices)} member(s) of (C, H, W) = {shape}",
            str(self.path),
            "read fewer members at a time (--batch-size) or resample the members",
        )
        out = np.empty((len(indices), *shape), dtype=np.float32)
        for slot, index in enumerate(indices):
            member = self._read(int(index))
            if member.shape != shape:
                raise EnsembleError(
                    f"{self.files[index]}: member {self.member_ids[index]!r} has shape "
                    f"(C, H, W) = {member.shape}, but {self._shape_source.name} has {shape}; "
                    "all members of an ensemble must have one shape"
                )
            out[slot] = member
        return out


def write_member_folder(
    store: MemberStore,
    path: str | os.PathLike,
    member_format: str = "vti",
    overwrite: bool = False,
    batch_size: int = 256,
    progress: bool = False,
) -> Path:
    """Write one file per member (``vti`` or ``npy``) plus side files, atomically.

    ``.vti`` folders also get ``ensemble.vtm`` (members as named blocks) and ``ensemble.pvd``
    (members as time steps), which ParaView opens directly.
    """
    from sense_core.io.vti import store_member_image, write_index_files, write_vti

    if member_format not in ("vti", "npy"):
        raise ValueError(f"member_format must be 'vti' or 'npy', got {member_format!r}")
    path = Path(path)
    files = [f"{check_member_id(m, str(path))}.{member_format}" for m in store.member_ids]
    with atomic_directory(path, overwrite=overwrite) as tmp:
        for indices, batch in batches_with_progress(store, batch_size, progress, "writing members"):
            for index, member in zip(indices, batch):
                target = tmp / files[index]
                if member_format == "npy":
                    np.save(target, member, allow_pickle=False)
                    continue
                write_vti(target, store_member_image(store, index, member))
        _write_side_files(store, tmp, member_format)
        if member_format == "vti":
            write_index_files(tmp, store.member_ids, files)
    return path


def _write_side_files(store: MemberStore, folder: Path, member_format: str) -> None:
    with open(folder / LABELS_FILE, "w", newline="", encoding="utf-8") as stream:
        writer = csv_writer(stream)  # cells that a spreadsheet would run are escaped
        writer.writerow(["member_id", "label"])
        for member_id, label in zip(store.member_ids, store.labels):
            writer.writerow([member_id, store.class_names[label] if label != UNLABELED else ""])
    names = list(store.metadata)
    if names:
        with open(folder / METADATA_FILE, "w", newline="", encoding="utf-8") as stream:
            writer = csv_writer(stream)
            writer.writerow(["member_id", *names])
            columns = [np.asarray(store.metadata[n]).tolist() for n in names]
            for i, member_id in enumerate(store.member_ids):
                writer.writerow([member_id, *(c[i] for c in columns)])  # floats as repr()
    description = {
        "format": FOLDER_FORMAT,
        "version": FOLDER_FORMAT_VERSION,
        "members": len(store),
        "member_shape": list(store.member_shape),
        "member_format": member_format,
        "class_names": list(store.class_names),
        "metadata_dtypes": {
            n: str(np.asarray(store.metadata[n]).dtype)
            for n in names
            if np.asarray(store.metadata[n]).dtype.kind in "biuf"
        },
    }
    (folder / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2) + "\n")
