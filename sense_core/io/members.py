"""Read one member file (``.npy``, ``.png``, ``.tif``/``.tiff``, ``.vti``) as a (C, H, W) array.

Integer images (8/16-bit) keep their raw values as float32; per-channel normalisation happens
later, from training statistics. Non-finite values follow the reader's ``nan_policy``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from sense_core.ensemble import check_finite, check_memory, format_bytes, member_nbytes
from sense_core.errors import EnsembleError, SenseError, describe_exception

MEMBER_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".vti")
NAN_POLICIES = ("raise", "fill")


def _as_chw(array: np.ndarray, path: Path, channel_axis: int | None = None) -> np.ndarray:
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and channel_axis is not None:
        array = np.moveaxis(array, channel_axis, 0)
    elif array.ndim != 3:
        raise EnsembleError(f"{path}: expected a 2D field or (C, H, W), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise EnsembleError(f"{path}: values must be numeric, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise EnsembleError(f"{path}: complex values are not supported")
    return to_float32(array, str(path))


FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_float32(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` as contiguous float32; finite values beyond float32's range (float64 data)
    are an error instead of silently becoming infinities."""
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        finite = np.isfinite(array)
        if np.any(np.abs(array[finite]) > FLOAT32_MAX):
            largest = float(np.max(np.abs(array[finite])))
            raise EnsembleError(
                f"{where}: values up to {largest:.3g} exceed the float32 range SENSE computes in "
                f"(|x| <= {FLOAT32_MAX:.3g}); rescale the field"
            )
    return np.ascontiguousarray(array, dtype=np.float32)


