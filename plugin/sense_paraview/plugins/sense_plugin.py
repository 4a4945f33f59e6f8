"""SENSE ParaView plugin: declarations only.

Each proxy is a thin subclass of an algorithm of :mod:`sense_paraview.algorithms` (where the
work, its tests and the proxy's documentation, the class docstring, are) that declares ParaView
properties; every setter delegates. ``panel.layout`` above each proxy declares its property
panel: order, groups, documentation (for options that ``sense embed`` also has, its help text)
and when a property is shown (see :mod:`sense_paraview.panel`). Every property has an explicit
``label`` that keeps its scripting name (``UMAPMinDist``).

Importing this module has no side effects: the GUI's linked layout on Apply is started by the
GUI start-up plugin that ``sense paraview`` adds (see ``sense_paraview.launcher.gui_startup_dir``).

Load with ``LoadPlugin(str(sense_paraview.plugin_file()), ns=globals())`` in pvpython, Tools >
Manage Plugins in the GUI, or start ParaView through ``sense paraview`` (which sets
PV_PLUGIN_PATH). This folder holds plugin files only: PV_PLUGIN_PATH loads every .py in it.
"""

import functools

from paraview.util.vtkAlgorithm import smdomain, smhint, smproperty, smproxy

from sense_paraview import algorithms
from sense_paraview.actions import BUTTONS
from sense_paraview.algorithms import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_PROJECTION,
    DEVICES,
    FIELD_VIEWS,
    NAN_POLICIES,
    PROJECTIONS,
    enumeration_xml,
)
from sense_paraview.decoding import Decode as DecodeAlgorithm
from sense_paraview.panel import Group, Item, layout, shown_when
from sense_paraview.paths import SHOW_CHOICES
from sense_paraview.paths import Paths as _Paths

# a list of member ids, set as ParaView sets repeated string properties: clear, then add each
MEMBER_IDS_XML = """<StringVectorProperty name="MemberIds" label="Member Ids" command="AddMemberId"
     clean_command="ClearMemberIds" repeat_command="1"
     number_of_elements_per_command="1" number_of_elements="0"/>"""
# a bundle folder, chosen with a directory dialog
BUNDLE_XML = """<StringVectorProperty name="Bundle" label="Bundle" command="SetBundle"
     number_of_elements="1" default_values="">
   <FileListDomain name="files"/>
   <Hints><UseDirectoryName/></Hints>
 </StringVectorProperty>"""
ARRAY_LIST_XML = """<ArrayListDomain name="array_list" attribute_type="Scalars"
     input_domain_name="inputs_array">
   <RequiredProperties><Property name="Input" function="Input"/></RequiredProperties>
 </ArrayListDomain>"""


def with_buttons(cls):
    """Class decorator (below ``@smproxy``): each of ``BUTTONS`` as a property shown as a push
    button that calls the algorithm's method of that name."""
    for name, (label, _) in BUTTONS.items():
        method = getattr(cls, name)

        @functools.wraps(method)
        def press(self, _method=method):
            return _method(self)

        xml = (
            f'<Property name="{name}" label="{label}" command="{name}" '
            'panel_widget="command_button"/>'
        )
        setattr(cls, name, smproperty.xml(xml)(press))
    return cls


FIELD_ARRAY = Item(
    "FieldArray", "Point array holding the members' fields (empty: the active scalars)"
)
UMAP_ONLY = shown_when("Projection", PROJECTIONS, "umap")


@layout(
    Item("FileName", cli="ensemble"),
    Group(
        "Non-finite values",
        Item("NaNPolicy", cli="--nan-policy"),
        Item("FillValue", cli="--fill-value", shown=shown_when("NaNPolicy", NAN_POLICIES, "fill")),
    ),
)
@smproxy.reader(
    name="SENSEEnsembleReader",
    label="SENSE Ensemble Reader",
    extensions="npz",
    file_description="SENSE ensemble",
    support_reload=False,
)
class SENSEEnsembleReader(algorithms.EnsembleReader):
    @smproperty.stringvector(name="FileName", label="File Name")
    @smdomain.filelist()
    @smhint.filechooser(extensions="npz", file_description="SENSE ensemble")
    def SetFileName(self, name):
        super().SetFileName(name)

    @smproperty.xml(
        enumeration_xml("NaNPolicy", "SetNaNPolicy", NAN_POLICIES, "raise", label="NaN Policy")
    )
    def SetNaNPolicy(self, value):
        super().SetNaNPolicy(value)

    @smproperty.doublevector(name="FillValue", label="Fill Value", default_values=0.0)
    def SetFillValue(self, value):
        super().SetFillValue(value)


