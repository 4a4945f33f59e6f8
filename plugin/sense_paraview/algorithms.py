"""SENSE's ParaView algorithms as plain VTK Python algorithms (the PVGeo pattern).

Each class is a ``VTKPythonAlgorithmBase`` with plain setters and ``RequestData``, usable and
testable in-process with pvpython or plain VTK, without loading a plugin. The plugin file
(``plugins/sense_plugin.py``) only declares ParaView proxies on top of them: thin subclasses
whose ``@smproperty`` setters delegate here. The work itself is in ``sense_core`` (numpy) and
:mod:`sense_paraview.vtk_views` (VTK conversions, MPI dispatch, the filter's cache).

Failures fail the filter: the message (naming the file or member) goes to ParaView's Output
Messages and ``RequestData`` returns 0, so ParaView marks the filter failed, the output stays
empty, and a pvbatch script sees it (:func:`sense_paraview.failures.update_or_raise`); ParaView
itself keeps running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from xml.sax.saxutils import escape, quoteattr

from vtkmodules.util.vtkAlgorithm import VTKPythonAlgorithmBase

from sense_core.projection import ProjectionOptions
from sense_paraview.actions import BUTTONS
from sense_paraview.failures import describe_failure, report_error

# Drop-down choices: (value used by SENSE, text shown in ParaView). The position is what a
# ParaView state file stores, so new entries go at the end.
DEVICES = (("auto", "Auto"), ("cpu", "CPU"), ("cuda", "CUDA"))
PROJECTIONS = (
    ("auto", "Auto"),
    ("umap", "UMAP"),
    ("projector", "Parametric projector"),
    ("pca", "PCA"),
)
NAN_POLICIES = (
    ("raise", "Reject members with NaN/Inf"),
    ("fill", "Replace NaN/Inf by the fill value"),
)
# What keeps a member's class, for Train Full Fit: a preset of the ssl labeler's views
# (sense_training.config.VIEW_PRESETS, a test keeps the two in step; the plugin does not import
# the training package). "" = not named: the latent labeler (docs/label_efficiency.md).
FIELD_VIEWS = (
    ("", "Not named"),
    ("lattice", "Periodic lattice with spin flip"),
    ("periodic", "Periodic domain"),
    ("image", "Photographs, textures"),
    ("gravity", "Up and down differ (gravity)"),
    ("oriented", "Orientation is the class"),
    ("handwriting", "No mirror images (handwriting)"),
)
DEFAULT_PROJECTION = ProjectionOptions()
DEFAULT_BATCH_SIZE = 64


def enumeration_xml(
    name: str,
    command: str,
    choices: Sequence[tuple[str, str]],
    default: str,
    documentation: str = "",
    *,
    label: str | None = None,
) -> str:
    """Server-manager XML of an integer property shown as a drop-down of ``choices``, with
    the panel ``label`` (the plugin's panel declaration adds the documentation when
    ``documentation`` is empty)."""
    entries = "".join(
        f'<Entry value="{index}" text={quoteattr(text)}/>'
        for index, (_, text) in enumerate(choices)
    )
    default_index = [value for value, _ in choices].index(default)
    label_attribute = f" label={quoteattr(label)}" if label else ""
    documentation_xml = (
        f"<Documentation>{escape(documentation)}</Documentation>" if documentation else ""
    )
    return (
        f'<IntVectorProperty name="{name}" command="{command}"{label_attribute} '
        f'number_of_elements="1" default_values="{default_index}">'
        f'<EnumerationDomain name="enum">{entries}</EnumerationDomain>{documentation_xml}'
        "</IntVectorProperty>"
    )


def choice(choices: Sequence[tuple[str, str]], value: int | str) -> str:
    """The SENSE value of a drop-down entry given by position (as ParaView sets it) or value."""
    values = [v for v, _ in choices]
    if isinstance(value, str):
        if value not in values:
            raise ValueError(f"{value!r} is not one of {values}")
        return value
    return values[int(value)]


class _SenseAlgorithm(VTKPythonAlgorithmBase):
    """What every SENSE algorithm shares: setters that mark it modified only on a change, and a
    ``RequestData`` that turns an exception into a reported failure."""

    def _set(self, name: str, value) -> None:
        if getattr(self, name) != value:
            setattr(self, name, value)
            self.Modified()

    def RequestData(self, request, inInfo, outInfo):
        try:
            return self.execute(request, inInfo, outInfo)
        except Exception as exc:  # noqa: BLE001 - reported and failed, never a crashed ParaView
            report_error(describe_failure(exc, self))
            return 0

    def execute(self, request, inInfo, outInfo) -> int:
        raise NotImplementedError


class EnsembleReader(_SenseAlgorithm):
    """Opens a SENSE ensemble (.npz, or a folder of members) as a multiblock of images. One
    block per member, named by its member id, with label and class name as field data. Under
    MPI each rank reads its share of the members (blocks elsewhere are empty)."""

    def __init__(self):
        super().__init__(nInputPorts=0, nOutputPorts=1, outputType="vtkMultiBlockDataSet")
        self._file_name = None
        self._nan_policy = NAN_POLICIES[0][0]
        self._fill_value = 0.0

    def SetFileName(self, name):
        self._set("_file_name", name)

    def SetNaNPolicy(self, value):
        self._set("_nan_policy", choice(NAN_POLICIES, value))

    def SetFillValue(self, value):
        self._set("_fill_value", float(value))

    def RequestInformation(self, request, inInfo, outInfo):
        from vtkmodules.vtkCommonExecutionModel import vtkAlgorithm

        outInfo.GetInformationObject(0).Set(vtkAlgorithm.CAN_HANDLE_PIECE_REQUEST(), 1)
        return 1

    def execute(self, request, inInfo, outInfo) -> int:
        from vtkmodules.vtkCommonDataModel import vtkMultiBlockDataSet
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        from sense_core.errors import SenseError
        from sense_core.io import open_ensemble
        from sense_paraview.vtk_views import store_piece_to_multiblock

        if not self._file_name:
            raise SenseError("no FileName set on the SENSE Ensemble Reader")
        info = outInfo.GetInformationObject(0)
        piece = info.Get(sddp.UPDATE_PIECE_NUMBER()) if info.Has(sddp.UPDATE_PIECE_NUMBER()) else 0
        pieces = (
            info.Get(sddp.UPDATE_NUMBER_OF_PIECES())
            if info.Has(sddp.UPDATE_NUMBER_OF_PIECES())
            else 1
        )
        store = open_ensemble(self._file_name, self._nan_policy, self._fill_value)
        output = vtkMultiBlockDataSet.GetData(outInfo, 0)
        output.ShallowCopy(store_piece_to_multiblock(store, piece, pieces))
        return 1


class _MemberIds:
    """The ``MemberIds`` property of a filter: ParaView clears the list, then adds each id."""

    _member_ids: list[str]

    def AddMemberId(self, member_id):
        self._member_ids.append(str(member_id))
        self.Modified()

    def ClearMemberIds(self):
        self._member_ids = []
        self.Modified()


class MemberView(_MemberIds, _SenseAlgorithm):
    """Shows the selected members of an ensemble: a tiled mosaic of their fields (block "mosaic",
    with "tile_labels" points carrying the member ids), their pixel-wise mean and standard
    deviation (blocks "mean" and "std", to the right of the mosaic) and block "titles" (each
    member id, "mean" and "std" in its image's top-left corner); for a channel of a few integer
    codes, blocks "probability_<code>" and "entropy" follow. No member: an empty output."""

    def __init__(self):
        super().__init__(nInputPorts=1, nOutputPorts=1, outputType="vtkMultiBlockDataSet")
        self._member_ids: list[str] = []
        self._array_name = ""
        self._columns = 0

    def SetFieldArray(self, name):
        self._set("_array_name", name or "")

    def SetColumns(self, columns):
        self._set("_columns", int(columns))

    def FillInputPortInformation(self, port, info):
        info.Set(self.INPUT_REQUIRED_DATA_TYPE(), "vtkDataObjectTree")
        return 1

    def execute(self, request, inInfo, outInfo) -> int:
        from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkMultiBlockDataSet

        from sense_paraview.vtk_views import member_view

        if not self._member_ids:
            return 1
        ensemble = inInfo[0].GetInformationObject(0).Get(vtkDataObject.DATA_OBJECT())
        blocks = member_view(
            ensemble, self._member_ids, self._array_name or None, self._columns or None
        )
        vtkMultiBlockDataSet.GetData(outInfo, 0).ShallowCopy(blocks)
        return 1


class TimeSeriesCollector:
    """A time series of images as members: the filter asks its input for each time step in turn
    (``CONTINUE_EXECUTING``) and keeps a copy of every image until it has them all."""

    def __init__(self) -> None:
        self.time_steps: list[float] = []
        self.collected: list[tuple[str, object]] = []

    def read_time_steps(self, input_information) -> None:
        """The input's time steps when it is a single image with time; else none."""
        from vtkmodules.vtkCommonDataModel import vtkImageData
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        data = input_information.Get(vtkImageData.DATA_OBJECT())
        has_time = isinstance(data, vtkImageData) and input_information.Has(sddp.TIME_STEPS())
        self.time_steps = list(input_information.Get(sddp.TIME_STEPS())) if has_time else []
        self.collected = []

    def request_next(self, input_information) -> None:
        """Ask the input for the next time step, whole (every MPI rank gets every image)."""
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        input_information.Set(sddp.UPDATE_TIME_STEP(), self.time_steps[len(self.collected)])
        input_information.Set(sddp.UPDATE_PIECE_NUMBER(), 0)
        input_information.Set(sddp.UPDATE_NUMBER_OF_PIECES(), 1)

    def add(self, request, image) -> list | None:
        """Keep a copy of ``image``; return every (id, image) once all are there (and end the
        loop), else None (and ask the pipeline to execute again)."""
        from vtkmodules.vtkCommonDataModel import vtkImageData
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        copy = vtkImageData()
        copy.DeepCopy(image)
        self.collected.append((f"t{len(self.collected):06d}", copy))
        if len(self.collected) < len(self.time_steps):
            request.Set(sddp.CONTINUE_EXECUTING(), 1)
            return None
        request.Remove(sddp.CONTINUE_EXECUTING())
        images, self.collected = self.collected, []
        return images

    def abandon(self, request) -> None:
        """Stop collecting (after a failure): the next execution starts from the first step."""
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        request.Remove(sddp.CONTINUE_EXECUTING())
        self.collected = []


class Embedding(_SenseAlgorithm):
    """Embeds every member of an ensemble with a SENSE model bundle and maps it to 2D. The
    ensemble: a multiblock of images, or a time series of images where each time step is a
    member. Output 0: one point (x, y, 0) per member with member_id, label, class_name,
    label_source, confidence and the latent vector, for a scatter in a render view coloured by
    class. Output 1: the same as a table. The provider used (CUDA/CPU) and timings are field data.
    A new seed or projection for the same input re-projects the cached latents."""

    def __init__(self):
        super().__init__(nInputPorts=1, nOutputPorts=2, outputType="vtkPolyData")
        self._bundle = ""
        self._array_name = ""
        self._device = DEVICES[0][0]
        self._batch_size = DEFAULT_BATCH_SIZE
        self._projection = DEFAULT_PROJECTION
        self._linked_layout = 1
        self._class_name = ""
        self._suggestion_count = 10
        self._field_views = FIELD_VIEWS[0][0]
        self._series = TimeSeriesCollector()
        self._cache: dict = {}  # latents of the last input: new seeds only re-project

    def SetBundle(self, path):
        self._set("_bundle", path or "")

    def SetFieldArray(self, name):
        self._set("_array_name", name or "")

    def SetDevice(self, value):
        self._set("_device", choice(DEVICES, value))

    def SetBatchSize(self, value):
        self._set("_batch_size", int(value))

    def _set_projection(self, **changes) -> None:
        self._set("_projection", replace(self._projection, **changes))

    def SetProjection(self, value):
        self._set_projection(method=choice(PROJECTIONS, value))

    def SetUMAPNeighbors(self, value):
        self._set_projection(n_neighbors=int(value))

    def SetUMAPMinDist(self, value):
        self._set_projection(min_dist=float(value))

    def SetSeed(self, value):
        self._set_projection(seed=int(value))

    def SetLinkedLayout(self, value):
        self._linked_layout = int(value)  # read by sense_paraview.gui; no pipeline change

    # The Labeling and Training buttons: one method per entry of sense_paraview.actions.BUTTONS
    # (made below the class). They change no pipeline setting, so neither they nor the two
    # values below re-run the filter.
    def SetClassName(self, name):
        self._class_name = name or ""

    def SetSuggestionCount(self, count):
        self._suggestion_count = int(count)

    def SetFieldSymmetries(self, value):
        self._field_views = choice(FIELD_VIEWS, value)

    def press(self, action: str) -> int:
        """Do a button's ``action`` (:func:`sense_paraview.actions.run`); 1 when it worked."""
        from sense_paraview.actions import run

        return int(run(self, action))

    def FillInputPortInformation(self, port, info):
        info.Set(self.INPUT_REQUIRED_DATA_TYPE(), "vtkDataObject")
        return 1

    def FillOutputPortInformation(self, port, info):
        from vtkmodules.vtkCommonDataModel import vtkDataObject

        info.Set(vtkDataObject.DATA_TYPE_NAME(), ("vtkPolyData", "vtkTable")[port])
        return 1

    def RequestInformation(self, request, inInfo, outInfo):
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        self._series.read_time_steps(inInfo[0].GetInformationObject(0))
        for port in range(2):  # the map has no time: it covers every member at once
            outInfo.GetInformationObject(port).Remove(sddp.TIME_STEPS())
            outInfo.GetInformationObject(port).Remove(sddp.TIME_RANGE())
        return 1

    def RequestUpdateExtent(self, request, inInfo, outInfo):
        if self._series.time_steps:
            self._series.request_next(inInfo[0].GetInformationObject(0))
        return 1

    def RequestData(self, request, inInfo, outInfo):
        result = super().RequestData(request, inInfo, outInfo)
        if result == 0:
            self._series.abandon(request)
        return result

    def execute(self, request, inInfo, outInfo) -> int:
        from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkImageData, vtkPolyData, vtkTable

        from sense_paraview.vtk_views import embed_input

        data = inInfo[0].GetInformationObject(0).Get(vtkDataObject.DATA_OBJECT())
        series = None
        if self._series.time_steps and isinstance(data, vtkImageData):
            series = self._series.add(request, data)
            if series is None:
                done = len(self._series.collected) / len(self._series.time_steps)
                self.UpdateProgress(0.5 * done)
                return 1
        self.UpdateProgress(0.5)
        inference = {"device": self._device, "batch_size": self._batch_size}
        outputs = embed_input(
            data,
            self._bundle,
            self._array_name or None,
            self._projection,
            inference,
            cache=self._cache,
            series=series,
            views=self._field_views or None,
        )
        if outputs is not None:
            points, table = outputs
            vtkPolyData.GetData(outInfo, 0).ShallowCopy(points)
            vtkTable.GetData(outInfo, 1).ShallowCopy(table)
        self.UpdateProgress(1.0)
        return 1


def _button(action: str):
    def pressed(self) -> int:
        return self.press(action)

    return pressed


for _name, (_, _action) in BUTTONS.items():
    setattr(Embedding, _name, _button(_action))
