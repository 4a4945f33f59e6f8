"""crops: random crops of real images, class = source image, with a region-based split.

Crops of one image overlap each other, so a random train/test split would leak: a test crop
shares pixels with training crops. Each image is therefore cut along its width into three
regions -- train (left, 70% by default), validation, test (right) -- and every crop lies inside
one region, so no crop of the test region shares a pixel with a crop of the training region.
Tall images are cut along their height instead (metadata ``split_axis``). ``row`` and
``column`` give each crop's top-left corner in the source image. The region of each member is
stored in metadata ``region``; labeled members carry it in
metadata ``split`` (honoured by :func:`sense_core.ensemble.split_labeled`).

The labeled crops of an image (``labeled_fraction`` of them) are shared among the regions by
the split fractions (at least one validation and one test crop each); every validation and
test crop is labeled and every unlabeled crop comes from the training region, so no unlabeled
member carries test pixels into self-supervised training. Classes are balanced: every image
gives ``per_image`` crops. With ``labeled_fraction`` 0 all crops are unlabeled training crops.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sense_core.ensemble import UNLABELED, Ensemble
from sense_core.errors import EnsembleError
from sense_core.generators.common import (
    GenerationInfo,
    add_noise_and_blur,
    check_common_arguments,
    class_counts,
)

REGIONS = ("train", "validation", "test")


def read_image(path: str | Path) -> np.ndarray:
    """A grayscale image as float32 (H, W) in [0, 1] (PNG, TIFF, ... via Pillow)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise EnsembleError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("F"), dtype=np.float32)
    except OSError as exc:
        raise EnsembleError(f"{path}: cannot read the image ({exc})") from exc
    top = float(array.max()) if array.size else 0.0
    return array / (255.0 if top > 1.0 else 1.0)


