"""SENSE ParaView plugin: declarations only; the work happens in ``sense_core`` (imported lazily).

Load with ``LoadPlugin("plugin/sense_plugin.py", ns=globals())`` in pvpython, Tools > Manage
Plugins in the GUI, or start ParaView through ``sense paraview`` (which sets PV_PLUGIN_PATH).
"""

from paraview.util.vtkAlgorithm import VTKPythonAlgorithmBase, smdomain, smhint, smproperty, smproxy


def _watch_the_gui():
    """In the GUI (also when connected to a pvserver, where the filters run remotely), open the
    linked layout on each SENSE Embedding's first Apply (see sense_paraview.gui)."""
    try:
        from sense_paraview.gui import enable_auto_layout

        enable_auto_layout()
    except ImportError:
        pass  # sense_paraview not importable here (a bare server): nothing to lay out


_watch_the_gui()


def _report_error(message):
    """Exceptions in RequestData are only logged by ParaView; show the message to the user."""
    from vtkmodules.vtkCommonCore import vtkOutputWindow

    vtkOutputWindow.GetInstance().DisplayErrorText(f"SENSE: {message}\n")


@smproxy.reader(
    name="SENSEEnsembleReader",
    label="SENSE Ensemble Reader",
    extensions="npz",
    file_description="SENSE ensemble",
)
class SENSEEnsembleReader(VTKPythonAlgorithmBase):
    """Opens a SENSE ensemble (.npz, or a folder of members) as a multiblock of images, one block
    per member named by its member id, with label and class name as field data."""

    def __init__(self):
        super().__init__(nInputPorts=0, nOutputPorts=1, outputType="vtkMultiBlockDataSet")
        self._file_name = None
        self._nan_policy = 0

    @smproperty.stringvector(name="FileName")
    @smdomain.filelist()
    @smhint.filechooser(extensions="npz", file_description="SENSE ensemble")
    def SetFileName(self, name):
        """Ensemble .npz file or member folder."""
        if name != self._file_name:
            self._file_name = name
            self.Modified()

    @smproperty.xml(
        """<IntVectorProperty name="NaNPolicy" command="SetNaNPolicy" number_of_elements="1"
             default_values="0">
           <EnumerationDomain name="enum">
             <Entry value="0" text="Reject members with NaN/Inf"/>
             <Entry value="1" text="Replace NaN/Inf by 0"/>
           </EnumerationDomain>
           <Documentation>What to do with non-finite values (e.g. cells outside a domain).
           </Documentation>
         </IntVectorProperty>"""
    )
    def SetNaNPolicy(self, value):
        if value != self._nan_policy:
            self._nan_policy = value
            self.Modified()

    def RequestInformation(self, request, inInfo, outInfo):
        from vtkmodules.vtkCommonExecutionModel import vtkAlgorithm

        # Under MPI each rank reads its share of the members (blocks elsewhere are empty).
        outInfo.GetInformationObject(0).Set(vtkAlgorithm.CAN_HANDLE_PIECE_REQUEST(), 1)
        return 1

    def RequestData(self, request, inInfo, outInfo):
        from vtkmodules.vtkCommonDataModel import vtkMultiBlockDataSet
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        output = vtkMultiBlockDataSet.GetData(outInfo, 0)
        if not self._file_name:
            _report_error("no FileName set on the SENSE Ensemble Reader")
            return 1
        info = outInfo.GetInformationObject(0)
        piece = info.Get(sddp.UPDATE_PIECE_NUMBER()) if info.Has(sddp.UPDATE_PIECE_NUMBER()) else 0
        pieces = (
            info.Get(sddp.UPDATE_NUMBER_OF_PIECES())
            if info.Has(sddp.UPDATE_NUMBER_OF_PIECES())
            else 1
        )
        try:
            from sense_core.io import open_ensemble
            from sense_core.vtk_views import store_piece_to_multiblock

            policy = ("raise", "fill")[self._nan_policy]
            store = open_ensemble(self._file_name, policy)
            output.ShallowCopy(store_piece_to_multiblock(store, piece, pieces))
        except Exception as exc:  # noqa: BLE001 - the GUI must show every failure, never crash
            _report_error(str(exc))
        return 1


