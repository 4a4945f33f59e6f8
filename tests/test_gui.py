"""ParaView's GUI under Xvfb with SENSE's plugin, driven as a user would: menus, Apply and
macros are played with ParaView's own event player (``--test-script`` XML), and Python macros
(in a private ParaView configuration folder) report what the GUI then holds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, make_ensemble, run_paraview_gui
from PIL import Image

from sense_core.io import write_ensemble

pytestmark = pytest.mark.paraview

PANEL = "pqClientMainWindow/propertiesDock/propertiesPanel"
PROPERTY = f"{PANEL}/scrollArea/qt_scrollarea_viewport/scrollAreaWidgetContents/PropertiesFrame"
APPLY_EMBEDDING = [
    ("pqClientMainWindow/menubar/menuFilters/Alphabetical", "activate", "SENSEEmbedding"),
    (f"{PROPERTY}/ProxyPanel/Projection/ComboBox", "set_string", "PCA"),
    (f"{PANEL}/Accept", "activate", ""),
]
# Shared by the macros: the proxies of the session by type, and a selection in the scatter.
MACRO_PRELUDE = """
import json
from paraview import servermanager
from paraview.simple import *
pxm = servermanager.ProxyManager()
def by_type(name):
    return [p for p in pxm.GetProxiesInGroup("sources").values()
            if p.SMProxy.GetXMLName() == name]
def views_of(proxy):
    return sorted(k[0] for k, v in pxm.GetProxiesInGroup("views").items()
                  if v.SMProxy.FindRepresentation(proxy.SMProxy, 0) is not None)
embedding, = by_type("SENSEEmbedding")
member_view, = by_type("SENSEMemberView")
layouts = list(pxm.GetProxiesInGroup("layouts").values())
report = {
    "layouts": len(layouts),
    "scatter_views": views_of(embedding),
    "member_views": views_of(member_view),
    "member_view_input": member_view.Input.SMProxy.GetXMLName(),
    "cells": sorted(layouts[0].GetViewLocation(v) for v in GetViewsInLayout(layouts[0])),
}
SelectIDs(IDs=[0, 1, 0, 4, 0, 7], FieldType="POINT", Source=embedding)
report["selected"] = list(member_view.MemberIds)
for view in GetViews():
    Render(view)
"""


def run_gui(tmp_path: Path, events, macros: dict[str, str], *args: str) -> dict:
    """Start ``sense paraview ARGS`` under Xvfb with a private configuration (no welcome
    dialog, the given macros), play ``events`` (object, command, arguments), then each macro
    in order; return the JSON the macros wrote to ``report.json``."""
    config = tmp_path / "config" / "ParaView"
    (config / "Macros").mkdir(parents=True)
    (config / "ParaView5.11.0.ini").write_text(
        "[General]\nGeneralSettings.ShowWelcomeDialog=false\n\n"
        "[MainWindow]\nSize=@Size(1600 1000)\n"
    )
    report = tmp_path / "report.json"
    for name, code in macros.items():
        body = textwrap.dedent(code).replace("REPORT_PATH", repr(str(report)))
        (config / "Macros" / f"{name}.py").write_text(body)
        events = [*events, ("pqClientMainWindow/menubar/menu_Macros", "activate", name)]
    xml = "".join(
        f'  <pqevent object="{o}" command="{c}" arguments="{a}" />\n' for o, c, a in events
    )
    test_script = tmp_path / "events.xml"
    test_script.write_text(f'<?xml version="1.0" ?>\n<pqevents>\n{xml}</pqevents>\n')
    completed = run_paraview_gui(
        *args, f"--test-script={test_script}", config_home=tmp_path / "config"
    )
    output = f"{completed.stdout}\n{completed.stderr}"
    assert completed.returncode == 0 and report.exists(), output[-4000:]
    assert "WARN" not in output and "ERR" not in output, output[-4000:]
    return json.loads(report.read_text())


@pytest.fixture
def ensemble64(tmp_path) -> Path:
    """An ensemble of the shipped bundle's member shape (64 x 64), as .npz."""
    return write_ensemble(make_ensemble(count=24, height=64, width=64), tmp_path / "ens.npz")


def reader_script(tmp_path: Path, path: Path, extra: str = "") -> Path:
    script = tmp_path / "open_ensemble.py"
    script.write_text(
        "from paraview.simple import *\n"
        f"reader = SENSEEnsembleReader(FileName={str(path)!r})\n"
        "Show(reader)\nSetActiveSource(reader)\n" + extra + "Render()\n"
    )
    return script


