"""SENSE ParaView plugin: declarations only; the work happens in ``sense_core`` (imported lazily).

Load with ``LoadPlugin("plugin/sense_plugin.py", ns=globals())`` in pvpython, Tools > Manage
Plugins in the GUI, or start ParaView through ``sense paraview`` (which sets PV_PLUGIN_PATH).
"""

from paraview.util.vtkAlgorithm import VTKPythonAlgorithmBase, smdomain, smhint, smproperty, smproxy


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

    def RequestData(self, request, inInfo, outInfo):
        from vtkmodules.vtkCommonDataModel import vtkMultiBlockDataSet

        output = vtkMultiBlockDataSet.GetData(outInfo, 0)
        if not self._file_name:
            _report_error("no FileName set on the SENSE Ensemble Reader")
            return 1
        try:
            from sense_core.io import open_ensemble
            from sense_core.io.vti import store_to_multiblock

            policy = ("raise", "fill")[self._nan_policy]
            output.ShallowCopy(store_to_multiblock(open_ensemble(self._file_name, policy)))
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
    standard deviation (blocks "mean" and "std", placed to the right of the mosaic)."""

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
            from sense_core.vtk_views import member_view_blocks

            ensemble = inInfo[0].GetInformationObject(0).Get(vtkDataObject.DATA_OBJECT())
            blocks = member_view_blocks(
                ensemble, self._member_ids, self._array_name or None, self._columns or None
            )
            output.ShallowCopy(blocks)
        except Exception as exc:  # noqa: BLE001 - the GUI must show every failure, never crash
            _report_error(str(exc))
        return 1