@smproxy.filter(name="SENSEMemberView", label="SENSE Member View")
@smhint.xml('<ShowInMenu category="SENSE"/>')
@smproperty.input(name="Input", port_index=0)
@smdomain.datatype(
    dataTypes=["vtkMultiBlockDataSet", "vtkPartitionedDataSetCollection"],
    composite_data_supported=True,
)
class SENSEMemberView(VTKPythonAlgorithmBase):
    """Shows the selected members of an ensemble: a tiled mosaic of their fields (block
    "mosaic", with "tile_labels" points carrying the member ids) and their pixel-wise mean and
    standard deviation (blocks "mean" and "std", placed to the right of the mosaic); block
    "titles" writes each member id, "mean" and "std" into its image's top-left corner."""

    def __init__(self):
        super().__init__(nInputPorts=1, nOutputPorts=1, outputType="vtkMultiBlockDataSet")
        self._member_ids = []
        self._array_name = ""
        self._columns = 0

    @smproperty.xml(
        """<StringVectorProperty name="MemberIds" command="AddMemberId"
             clean_command="ClearMemberIds" repeat_command="1"
             number_of_elements_per_command="1" number_of_elements="0">
           <Documentation>Ids of the members to show (as in the ensemble's member_id).
           </Documentation>
         </StringVectorProperty>"""
    )
    def AddMemberId(self, member_id):
        self._member_ids.append(str(member_id))
        self.Modified()

    def ClearMemberIds(self):
        self._member_ids = []
        self.Modified()

    @smproperty.stringvector(name="FieldArray", default_values="")
    @smdomain.xml(
        """<ArrayListDomain name="array_list" attribute_type="Scalars"
             input_domain_name="inputs_array">
           <RequiredProperties><Property name="Input" function="Input"/></RequiredProperties>
         </ArrayListDomain>"""
    )
    def SetFieldArray(self, name):
        """Point array holding the members' fields (empty: the active scalars)."""
        if name != self._array_name:
            self._array_name = name
            self.Modified()

    @smproperty.intvector(name="Columns", default_values=0)
    @smdomain.intrange(min=0, max=50)
    def SetColumns(self, columns):
        """Tiles per mosaic row (0: about square)."""
        if columns != self._columns:
            self._columns = columns
            self.Modified()

    def FillInputPortInformation(self, port, info):
        info.Set(self.INPUT_REQUIRED_DATA_TYPE(), "vtkDataObjectTree")
        return 1

    def RequestData(self, request, inInfo, outInfo):
        from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkMultiBlockDataSet

        output = vtkMultiBlockDataSet.GetData(outInfo, 0)
        if not self._member_ids:
            return 1  # nothing selected: an empty view
        try:
            from sense_core import vtk_views

            ensemble = inInfo[0].GetInformationObject(0).Get(vtkDataObject.DATA_OBJECT())
            comm = vtk_views.mpi_communicator()
            options = (self._member_ids, self._array_name or None, self._columns or None)
            if comm is not None:  # under MPI each rank holds some of the members
                blocks = vtk_views.member_view_blocks_distributed(comm, ensemble, *options)
            else:
                blocks = vtk_views.member_view_blocks(ensemble, *options)
            output.ShallowCopy(blocks)
        except Exception as exc:  # noqa: BLE001 - the GUI must show every failure, never crash
            _report_error(str(exc))
        return 1


_DEVICES = ("auto", "cpu", "cuda")
_PROJECTIONS = ("auto", "umap", "projector", "pca")


