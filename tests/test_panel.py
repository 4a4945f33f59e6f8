"""The property panel of SENSE's proxies (issue 17, item 3): explicit labels that keep the
scripting names, a logical order in groups (Bundle, Projection, then Advanced), a
``<Documentation>`` for every property and proxy whose texts come from the ``sense embed`` help,
settings shown only where they apply, as ParaView's server manager (pvpython) and the GUI
(under Xvfb) see them. The XML rewriting itself is checked without ParaView."""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
from helpers import make_ensemble, run_paraview_gui, run_paraview_script, run_sense
from PIL import Image

from sense_core.io import write_ensemble
from sense_paraview import panel
from sense_paraview.algorithms import PROJECTIONS
from sense_paraview.panel import Group, Item, apply_layout, cli_help, shown_when

# What a scientist should meet, in this order: (property, label, group or None, advanced).
EMBEDDING = [
    ("Input", "Input", None, False),
    ("Bundle", "Bundle", "Bundle", False),
    ("FieldArray", "Field Array", "Bundle", False),
    ("Projection", "Projection", "Projection", False),
    ("UMAPNeighbors", "UMAP Neighbors", "Projection", False),
    ("UMAPMinDist", "UMAP Min Dist", "Projection", False),
    ("Seed", "Seed", "Projection", False),
    ("ClassName", "Class Name", "Labeling", False),
    ("LabelSelectedPoints", "Label Selected Points", "Labeling", False),
    ("UnlabelSelectedPoints", "Unlabel Selected Points", "Labeling", False),
    ("UndoLabeling", "Undo Labeling", "Labeling", False),
    ("SuggestionCount", "Suggestion Count", "Labeling", False),
    ("SuggestMembers", "Suggest Members", "Labeling", False),
    ("TrainHead", "Train Head", "Training", False),
    ("FieldSymmetries", "Field Symmetries", "Training", False),
    ("TrainFullFit", "Train Full Fit", "Training", False),
    ("TrainingStatus", "Training Status", "Training", False),
    ("CancelTraining", "Cancel Training", "Training", False),
    ("Device", "Device", "Advanced", True),
    ("BatchSize", "Batch Size", "Advanced", True),
    ("LinkedLayout", "Linked Layout", "Advanced", True),
]
READER = [
    ("FileName", "File Name", None, False),
    ("NaNPolicy", "NaN Policy", "Non-finite values", False),
    ("FillValue", "Fill Value", "Non-finite values", False),
]
MEMBER_VIEW = [
    ("Input", "Input", None, False),
    ("MemberIds", "Member Ids", None, False),
    ("FieldArray", "Field Array", None, False),
    ("Columns", "Columns", None, False),
]
# Properties whose documentation is the `sense embed` help of an option (then panel text).
CLI_OPTIONS = {
    "SENSEEmbedding": {
        "Bundle": "bundle",
        "Projection": "--projection",
        "UMAPNeighbors": "--n-neighbors",
        "UMAPMinDist": "--min-dist",
        "Seed": "--seed",
        "Device": "--device",
        "BatchSize": "--batch-size",
    },
    "SENSEEnsembleReader": {
        "FileName": "ensemble",
        "NaNPolicy": "--nan-policy",
        "FillValue": "--fill-value",
    },
}

