"""Paths through the map: members that carry an order, drawn as lines in sequence.

An ensemble's members often come in sequences: the states of one MCMC chain (``chain`` +
``step``, as ``sense generate channels`` writes), the snapshots of one simulation
(``simulation`` + ``time``, as ``sense generate drops`` writes), or the time steps of a ParaView
time series (member ids ``t000000``, ``t000001`` ...). This module finds those order columns in
a member table (member ids, 2D map coordinates, metadata columns) or takes the ones the user
names, and builds the sequences: per path, the indices of its members sorted by their order.
It needs numpy only; the CLI (``sense paths``) draws them with matplotlib and writes them as CSV
and as legacy-VTK polydata lines, and the ParaView filter ``SENSE Paths`` draws them in the map.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sense_core.errors import SenseError

# Column pairs (group, order) recognised automatically, in this order of preference.
ORDER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("chain", "step"),
    ("chain", "mcmc_step"),
    ("simulation", "time"),
    ("simulation", "step"),
    ("run", "time"),
    ("run", "step"),
)
# Columns that order the members of one single sequence when no group column exists.
SINGLE_ORDER_COLUMNS: tuple[str, ...] = ("time", "step", "time_step", "timestep")
TIME_SERIES_ID = re.compile(r"^t(\d+)$")  # member ids of a ParaView time series (SENSE Embedding)
TIME_SERIES = "member_id (time series)"


@dataclass
class Paths:
    """Ordered sequences of members.

    ``paths[k]`` holds the member indices of path ``k`` sorted by order; ``groups[k]`` is its
    group value (chain id, simulation id) as text; ``order`` (N,) is each member's order value
    (NaN for members in no path); ``group_column``/``order_column`` say where they came from
    (``group_column`` is None for a single sequence).
    """

    paths: list[np.ndarray]
    groups: list[str]
    order: np.ndarray
    group_column: str | None
    order_column: str

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def source(self) -> str:
        """A short description: ``chain + step``, or the order column alone."""
        if self.group_column is None:
            return self.order_column
        return f"{self.group_column} + {self.order_column}"

    def path_of_member(self, count: int) -> np.ndarray:
        """(count,) the path index of every member, -1 for members in no path."""
        owner = np.full(count, -1, dtype=np.int64)
        for index, members in enumerate(self.paths):
            owner[members] = index
        return owner

    def through(self, members: Sequence[int]) -> list[int]:
        """Indices of the paths that contain any of ``members`` (member indices)."""
        wanted = set(int(m) for m in members)
        return [k for k, path in enumerate(self.paths) if wanted.intersection(path.tolist())]

    def subset(self, indices: Sequence[int]) -> Paths:
        """The same paths object restricted to the paths ``indices``."""
        keep = [int(k) for k in indices]
        return Paths(
            paths=[self.paths[k] for k in keep],
            groups=[self.groups[k] for k in keep],
            order=self.order,
            group_column=self.group_column,
            order_column=self.order_column,
        )


def _numeric(values, name: str) -> np.ndarray:
    """``values`` as float64 (blank text -> NaN); a clear error names the column."""
    array = np.asarray(values)
    if array.dtype.kind in "biuf":
        return array.astype(np.float64)
    try:
        return np.array([float(v) if str(v).strip() != "" else np.nan for v in array])
    except ValueError as exc:
        raise SenseError(f"order column {name!r} is not numeric ({exc})") from exc


def find_order_columns(
    columns: Mapping[str, object],
    member_ids: Sequence[str] = (),
    group: str | None = None,
    order: str | None = None,
) -> tuple[str | None, str]:
    """``(group_column, order_column)`` of a member table: the ones given (``group`` may be
    omitted for one sequence, or given alone with the order column found automatically), else
    the first pair of :data:`ORDER_COLUMNS` present, else one single-sequence column of
    :data:`SINGLE_ORDER_COLUMNS`, else :data:`TIME_SERIES` when every member id is a time-step
    id (``t000012``). Raises :class:`SenseError` naming what is missing."""
    names = set(columns)
    for given, what in ((group, "group"), (order, "order")):
        if given is not None and given not in names and given != TIME_SERIES:
            raise SenseError(
                f"{what} column {given!r} is not in the table (columns: {', '.join(sorted(names))})"
            )
    if order is not None:
        return group, order
    for group_name, order_name in ORDER_COLUMNS:
        if (group is None or group == group_name) and {group_name, order_name} <= names:
            return group_name, order_name
    if group is not None:
        for order_name in ("step", "time", *SINGLE_ORDER_COLUMNS):
            if order_name in names:
                return group, order_name
        raise SenseError(f"group column {group!r} given but no order column found; pass one")
    for order_name in SINGLE_ORDER_COLUMNS:
        if order_name in names:
            return None, order_name
    ids = [str(m) for m in member_ids]
    if ids and all(TIME_SERIES_ID.match(m) for m in ids):
        return None, TIME_SERIES
    pairs = ", ".join(f"{g} + {o}" for g, o in ORDER_COLUMNS)
    raise SenseError(
        "the members carry no order: no column pair among "
        f"{pairs}, no {'/'.join(SINGLE_ORDER_COLUMNS)} column and no time-series member ids "
        f"(columns: {', '.join(sorted(names)) or 'none'}); name them with --group/--order"
    )


def build_paths(
    group_values: Sequence | None,
    order_values: np.ndarray,
    max_gap: float | None = None,
    min_length: int = 2,
    order_name: str = "order",
) -> list[tuple[str, np.ndarray]]:
    """``[(group, member indices sorted by order), ...]``, groups in sorted order.

    Members whose order is NaN belong to no path. With ``max_gap``, a path is cut where two
    consecutive orders differ by more than ``max_gap`` (the pieces are named ``group#1``,
    ``group#2`` ...); pieces shorter than ``min_length`` members are dropped. Two members of
    one group with the same order are an error (naming the group and the order value).
    """
    order_values = np.asarray(order_values, dtype=np.float64)
    count = order_values.size
    if group_values is None:
        keys = np.zeros(count, dtype=np.int64)
        labels = [""]
    else:
        group_array = np.asarray(group_values)
        if group_array.dtype.kind == "f":  # ids read back as floats (CSV, VTK): 3.0 -> "3"
            known = np.isfinite(group_array)
            order_values = np.where(known, order_values, np.nan)  # no group: in no path
            whole = known & (group_array == np.round(group_array))
            if whole[known].all():
                group_array = np.where(known, group_array, 0).astype(np.int64)
        group_text = group_array.astype(str)
        if group_text.shape != (count,):
            raise SenseError(f"group and {order_name} columns differ in length")
        labels_array, keys = np.unique(group_text, return_inverse=True)
        labels = labels_array.tolist()
        numeric = [_as_number(v) for v in labels]
        if all(v is not None for v in numeric):  # chains 0, 1, ..., 10: numeric order
            rank = np.argsort(np.asarray(numeric, dtype=np.float64), kind="stable")
            remap = np.empty_like(rank)
            remap[rank] = np.arange(rank.size)
            keys = remap[keys]
            labels = [labels[i] for i in rank]
    valid = np.isfinite(order_values)
    result: list[tuple[str, np.ndarray]] = []
    for key, label in enumerate(labels):
        members = np.flatnonzero((keys == key) & valid)
        members = members[np.argsort(order_values[members], kind="stable")]
        values = order_values[members]
        repeated = np.flatnonzero(np.diff(values) == 0)
        if repeated.size:
            where = f"group {label!r}" if group_values is not None else "the sequence"
            raise SenseError(
                f"{where} has two members with {order_name} {values[repeated[0]]:g}; "
                "choose a column that orders the members uniquely"
            )
        pieces = [members]
        if max_gap is not None and members.size > 1:
            cuts = np.flatnonzero(np.diff(values) > max_gap) + 1
            pieces = np.split(members, cuts)
        for number, piece in enumerate(pieces, start=1):
            if piece.size >= min_length:
                result.append((label if len(pieces) == 1 else f"{label}#{number}", piece))
    return result


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def find_paths(
    member_ids: Sequence[str],
    columns: Mapping[str, object],
    group: str | None = None,
    order: str | None = None,
    max_gap: float | None = None,
    min_length: int = 2,
) -> Paths:
    """The :class:`Paths` of a member table (``columns``: name -> (N,) values, e.g. an
    embedding's metadata); see :func:`find_order_columns` and :func:`build_paths`."""
    group_column, order_column = find_order_columns(columns, member_ids, group, order)
    if order_column == TIME_SERIES:
        matches = [TIME_SERIES_ID.match(str(m)) for m in member_ids]
        order_values = np.array([float(m.group(1)) if m else np.nan for m in matches])
    else:
        order_values = _numeric(columns[order_column], order_column)
    group_values = None if group_column is None else np.asarray(columns[group_column])
    if len(order_values) != len(member_ids):
        raise SenseError(
            f"order column {order_column!r} has {len(order_values)} values for "
            f"{len(member_ids)} members"
        )
    built = build_paths(group_values, order_values, max_gap, min_length, order_column)
    order = np.full(len(member_ids), np.nan)
    for _, members in built:
        order[members] = order_values[members]
    return Paths(
        paths=[members for _, members in built],
        groups=[label for label, _ in built],
        order=order,
        group_column=group_column,
        order_column=order_column,
    )


def embedding_paths(embedding, **options) -> Paths:
    """:func:`find_paths` of an :class:`~sense_core.embedding.Embedding` (its metadata)."""
    return find_paths(embedding.member_ids, embedding.metadata, **options)


# ----------------------------------------------------------------------------- outputs


def path_table(paths: Paths, member_ids: Sequence[str], xy: np.ndarray) -> dict[str, np.ndarray]:
    """One row per member on a path, in path order: member_id, path, group, position, step
    (the order value), x, y."""
    rows = [(k, i, members) for k, members in enumerate(paths.paths) for i in range(members.size)]
    index = np.array([members[i] for _, i, members in rows], dtype=np.int64)
    ids = np.asarray(member_ids, dtype=str)
    return {
        "member_id": ids[index] if index.size else np.array([], dtype=str),
        "path": np.array([k for k, _, _ in rows], dtype=np.int64),
        "group": np.array([paths.groups[k] for k, _, _ in rows], dtype=str),
        "position": np.array([i for _, i, _ in rows], dtype=np.int64),
        "step": paths.order[index],
        "x": np.asarray(xy, np.float64)[index, 0],
        "y": np.asarray(xy, np.float64)[index, 1],
    }


def write_paths_csv(
    paths: Paths, member_ids: Sequence[str], xy: np.ndarray, path: str | os.PathLike
) -> Path:
    """The :func:`path_table` as CSV (SENSE's escaping writer, written atomically)."""
    from sense_core.embedding import write_columns_csv

    return write_columns_csv(path_table(paths, member_ids, xy), path)


def write_paths_vtk(paths: Paths, xy: np.ndarray, path: str | os.PathLike) -> Path:
    """The paths as legacy-VTK ASCII polydata (opens in ParaView, VisIt, ``vtkPolyDataReader``):
    one point (x, y, 0) per member on a path, one polyline per path, point arrays ``step``
    (the order value) and ``path`` (the path index). Written atomically."""
    from sense_core.io.atomic import atomic_write_text

    xy = np.asarray(xy, np.float64)
    members = np.concatenate(paths.paths) if paths.paths else np.array([], dtype=np.int64)
    point_count = members.size
    lines = [
        "# vtk DataFile Version 3.0",
        f"SENSE paths ({paths.source})",
        "ASCII",
        "DATASET POLYDATA",
        f"POINTS {point_count} double",
    ]
    lines += [f"{xy[m, 0]:.9g} {xy[m, 1]:.9g} 0" for m in members]
    lines.append(f"LINES {len(paths)} {point_count + len(paths)}")
    start = 0
    for piece in paths.paths:
        lines.append(" ".join(str(v) for v in [piece.size, *range(start, start + piece.size)]))
        start += piece.size
    owner = np.repeat(np.arange(len(paths)), [p.size for p in paths.paths])
    lines += [f"POINT_DATA {point_count}", "SCALARS step double 1", "LOOKUP_TABLE default"]
    lines += [f"{v:.9g}" for v in paths.order[members]]
    lines += ["SCALARS path int 1", "LOOKUP_TABLE default"]
    lines += [str(int(k)) for k in owner]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_paths_png(
    paths: Paths,
    xy: np.ndarray,
    path: str | os.PathLike,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] = (),
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """The map (members as dots, coloured by class when ``labels`` are given) with each path as
    a line coloured by its order value (colour bar). matplotlib's Agg canvas without pyplot.
    Written atomically."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from sense_core.io.atomic import atomic_path

    xy = np.asarray(xy, np.float64)
    figure = Figure(figsize=(7.5, 6.0), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    size = float(np.clip(6000.0 / max(len(xy), 1), 2.0, 25.0))
    cmap = colormaps["tab10"]
    if labels is not None and len(class_names):
        labels = np.asarray(labels)
        for index, name in enumerate(class_names):
            chosen = labels == index
            if chosen.any():
                axes.scatter(
                    *xy[chosen].T,
                    s=size,
                    color=cmap(index % 10),
                    alpha=0.5,
                    linewidths=0,
                    label=name,
                )
        others = ~np.isin(labels, np.arange(len(class_names)))
        if others.any():
            axes.scatter(*xy[others].T, s=size, color="#b0b0b0", linewidths=0, label="unlabeled")
        axes.legend(loc="best", fontsize="small", markerscale=2, framealpha=0.8)
    else:
        axes.scatter(*xy.T, s=size, color="#b0b0b0", linewidths=0)
    segments, values = [], []
    for members in paths.paths:
        points = xy[members]
        steps = paths.order[members]
        segments.extend(np.stack([points[:-1], points[1:]], axis=1))
        values.extend(0.5 * (steps[:-1] + steps[1:]))
    if segments:
        values_array = np.asarray(values)
        lines = LineCollection(
            segments,
            array=values_array,
            cmap="viridis",
            norm=Normalize(float(values_array.min()), float(values_array.max())),
            linewidths=0.8,
            alpha=0.85,
        )
        axes.add_collection(lines)
        figure.colorbar(lines, ax=axes, label=paths.order_column)
    axes.set_title(title or f"{len(paths)} paths ({paths.source}) through {len(xy)} members")
    axes.set_xlabel("x")
    axes.set_ylabel("y")
    figure.tight_layout()
    target = Path(path)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    return target


# ----------------------------------------------------------------------------- reading tables


def read_member_table(path: str | os.PathLike) -> tuple[list[str], np.ndarray, dict, object]:
    """``(member_ids, xy, columns, embedding)`` of an embedding written by ``sense embed``:
    ``embedding.npz`` (``embedding`` is the :class:`~sense_core.embedding.Embedding`) or
    ``embedding.csv`` (``embedding`` is None; every column is kept, numbers as floats)."""
    from sense_core.io.escape import unescape_cell

    path = Path(path)
    if path.suffix.lower() == ".npz":
        from sense_core.embedding import read_embedding

        embedding = read_embedding(path)
        return list(embedding.member_ids), embedding.xy, dict(embedding.metadata), embedding
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
    except FileNotFoundError as exc:
        raise SenseError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SenseError(f"{path}: cannot read the table ({exc})") from exc
    if not rows:
        raise SenseError(f"{path}: empty file")
    header = [unescape_cell(h) for h in rows[0]]
    missing = [c for c in ("member_id", "x", "y") if c not in header]
    if missing:
        raise SenseError(f"{path}: not an embedding table (no column {', '.join(missing)})")
    body = rows[1:]
    short = [i + 2 for i, row in enumerate(body) if len(row) != len(header)]
    if short:
        raise SenseError(f"{path}: line {short[0]} has a different number of cells than the header")
    columns: dict[str, np.ndarray] = {}
    for position, name in enumerate(header):
        cells = [unescape_cell(row[position]) for row in body]
        try:
            columns[name] = np.array([float(c) if c != "" else np.nan for c in cells])
        except ValueError:
            columns[name] = np.array(cells, dtype=str)
    ids = [unescape_cell(row[header.index("member_id")]) for row in body]
    try:
        xy = np.stack([_numeric(columns["x"], "x"), _numeric(columns["y"], "y")], axis=1)
    except SenseError as exc:
        raise SenseError(f"{path}: {exc}") from exc
    return ids, xy, columns, None


# ----------------------------------------------------------------------------- CLI

PATHS_DESCRIPTION = """\
Draw the paths of ordered members through a SENSE map, without ParaView: each MCMC chain
(columns chain + step, written by `sense generate channels`), each simulation (simulation +
time, written by `sense generate drops`), or a ParaView time series (member ids t000000 ...)
becomes a line through its members in order, coloured by step. Other columns: --group/--order.

Reads an embedding.npz or embedding.csv written by `sense embed`. Writes the map with the
paths as a PNG (--out), and optionally the paths as CSV (--csv: member_id, path, group,
position, step, x, y) and as VTK polydata lines (--vtk, a legacy .vtk file ParaView opens).
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``sense paths`` on the ``sense`` subcommands."""
    parser = commands.add_parser(
        "paths",
        help="draw ordered members (MCMC chains, simulations, time series) as paths in the map",
        description=PATHS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("embedding", help="embedding.npz or embedding.csv written by sense embed")
    parser.add_argument("--out", type=Path, help="PNG of the map with the paths")
    parser.add_argument("--csv", type=Path, help="also write the paths as CSV")
    parser.add_argument("--vtk", type=Path, help="also write the paths as legacy-VTK polydata")
    parser.add_argument("--group", help="column naming each member's sequence (e.g. chain)")
    parser.add_argument("--order", help="column ordering the members of a sequence (e.g. step)")
    parser.add_argument(
        "--members",
        help="comma-separated member ids: draw only the paths through these members",
    )
    parser.add_argument(
        "--max-gap",
        type=float,
        default=None,
        help="cut a path where two consecutive members' orders differ by more than this",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(handler=_run_paths)


def _run_paths(args: argparse.Namespace) -> int:
    outputs = [p for p in (args.out, args.csv, args.vtk) if p is not None]
    if not outputs:
        raise SenseError("nothing to write: give --out PNG, --csv FILE and/or --vtk FILE")
    source = Path(args.embedding).resolve()
    for target in outputs:
        if Path(target).resolve() == source:
            raise SenseError(f"{target}: is the input table; write the output somewhere else")
        if target.exists() and not args.overwrite:
            raise SenseError(f"{target}: already exists (use --overwrite)")
    if args.max_gap is not None and not args.max_gap > 0:
        raise SenseError(f"--max-gap must be > 0, got {args.max_gap}")
    member_ids, xy, columns, embedding = read_member_table(args.embedding)
    paths = find_paths(member_ids, columns, args.group, args.order, args.max_gap)
    if args.members:
        wanted = [m.strip() for m in args.members.split(",") if m.strip()]
        position = {m: i for i, m in enumerate(member_ids)}
        unknown = [m for m in wanted if m not in position]
        if unknown:
            raise SenseError(f"--members: member id(s) not in {args.embedding}: {unknown[:5]}")
        paths = paths.subset(paths.through([position[m] for m in wanted]))
    lengths = [p.size for p in paths.paths]
    print(
        f"{len(paths)} paths ({paths.source}) through {sum(lengths)} of {len(member_ids)} "
        f"members; members per path {min(lengths, default=0)}-{max(lengths, default=0)}"
    )
    if args.out is not None:
        labels = embedding.labels if embedding is not None else columns.get("label")
        class_names = embedding.class_names if embedding is not None else _class_names(columns)
        written = write_paths_png(paths, xy, args.out, labels, class_names)
        print(f"  png {written}")
    if args.csv is not None:
        print(f"  csv {write_paths_csv(paths, member_ids, xy, args.csv)}")
    if args.vtk is not None:
        print(f"  vtk {write_paths_vtk(paths, xy, args.vtk)}")
    return 0


def _class_names(columns: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """Class names by label index from an embedding table's label and class_name columns."""
    if "label" not in columns or "class_name" not in columns:
        return ()
    labels = np.asarray(columns["label"], np.float64)
    names = np.asarray(columns["class_name"]).astype(str)
    known = {int(v): n for v, n in zip(labels, names) if np.isfinite(v) and v >= 0 and n}
    count = max(known, default=-1) + 1
    return tuple(known.get(i, f"class {i}") for i in range(count))