@layout(
    Item("Input", "The ensemble: the SENSE Ensemble Reader's output, or any multiblock of images"),
    Item("MemberIds", "Ids of the members to show (as in the ensemble's member_id)"),
    FIELD_ARRAY,
    Item("Columns", "Tiles per mosaic row (0: about square)"),
)
@smproxy.filter(name="SENSEMemberView", label="SENSE Member View", support_reload=False)
@smhint.xml('<ShowInMenu category="SENSE"/>')
@smproperty.input(name="Input", label="Input", port_index=0)
@smdomain.datatype(
    dataTypes=["vtkMultiBlockDataSet", "vtkPartitionedDataSetCollection"],
    composite_data_supported=True,
)
class SENSEMemberView(algorithms.MemberView):
    @smproperty.xml(MEMBER_IDS_XML)
    def AddMemberId(self, member_id):
        super().AddMemberId(member_id)

    def ClearMemberIds(self):
        super().ClearMemberIds()

    @smproperty.stringvector(name="FieldArray", label="Field Array", default_values="")
    @smdomain.xml(ARRAY_LIST_XML)
    def SetFieldArray(self, name):
        super().SetFieldArray(name)

    @smproperty.intvector(name="Columns", label="Columns", default_values=0)
    @smdomain.intrange(min=0, max=50)
    def SetColumns(self, columns):
        super().SetColumns(columns)