PANEL_SCRIPT = """
from paraview import servermanager
from paraview.servermanager import vtkSMOrderedPropertyIterator
from paraview.simple import *
import sense_paraview
import numpy as np
from vtkmodules.util.numpy_support import vtk_to_numpy
LoadPlugin(str(sense_paraview.plugin_file()), ns=globals())
manager = servermanager.ProxyManager().SMProxyManager
RESULT = {}
for group, name in (("sources", "SENSEEnsembleReader"), ("filters", "SENSEMemberView"),
                    ("filters", "SENSEEmbedding")):
    proxy = manager.GetPrototypeProxy(group, name)
    properties = []
    iterator = vtkSMOrderedPropertyIterator()
    iterator.SetProxy(proxy)
    iterator.Begin()
    while not iterator.IsAtEnd():
        prop = iterator.GetProperty()
        documentation = prop.GetDocumentation()
        hints = prop.GetHints()
        decorator = hints.FindNestedElementByName("PropertyWidgetDecorator") if hints else None
        properties.append({
            "name": iterator.GetKey(),
            "label": prop.GetXMLLabel(),
            "documentation": documentation.GetDescription() if documentation else None,
            "advanced": prop.GetPanelVisibility() == "advanced",
            "shown": None if decorator is None else [
                decorator.GetAttribute("type"), decorator.GetAttribute("mode"),
                decorator.GetAttribute("property"), decorator.GetAttribute("values")],
        })
        iterator.Next()
    groups = {}
    for index in range(proxy.GetNumberOfPropertyGroups()):
        found = proxy.GetPropertyGroup(index)
        groups[found.GetXMLLabel()] = {
            "advanced": found.GetPanelVisibility() == "advanced",
            "properties": [found.GetPropertyName(j) for j in range(found.GetNumberOfProperties())],
        }
    hints = proxy.GetHints()
    panel_doc = hints.FindNestedElementByName("ShowProxyDocumentationInPanel") if hints else None
    RESULT[name] = {
        "properties": properties,
        "groups": groups,
        "short_help": proxy.GetDocumentation().GetShortHelp(),
        "description": proxy.GetDocumentation().GetDescription(),
        "panel_documentation": panel_doc.GetAttribute("type") if panel_doc else None,
    }

# Scripts keep the property names; the new Fill Value reaches the reader.
reader = SENSEEnsembleReader(FileName=ENSEMBLE, NaNPolicy="Replace NaN/Inf by the fill value",
                             FillValue=7.5)
reader.UpdatePipeline()
block = servermanager.Fetch(reader).GetBlock(0)
values = vtk_to_numpy(block.GetPointData().GetArray("field"))
RESULT["filled"] = [int((values == 7.5).sum()), int(np.isnan(values).sum())]
embedding = SENSEEmbedding(Input=reader, UMAPNeighbors=7, UMAPMinDist=0.25, Seed=3,
                           BatchSize=8, Device="CPU", Projection="UMAP", LinkedLayout=0)
RESULT["set"] = [embedding.UMAPNeighbors, embedding.UMAPMinDist, embedding.Seed,
                 embedding.BatchSize, embedding.GetProperty("Device").GetData()]
"""


@pytest.fixture(scope="module")
def servermanager_view(tmp_path_factory) -> dict:
    """What ParaView's server manager holds for the three proxies (one pvpython run)."""
    folder = tmp_path_factory.mktemp("panel")
    ensemble = make_ensemble(count=4)
    ensemble.fields[0, 0, 0, :3] = np.nan
    path = write_ensemble(ensemble, folder / "nan.npz")
    script = f"ENSEMBLE = {str(path)!r}\n" + PANEL_SCRIPT
    return run_paraview_script(script, folder)["result"]


def _layout(result: dict) -> list[tuple]:
    """(name, label, group, advanced) of each property, in panel order."""
    group_of = {
        name: label for label, group in result["groups"].items() for name in group["properties"]
    }
    return [
        (p["name"], p["label"], group_of.get(p["name"]), p["advanced"])
        for p in result["properties"]
    ]


