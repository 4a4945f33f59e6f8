"""Statistics of a selection of members whose fields hold a few integer codes (facies, phases).

For such a field the mean and standard deviation say little; the standard summaries of a
categorical posterior are, per code, the **probability map** (the fraction of the selected
members holding that code at each pixel) and the **entropy map** (the Shannon entropy of those
probabilities, in bits: 0 where every member agrees, log2(K) where the K codes are equally
frequent). A channel is treated as categorical when every value of the selection is an integer
and there are between 2 and :data:`MAX_CODES` distinct values; otherwise it is continuous and
gets mean and standard deviation only.

Used by the ParaView member view (blocks ``probability_<code>`` and ``entropy``, see
:mod:`sense_paraview.vtk_views`) and by ``sense stats`` (``.vti`` and ``.npy`` files). Pure
numpy except :func:`category_images`, which imports VTK lazily (as :mod:`sense_core.io.vti`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sense_core.errors import SenseError

MAX_CODES = 16  # more distinct integers than this: a continuous field (counts, rounded values)


@dataclass(frozen=True)
class CategoryStats:
    """Probability and entropy maps of one categorical channel of a selection."""

    channel: int
    codes: np.ndarray  # (K,) int64, ascending
    probabilities: np.ndarray  # (K, H, W) float32; sums to 1 over K at every pixel
    entropy: np.ndarray  # (H, W) float32, bits
    count: int  # members in the selection

    def names(self, channels: int = 1) -> list[str]:
        """Output names: ``probability_<code>`` per code, then ``entropy``; with several
        channels each gets the suffix ``_channel<c>``."""
        suffix = f"_channel{self.channel}" if channels > 1 else ""
        return [f"probability_{code}{suffix}" for code in self.codes] + [f"entropy{suffix}"]

    def maps(self) -> list[np.ndarray]:
        """The (H, W) maps in the order of :meth:`names`."""
        return [*self.probabilities, self.entropy]


def categorical_codes(values: np.ndarray, max_codes: int = MAX_CODES) -> np.ndarray | None:
    """The sorted distinct codes of ``values`` (any shape, one channel) when they are a few
    integers (2 to ``max_codes`` distinct, all finite and integral), else None."""
    values = np.asarray(values)
    if values.size == 0:
        return None
    if not np.issubdtype(values.dtype, np.integer):
        if not np.issubdtype(values.dtype, np.floating) or not np.isfinite(values).all():
            return None
        if not (values == np.round(values)).all():
            return None
    codes = np.unique(values)
    if not 2 <= len(codes) <= max_codes:
        return None
    return codes.astype(np.int64)


def _as_selection(fields: np.ndarray) -> np.ndarray:
    fields = np.asarray(fields)
    if fields.ndim != 4 or fields.shape[0] == 0:
        raise SenseError(f"need a non-empty (k, C, H, W) selection, got shape {fields.shape}")
    return fields


def category_statistics(
    fields: np.ndarray, channel: int = 0, codes: np.ndarray | None = None
) -> CategoryStats:
    """Probability and entropy maps of ``channel`` of the (k, C, H, W) selection ``fields``
    (``codes``: the categories to count, default those :func:`categorical_codes` finds;
    SenseError when the channel is not categorical)."""
    fields = _as_selection(fields)
    values = fields[:, channel]
    if codes is None:
        codes = categorical_codes(values)
        if codes is None:
            raise SenseError(
                f"channel {channel} is not categorical (needs 2 to {MAX_CODES} distinct "
                "integer values)"
            )
    codes = np.asarray(codes, dtype=np.int64)
    probabilities = np.stack([(values == code).mean(axis=0) for code in codes])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, probabilities * np.log2(probabilities), 0.0)
    entropy = np.maximum(-terms.sum(axis=0), 0.0)  # no -0.0 where every member agrees
    return CategoryStats(
        channel=channel,
        codes=codes,
        probabilities=probabilities.astype(np.float32),
        entropy=entropy.astype(np.float32),
        count=len(fields),
    )


def selection_categories(fields: np.ndarray) -> list[CategoryStats]:
    """:class:`CategoryStats` of every categorical channel of the (k, C, H, W) selection (an
    empty list when every channel is continuous)."""
    fields = _as_selection(fields)
    result = []
    for channel in range(fields.shape[1]):
        codes = categorical_codes(fields[:, channel])
        if codes is not None:
            result.append(category_statistics(fields, channel, codes))
    return result


def category_images(stats: Sequence[CategoryStats], channels: int = 1) -> list[tuple[str, object]]:
    """(name, ``vtkImageData``) per map of ``stats`` (names of :meth:`CategoryStats.names`).
    Each image holds the map twice: as ``field`` (the active scalars, so that a view colouring
    the member view by ``field`` shows it beside mean and std) and under its own name (so that a
    Threshold or Calculator downstream names what it works on). Field data: ``count``,
    ``channel`` and, for a probability, ``code``."""
    from sense_core.io.vti import FIELD_ARRAY, member_to_image

    images = []
    for item in stats:
        extras: list[dict[str, int]] = [{"code": int(code)} for code in item.codes] + [{}]
        for name, values, extra in zip(item.names(channels), item.maps(), extras):
            info = {"count": item.count, "channel": item.channel, **extra}
            image = member_to_image(values[None], FIELD_ARRAY, info)
            named = member_to_image(values[None], name).GetPointData().GetArray(name)
            image.GetPointData().AddArray(named)
            images.append((name, image))
    return images


STATS_DESCRIPTION = """\
Statistics of a selection of members, as images for ParaView (.vti, SENSE's VTI writer) and
numpy (.npy): mean.* and std.* (pixel-wise, population standard deviation, every channel), and
for every channel whose values are a few integer codes (facies, phase labels: all values
integral, 2 to 16 distinct in the selection) probability_<code>.* (the fraction of the selected
members with that code at each pixel; they sum to 1) and entropy.* (Shannon entropy of those
probabilities, in bits: 0 where all members agree, log2(K) where K codes are equally frequent).
With several channels, categorical outputs get the suffix _channel<c>. The .npy files hold
(C, H, W) arrays for mean/std and (H, W) maps for the others, in image order (row 0 = top).
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``sense stats`` on the ``sense`` subcommands."""
    from sense_core.cli_options import add_reader_options

    parser = commands.add_parser(
        "stats",
        help="mean/std, and per-code probability and entropy maps, of a selection of members",
        description=STATS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ensemble", help="ensemble .npz file or folder of members")
    parser.add_argument(
        "--members", required=True, help="comma-separated member ids of the selection"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_reader_options(parser)
    parser.set_defaults(handler=_run_stats)


def _selection(store, members: str) -> tuple[list[str], np.ndarray]:
    wanted = [m.strip() for m in members.split(",") if m.strip()]
    if not wanted:
        raise SenseError("--members: no member id given")
    position = {m: i for i, m in enumerate(store.member_ids)}
    unknown = [m for m in wanted if m not in position]
    if unknown:
        shown = ", ".join(repr(m) for m in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise SenseError(f"--members: member id(s) not in the ensemble: {shown}")
    return wanted, store.read_members([position[m] for m in wanted])


def _run_stats(args: argparse.Namespace) -> int:
    from sense_core.cli_options import open_from_args
    from sense_core.io.atomic import atomic_directory, check_output_outside_inputs
    from sense_core.io.vti import FIELD_ARRAY, member_to_image, write_vti
    from sense_core.selection import selection_statistics

    check_output_outside_inputs(args.out, [args.ensemble], replaces=True)
    store = open_from_args(args.ensemble, args)
    member_ids, fields = _selection(store, args.members)
    mean, std = selection_statistics(fields)
    categories = selection_categories(fields)
    count = len(member_ids)
    outputs = [
        (name, member_to_image(values, FIELD_ARRAY, {"count": count}), values)
        for name, values in (("mean", mean), ("std", std))
    ]
    maps = [m for item in categories for m in item.maps()]
    outputs += [
        (name, image, values)
        for (name, image), values in zip(category_images(categories, fields.shape[1]), maps)
    ]
    with atomic_directory(args.out, overwrite=args.overwrite) as folder:
        for name, image, values in outputs:
            write_vti(folder / f"{name}.vti", image)
            np.save(folder / f"{name}.npy", values)
    print(f"{count} members, {fields.shape[1]} channel(s) of {fields.shape[2]}x{fields.shape[3]}")
    for item in categories:
        codes = ", ".join(str(c) for c in item.codes)
        top = float(item.entropy.max())
        print(f"channel {item.channel}: categorical, codes {codes}; max entropy {top:.3f} bits")
    print(f"wrote {len(outputs)} images (.vti and .npy) to {args.out}")
    return 0
