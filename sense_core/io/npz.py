"""Ensembles in one ``.npz`` file: keys ``fields`` (N, C, H, W) or (N, H, W), ``labels`` (N,),
optional ``class_names``, ``member_ids`` and ``meta_<name>`` per-member metadata.

Large files are not loaded whole: ``fields`` is streamed member by member from inside the zip
archive, so listing and batch reads need memory for one batch only. Loading never unpickles
(``allow_pickle=False``).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sense_core.ensemble import (
    UNLABELED,
    MemberStore,
    check_member_id,
    check_memory,
    default_member_ids,
    member_nbytes,
    validate_labels,
)
from sense_core.errors import EnsembleError
from sense_core.io.atomic import atomic_path
from sense_core.io.members import FLOAT32_MAX, apply_nan_policy
from sense_core.progress import batches_with_progress

METADATA_PREFIX = "meta_"
# Below this size the fields are read into memory once; above, they are streamed.
IN_MEMORY_LIMIT_BYTES = 512 * 2**20


class NpzSource(MemberStore):
    """An ensemble ``.npz`` file, read lazily."""

    def __init__(
        self, path: str | os.PathLike, nan_policy: str = "raise", fill_value: float = 0.0
    ) -> None:
        self._stream = None
        self.path = Path(path)
        self.nan_policy = nan_policy
        self.fill_value = fill_value
        self._cache: np.ndarray | None = None
        self._stream_position = 0
        if not self.path.is_file():
            raise EnsembleError(f"{self.path}: file not found")
        try:
            with open(self.path, "rb") as stream:
                self._read_index(stream, str(self.path))
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise EnsembleError(f"{self.path}: not a readable .npz archive ({exc})") from exc

    def _read_index(self, stream, where: str) -> None:
        """Read everything but the fields: keys, labels, ids, class names, metadata, header."""
        try:
            archive = np.load(stream, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise EnsembleError(f"{where}: not a readable .npz archive ({exc})") from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise EnsembleError(f"{where}: a single .npy array, not an .npz archive")
        with archive:
            keys = set(archive.files)
            if "fields" not in keys:
                raise EnsembleError(f"{where}: no 'fields' array (keys: {sorted(keys)})")
            self._shape, self._dtype, self._offset, self._fortran = self._fields_header(where)
            count = self._shape[0]
            if count == 0:
                raise EnsembleError(f"{where}: ensemble is empty (fields has 0 members)")
            try:
                self.class_names = self._strings(archive, "class_names", None)
                member_ids = self._strings(archive, "member_ids", None)
                labels = archive["labels"] if "labels" in keys else np.full(count, UNLABELED)
                self.metadata = {
                    key[len(METADATA_PREFIX) :]: archive[key]
                    for key in sorted(keys)
                    if key.startswith(METADATA_PREFIX)
                }
            except ValueError as exc:  # object arrays would need pickle
                raise EnsembleError(f"{where}: unreadable array ({exc})") from exc
            except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise EnsembleError(f"{where}: damaged archive ({exc})") from exc
        if self.class_names is None:
            top = int(labels.max()) if labels.size else -1
            self.class_names = tuple(f"class_{i}" for i in range(top + 1))
        self.member_ids = default_member_ids(count) if member_ids is None else member_ids
        if len(self.member_ids) != count:
            raise EnsembleError(f"{where}: {len(self.member_ids)} member_ids for {count} members")
        for member_id in self.member_ids:
            check_member_id(member_id, where)
        if len(set(self.member_ids)) != count:
            raise EnsembleError(f"{where}: member_ids are not unique")
        self.labels = validate_labels(labels, self.class_names, count, where)
        for key, values in self.metadata.items():
            if values.shape[:1] != (count,):
                raise EnsembleError(f"{where}: metadata {key!r} does not have {count} values")

    @staticmethod
    def _strings(archive, key: str, default):
        if key not in archive.files:
            return default
        return tuple(str(v) for v in np.asarray(archive[key]).reshape(-1))

    def _fields_header(self, where: str):
        with zipfile.ZipFile(self.path) as archive, archive.open("fields.npy") as stream:
            try:
                version = np.lib.format.read_magic(stream)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(stream)
            except ValueError as exc:
                raise EnsembleError(f"{where}: 'fields' is not a valid array ({exc})") from exc
            offset = stream.tell()
        if len(shape) == 3:
            shape = (shape[0], 1, *shape[1:])
        if len(shape) != 4:
            raise EnsembleError(f"{where}: fields must be (N, C, H, W) or (N, H, W), got {shape}")
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or dtype.hasobject:
            raise EnsembleError(f"{where}: fields must be numeric, got dtype {dtype}")
        if min(shape[1:]) == 0:
            raise EnsembleError(f"{where}: members have an empty shape {shape[1:]}")
        return tuple(int(s) for s in shape), dtype, offset, fortran

    @property
    def member_shape(self) -> tuple[int, int, int]:
        return self._shape[1:]  # type: ignore[return-value]

    def _member_bytes(self) -> int:
        return int(np.prod(self.member_shape)) * self._dtype.itemsize

    def _load_all(self) -> np.ndarray:
        if self._cache is None:
            with open(self.path, "rb") as stream, np.load(stream, allow_pickle=False) as archive:
                self._cache = np.asarray(archive["fields"]).reshape(self._shape)
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
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, zlib.error) as exc:
            raise EnsembleError(f"{self.path}: cannot read 'fields' ({exc})") from exc
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
