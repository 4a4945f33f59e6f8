"""``SENSE Paths``: ordered members (MCMC chains, simulations, a time series) as lines in the map.

:class:`Paths` is a plain VTK Python algorithm (declared as a ParaView filter in the plugin
file). Its input is the map of ``SENSE Embedding`` (output 0: one point per member with
``member_id`` and the ensemble's metadata as point arrays); its output is polydata: one polyline
per sequence through its members' map points, in order, with point arrays ``step`` (the order
value, to colour by), ``path`` (the path index) and ``member_id``. Which columns order the
members is found by :func:`sense_core.paths.find_order_columns` (chain + step, simulation +
time, a time series' member ids) unless given. ``Show`` chooses all paths, none, or those
through the members listed in ``MemberIds`` (the selected members: :func:`show_paths` keeps
that list equal to the map's selection).

:func:`show_paths` adds the filter to the map's render view, coloured by ``step``.
"""

from __future__ import annotations

import numpy as np

from sense_paraview.algorithms import _MemberIds, _SenseAlgorithm, choice

# Drop-down choices (value used by SENSE, text shown); the position is what a state file stores.
SHOW_CHOICES = (("all", "All paths"), ("none", "None"), ("selected", "Paths of selected members"))


def point_columns(polydata) -> tuple[list[str], dict[str, np.ndarray]]:
    """``(member_ids, columns)`` of a map: every one-component point array as numpy (strings
    for string arrays). A map without ``member_id`` is an error."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from sense_core.errors import SenseError

    point_data = polydata.GetPointData()
    columns: dict[str, np.ndarray] = {}
    for index in range(point_data.GetNumberOfArrays()):
        array = point_data.GetAbstractArray(index)
        if array is None or array.GetNumberOfComponents() != 1 or not array.GetName():
            continue
        if array.IsNumeric():
            columns[array.GetName()] = vtk_to_numpy(array).copy()
        else:
            values = [array.GetValue(i) for i in range(array.GetNumberOfValues())]
            columns[array.GetName()] = np.array(values, dtype=str)
    if "member_id" not in columns:
        raise SenseError(
            "SENSE Paths: the input has no member_id point array; apply it to the map "
            "(output 0) of SENSE Embedding"
        )
    return columns["member_id"].tolist(), columns


def paths_polydata(found, points: np.ndarray, member_ids) -> object:
    """vtkPolyData of :class:`sense_core.paths.Paths` ``found``: one polyline per path through
    ``points`` (N, 3) of its members, point arrays step, path and member_id."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonCore import VTK_DOUBLE, VTK_FLOAT, VTK_INT, vtkPoints, vtkStringArray
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    members = (np.concatenate(found.paths) if len(found) else np.array([], dtype=np.int64)).astype(
        np.int64
    )
    lengths = [piece.size for piece in found.paths]
    vtk_points = vtkPoints()
    xyz = np.ascontiguousarray(np.asarray(points, np.float32)[members].reshape(-1, 3))
    vtk_points.SetData(numpy_to_vtk(xyz, deep=True, array_type=VTK_FLOAT))
    lines = vtkCellArray()
    start = 0
    for length in lengths:
        lines.InsertNextCell(length)
        for index in range(start, start + length):
            lines.InsertCellPoint(index)
        start += length
    output = vtkPolyData()
    output.SetPoints(vtk_points)
    output.SetLines(lines)
    step = numpy_to_vtk(np.ascontiguousarray(found.order[members]), deep=True,
                        array_type=VTK_DOUBLE)  # fmt: skip
    step.SetName("step")
    owner = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    path = numpy_to_vtk(np.ascontiguousarray(owner), deep=True, array_type=VTK_INT)
    path.SetName("path")
    ids = vtkStringArray()
    ids.SetName("member_id")
    for member in members:
        ids.InsertNextValue(str(member_ids[member]))
    for array in (step, path, ids):
        output.GetPointData().AddArray(array)
    output.GetPointData().SetActiveScalars("step")
    return output


