"""Ensembles in one ``.npz`` file: keys ``fields`` (N, C, H, W) or (N, H, W), ``labels`` (N,),
optional ``class_names``, ``member_ids`` and ``meta_<name>`` per-member metadata.

Large files are not loaded whole: ``fields`` is streamed member by member from inside the zip
archive, so listing and batch reads need memory for one batch only. Loading never unpickles
(``allow_pickle=False``).
"""

from __future__ import annotations

import lzma
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sense_core.ensemble import (
    UNLABELED,
    MemberStore,
    check_class_names,
    check_member_count,
    check_member_id,
    check_memory,
    class_limit,
    default_member_ids,
    format_bytes,
    implied_class_names,
    label_values,
    member_nbytes,
    validate_labels,
)
from sense_core.errors import EnsembleError, SenseError, describe_exception
from sense_core.io.atomic import atomic_path
from sense_core.io.members import (
    FLOAT32_MAX,
    NpyHeader,
    apply_nan_policy,
    read_npy_header,
    read_npy_values,
)
from sense_core.progress import batches_with_progress

METADATA_PREFIX = "meta_"
# Below this size the fields are read into memory once; above, they are streamed.
IN_MEMORY_LIMIT_BYTES = 512 * 2**20


# Errors of zipfile/zlib/numpy on a damaged (or changing) archive.
ARCHIVE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    RuntimeError,  # an encrypted entry
    NotImplementedError,  # an unknown compression method
    lzma.LZMAError,  # an LZMA entry with damaged settings (found by the atheris npz target)
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
)
# Values of the entries SENSE reads besides ``fields``: dtype kinds allowed, and in words.
_STRINGS = ("US", "strings")
_IDS = ("USiu", "strings")
_LABELS = ("iuf", "integers (-1 = unlabeled)")
_METADATA = ("biufUS", "numbers or strings")


