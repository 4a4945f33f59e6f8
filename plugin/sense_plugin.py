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
