"""Decode a point of the SENSE map in ParaView: the field a member at that place would have.

The SENSE Decode filter (:class:`Decode`, declared in the plugin as "SENSE Decode") takes the
map of a SENSE Embedding (its port 0: one point per member, with the members' latent vectors as
the ``latent`` point array and the provenance, naming the bundle, as field data) and a point
(x, y) of the map, typed or picked with the handle widget in the GUI. Its output is the field
decoded there, as a ``vtkImageData`` laid out like the members SENSE reads (W x H points, unit
spacing, origin 0, point array ``field`` or the embedding's field array), in the members' units,
so that it can be shown and coloured beside real members.

The work is :func:`sense_core.decode.decode_points`: the latent vector of a point is interpolated
from the members nearest to it on the map, and the bundle's decoder turns it into a field. A
bundle without a decoder (one trained before SENSE exported decoders) is an error that says
which command makes one.

For scripts: :func:`decode` (pvpython/pvbatch: fields decoded at several points, as numpy arrays
or images) and :func:`show_decoded` (a SENSE Decode at a point, shown in a render view beside
what the view shows already).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from sense_core.decode import NEIGHBOURS, decode_points
from sense_core.errors import SenseError
from sense_core.io.vti import FIELD_ARRAY, member_to_image

LATENT_ARRAY = "latent"
PROVENANCE_ARRAY = "provenance"


def no_decoder_message(bundle: str | Path) -> str:
    """What a bundle without a decoder is told: why nothing can be decoded, and what makes a
    bundle with one."""
    return (
        f"{bundle}: the bundle has no decoder, so points of the map cannot be decoded (the "
        "bundles trained before SENSE exported decoders have none); "
        "`sense fit --data ENSEMBLE --out BUNDLE` (or `sense train-encoder`) makes a bundle with "
        "one: embed the ensemble with that bundle, then decode"
    )


def map_of(polydata) -> tuple[np.ndarray, np.ndarray, dict]:
    """(xy (N, 2), latents (N, D), provenance) of a SENSE Embedding's map (its port 0)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    if polydata is None or polydata.GetNumberOfPoints() == 0:
        raise SenseError("the input map has no points: decode the output of a SENSE Embedding")
    latent = polydata.GetPointData().GetArray(LATENT_ARRAY)
    if latent is None:
        raise SenseError(
            f"the input has no '{LATENT_ARRAY}' point array: decode the map (port 0) of a SENSE "
            "Embedding, which carries the members' latent vectors"
        )
    xy = vtk_to_numpy(polydata.GetPoints().GetData())[:, :2].astype(np.float64)
    latents = vtk_to_numpy(latent).reshape(len(xy), -1).astype(np.float32)
    array = polydata.GetFieldData().GetAbstractArray(PROVENANCE_ARRAY)
    provenance = json.loads(array.GetValue(0)) if array is not None else {}
    return xy, latents, provenance


def map_bundle(provenance: dict, bundle: str = "") -> str:
    """The bundle to decode with: ``bundle`` when given, else the one the embedding used (its
    provenance); an error when there is none or it has no decoder."""
    from sense_core.bundle import Bundle

    bundle = bundle or str(provenance.get("bundle", {}).get("path", ""))
    if not bundle:
        raise SenseError("the map does not name its bundle (no provenance): set Bundle")
    if "decoder" not in Bundle.load(bundle, verify_checksums=False).models:
        raise SenseError(no_decoder_message(bundle))
    return bundle


def decode_on_map(
    polydata,
    points: np.ndarray,
    bundle: str = "",
    neighbours: int = NEIGHBOURS,
    device: str | None = None,
) -> np.ndarray:
    """Fields (P, C, H, W), in the members' units, decoded at map ``points`` (P, 2) of a SENSE
    Embedding's map ``polydata``: :func:`sense_core.decode.decode_points` on the map's
    positions and latents, with ``bundle`` (default: the embedding's) on ``device`` (default:
    the embedding's)."""
    xy, latents, provenance = map_of(polydata)
    bundle = map_bundle(provenance, bundle)
    device = device or str(provenance.get("inference", {}).get("device", "auto"))
    embedding = SimpleNamespace(xy=xy, latents=latents)
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))[:, :2]
    return decode_points(embedding, bundle, points, neighbours=int(neighbours), device=device)


def decoded_image(field: np.ndarray, point: Sequence[float], array_name: str = "", **info):
    """A decoded (C, H, W) ``field`` as ``vtkImageData`` laid out like SENSE's member images,
    with ``decoded_x``/``decoded_y`` (and ``info``) as field data."""
    field_data = {"decoded_x": float(point[0]), "decoded_y": float(point[1]), **info}
    return member_to_image(field, array_name or FIELD_ARRAY, field_data)