@layout(
    Item(
        "Input",
        "The ensemble: a multiblock of images (one block per member, e.g. the SENSE Ensemble "
        "Reader's output) or an image with time steps (one member per step)",
    ),
    Group(
        "Bundle",
        Item(
            "Bundle",
            "Empty: the shipped bundle for the input's member shape, else the newest bundle "
            "trained for the ensemble (kept beside it; sense_paraview.train)",
            cli="bundle",
        ),
        FIELD_ARRAY,
    ),
    Group(
        "Projection",
        Item(
            "Projection",
            "UMAP's own settings below are shown when UMAP is chosen (Auto uses them too when "
            "the bundle has no projector)",
            cli="--projection",
        ),
        Item("UMAPNeighbors", cli="--n-neighbors", shown=UMAP_ONLY),
        Item("UMAPMinDist", cli="--min-dist", shown=UMAP_ONLY),
        Item("Seed", cli="--seed", shown=UMAP_ONLY),
    ),
    Group(
        "Labeling",
        Item(
            "ClassName",
            "The class Label Selected Points gives: an existing class or a new one (read as "
            "typed; no Apply needed)",
        ),
        Item(
            "LabelSelectedPoints",
            "Give the points selected in the map the class typed above, as hand labels in the "
            "label sidecar beside the ensemble (one step; the ensemble is not rewritten); the "
            "map and its legend update. Outcome or error in Output Messages",
        ),
        Item("UnlabelSelectedPoints", "Remove the labels of the points selected in the map"),
        Item("UndoLabeling", "Take back the last labeling step (again for the one before)"),
        Item("SuggestionCount", "How many members Suggest Members picks"),
        Item(
            "SuggestMembers",
            "Select the members whose labels would help most (where the labeler is least sure, "
            "one per region of the map; regions without hand labels first), so that the member "
            "view shows them: label them next",
        ),
    ),
    Group(
        "Training",
        Item(
            "TrainHead",
            "Train a classifier on this bundle's latent space from the hand labels, in the "
            "background (seconds); the map switches to the new bundle when it is done",
        ),
        Item(
            "FieldSymmetries",
            "For Train Full Fit: what does not change a member's class in your fields? Named, "
            "the fit learns from those transformations of every member, unlabeled ones too "
            "(the ssl labeler: better with few hand labels when they are right, see "
            "docs/label_efficiency.md); not named, the latent labeler. Read as chosen, no "
            "Apply needed",
        ),
        Item(
            "TrainFullFit",
            "Train a whole new bundle (sense fit, quick profile) from the hand labels, in the "
            "background (minutes; label-free when there are none); the map switches to it when "
            "it is done. Every trained bundle is kept beside the ensemble (Bundle switches back)",
        ),
        Item("TrainingStatus", "Report how far the training is (and finish it when it is done)"),
        Item("CancelTraining", "Stop the training; no bundle version is written"),
    ),
    Group(
        "Advanced",
        Item("Device", cli="--device"),
        Item("BatchSize", cli="--batch-size"),
        Item(
            "LinkedLayout",
            "In the GUI, on the first Apply, split the view into the scatter (coloured by "
            "class) and a SENSE Member View of the same ensemble, linked live: selected points "
            "show their members' fields with mean and std",
        ),
        advanced=True,
    ),
)
@smproxy.filter(name="SENSEEmbedding", label="SENSE Embedding", support_reload=False)
@smhint.xml('<ShowInMenu category="SENSE"/>')
@smhint.xml('<View type="None" port="1"/>')  # the table: open it in a spreadsheet on demand
@smproperty.xml('<OutputPort name="Map" index="0"/><OutputPort name="Table" index="1"/>')
@smproperty.input(name="Input", label="Input", port_index=0)
@smdomain.datatype(
    dataTypes=["vtkMultiBlockDataSet", "vtkPartitionedDataSetCollection", "vtkImageData"],
    composite_data_supported=True,
)
@with_buttons
class SENSEEmbedding(algorithms.Embedding):
    @smproperty.xml(BUNDLE_XML)
    def SetBundle(self, path):
        super().SetBundle(path)

    @smproperty.stringvector(name="FieldArray", label="Field Array", default_values="")
    @smdomain.xml(ARRAY_LIST_XML)
    def SetFieldArray(self, name):
        super().SetFieldArray(name)

    @smproperty.xml(enumeration_xml("Device", "SetDevice", DEVICES, "auto", label="Device"))
    def SetDevice(self, value):
        super().SetDevice(value)

    @smproperty.intvector(name="BatchSize", label="Batch Size", default_values=DEFAULT_BATCH_SIZE)
    @smdomain.intrange(min=1, max=4096)
    def SetBatchSize(self, value):
        super().SetBatchSize(value)

    @smproperty.xml(
        enumeration_xml(
            "Projection",
            "SetProjection",
            PROJECTIONS,
            DEFAULT_PROJECTION.method,
            label="Projection",
        )
    )
    def SetProjection(self, value):
        super().SetProjection(value)

    @smproperty.intvector(
        name="UMAPNeighbors",
        label="UMAP Neighbors",
        default_values=DEFAULT_PROJECTION.n_neighbors,
    )
    @smdomain.intrange(min=2, max=200)
    def SetUMAPNeighbors(self, value):
        super().SetUMAPNeighbors(value)

    @smproperty.doublevector(
        name="UMAPMinDist", label="UMAP Min Dist", default_values=DEFAULT_PROJECTION.min_dist
    )
    @smdomain.doublerange(min=0.0, max=1.0)
    def SetUMAPMinDist(self, value):
        super().SetUMAPMinDist(value)

    @smproperty.xml(
        """<IntVectorProperty name="LinkedLayout" label="Linked Layout"
             command="SetLinkedLayout" number_of_elements="1" default_values="1">
           <BooleanDomain name="bool"/>
         </IntVectorProperty>"""
    )
    def SetLinkedLayout(self, value):
        super().SetLinkedLayout(value)

    @smproperty.intvector(name="Seed", label="Seed", default_values=DEFAULT_PROJECTION.seed)
    def SetSeed(self, value):
        super().SetSeed(value)

    @smproperty.stringvector(name="ClassName", label="Class Name", default_values="")
    def SetClassName(self, name):
        super().SetClassName(name)

    @smproperty.intvector(name="SuggestionCount", label="Suggestion Count", default_values=10)
    @smdomain.intrange(min=1, max=200)
    def SetSuggestionCount(self, count):
        super().SetSuggestionCount(count)

    @smproperty.xml(
        enumeration_xml(
            "FieldSymmetries",
            "SetFieldSymmetries",
            FIELD_VIEWS,
            FIELD_VIEWS[0][0],
            label="Field Symmetries",
        )
    )
    def SetFieldSymmetries(self, value):
        super().SetFieldSymmetries(value)