@pytest.mark.paraview
@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        ("SENSEEmbedding", EMBEDDING),
        ("SENSEEnsembleReader", READER),
        ("SENSEMemberView", MEMBER_VIEW),
    ],
)
def test_every_property_has_its_label_place_group_and_documentation(
    servermanager_view, proxy, expected
):
    result = servermanager_view[proxy]
    assert _layout(result) == expected
    for prop in result["properties"]:
        text = prop["documentation"]
        assert text and len(text) > 15 and text.endswith("."), prop
        assert "--" not in text, prop  # command-line flags are named by their panel label
    for label, group in result["groups"].items():
        assert group["advanced"] == (label == "Advanced")
    # The proxy itself: a description (the algorithm's docstring) shown on top of the panel,
    # naming SENSE's help page.
    assert result["panel_documentation"] == "short_help"
    assert "docs/paraview.md" in result["short_help"]
    assert result["description"].startswith(result["short_help"].split(".")[0])
    assert "Reload Python Module" not in [p["name"] for p in result["properties"]]


@pytest.mark.paraview
def test_settings_are_shown_only_where_they_apply(servermanager_view):
    shown = {
        proxy: {p["name"]: p["shown"] for p in servermanager_view[proxy]["properties"]}
        for proxy in ("SENSEEmbedding", "SENSEEnsembleReader")
    }
    umap = ["GenericDecorator", "visibility", "Projection", "1"]  # position of UMAP
    assert PROJECTIONS[1][0] == "umap"
    assert {name for name, when in shown["SENSEEmbedding"].items() if when} == {
        "UMAPNeighbors",
        "UMAPMinDist",
        "Seed",
    }
    assert all(when == umap for when in shown["SENSEEmbedding"].values() if when is not None)
    assert shown["SENSEEnsembleReader"]["FillValue"] == [
        "GenericDecorator",
        "visibility",
        "NaNPolicy",
        "1",
    ]


def _cli_help_lines() -> dict[str, str]:
    """`sense embed --help` as printed, one entry per option (flag or positional name): the
    text after the option, or on the next line when the option is long. Run with a wide
    COLUMNS, so that argparse does not wrap the texts."""
    options: dict[str, str] = {}
    option = None
    for line in run_sense("embed", "--help").stdout.splitlines():
        found = re.match(
            r"^  (-{0,2}[a-z][\w-]*)(?:,\s*--[\w-]+)*(?: \S+)?(?:\s{2,}(\S.*))?$", line
        )
        if found:
            option = found.group(1)
            options[option] = found.group(2) or ""
        elif option and line.startswith(" " * 10) and not options[option]:
            options[option] = line.strip()
    return options


@pytest.mark.paraview
def test_documentation_is_the_command_line_help(servermanager_view, monkeypatch):
    """One source: the panel says what `sense embed --help` says (without the default, which
    the panel shows itself, and with the flags named by their panel labels)."""
    monkeypatch.setenv("COLUMNS", "2000")
    printed = _cli_help_lines()
    for proxy, options in CLI_OPTIONS.items():
        properties = servermanager_view[proxy]["properties"]
        labels = {p["name"]: p["label"] for p in properties}
        by_flag = {flag: labels[name] for name, flag in options.items()}
        for prop in properties:
            if prop["name"] not in options:
                continue
            text = re.sub(r"\s*\(default[^()]*\)$", "", printed[options[prop["name"]]])
            for flag, label in by_flag.items():
                text = text.replace(flag, label) if flag.startswith("--") else text
            expected = text[0].upper() + text[1:]
            assert prop["documentation"].startswith(expected), (prop, printed)


@pytest.mark.paraview
def test_scripts_keep_the_property_names_and_fill_value_reaches_the_reader(servermanager_view):
    assert servermanager_view["filled"] == [3, 0]  # the 3 NaN of member run0, no NaN left
    assert servermanager_view["set"] == [7, 0.25, 3, 8, "CPU"]


GUI_PANEL = "pqClientMainWindow/propertiesDock/propertiesPanel"
GUI_PROXY = (
    f"{GUI_PANEL}/scrollArea/qt_scrollarea_viewport/scrollAreaWidgetContents/PropertiesFrame"
    "/ProxyPanel"
)