def region_bounds(width: int, crop: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """Column ranges [start, stop) of the train, validation and test regions of an image.

    Validation and test get at least one crop width each (when their fraction is > 0);
    the training region takes the rest and must hold one crop.
    """
    widths = [0, 0, 0]
    for i in (1, 2):
        if fractions[i] > 0:
            widths[i] = max(int(round(fractions[i] * width)), crop)
    widths[0] = width - widths[1] - widths[2]
    if widths[0] < crop:
        raise EnsembleError(
            f"an image {width} px wide cannot hold non-overlapping {crop}-px crops for train, "
            "validation and test regions: use a smaller --size or a wider image"
        )
    starts = np.cumsum([0, *widths[:2]])
    return [(int(s), int(s + w)) for s, w in zip(starts, widths)]


def generate_crops(
    n: int | None = None,
    size: int = 64,
    labeled_fraction: float = 0.05,
    seed: int = 0,
    *,
    images: Sequence[str | Path | np.ndarray] = (),
    per_image: int | None = None,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    class_names: Sequence[str] | None = None,
    noise: float = 0.0,
    blur: float = 0.0,
    progress_bar: bool | None = None,
) -> tuple[Ensemble, GenerationInfo]:
    """``per_image`` random ``size`` x ``size`` crops of each image (or ``n`` in all).

    ``images`` are paths (class name = file stem) or 2D arrays (class names ``image0`` ... or
    ``class_names``). Crops per region are proportional to the region's share of the width.
    """
    started = time.perf_counter()
    del progress_bar  # cropping is fast; no bar needed
    if not images:
        raise EnsembleError("crops needs at least one image (--images A.png B.png ...)")
    if per_image is None:
        if n is None:
            raise EnsembleError("crops needs --per-image or --n")
        per_image = int(np.ceil(n / len(images)))
    total = per_image * len(images)
    check_common_arguments(total, size, labeled_fraction)
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise EnsembleError(f"split fractions must be 3 numbers >= 0 summing to 1: {fractions}")
    arrays, names = [], []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            arrays.append(np.asarray(image, dtype=np.float32))
            names.append(class_names[i] if class_names else f"image{i}")
        else:
            arrays.append(read_image(image))
            names.append(class_names[i] if class_names else Path(image).stem)
    if len(set(names)) != len(names):
        raise EnsembleError(f"class names (image names) are not unique: {names}")

    rng = np.random.default_rng(seed)
    fields = np.empty((total, 1, size, size), dtype=np.float32)
    classes = np.repeat(np.arange(len(arrays)), per_image)
    region = np.empty(total, dtype="<U10")
    rows = np.empty(total, dtype=np.int64)
    columns = np.empty(total, dtype=np.int64)
    axis = np.zeros(total, dtype="<U7")
    for i, (array, name) in enumerate(zip(arrays, names)):
        if array.ndim != 2:
            raise EnsembleError(f"image {name!r} must be 2D grayscale, got shape {array.shape}")
        # Regions are cut along the longer side: transpose tall images, crop, transpose back.
        tall = array.shape[0] > array.shape[1]
        array = array.T if tall else array
        axis[i * per_image : (i + 1) * per_image] = "rows" if tall else "columns"
        height, width = array.shape
        if height < size:
            raise EnsembleError(f"image {name!r} is {height} px high, smaller than --size {size}")
        bounds = region_bounds(width, size, fractions)
        counts = _region_counts(per_image, labeled_fraction, fractions)
        offset = i * per_image
        for part, (start, stop) in enumerate(bounds):
            k = counts[part]
            if k == 0:
                continue
            top = rng.integers(0, height - size + 1, size=k)
            left = rng.integers(start, stop - size + 1, size=k)
            block = slice(offset, offset + k)
            region[block] = REGIONS[part]
            rows[block], columns[block] = (left, top) if tall else (top, left)
            for j, (y, x) in enumerate(zip(top, left)):
                crop = array[y : y + size, x : x + size]
                fields[offset + j, 0] = crop.T if tall else crop
            offset += k

    labels = _choose_labels(classes, region, labeled_fraction, rng)
    split = np.where(labels != UNLABELED, region, "")
    fields = add_noise_and_blur(fields, noise, blur, rng)
    metadata = {
        "source": np.array(names)[classes],
        "row": rows,
        "column": columns,
        "region": region,
        "split_axis": axis,
        "split": split,
        "regime": classes,
    }
    info = GenerationInfo(
        name="crops",
        n=total,
        size=size,
        labeled_fraction=labeled_fraction,
        seed=seed,
        options={
            "images": [str(im) for im in images if not isinstance(im, np.ndarray)] or None,
            "per_image": per_image,
            "split_fractions": list(fractions),
            "noise": noise,
            "blur": blur,
        },
        stats={
            "class_counts": class_counts(classes, names),
            "region_counts": {r: int(np.sum(region == r)) for r in REGIONS},
            "labeled": int(np.sum(labels != UNLABELED)),
        },
    )
    ensemble = Ensemble(fields=fields, labels=labels, class_names=names, metadata=metadata)
    info.seconds = time.perf_counter() - started
    return ensemble, info


def _region_counts(per_image: int, labeled_fraction: float, fractions: Sequence[float]):
    """Crops per region for one image: the labeled crops are shared by the split fractions
    (at least one per region with a non-zero fraction); all unlabeled crops are training crops.
    """
    labeled = int(round(labeled_fraction * per_image))
    evaluation = [
        max(int(round(labeled * f)), 1) if f > 0 and labeled > 0 else 0 for f in fractions[1:]
    ]
    train = per_image - sum(evaluation)
    if train < 1:
        raise EnsembleError(
            f"{per_image} crops per image are too few for train, validation and test crops"
        )
    return [train, *evaluation]


def _choose_labels(
    classes: np.ndarray, region: np.ndarray, labeled_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Validation and test crops labeled; training crops labeled up to the wanted fraction."""
    labels = np.full(classes.size, UNLABELED, dtype=np.int64)
    evaluation = region != "train"
    labels[evaluation] = classes[evaluation]
    for value in np.unique(classes):
        mine = classes == value
        wanted = int(round(labeled_fraction * mine.sum())) - int((mine & evaluation).sum())
        train = np.flatnonzero(mine & ~evaluation)
        labels[rng.choice(train, size=min(max(wanted, 0), train.size), replace=False)] = value
    return labels