@functools.cache
def _algorithm():
    """The :class:`Decode` algorithm class, made on first use: its base class imports VTK, and
    ``import sense_paraview`` (which exports :func:`decode`) must not."""
    from sense_paraview.algorithms import _SenseAlgorithm

    class Decode(_SenseAlgorithm):
        """Decodes a point of a SENSE map into a field: the latent vector of the point (x, y) is
        interpolated from the members nearest to it on the map (inverse-distance weights; on a
        member, that member's latent vector) and the bundle's decoder turns it into a field in the
        members' units, laid out like the members (unit spacing), to show beside them. Input: the
        map (port 0) of a SENSE Embedding made with a bundle that has a decoder."""

        def __init__(self):
            super().__init__(nInputPorts=1, nOutputPorts=1, outputType="vtkImageData")
            self._point = (0.0, 0.0)
            self._neighbours = NEIGHBOURS
            self._bundle = ""
            self._array_name = ""

        def SetPoint(self, x, y, z=0.0):
            self._set("_point", (float(x), float(y)))  # the map lies in z = 0

        def SetNeighbours(self, value):
            self._set("_neighbours", int(value))

        def SetBundle(self, path):
            self._set("_bundle", path or "")

        def SetFieldArray(self, name):
            self._set("_array_name", name or "")

        def FillInputPortInformation(self, port, info):
            info.Set(self.INPUT_REQUIRED_DATA_TYPE(), "vtkPolyData")
            return 1

        def _shape(self, inInfo) -> tuple[int, int, int] | None:
            """The members' (C, H, W) from the bundle, when it is known before execution."""
            from vtkmodules.vtkCommonDataModel import vtkDataObject

            from sense_core.bundle import Bundle

            bundle = self._bundle
            if not bundle:
                data = inInfo[0].GetInformationObject(0).Get(vtkDataObject.DATA_OBJECT())
                array = data.GetFieldData().GetAbstractArray(PROVENANCE_ARRAY) if data else None
                if array is not None:
                    bundle = json.loads(array.GetValue(0)).get("bundle", {}).get("path", "")
            try:
                return Bundle.load(bundle, verify_checksums=False).input_shape if bundle else None
            except (OSError, SenseError, ValueError):
                return None  # said by RequestData

        @staticmethod
        def _set_extent(information, shape) -> None:
            from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

            _, height, width = shape
            information.Set(sddp.WHOLE_EXTENT(), 0, width - 1, 0, height - 1, 0, 0)

        def RequestInformation(self, request, inInfo, outInfo):
            # an image output without a whole extent renders blank (docs/paraview.md)
            shape = self._shape(inInfo)
            if shape is not None:
                self._set_extent(outInfo.GetInformationObject(0), shape)
            return 1

        def execute(self, request, inInfo, outInfo) -> int:
            from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData

            from sense_paraview.vtk_views import mpi_communicator

            polydata = vtkPolyData.GetData(inInfo[0], 0)
            comm = mpi_communicator()
            if comm is not None and comm.Get_rank() != 0 and polydata.GetNumberOfPoints() == 0:
                return 1  # under MPI the map is on rank 0, which decodes
            field = decode_on_map(polydata, [self._point], self._bundle, self._neighbours)[0]
            image = decoded_image(field, self._point, self._array_name, neighbours=self._neighbours)
            self._set_extent(outInfo.GetInformationObject(0), field.shape)
            vtkImageData.GetData(outInfo, 0).ShallowCopy(image)
            return 1

    Decode.__qualname__ = "Decode"
    return Decode


def __getattr__(name: str):
    """``Decode``, the algorithm class behind the plugin's SENSE Decode (made on first use)."""
    if name == "Decode":
        return _algorithm()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- pvpython helpers
def _field_array(embedding) -> str:
    """The field array the embedding read (its FieldArray property), if it has one."""
    prop = embedding.SMProxy.GetProperty("FieldArray")
    if prop is None or prop.GetNumberOfElements() == 0:
        return ""  # not a SENSE Embedding proxy
    return str(prop.GetElement(0) or "")  # the Python property's str() is "''" when empty


def decode(
    embedding,
    points,
    neighbours: int = NEIGHBOURS,
    bundle: str = "",
    images: bool = False,
):
    """Fields decoded at map ``points`` ((x, y) pairs) of a SENSE Embedding proxy ``embedding``
    (pvpython/pvbatch): (P, C, H, W) float32 in the members' units, or, with ``images``, a list
    of ``vtkImageData`` as the SENSE Decode filter gives them. The map is fetched once and all
    points are decoded in one batch. Raises :class:`~sense_paraview.failures.FilterError` when
    the embedding fails, :class:`SenseError` when the bundle has no decoder."""
    from paraview import servermanager

    from sense_paraview.failures import update_or_raise

    update_or_raise(embedding)
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise SenseError(f"points must be (x, y) pairs, got an array of shape {points.shape}")
    polydata = servermanager.Fetch(embedding, idx=0)
    fields = decode_on_map(polydata, points[:, :2], bundle, neighbours)
    if not images:
        return fields
    name = _field_array(embedding)
    return [
        decoded_image(field, point, name, neighbours=neighbours)
        for field, point in zip(fields, points)
    ]