@pytest.mark.paraview
def test_gui_panel_hides_umap_settings_unless_umap_is_chosen(tmp_path):
    """In the real GUI (Xvfb): the new SENSE Embedding's panel hides the UMAP settings (Auto)
    and the advanced ones, shows the UMAP settings once UMAP is chosen; a screenshot of the
    whole window (panel_umap.png) is kept for a person to look at."""
    path = write_ensemble(make_ensemble(count=8, height=64, width=64), tmp_path / "ens.npz")
    shot = tmp_path / "panel_umap.png"
    config = tmp_path / "config" / "ParaView"
    (config / "Macros").mkdir(parents=True)
    (config / "ParaView5.11.0.ini").write_text(
        "[General]\nGeneralSettings.ShowWelcomeDialog=false\n\n"
        "[MainWindow]\nSize=@Size(1400 1000)\n"
    )
    (config / "Macros" / "sense_shot.py").write_text(
        textwrap.dedent(
            f"""
            from PIL import ImageGrab
            ImageGrab.grab().save({str(shot)!r})
            """
        )
    )
    opened = tmp_path / "open.py"
    opened.write_text(
        "from paraview.simple import *\n"
        f"reader = SENSEEnsembleReader(FileName={str(path)!r})\n"
        "Show(reader)\nSetActiveSource(reader)\nRender()\n"
    )

    def visible(name: str, value: bool) -> tuple[str, str, str]:
        return (f"{GUI_PROXY}/{name}", "visible", "true" if value else "false")

    steps = [
        (
            "pqevent",
            ("pqClientMainWindow/menubar/menuFilters/Alphabetical", "activate", "SENSEEmbedding"),
        ),
        *[("pqcheck", visible(name, False)) for name in ("UMAPNeighbors", "UMAPMinDist", "Seed")],
        *[("pqcheck", visible(name, False)) for name in ("Device", "BatchSize", "LinkedLayout")],
        ("pqcheck", visible("Bundle", True)),
        ("pqevent", (f"{GUI_PROXY}/Projection/ComboBox", "set_string", "UMAP")),
        *[("pqcheck", visible(name, True)) for name in ("UMAPNeighbors", "UMAPMinDist", "Seed")],
        ("pqevent", ("pqClientMainWindow/menubar/menu_Macros", "activate", "sense_shot")),
        ("pqevent", (f"{GUI_PROXY}/Projection/ComboBox", "set_string", "PCA")),
        *[("pqcheck", visible(name, False)) for name in ("UMAPNeighbors", "UMAPMinDist", "Seed")],
    ]
    lines = []
    for kind, (target, command, value) in steps:
        key = "property" if kind == "pqcheck" else "command"
        lines.append(f'  <{kind} object="{target}" {key}="{command}" arguments="{value}" />\n')
    events = tmp_path / "events.xml"
    events.write_text(f'<?xml version="1.0" ?>\n<pqevents>\n{"".join(lines)}</pqevents>\n')
    completed = run_paraview_gui(
        f"--script={opened}", f"--test-script={events}", config_home=tmp_path / "config"
    )
    output = f"{completed.stdout}\n{completed.stderr}"
    assert completed.returncode == 0, output[-4000:]
    assert "ERR" not in output and "WARN" not in output, output[-4000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape[0] >= 600 and pixels.std() > 10


def test_layout_orders_documents_groups_and_hides():
    xml = (
        "<ServerManagerConfiguration><ProxyGroup name='filters'>"
        "<SourceProxy name='P' class='m.P' label='P' support_reload='0'>"
        "<IntVectorProperty name='Zeta' label='Zeta' command='SetZeta'/>"
        "<IntVectorProperty name='Alpha' label='Alpha' command='SetAlpha'>"
        "<EnumerationDomain name='enum'><Entry value='0' text='Auto'/></EnumerationDomain>"
        "<Documentation>old</Documentation></IntVectorProperty>"
        "<OutputPort name='Map' index='0'/><Hints><ShowInMenu category='SENSE'/></Hints>"
        "</SourceProxy></ProxyGroup></ServerManagerConfiguration>"
    )
    laid = apply_layout(
        xml,
        [
            Item("Zeta", "first of all"),
            Group(
                "Rare",
                Item(
                    "Alpha",
                    "the second",
                    cli="--batch-size",
                    shown=shown_when("Zeta", PROJECTIONS, "pca"),
                ),
                advanced=True,
            ),
        ],
        "Does things. And more.",
    )
    assert re.search(r"name=\"Zeta\".*name=\"Alpha\"", laid, re.S)
    assert "<Documentation>First of all.</Documentation>" in laid
    assert "<Documentation>Members per inference batch. The second.</Documentation>" in laid
    assert "old" not in laid and "support_reload" not in laid
    assert 'panel_visibility="advanced"' in laid
    assert (
        '<PropertyGroup label="Rare" panel_visibility="advanced"><Property name="Alpha" />' in laid
    )
    assert 'property="Zeta" values="3"' in laid
    assert 'short_help="Does things. Help: SENSE\'s docs/paraview.md."' in laid
    assert (
        '<ShowInMenu category="SENSE" /><ShowProxyDocumentationInPanel type="short_help" />' in laid
    )
    assert '<OutputPort name="Map" index="0" />' in laid


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([Item("Alpha", "a")], r"undeclared properties \['Beta'\]"),
        ([Item("Alpha", "a"), Item("Beta", "b"), Item("Gamma", "c")], r"not defined \['Gamma'\]"),
        ([Item("Alpha", "a"), Item("Beta")], "Beta has no documentation"),
        ([Item("Alpha", "a"), Item("Beta", cli="--nan-policy")], "names --fill-value, no property"),
    ],
)
def test_layout_refuses_a_panel_that_does_not_match_the_proxy(entries, message):
    xml = (
        "<ServerManagerConfiguration><ProxyGroup name='filters'><SourceProxy name='P'>"
        "<IntVectorProperty name='Alpha' label='Alpha'/>"
        "<IntVectorProperty name='Beta' label='Beta'/>"
        "</SourceProxy></ProxyGroup></ServerManagerConfiguration>"
    )
    with pytest.raises(ValueError, match=message):
        apply_layout(xml, entries, "Doc.")