def test_gui_starts_with_the_plugin_and_renders_the_member_view(tmp_path, ensemble):
    path = write_ensemble(ensemble, tmp_path / "ens.npz")
    shot, result = tmp_path / "gui_view.png", tmp_path / "gui_result.json"
    script = tmp_path / "gui_script.py"
    script.write_text(
        f"""
import json
from paraview import servermanager
from paraview.simple import *
prototypes = servermanager.ProxyManager()
reader = SENSEEnsembleReader(FileName={str(path)!r})
members = SENSEMemberView(Input=reader, MemberIds=["run1", "run2", "run5", "run6"])
view = GetActiveViewOrCreate("RenderView")
Show(members, view)
ResetCamera(view)
SaveScreenshot({str(shot)!r}, view, ImageResolution=[640, 400])
json.dump({{
    "reader": prototypes.GetPrototypeProxy("sources", "SENSEEnsembleReader") is not None,
    "member_view": prototypes.GetPrototypeProxy("filters", "SENSEMemberView") is not None,
    "embedding": prototypes.GetPrototypeProxy("filters", "SENSEEmbedding") is not None,
}}, open({str(result)!r}, "w"))
"""
    )
    completed = run_paraview_gui(f"--script={script}")
    assert completed.returncode == 0, completed.stderr
    assert json.loads(result.read_text()) == {
        "reader": True,
        "member_view": True,
        "embedding": True,
    }
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (400, 640) and pixels.std() > 5


def test_apply_of_sense_embedding_opens_the_linked_layout(tmp_path, ensemble64):
    """Filters > SENSE Embedding > Apply, nothing else: the view splits into the scatter and a
    member view of the ensemble, linked live; the state saved from it opens linked again."""
    shot, state = tmp_path / "gui_layout.png", tmp_path / "linked.pvsm"
    check = (
        MACRO_PRELUDE
        + f"""
display = GetDisplayProperties(embedding, GetViewsInLayout(layouts[0])[0])
report["colour"] = list(display.ColorArrayName)
report["categorical"] = bool(GetColorTransferFunction("label").InterpretValuesAsCategories)
report["axes"] = [GetViewsInLayout(layouts[0])[0].AxesGrid.XTitle]
SaveScreenshot({str(shot)!r}, layouts[0], ImageResolution=[1200, 600])
SaveState({str(state)!r})
json.dump(report, open(REPORT_PATH, "w"))
"""
    )
    report = run_gui(
        tmp_path,
        APPLY_EMBEDDING,
        {"sense_check": check},
        f"--script={reader_script(tmp_path, ensemble64)}",
    )
    assert report["layouts"] == 1 and report["cells"] == [1, 2]  # one view split in two
    assert report["scatter_views"] and report["member_views"]
    assert report["scatter_views"] != report["member_views"]
    assert report["member_view_input"] == "SENSEEnsembleReader"
    assert report["selected"] == ["run1", "run4", "run7"]
    assert report["colour"] == ["POINTS", "label"] and report["categorical"]
    assert report["axes"] == ["SENSE map x"]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.shape == (600, 1200, 3)
    for half in (pixels[:, :600], pixels[:, 600:]):  # scatter | members, both drawn
        assert half.std() > 10

    # The saved state opens in the GUI with its layout, and the link is live again.
    reopened = tmp_path / "reopened"
    reopened.mkdir()
    report = run_gui(
        reopened,
        [],
        {"sense_check": MACRO_PRELUDE + "json.dump(report, open(REPORT_PATH, 'w'))\n"},
        f"--state={state}",
    )
    assert report["layouts"] == 1 and report["cells"] == [1, 2]
    assert report["scatter_views"] and report["member_views"]
    assert report["selected"] == ["run1", "run4", "run7"]


def test_linked_layout_macro_lays_out_an_embedding(tmp_path, ensemble64):
    """The "SENSE Linked Layout" macro shipped with the plugin, on an embedding made with
    LinkedLayout off."""
    script = reader_script(
        tmp_path,
        ensemble64,
        "embedding = SENSEEmbedding(Input=reader, Projection='PCA', LinkedLayout=0)\n"
        "Show(embedding)\nSetActiveSource(embedding)\n",
    )
    macro = (REPO / "plugin" / "sense_paraview" / "scripts" / "linked_layout_macro.py").read_text()
    report = run_gui(
        tmp_path,
        [],
        {
            "SENSE_Linked_Layout": macro,
            "sense_check": MACRO_PRELUDE + "json.dump(report, open(REPORT_PATH, 'w'))\n",
        },
        f"--script={script}",
    )
    assert report["layouts"] == 1 and report["cells"] == [1, 2]
    assert report["selected"] == ["run1", "run4", "run7"]


def test_apply_opens_the_linked_layout_when_connected_to_an_mpi_pvserver(tmp_path, ensemble64):
    """The GUI connected to `mpirun -np 2 pvserver`: the filters run on the server ranks (each
    embeds its share), and Apply in the client still opens the linked layout."""
    from test_mpi import pvserver

    check = MACRO_PRELUDE + (
        "import json as _json\n"
        "table = servermanager.Fetch(embedding, idx=1)\n"
        "provenance = table.GetFieldData().GetAbstractArray('provenance').GetValue(0)\n"
        "report['per_rank'] = _json.loads(provenance)['distributed']['members_per_rank']\n"
        "json.dump(report, open(REPORT_PATH, 'w'))\n"
    )
    with pvserver(tmp_path, ranks=2, xvfb=True) as (port, _):
        report = run_gui(
            tmp_path,
            APPLY_EMBEDDING,
            {"sense_check": check},
            f"--server-url=cs://localhost:{port}",
            f"--script={reader_script(tmp_path, ensemble64)}",
        )
    assert report["layouts"] == 1 and report["cells"] == [1, 2]
    assert report["selected"] == ["run1", "run4", "run7"]
    assert report["per_rank"] == [12, 12]