def map_positions(embedding, member_ids: Sequence[str]) -> np.ndarray:
    """(k, 2) positions on the map of a SENSE Embedding proxy's members ``member_ids`` (an
    error names unknown ids): places to decode near, or between."""
    from sense_paraview.linking import embedding_columns, point_indices

    columns = embedding_columns(embedding)
    rows = point_indices(embedding, list(member_ids))
    return np.stack([columns["x"][rows], columns["y"][rows]], axis=1).astype(np.float64)


def _shown_extent(view) -> tuple[float, float] | None:
    """(right, top) of what ``view`` shows, in world units (None when it shows nothing)."""
    right = top = None
    for representation in view.Representations:
        information = getattr(representation.SMProxy, "GetRepresentedDataInformation", None)
        properties = representation.ListProperties()
        if information is None or "Visibility" not in properties or not representation.Visibility:
            continue  # not data (a colour legend), or hidden
        bounds = information().GetBounds()
        if bounds[0] > bounds[1]:
            continue  # nothing shown
        x, y = list(representation.Position)[:2] if "Position" in properties else (0.0, 0.0)
        right = bounds[1] + x if right is None else max(right, bounds[1] + x)
        top = bounds[3] + y if top is None else max(top, bounds[3] + y)
    return None if right is None else (right, top)


def _colours_of(view, name: str):
    """The colour map of the representations of ``view`` coloured by ``name`` (the member
    view's), else ParaView's shared one for ``name``."""
    from paraview.simple import GetColorTransferFunction

    for representation in view.Representations:
        properties = representation.ListProperties()
        if "ColorArrayName" in properties and "LookupTable" in properties:
            array = list(representation.ColorArrayName)
            if representation.LookupTable is not None and array[-1:] == [name]:
                return representation.LookupTable
    return GetColorTransferFunction(name)


def show_decoded(
    embedding,
    point: Sequence[float],
    view=None,
    neighbours: int = NEIGHBOURS,
    position: Sequence[float] | None = None,
    gap: float = 4.0,
    map_view=None,
):
    """Decode ``point`` (x, y) of a SENSE Embedding proxy's map with a SENSE Decode filter and
    show it, titled with the point, in the render ``view`` (default: the active view), coloured
    like what the view shows coloured by the same array (the member view), with its lower-left
    corner at ``position`` (x, y) of the view (default: ``gap`` right of what the view shows,
    e.g. the member view's blocks, and top-aligned with it). ``map_view``: the view of
    the map, where the point is then marked (a black dot). Returns (decode proxy, display).
    Move the point with ``proxy.Point = [x, y, 0]`` or, in the GUI, the handle."""
    import paraview.simple as simple

    from sense_paraview.failures import update_or_raise

    view = view or simple.GetActiveViewOrCreate("RenderView")
    name = _field_array(embedding) or FIELD_ARRAY
    decoder = simple.SENSEDecode(
        Input=simple.OutputPort(embedding, 0),
        Point=[float(point[0]), float(point[1]), 0.0],
        Neighbours=int(neighbours),
        FieldArray=name,
    )
    update_or_raise(decoder)
    view.Update()  # what it shows is known (its bounds) once its representations are updated
    shown = _shown_extent(view)
    colours = _colours_of(view, name)
    height = decoder.GetDataInformation().GetBounds()[3]  # the image's top row (origin 0)
    if position is None:  # right of what is shown, top-aligned with it
        position = (0.0, 0.0) if shown is None else (shown[0] + gap, shown[1] - height)
    x, y = float(position[0]), float(position[1])
    display = simple.Show(decoder, view)
    display.Representation = "Surface"
    display.Position = [x, y, 0.0]
    display.ColorArrayName = ["POINTS", name]
    display.LookupTable = colours
    title = simple.a3DText(Text=f"decoded ({float(point[0]):.3g}, {float(point[1]):.3g})")
    label = simple.Show(title, view)
    size = 0.08 * (height + 1)
    label.Scale = [size, size, 1.0]
    label.Position = [x, y + height + 0.5 * size, 0.1]
    if map_view is not None:
        marker = simple.PointSource(Center=[float(point[0]), float(point[1]), 0.05])
        shown = simple.Show(marker, map_view)
        shown.Representation = "Points"
        shown.PointSize, shown.RenderPointsAsSpheres = 14.0, 1
        shown.AmbientColor = shown.DiffuseColor = [0.0, 0.0, 0.0]
    return decoder, display