def test_layout_refuses_a_label_that_renames_the_property_in_scripts():
    xml = (
        "<ServerManagerConfiguration><ProxyGroup name='filters'><SourceProxy name='P'>"
        "<IntVectorProperty name='UMAPMinDist' label='UMAP Min. Distance'/>"
        "<IntVectorProperty name='Beta'/>"
        "</SourceProxy></ProxyGroup></ServerManagerConfiguration>"
    )
    with pytest.raises(ValueError, match="would rename it in scripts .to 'UMAPMinDistance'"):
        apply_layout(xml, [Item("UMAPMinDist", "a"), Item("Beta", "b")], "Doc.")
    with pytest.raises(ValueError, match="proxy P: property Beta has no label"):
        apply_layout(
            xml.replace("Distance", "Dist"), [Item("UMAPMinDist", "a"), Item("Beta", "b")], "Doc."
        )


def test_cli_help_is_the_sense_embed_help_without_its_default():
    assert cli_help("--batch-size") == "Members per inference batch."
    assert cli_help("bundle") == "Model bundle folder (with sense.json)."
    assert cli_help("--min-dist") == "UMAP minimum distance: how tightly points may pack."
    with pytest.raises(ValueError, match="sense embed has no option '--nope'"):
        cli_help("--nope")
    with pytest.raises(ValueError, match=r"\['tsne'\] not among"):
        shown_when("Projection", PROJECTIONS, "tsne")
    assert panel.python_name("UMAP Min Dist") == "UMAPMinDist"
    assert panel.python_name("NaN Policy") == "NaNPolicy"
