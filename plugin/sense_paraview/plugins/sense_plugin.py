"""SENSE ParaView plugin: declarations only.

Each proxy is a thin subclass of an algorithm of :mod:`sense_paraview.algorithms` (where the
work and its tests are) that declares ParaView properties; every setter delegates. Importing
this module has no side effects: the GUI's linked layout on Apply is started by the GUI
start-up plugin that ``sense paraview`` adds (see ``sense_paraview.launcher.gui_startup_dir``).

Load with ``LoadPlugin(str(sense_paraview.plugin_file()), ns=globals())`` in pvpython, Tools >
Manage Plugins in the GUI, or start ParaView through ``sense paraview`` (which sets
PV_PLUGIN_PATH). This folder holds plugin files only: PV_PLUGIN_PATH loads every .py in it.
"""

from paraview.util.vtkAlgorithm import smdomain, smhint, smproperty, smproxy

from sense_paraview import algorithms
from sense_paraview.algorithms import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PROJECTION,
    DEVICES,
    NAN_POLICIES,
    PROJECTIONS,
    enumeration_xml,
)

ARRAY_LIST_XML = """<ArrayListDomain name="array_list" attribute_type="Scalars"
     input_domain_name="inputs_array">
   <RequiredProperties><Property name="Input" function="Input"/></RequiredProperties>
 </ArrayListDomain>"""


@smproxy.reader(
    name="SENSEEnsembleReader",
    label="SENSE Ensemble Reader",
    extensions="npz",
    file_description="SENSE ensemble",
)
class SENSEEnsembleReader(algorithms.EnsembleReader):
    """Opens a SENSE ensemble (.npz, or a folder of members) as a multiblock of images, one block
    per member named by its member id, with label and class name as field data."""

    @smproperty.stringvector(name="FileName")
    @smdomain.filelist()
    @smhint.filechooser(extensions="npz", file_description="SENSE ensemble")
    def SetFileName(self, name):
        """Ensemble .npz file or member folder."""
        super().SetFileName(name)

    @smproperty.xml(
        enumeration_xml(
            "NaNPolicy",
            "SetNaNPolicy",
            NAN_POLICIES,
            "raise",
            "What to do with non-finite values (e.g. cells outside a domain).",
        )
    )
    def SetNaNPolicy(self, value):
        super().SetNaNPolicy(value)


@smproxy.filter(name="SENSEMemberView", label="SENSE Member View")
@smhint.xml('<ShowInMenu category="SENSE"/>')
@smproperty.input(name="Input", port_index=0)
@smdomain.datatype(
    dataTypes=["vtkMultiBlockDataSet", "vtkPartitionedDataSetCollection"],
    composite_data_supported=True,
)
class SENSEMemberView(algorithms.MemberView):
    """Shows the selected members of an ensemble: a tiled mosaic of their fields (block
    "mosaic", with "tile_labels" points carrying the member ids) and their pixel-wise mean and
    standard deviation (blocks "mean" and "std", placed to the right of the mosaic); block
    "titles" writes each member id, "mean" and "std" into its image's top-left corner."""

    @smproperty.xml(
        """<StringVectorProperty name="MemberIds" command="AddMemberId"
             clean_command="ClearMemberIds" repeat_command="1"
             number_of_elements_per_command="1" number_of_elements="0">
           <Documentation>Ids of the members to show (as in the ensemble's member_id).
           </Documentation>
         </StringVectorProperty>"""
    )
    def AddMemberId(self, member_id):
        super().AddMemberId(member_id)

    def ClearMemberIds(self):
        super().ClearMemberIds()

    @smproperty.stringvector(name="FieldArray", default_values="")
    @smdomain.xml(ARRAY_LIST_XML)
    def SetFieldArray(self, name):
        """Point array holding the members' fields (empty: the active scalars)."""
        super().SetFieldArray(name)

    @smproperty.intvector(name="Columns", default_values=0)
    @smdomain.intrange(min=0, max=50)
    def SetColumns(self, columns):
        """Tiles per mosaic row (0: about square)."""
        super().SetColumns(columns)


@smproxy.filter(name="SENSEEmbedding", label="SENSE Embedding")
@smhint.xml('<ShowInMenu category="SENSE"/>')
@smhint.xml('<View type="None" port="1"/>')  # the table: open it in a spreadsheet on demand
@smproperty.xml('<OutputPort name="Map" index="0"/><OutputPort name="Table" index="1"/>')
@smproperty.input(name="Input", port_index=0)
@smdomain.datatype(
    dataTypes=["vtkMultiBlockDataSet", "vtkPartitionedDataSetCollection", "vtkImageData"],
    composite_data_supported=True,
)
class SENSEEmbedding(algorithms.Embedding):
    """Embeds every member of an ensemble (a multiblock of images, or a time series of images
    where each time step is a member) with a SENSE model bundle and projects it to 2D.
    Output 0: one point (x, y, 0) per member with member_id, label, class_name, label_source,
    confidence and the latent vector, for a scatter in a render view coloured by class.
    Output 1: the same as a table. The provider used (CUDA/CPU) and timings are field data."""

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
        super().SetBundle(path)

    @smproperty.stringvector(name="FieldArray", default_values="")
    @smdomain.xml(ARRAY_LIST_XML)
    def SetFieldArray(self, name):
        """Point array holding the members' fields (empty: the active scalars)."""
        super().SetFieldArray(name)

    @smproperty.xml(
        enumeration_xml(
            "Device",
            "SetDevice",
            DEVICES,
            "auto",
            "Where the models run. Auto: CUDA when onnxruntime can really use it, else CPU. "
            "CUDA: an error that says why when it cannot be used.",
        )
    )
    def SetDevice(self, value):
        super().SetDevice(value)

    @smproperty.intvector(name="BatchSize", default_values=DEFAULT_BATCH_SIZE)
    @smdomain.intrange(min=1, max=4096)
    def SetBatchSize(self, value):
        """Members per inference batch."""
        super().SetBatchSize(value)

    @smproperty.xml(
        enumeration_xml(
            "Projection",
            "SetProjection",
            PROJECTIONS,
            DEFAULT_PROJECTION.method,
            "Latent vectors to 2D. Auto: the bundle's parametric projector when it has one "
            "(deterministic, fast), else UMAP.",
        )
    )
    def SetProjection(self, value):
        super().SetProjection(value)

    @smproperty.intvector(name="UMAPNeighbors", default_values=DEFAULT_PROJECTION.n_neighbors)
    @smdomain.intrange(min=2, max=200)
    def SetUMAPNeighbors(self, value):
        """UMAP n_neighbors: larger values favour global structure."""
        super().SetUMAPNeighbors(value)

    @smproperty.doublevector(name="UMAPMinDist", default_values=DEFAULT_PROJECTION.min_dist)
    @smdomain.doublerange(min=0.0, max=1.0)
    def SetUMAPMinDist(self, value):
        """UMAP min_dist: how tightly points may pack."""
        super().SetUMAPMinDist(value)

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
        super().SetLinkedLayout(value)

    @smproperty.intvector(name="Seed", default_values=DEFAULT_PROJECTION.seed)
    def SetSeed(self, value):
        """Random seed of the projection (recorded in the output); -1: unseeded, faster."""
        super().SetSeed(value)
