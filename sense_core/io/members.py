"""Read one member file (``.npy``, ``.png``, ``.tif``/``.tiff``, ``.vti``) as a (C, H, W) array.

Integer images (8/16-bit) keep their raw values as float32; per-channel normalisation happens
later, from training statistics. Non-finite values follow the reader's ``nan_policy``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sense_core.ensemble import check_finite, check_memory, member_nbytes
from sense_core.errors import EnsembleError, SenseError

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


def _read_npy(path: Path) -> np.ndarray:
    values = np.load(path, allow_pickle=False, mmap_mode="r")  # maps the file, reads nothing
    check_member_memory(path, values.shape)
    return _as_chw(values, path)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        check_member_memory(path, (len(image.getbands()), image.height, image.width))
        image.load()
        values = np.asarray(image)
    return _as_chw(values, path, channel_axis=-1)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        check_member_memory(path, series.shape)
        values = series.asarray()
        axes = series.axes
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
        raise EnsembleError(f"{path}: cannot read member ({type(exc).__name__}: {exc})") from exc
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