def check_member_memory(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse a member whose decoding would not fit in memory (its decoded values and their
    float32 copy), before decoding it."""
    check_memory(
        2 * member_nbytes(shape),
        f"a member of shape {tuple(int(s) for s in shape)}",
        str(path),
        "SENSE works on 2D fields of moderate size: resample or crop the members",
    )


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says: shape, memory order, dtype, and where the values start."""

    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of the values (Python integers: a huge shape cannot overflow)."""
        return math.prod(self.shape) * self.dtype.itemsize


# Values are read this many bytes at a time (a file shorter than its header says ends the read).
NPY_CHUNK_BYTES = 16 * 2**20


def read_npy_header(stream: BinaryIO, where: str) -> NpyHeader:
    """Parse the ``.npy`` header at the stream's position; reads nothing else. Negative
    dimensions, object arrays (they would need pickle) and structured dtypes are refused."""
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(stream)
    except (ValueError, TypeError, EOFError, OSError) as exc:
        raise EnsembleError(f"{where}: not a valid .npy array ({describe_exception(exc)})") from exc
    if any(n < 0 for n in shape):
        raise EnsembleError(f"{where}: the header has a negative dimension, shape {shape}")
    if dtype.hasobject:
        raise EnsembleError(f"{where}: an array of Python objects (never read: it needs pickle)")
    if dtype.fields is not None or dtype.subdtype is not None:
        raise EnsembleError(f"{where}: a structured array (dtype {dtype}); SENSE reads plain ones")
    return NpyHeader(tuple(int(n) for n in shape), bool(fortran), dtype, int(stream.tell()))


def read_npy_values(stream: BinaryIO, header: NpyHeader, where: str, available: int) -> np.ndarray:
    """The values after ``header``, copied into a new array in chunks (never memory-mapped: a
    file truncated while it is read gives an error here, not a SIGBUS that kills the process).

    ``available`` is the number of bytes the file holds after the header; a header that claims
    more is refused before anything is allocated. Check the memory guard before calling."""
    if available < header.nbytes:
        raise EnsembleError(
            f"{where}: the header says {header.dtype} values of shape {header.shape} "
            f"({format_bytes(header.nbytes)}) but only {format_bytes(max(available, 0))} follow "
            "it: the file is truncated or its header is wrong"
        )
    values = np.empty(header.shape[::-1] if header.fortran else header.shape, header.dtype)
    view = memoryview(values.reshape(-1).view(np.uint8))
    position = 0
    while position < header.nbytes:
        count = stream.readinto(view[position : position + NPY_CHUNK_BYTES])
        if not count:
            raise EnsembleError(
                f"{where}: the file changed or was truncated while being read (got "
                f"{position} of {header.nbytes} bytes of values)"
            )
        position += count
    return values.T if header.fortran else values


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb", buffering=0) as stream:
        before = os.fstat(stream.fileno())
        header = read_npy_header(stream, str(path))
        if len(header.shape) not in (2, 3):
            raise EnsembleError(
                f"{path}: expected a 2D field or (C, H, W), got shape {header.shape}"
            )
        if header.dtype.kind not in "biuf":
            what = "complex values are" if header.dtype.kind == "c" else f"dtype {header.dtype} is"
            raise EnsembleError(f"{path}: {what} not supported (values must be real numbers)")
        if min(header.shape) == 0:
            raise EnsembleError(f"{path}: the member is empty, shape {header.shape}")
        check_member_memory(path, header.shape)
        values = read_npy_values(stream, header, str(path), before.st_size - header.offset)
        after = os.fstat(stream.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise EnsembleError(f"{path}: the file changed while being read; read it again")
    return _as_chw(values, path)


class _QuietDecoder:
    """Within the block, an image library's warnings and log lines are collected instead of
    printed: SENSE reports a problem once, in one line naming the file. ``messages`` holds them
    (tifffile, for one, logs damaged or missing image data and fills the gap with zeros)."""

    def __init__(self, logger_name: str) -> None:
        import logging

        self.messages: list[str] = []
        self._logger = logging.getLogger(logger_name)
        self._handler = logging.Handler(logging.WARNING)
        self._handler.addFilter(self._collect)  # collects every record, emits none

    def _collect(self, record) -> bool:
        if len(self.messages) < 10:
            self.messages.append(record.getMessage())
        return False

    def __enter__(self) -> _QuietDecoder:
        import warnings

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")  # e.g. PIL's DecompressionBombWarning: the guard decides
        self._propagate = self._logger.propagate
        self._logger.addHandler(self._handler)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.propagate = self._propagate
        self._warnings.__exit__(*exc_info)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with _QuietDecoder("PIL"), Image.open(path) as image:
        check_member_memory(path, (len(image.getbands()), image.height, image.width))
        image.load()
        values = np.asarray(image)
    return _as_chw(values, path, channel_axis=-1)


# A member is one 2D field: its channels may be pages, but not this many.
TIFF_MAX_DIRECTORIES = 10_000


def check_tiff_directories(path: Path) -> None:
    """Walk a TIFF's chains of image file directories (IFDs, SubIFDs included) before tifffile
    does, and refuse a chain that loops back or more than TIFF_MAX_DIRECTORIES of them: tifffile
    spends minutes (and memory) on such files (a 347-byte file with a looping chain outlasted the
    fuzzer's 10 s limit). Only the header, directory counts and offsets are read; a structure
    this walk cannot follow is left to tifffile, which reports it."""
    import struct

    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        head = stream.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 16:
            return
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:  # classic TIFF: 2-byte counts, 12-byte entries, 4-byte offsets
            count_format, entry_size, offset_format = "H", 12, "I"
            first = struct.unpack(order + "I", head[4:8])[0]
        elif version == 43:  # BigTIFF: 8-byte counts, 20-byte entries, 8-byte offsets
            count_format, entry_size, offset_format = "Q", 20, "Q"
            first = struct.unpack(order + "Q", head[8:16])[0]
        else:
            return
        count_size = struct.calcsize(count_format)
        offset_size = struct.calcsize(offset_format)
        chains, seen = [first], set()
        while chains:
            offset, chain = chains.pop(), set()
            while offset and offset not in seen:
                if offset in chain:
                    raise EnsembleError(f"{path}: damaged TIFF (its directory chain loops back)")
                chain.add(offset)
                if len(seen) + len(chain) > TIFF_MAX_DIRECTORIES:
                    raise EnsembleError(
                        f"{path}: a TIFF of more than {TIFF_MAX_DIRECTORIES} images; a member "
                        "is one 2D field (its channels may be pages)"
                    )
                stream.seek(offset)
                raw = stream.read(count_size)
                if offset + count_size > size or len(raw) < count_size:
                    break
                entries = struct.unpack(order + count_format, raw)[0]
                if entries > 4096:
                    break  # tifffile refuses a directory this long itself
                block = stream.read(entries * entry_size + offset_size)
                if len(block) < entries * entry_size + offset_size:
                    break
                for index in range(entries):
                    entry = block[index * entry_size : (index + 1) * entry_size]
                    if struct.unpack(order + "H", entry[:2])[0] == 330:  # SubIFDs
                        chains.extend(_tiff_offsets(stream, entry, order, offset_size, size))
                offset = struct.unpack(order + offset_format, block[-offset_size:])[0]
            seen |= chain


def _tiff_offsets(stream, entry: bytes, order: str, offset_size: int, size: int) -> list[int]:
    """The directory offsets a SubIFDs entry lists (none when they cannot be in the file)."""
    import struct

    kind, count = struct.unpack(order + ("HI" if offset_size == 4 else "HQ"), entry[2:-offset_size])
    width = {4: 4, 13: 4, 16: 8, 18: 8}.get(kind)
    if width is None or count * width > size:
        return []
    value = entry[-offset_size:]
    if count * width > offset_size:
        position = stream.tell()
        stream.seek(struct.unpack(order + ("I" if offset_size == 4 else "Q"), value)[0])
        value = stream.read(count * width)
        stream.seek(position)
        if len(value) < count * width:
            return []
    return list(
        struct.unpack(f"{order}{count}{'I' if width == 4 else 'Q'}", value[: count * width])
    )


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    check_tiff_directories(path)
    with _QuietDecoder("tifffile") as log, tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise EnsembleError(f"{path}: the TIFF file holds no image")
        series = tif.series[0]
        check_member_memory(path, series.shape)
        before = len(log.messages)
        values = series.asarray()
        if len(log.messages) > before:  # tifffile logs missing or damaged data, fills in zeros
            raise EnsembleError(f"{path}: damaged TIFF image data ({log.messages[before][:200]})")
        axes = series.axes
    if values.size == 0:
        raise EnsembleError(f"{path}: the image is empty, shape {values.shape}")
    squeezed_axes = "".join(a for a, n in zip(axes, values.shape) if n != 1) or "YX"
    values = values.squeeze()
    channel_axis = next((i for i, a in enumerate(squeezed_axes) if a in "SC"), None)
    if values.ndim == 3 and channel_axis is None:
        if not squeezed_axes.endswith("YX"):
            raise EnsembleError(f"{path}: a 3D TIFF ({axes}); SENSE reads 2D fields")
        channel_axis = 0  # a stack of 2D planes (pages), as tifffile writes (C, H, W)
    return _as_chw(values, path, channel_axis=channel_axis)


def _read_vti(path: Path, array_name: str | None) -> np.ndarray:
    from sense_core.io.vti import read_vti

    return read_vti(path, array_name)


def read_member_file(
    path: str | os.PathLike,
    member_id: str | None = None,
    nan_policy: str = "raise",
    fill_value: float = 0.0,
    array_name: str | None = None,
) -> np.ndarray:
    """Read one member as float32 (C, H, W); errors name the file.

    ``nan_policy``: ``"raise"`` rejects NaN/Inf, ``"fill"`` replaces them with ``fill_value``
    (e.g. cells outside a simulation's domain).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            member = _read_npy(path)
        elif suffix == ".png":
            member = _read_png(path)
        elif suffix in (".tif", ".tiff"):
            member = _read_tiff(path)
        elif suffix == ".vti":
            member = _read_vti(path, array_name)
        else:
            raise EnsembleError(
                f"{path}: unknown member format {suffix!r} "
                f"(supported: {', '.join(MEMBER_SUFFIXES)})"
            )
    except SenseError:
        raise
    except FileNotFoundError as exc:
        raise EnsembleError(f"{path}: file not found") from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unreadable
        raise EnsembleError(f"{path}: cannot read member ({describe_exception(exc)})") from exc
    return apply_nan_policy(member, member_id or path.stem, nan_policy, fill_value, where=str(path))


def apply_nan_policy(
    member: np.ndarray, member_id: str, nan_policy: str, fill_value: float, where: str = ""
) -> np.ndarray:
    """Reject or fill non-finite values of one member, as the policy says."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if nan_policy == "raise":
        check_finite(member, member_id, where)
        return member
    if not np.isfinite(member).all():
        member = np.where(np.isfinite(member), member, np.float32(fill_value))
    return member