class NpzSource(MemberStore):
    """An ensemble ``.npz`` file, read lazily.

    Nothing is allocated from what the archive claims before it is checked: every entry's
    ``.npy`` header is read first, its shape checked against the member count and its size
    against the entry's size and the memory guard (:func:`~sense_core.ensemble.check_memory`),
    then the values are copied in chunks (never memory-mapped)."""

    def __init__(
        self, path: str | os.PathLike, nan_policy: str = "raise", fill_value: float = 0.0
    ) -> None:
        self._stream = None
        self.path = Path(path)
        self.nan_policy = nan_policy
        self.fill_value = fill_value
        self._cache: np.ndarray | None = None
        self._stream_position = 0
        where = str(self.path)
        if not self.path.is_file():
            raise EnsembleError(f"{where}: file not found")
        try:
            with open(self.path, "rb") as stream:
                if stream.read(6) == b"\x93NUMPY":
                    raise EnsembleError(f"{where}: a single .npy array, not an .npz archive")
                stream.seek(0)
                with zipfile.ZipFile(stream) as archive:
                    self._read_index(archive, where)
        except EnsembleError:
            raise
        except MemoryError as exc:
            raise EnsembleError(describe_exception(exc, f"{where}: reading the archive")) from exc
        except ARCHIVE_ERRORS as exc:
            raise EnsembleError(
                f"{where}: not a readable .npz archive ({describe_exception(exc)})"
            ) from exc

    def _read_index(self, archive: zipfile.ZipFile, where: str) -> None:
        """Read everything but the fields: keys, labels, ids, class names, metadata, header."""
        keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
        if "fields" not in keys:
            raise EnsembleError(f"{where}: no 'fields' array (keys: {sorted(keys)})")
        self._fields = fields = self._fields_header(archive, where)
        self._shape = (
            fields.shape if len(fields.shape) == 4 else (fields.shape[0], 1, *fields.shape[1:])
        )
        self._dtype, self._offset, self._fortran = fields.dtype, fields.offset, fields.fortran
        count = self._shape[0]
        check_member_count(count, where)
        limit = class_limit(count)
        names = _read_entry(archive, "class_names", where, _STRINGS, max_items=limit)
        ids = _read_entry(archive, "member_ids", where, _IDS, shape=(count,))
        labels = _read_entry(archive, "labels", where, _LABELS, shape=(count,))
        self.metadata = {
            key[len(METADATA_PREFIX) :]: _read_entry(
                archive, key, where, _METADATA, first_dimension=count
            )
            for key in sorted(keys)
            if key.startswith(METADATA_PREFIX)
        }
        labels = np.full(count, UNLABELED) if labels is None else label_values(labels, count, where)
        self.class_names = (
            implied_class_names(int(labels.max()), count, where)
            if names is None
            else check_class_names(_strings(names), f"{where}: class_names")
        )
        self.member_ids = default_member_ids(count) if ids is None else _strings(ids)
        for member_id in self.member_ids:
            check_member_id(member_id, where)
        if len(set(self.member_ids)) != count:
            raise EnsembleError(f"{where}: member_ids are not unique")
        self.labels = validate_labels(labels, self.class_names, count, where)

    @staticmethod
    def _fields_header(archive: zipfile.ZipFile, where: str) -> NpyHeader:
        header, _ = _entry_header(archive, "fields", where)
        shape = header.shape
        if len(shape) not in (3, 4):
            raise EnsembleError(f"{where}: fields must be (N, C, H, W) or (N, H, W), got {shape}")
        if shape[0] == 0:
            raise EnsembleError(f"{where}: ensemble is empty (fields has 0 members)")
        if header.dtype.kind not in "biuf":
            raise EnsembleError(f"{where}: fields must be numeric, got dtype {header.dtype}")
        if min(shape[1:]) == 0:
            raise EnsembleError(f"{where}: members have an empty shape {shape[1:]}")
        return header

    @property
    def member_shape(self) -> tuple[int, int, int]:
        return self._shape[1:]  # type: ignore[return-value]

    def _member_bytes(self) -> int:
        return int(np.prod(self.member_shape)) * self._dtype.itemsize

    def _load_all(self) -> np.ndarray:
        if self._cache is None:
            where = str(self.path)
            with zipfile.ZipFile(self.path) as archive:
                header, available = _entry_header(archive, "fields", where)
                if header != self._fields:
                    raise EnsembleError(
                        f"{where}: the file changed while being read; read it again"
                    )
                with archive.open("fields.npy") as stream:
                    stream.seek(header.offset)
                    values = read_npy_values(stream, header, f"{where}: 'fields'", available)
            self._cache = values.reshape(self._shape)
        return self._cache

    def _read_streamed(self, index: int) -> np.ndarray:
        position = self._offset + index * self._member_bytes()
        if self._stream is None or position < self._stream_position:
            self.close()
            self._archive = zipfile.ZipFile(self.path)
            self._stream = self._archive.open("fields.npy")
            self._stream_position = 0
        self._stream.seek(position)
        data = self._stream.read(self._member_bytes())
        if len(data) != self._member_bytes():
            raise EnsembleError(f"{self.path}: truncated 'fields' at member #{index}")
        self._stream_position = position + len(data)
        return np.frombuffer(data, dtype=self._dtype).reshape(self.member_shape)

    def read_members(self, indices: Sequence[int]) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        check_memory(
            2 * member_nbytes(self.member_shape, len(indices)),
            f"reading {len(indices)} member(s) of (C, H, W) = {self.member_shape}",
            str(self.path),
            "read fewer members at a time (--batch-size) or resample the members",
        )
        total = self._shape[0] * self._member_bytes()
        in_memory = self._fortran or total <= self._in_memory_limit()
        if self._fortran and self._cache is None:
            check_memory(
                total,
                "reading a Fortran-ordered 'fields' array (it cannot be streamed)",
                str(self.path),
                "rewrite the file in C order (np.ascontiguousarray)",
            )
        out = np.empty((len(indices), *self.member_shape), dtype=np.float32)
        try:
            if in_memory:
                raw = self._load_all()[indices]
            else:
                raw = np.empty((len(indices), *self.member_shape), dtype=self._dtype)
                for slot in np.argsort(indices, kind="stable"):
                    raw[slot] = self._read_streamed(int(indices[slot]))
        except ARCHIVE_ERRORS as exc:
            raise EnsembleError(
                f"{self.path}: cannot read 'fields' ({describe_exception(exc)}); was the file "
                "changed or truncated while being read?"
            ) from exc
        self._check_range(raw, indices)
        out[:] = raw
        for slot, index in enumerate(indices):
            out[slot] = apply_nan_policy(
                out[slot], self.member_ids[index], self.nan_policy, self.fill_value, str(self.path)
            )
        return out

    @staticmethod
    def _in_memory_limit() -> int:
        from sense_core.ensemble import memory_budget

        budget, _ = memory_budget()
        return IN_MEMORY_LIMIT_BYTES if budget is None else min(IN_MEMORY_LIMIT_BYTES, budget // 2)

    def _check_range(self, raw: np.ndarray, indices: np.ndarray) -> None:
        """float64 values beyond float32's range would silently become infinities."""
        if raw.dtype.kind != "f" or raw.dtype.itemsize <= 4:
            return
        finite = np.where(np.isfinite(raw), np.abs(raw), 0.0)
        too_big = finite.reshape(len(raw), -1).max(axis=1) > FLOAT32_MAX
        if too_big.any():
            slot = int(np.flatnonzero(too_big)[0])
            raise EnsembleError(
                f"{self.path}: member {self.member_ids[indices[slot]]!r} has values up to "
                f"{finite[slot].max():.3g}, beyond the float32 range SENSE computes in "
                f"(|x| <= {FLOAT32_MAX:.3g}); rescale the fields"
            )

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._archive.close()
            self._stream = None

    def __del__(self) -> None:
        self.close()


def _entry_header(archive: zipfile.ZipFile, key: str, where: str) -> tuple[NpyHeader, int]:
    """The ``.npy`` header of entry ``key`` and the bytes of values its entry holds (its size
    in the zip directory, a bound on what reading it can produce), refusing a header whose values
    would not fit in them. Reads the header only."""
    name = f"{key}.npy"
    size = archive.getinfo(name).file_size
    with archive.open(name) as stream:
        header = read_npy_header(stream, f"{where}: {key!r}")
    available = size - header.offset
    if header.nbytes != available:
        raise EnsembleError(
            f"{where}: {key!r} claims {header.dtype} values of shape {header.shape} "
            f"({format_bytes(header.nbytes)}) but its entry holds "
            f"{format_bytes(max(available, 0))}: the archive is damaged"
        )
    return header, available


def _read_entry(
    archive: zipfile.ZipFile,
    key: str,
    where: str,
    values: tuple[str, str],
    shape: tuple[int, ...] | None = None,
    first_dimension: int | None = None,
    max_items: int | None = None,
) -> np.ndarray | None:
    """Entry ``key`` (None if absent), its header checked before its values are read: dtype
    kind in ``values[0]`` (``values[1]`` says it in words), the ``shape`` or
    ``first_dimension`` expected, at most ``max_items`` values, and bytes within the memory
    guard."""
    if f"{key}.npy" not in archive.namelist():
        return None
    header, available = _entry_header(archive, key, where)
    kinds, expected = values
    if header.dtype.kind not in kinds:
        raise EnsembleError(f"{where}: {key!r} must be {expected}, got {header.dtype} values")
    if shape is not None and header.shape != shape:
        raise EnsembleError(f"{where}: {key!r} has shape {header.shape}, expected {shape}")
    if first_dimension is not None and header.shape[:1] != (first_dimension,):
        raise EnsembleError(
            f"{where}: {key!r} has shape {header.shape}, expected {first_dimension} value(s), one "
            "per member"
        )
    if max_items is not None and math.prod(header.shape) > max_items:
        raise EnsembleError(
            f"{where}: {key!r} has {math.prod(header.shape)} values, more than {max_items}"
        )
    check_memory(
        2 * header.nbytes, f"reading {key!r} ({header.dtype}, shape {header.shape})", where
    )
    with archive.open(f"{key}.npy") as stream:
        stream.seek(header.offset)
        return read_npy_values(stream, header, f"{where}: {key!r}", available)


def _strings(values: np.ndarray) -> tuple[str, ...]:
    """Text values as str (bytes are decoded as UTF-8)."""
    flat = values.reshape(-1)
    if flat.dtype.kind == "S":
        return tuple(v.decode("utf-8", errors="replace") for v in flat.tolist())
    return tuple(str(v) for v in flat.tolist())


def check_npz_entries(path: str | os.PathLike) -> None:
    """Refuse an ``.npz`` file whose entries are damaged or claim more memory than the guard
    allows (a small file can inflate to gigabytes), before ``np.load`` reads any of them."""
    where = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(".npy"):
                    header, _ = _entry_header(archive, name[:-4], where)
                    check_memory(2 * header.nbytes, f"reading {name[:-4]!r}", where)
    except (SenseError, FileNotFoundError):
        raise
    except ARCHIVE_ERRORS as exc:
        raise EnsembleError(
            f"{where}: not a readable .npz archive ({describe_exception(exc)})"
        ) from exc


def _write_npy(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as stream:
        np.lib.format.write_array(stream, np.asarray(array), allow_pickle=False)


def write_npz(
    store: MemberStore,
    path: str | os.PathLike,
    overwrite: bool = False,
    batch_size: int = 256,
    progress: bool = False,
) -> Path:
    """Write an ensemble (in memory or streamed from a source) to ``path`` atomically."""
    path = Path(path)
    shape = (len(store), *store.member_shape)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=3) as archive:
            with archive.open("fields.npy", "w", force_zip64=True) as stream:
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                    "fortran_order": False,
                    "shape": shape,
                }
                np.lib.format.write_array_header_1_0(stream, header)
                for _, batch in batches_with_progress(store, batch_size, progress, "writing npz"):
                    stream.write(np.ascontiguousarray(batch, dtype="<f4").tobytes())
            _write_npy(archive, "labels", np.asarray(store.labels, dtype=np.int64))
            _write_npy(archive, "class_names", np.array(store.class_names, dtype=str))
            _write_npy(archive, "member_ids", np.array(store.member_ids, dtype=str))
            for key, values in store.metadata.items():
                _write_npy(archive, METADATA_PREFIX + key, values)
    return path