@layout(
    Item("Input", "The map (port 0) of a SENSE Embedding made with a bundle that has a decoder"),
    Item(
        "Point",
        "The point (x, y) of the map to decode; z is ignored (the map lies in z = 0). In the "
        "GUI, drag the handle in the map's view, or press P over the map to put it there",
    ),
    Item(
        "Neighbours",
        "How many members nearest to the point on the map its latent vector is interpolated "
        "from (inverse-distance weights)",
    ),
    Group(
        "Advanced",
        Item("Bundle", "Empty: the bundle the embedding was made with"),
        Item(
            "FieldArray",
            "Name of the decoded field's point array (empty: field, as SENSE's reader names "
            "members' fields)",
        ),
        advanced=True,
    ),
)
@smproxy.filter(name="SENSEDecode", label="SENSE Decode", support_reload=False)
@smhint.xml('<ShowInMenu category="SENSE"/>')
@smproperty.xml(
    """<PropertyGroup label="Point on the map" panel_widget="InteractiveHandle">
         <Property function="WorldPosition" name="Point"/>
       </PropertyGroup>"""
)
@smproperty.input(name="Input", label="Input", port_index=0)
@smdomain.datatype(dataTypes=["vtkPolyData"])
class SENSEDecode(DecodeAlgorithm):
    @smproperty.doublevector(name="Point", label="Point", default_values=[0.0, 0.0, 0.0])
    def SetPoint(self, x, y, z):
        super().SetPoint(x, y, z)

    @smproperty.intvector(name="Neighbours", label="Neighbours", default_values=8)
    @smdomain.intrange(min=1, max=100)
    def SetNeighbours(self, value):
        super().SetNeighbours(value)

    @smproperty.xml(BUNDLE_XML)
    def SetBundle(self, path):
        super().SetBundle(path)

    @smproperty.stringvector(name="FieldArray", label="Field Array", default_values="")
    def SetFieldArray(self, name):
        super().SetFieldArray(name)


@layout(
    Item("Input", "The map: output 0 (Map) of SENSE Embedding"),
    Item(
        "Show",
        "All paths, none, or only the paths through the selected members (Member Ids; "
        "show_paths keeps them equal to the map's selection)",
    ),
    Item("MemberIds", "Ids of the selected members whose paths are shown when Show says so"),
    Group(
        "Order",
        Item(
            "GroupColumn",
            "Point array naming each member's sequence (empty: found automatically, e.g. "
            "chain or simulation)",
        ),
        Item(
            "OrderColumn",
            "Point array ordering the members of a sequence (empty: step, time, or the time "
            "series' member ids)",
        ),
        Item("MaxGap", "Cut a path where two consecutive orders differ by more (0: never)"),
        advanced=True,
    ),
)
@smproxy.filter(name="SENSEPaths", label="SENSE Paths", support_reload=False)
@smhint.xml('<ShowInMenu category="SENSE"/>')
@smproperty.input(name="Input", label="Input", port_index=0)
@smdomain.datatype(dataTypes=["vtkPolyData"], composite_data_supported=False)
class SENSEPaths(_Paths):
    @smproperty.xml(enumeration_xml("Show", "SetShow", SHOW_CHOICES, "all", label="Show"))
    def SetShow(self, value):
        super().SetShow(value)

    @smproperty.xml(MEMBER_IDS_XML)
    def AddMemberId(self, member_id):
        super().AddMemberId(member_id)

    def ClearMemberIds(self):
        super().ClearMemberIds()

    @smproperty.stringvector(name="GroupColumn", label="Group Column", default_values="")
    def SetGroupColumn(self, name):
        super().SetGroupColumn(name)

    @smproperty.stringvector(name="OrderColumn", label="Order Column", default_values="")
    def SetOrderColumn(self, name):
        super().SetOrderColumn(name)

    @smproperty.doublevector(name="MaxGap", label="Max Gap", default_values=0.0)
    @smdomain.doublerange(min=0.0)
    def SetMaxGap(self, value):
        super().SetMaxGap(value)