class Paths(_MemberIds, _SenseAlgorithm):
    """Draws members that carry an order as lines through the SENSE map: each MCMC chain
    (chain + step), each simulation (simulation + time) or a time series (member ids t000000,
    ...) becomes a polyline through its members in order, with point array step to colour by.
    Input: the map of SENSE Embedding (output 0). Show: all paths, none, or the paths through
    the selected members (MemberIds)."""

    def __init__(self):
        super().__init__(nInputPorts=1, nOutputPorts=1, outputType="vtkPolyData")
        self._show = SHOW_CHOICES[0][0]
        self._member_ids: list[str] = []
        self._group = ""
        self._order = ""
        self._max_gap = 0.0

    def SetShow(self, value):
        self._set("_show", choice(SHOW_CHOICES, value))

    def SetGroupColumn(self, name):
        self._set("_group", name or "")

    def SetOrderColumn(self, name):
        self._set("_order", name or "")

    def SetMaxGap(self, value):
        self._set("_max_gap", float(value))

    def FillInputPortInformation(self, port, info):
        info.Set(self.INPUT_REQUIRED_DATA_TYPE(), "vtkPolyData")
        return 1

    def execute(self, request, inInfo, outInfo) -> int:
        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkCommonDataModel import vtkPolyData

        from sense_core.paths import Paths as Found
        from sense_core.paths import find_paths

        output = vtkPolyData.GetData(outInfo, 0)
        source = vtkPolyData.GetData(inInfo[0], 0)
        if self._show == "none" or source is None or source.GetNumberOfPoints() == 0:
            # no line, but the arrays are there: a display coloured by step stays valid
            nothing = Found([], [], np.zeros(0), None, "step")
            output.ShallowCopy(paths_polydata(nothing, np.zeros((0, 3)), []))
            return 1
        member_ids, columns = point_columns(source)
        found = find_paths(
            member_ids,
            columns,
            self._group or None,
            self._order or None,
            self._max_gap if self._max_gap > 0 else None,
        )
        if self._show == "selected":
            position = {m: i for i, m in enumerate(member_ids)}
            chosen = [position[m] for m in self._member_ids if m in position]
            found = found.subset(found.through(chosen))
        points = vtk_to_numpy(source.GetPoints().GetData())
        output.ShallowCopy(paths_polydata(found, points, member_ids))
        return 1


# (line width, opacity) of the paths: all of them thin and translucent, so that the points stay
# readable under dozens of crossing lines (the demo's map was mostly lines at width 2, opaque);
# the paths of a few selected members bold.
PATH_STYLES = {"all": (1.0, 0.35), "selected": (2.5, 1.0)}


def show_paths(embedding, view, show: str = "all", link: bool = True):
    """Add ``SENSE Paths`` on ``embedding`` (a SENSE Embedding proxy, its map) to ``view`` (the
    map's render view), coloured by step with a colour bar, drawn as lines under the points
    (styled by :data:`PATH_STYLES` for ``show``).
    ``show``: "all", "none" or "selected"; with ``link`` the paths filter follows the map's
    point selection (its MemberIds), so "selected" shows the paths of the selected members.
    Returns ``(paths_proxy, display, selection_link or None)``; keep the link object."""
    import paraview.simple as simple

    from sense_paraview.failures import update_or_raise
    from sense_paraview.linking import link_selection

    labels = {value: text for value, text in SHOW_CHOICES}
    if show not in labels:
        raise ValueError(f"show must be one of {sorted(labels)}, got {show!r}")
    paths = simple.SENSEPaths(Input=embedding, Show=labels[show])
    update_or_raise(paths)
    display = simple.Show(paths, view)
    display.SetRepresentationType("Surface")
    display.LineWidth, display.Opacity = PATH_STYLES["all" if show == "all" else "selected"]
    simple.ColorBy(display, ("POINTS", "step"))
    display.RescaleTransferFunctionToDataRange(True, False)
    display.SetScalarBarVisibility(view, True)
    lookup = simple.GetColorTransferFunction("step")
    lookup.ApplyPreset("Viridis (matplotlib)", True)
    selection = link_selection(embedding, paths, [view]) if link else None
    simple.Render(view)
    return paths, display, selection