@smproxy.filter(name="SENSEEmbedding", label="SENSE Embedding")
@smhint.xml('<ShowInMenu category="SENSE"/>')
@smhint.xml('<View type="None" port="1"/>')  # the table: open it in a spreadsheet on demand
@smproperty.xml('<OutputPort name="Map" index="0"/><OutputPort name="Table" index="1"/>')
@smproperty.input(name="Input", port_index=0)
@smdomain.datatype(
    dataTypes=["vtkMultiBlockDataSet", "vtkPartitionedDataSetCollection", "vtkImageData"],
    composite_data_supported=True,
)
class SENSEEmbedding(VTKPythonAlgorithmBase):
    """Embeds every member of an ensemble (a multiblock of images, or a time series of images
    where each time step is a member) with a SENSE model bundle and projects it to 2D.
    Output 0: one point (x, y, 0) per member with member_id, label, class_name, label_source,
    confidence and the latent vector, for a scatter in a render view coloured by class.
    Output 1: the same as a table. The provider used (CUDA/CPU) and timings are field data."""

    def __init__(self):
        super().__init__(nInputPorts=1, nOutputPorts=2, outputType="vtkPolyData")
        self._bundle = ""
        self._array_name = ""
        self._device = 0
        self._batch_size = 64
        self._projection = 0
        self._n_neighbors = 15
        self._min_dist = 0.1
        self._seed = 0
        self._time_steps = []
        self._collected = []
        self._inference_cache = {}  # latents of the last input: new seeds only re-project
        self._linked_layout = 1
        from sense_paraview.gui import enable_auto_layout

        enable_auto_layout()  # in the GUI: the linked layout on the first Apply

    def _set(self, name, value):
        if getattr(self, name) != value:
            setattr(self, name, value)
            self.Modified()

    def FillInputPortInformation(self, port, info):
        info.Set(self.INPUT_REQUIRED_DATA_TYPE(), "vtkDataObject")
        return 1

    def FillOutputPortInformation(self, port, info):
        from vtkmodules.vtkCommonDataModel import vtkDataObject

        info.Set(vtkDataObject.DATA_TYPE_NAME(), ("vtkPolyData", "vtkTable")[port])
        return 1

    @smproperty.xml(
        """<StringVectorProperty name="Bundle" command="SetBundle" number_of_elements="1"
             default_values="">
           <FileListDomain name="files"/>
           <Hints><UseDirectoryName/></Hints>
           <Documentation>SENSE model bundle folder (with sense.json). Empty: the shipped
           bundle for the input's member shape.</Documentation>
         </StringVectorProperty>"""
    )
    def SetBundle(self, path):
        self._set("_bundle", path or "")

    @smproperty.stringvector(name="FieldArray", default_values="")
    @smdomain.xml(
        """<ArrayListDomain name="array_list" attribute_type="Scalars"
             input_domain_name="inputs_array">
           <RequiredProperties><Property name="Input" function="Input"/></RequiredProperties>
         </ArrayListDomain>"""
    )
    def SetFieldArray(self, name):
        """Point array holding the members' fields (empty: the active scalars)."""
        self._set("_array_name", name or "")

    @smproperty.xml(
        """<IntVectorProperty name="Device" command="SetDevice" number_of_elements="1"
             default_values="0">
           <EnumerationDomain name="enum">
             <Entry value="0" text="Auto"/><Entry value="1" text="CPU"/>
             <Entry value="2" text="CUDA"/>
           </EnumerationDomain>
           <Documentation>Where the models run. Auto: CUDA when onnxruntime can really use it,
           else CPU. CUDA: an error that says why when it cannot be used.</Documentation>
         </IntVectorProperty>"""
    )
    def SetDevice(self, value):
        self._set("_device", int(value))

    @smproperty.intvector(name="BatchSize", default_values=64)
    @smdomain.intrange(min=1, max=4096)
    def SetBatchSize(self, value):
        """Members per inference batch."""
        self._set("_batch_size", int(value))

    @smproperty.xml(
        """<IntVectorProperty name="Projection" command="SetProjection" number_of_elements="1"
             default_values="0">
           <EnumerationDomain name="enum">
             <Entry value="0" text="Auto"/><Entry value="1" text="UMAP"/>
             <Entry value="2" text="Parametric projector"/><Entry value="3" text="PCA"/>
           </EnumerationDomain>
           <Documentation>Latent vectors to 2D. Auto: the bundle's parametric projector when
           it has one (deterministic, fast), else UMAP.</Documentation>
         </IntVectorProperty>"""
    )
    def SetProjection(self, value):
        self._set("_projection", int(value))

    @smproperty.intvector(name="UMAPNeighbors", default_values=15)
    @smdomain.intrange(min=2, max=200)
    def SetUMAPNeighbors(self, value):
        """UMAP n_neighbors: larger values favour global structure."""
        self._set("_n_neighbors", int(value))

    @smproperty.doublevector(name="UMAPMinDist", default_values=0.1)
    @smdomain.doublerange(min=0.0, max=1.0)
    def SetUMAPMinDist(self, value):
        """UMAP min_dist: how tightly points may pack."""
        self._set("_min_dist", float(value))

    @smproperty.xml(
        """<IntVectorProperty name="LinkedLayout" command="SetLinkedLayout"
             number_of_elements="1" default_values="1" panel_visibility="advanced">
           <BooleanDomain name="bool"/>
           <Documentation>In the GUI, on the first Apply, split the view into the scatter
           (coloured by class) and a SENSE Member View of the same ensemble, linked live:
           selected points show their members' fields with mean and std.</Documentation>
         </IntVectorProperty>"""
    )
    def SetLinkedLayout(self, value):
        self._linked_layout = int(value)  # read by sense_paraview.gui; no pipeline change

    @smproperty.intvector(name="Seed", default_values=0)
    def SetSeed(self, value):
        """Random seed of the projection (recorded in the output)."""
        self._set("_seed", int(value))

    def _input_time_steps(self, inInfo):
        from vtkmodules.vtkCommonDataModel import vtkImageData
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        info = inInfo[0].GetInformationObject(0)
        data = info.Get(vtkImageData.DATA_OBJECT())
        if not isinstance(data, vtkImageData) or not info.Has(sddp.TIME_STEPS()):
            return []
        return list(info.Get(sddp.TIME_STEPS()))

    def RequestInformation(self, request, inInfo, outInfo):
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        self._time_steps = self._input_time_steps(inInfo)
        for port in range(2):  # the map has no time: it covers every member at once
            outInfo.GetInformationObject(port).Remove(sddp.TIME_STEPS())
            outInfo.GetInformationObject(port).Remove(sddp.TIME_RANGE())
        return 1

    def RequestUpdateExtent(self, request, inInfo, outInfo):
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        if self._time_steps:
            info = inInfo[0].GetInformationObject(0)
            info.Set(sddp.UPDATE_TIME_STEP(), self._time_steps[len(self._collected)])
            info.Set(sddp.UPDATE_PIECE_NUMBER(), 0)  # whole images on every MPI rank
            info.Set(sddp.UPDATE_NUMBER_OF_PIECES(), 1)
        return 1

    def RequestData(self, request, inInfo, outInfo):
        from vtkmodules.vtkCommonDataModel import (
            vtkDataObject,
            vtkImageData,
            vtkPolyData,
            vtkTable,
        )
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sddp

        data = inInfo[0].GetInformationObject(0).Get(vtkDataObject.DATA_OBJECT())
        if self._time_steps and isinstance(data, vtkImageData):
            copy = vtkImageData()
            copy.DeepCopy(data)
            self._collected.append((f"t{len(self._collected):06d}", copy))
            if len(self._collected) < len(self._time_steps):
                request.Set(sddp.CONTINUE_EXECUTING(), 1)
                self.UpdateProgress(0.5 * len(self._collected) / len(self._time_steps))
                return 1
            request.Remove(sddp.CONTINUE_EXECUTING())
            images, self._collected = self._collected, []
        elif isinstance(data, vtkImageData):
            images = [("t000000", data)]
        else:
            images = None  # a composite: under MPI each rank holds some of its members
        try:
            from sense_core import vtk_views

            self.UpdateProgress(0.5)
            options = {
                "device": _DEVICES[self._device],
                "batch_size": self._batch_size,
                "projection": _PROJECTIONS[self._projection],
                "seed": self._seed,
                "n_neighbors": self._n_neighbors,
                "min_dist": self._min_dist,
            }
            comm = vtk_views.mpi_communicator()
            if comm is not None and images is None:
                result = vtk_views.embed_images_distributed(
                    comm,
                    vtk_views.indexed_composite_images(data),
                    self._bundle,
                    self._array_name or None,
                    **options,
                )
            elif comm is not None and comm.Get_rank() != 0:
                result = None  # a time series: every rank has every image; rank 0 embeds
            else:
                if images is None:
                    images = [(n, i) for _, n, i in vtk_views.indexed_composite_images(data)]
                result = vtk_views.embed_images(
                    images,
                    self._bundle,
                    self._array_name or None,
                    cache=self._inference_cache,
                    input_key=None
                    if self._time_steps
                    else (data.GetAddressAsString("vtkObject"), data.GetMTime()),
                    **options,
                )
            if result is not None:
                _, points, table = result
                vtkPolyData.GetData(outInfo, 0).ShallowCopy(points)
                vtkTable.GetData(outInfo, 1).ShallowCopy(table)
        except Exception as exc:  # noqa: BLE001 - the GUI must show every failure, never crash
            _report_error(str(exc))
        self.UpdateProgress(1.0)
        return 1
