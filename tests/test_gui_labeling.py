"""Labeling, suggesting and training from the SENSE Embedding's panel in the real GUI (issue 16).

One ParaView GUI under Xvfb, driven as a person drives it: ParaView's event player types into
the panel and presses its buttons (*Label Selected Points*, *Undo Labeling*, *Suggest Members*,
*Train Head*), a macro selects points in the map as a rubber band would, and a timer of the
test (made by the ``--script``) writes what the GUI then holds once the training has finished.
The GUI is left running between the events, as a person leaves it, so the training's own timer
(made by the *Train Head* button) follows the job and swaps the bundle in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, SENSE, kill_process_tree, make_runtime_bundle, run_paraview_script
from test_training_jobs import separable

from sense_core.io import write_ensemble

pytestmark = pytest.mark.paraview

PANEL = "pqClientMainWindow/propertiesDock/propertiesPanel"
PROXY = (
    f"{PANEL}/scrollArea/qt_scrollarea_viewport/scrollAreaWidgetContents/PropertiesFrame/ProxyPanel"
)
MACROS = "pqClientMainWindow/menubar/menu_Macros"


def button(name: str) -> tuple[str, str, str]:
    return (f"{PROXY}/{name}/1QPushButton0", "activate", "")


def typed(widget: str, text: str) -> tuple[str, str, str]:
    return (f"{PROXY}/{widget}", "set_string", text)


START = """
import json
from paraview.simple import *
from vtkmodules.vtkCommonCore import vtkCommand, vtkOutputWindow
import sense_paraview, sense_paraview.actions
from sense_core import label_store

messages = []
def keep(obj, event, text=None):
    messages.append(str(text).strip())
keep.CallDataType = "string0"
window = vtkOutputWindow.GetInstance()
for event in (vtkCommand.ErrorEvent, vtkCommand.WarningEvent, vtkCommand.MessageEvent):
    window.AddObserver(event, keep)

reader = SENSEEnsembleReader(FileName={ens!r})
embedding = SENSEEmbedding(Input=reader, Bundle={bundle!r}, Projection="PCA", LinkedLayout=0)
Show(embedding)
SetActiveSource(embedding)
Render()
report = {{}}

def state():
    rows = label_store.read_labels({ens!r}).records
    return {{"labels": {{m: r.class_name for m, r in rows.items()}},
            "legend": list(GetColorTransferFunction("label").Annotations[1::2]),
            "bundle": embedding.Bundle, "messages": list(messages)}}

def check(obj, event):  # the test's own timer: report once the button's training has ended
    jobs = list(sense_paraview.actions._JOBS.values())
    if "record" in report and jobs and jobs[0].done and "final" not in report:
        report["final"] = state()
        report["final"]["job"] = jobs[0].state
        report["final"]["watched"] = bool(sense_paraview.training_jobs._WATCHED)
        with open({report_path!r}, "w") as f:
            json.dump(report, f)

sense_paraview._test = (report, state, messages)
interactor = GetActiveView().GetInteractor()
sense_paraview._test_keep = (check, interactor.AddObserver("TimerEvent", check),
                             interactor.CreateRepeatingTimer(250))
"""

SELECT = """
from paraview.simple import *
import sense_paraview
embedding = FindSource("SENSEEmbedding1")
SelectIDs(IDs=[0, 0, 0, 2, 0, 4], FieldType="POINT", Source=embedding)
"""

RECORD = """
from paraview.simple import *
import sense_paraview
from sense_paraview.linking import selected_member_ids
report, state, messages = sense_paraview._test
report[{key!r}] = state()
report[{key!r}]["selected"] = selected_member_ids(FindSource("SENSEEmbedding1"))
"""


def play(tmp_path: Path, start: str, events, macros: dict[str, str], report_path: Path) -> str:
    """Start ``sense paraview`` under Xvfb with the ``--script`` ``start``, play ``events``
    (object, command, arguments; the ``macros`` are in a private configuration) and leave the
    GUI running until ``report_path`` exists; its output."""
    config = tmp_path / "config" / "ParaView"
    (config / "Macros").mkdir(parents=True)
    (config / "ParaView5.11.0.ini").write_text(
        "[General]\nGeneralSettings.ShowWelcomeDialog=false\n\n"
        "[MainWindow]\nSize=@Size(1600 1000)\n"
    )
    for name, code in macros.items():
        (config / "Macros" / f"{name}.py").write_text(code)
    xml = "".join(
        f'  <pqevent object="{o}" command="{c}" arguments="{a}" />\n' for o, c, a in events
    )
    (tmp_path / "events.xml").write_text(f'<?xml version="1.0" ?>\n<pqevents>\n{xml}</pqevents>\n')
    (tmp_path / "start.py").write_text(start)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    log = (tmp_path / "gui.log").open("w")
    command = [SENSE, "paraview", f"--script={tmp_path / 'start.py'}"]
    gui = subprocess.Popen(
        [*command, f"--test-script={tmp_path / 'events.xml'}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not report_path.exists() and gui.poll() is None:
            if "Couldn't find object" in (tmp_path / "gui.log").read_text():
                break  # the event player stopped: the GUI would wait for ever
            time.sleep(0.5)
    finally:
        kill_process_tree(gui)
        log.close()
    return (tmp_path / "gui.log").read_text()


@pytest.mark.training
@pytest.mark.slow
def test_label_suggest_and_train_from_the_embeddings_panel(tmp_path):
    (tmp_path / "data").mkdir()
    ensemble, _ = separable()
    ens = write_ensemble(ensemble, tmp_path / "data" / "e.npz")
    bundle, report_path = tmp_path / "bundle", tmp_path / "report.json"
    make_runtime_bundle(bundle, projector=True)
    macros = {
        "sense_select": SELECT,
        "sense_labeled": RECORD.format(key="labeled"),
        "sense_undone": RECORD.format(key="undone"),
        "sense_record": RECORD.format(key="record"),
    }
    events = [
        button("LabelSelectedPoints"),  # no class typed yet: an error, nothing written
        typed("ClassName/ClassName", "storm, late"),  # typed, not applied
        button("LabelSelectedPoints"),  # nothing selected yet: an error, nothing written
        (MACROS, "activate", "sense_select"),
        button("LabelSelectedPoints"),
        (MACROS, "activate", "sense_labeled"),
        button("UndoLabeling"),
        (MACROS, "activate", "sense_undone"),
        button("LabelSelectedPoints"),
        typed("SuggestionCount/IntRangeWidget/LineEdit", "4"),
        button("SuggestMembers"),
        button("TrainHead"),
        (MACROS, "activate", "sense_record"),
    ]
    start = START.format(ens=str(ens), bundle=str(bundle), report_path=str(report_path))
    output = play(tmp_path, start, events, macros, report_path)
    assert report_path.exists(), output[-4000:]
    report = json.loads(report_path.read_text())
    assert "SIGSEGV" not in output

    labeled, undone, record, final = (report[k] for k in ("labeled", "undone", "record", "final"))
    # (an error reaches the output window's observers twice: as an error and as text)
    errors = list(dict.fromkeys(m for m in labeled["messages"] if m.startswith("SENSE:")))[:2]
    assert "the class name is empty" in errors[0] and "nothing selected" in errors[1], errors
    assert labeled["selected"] == ["run0", "run2", "run4"]
    assert labeled["labels"] == {m: "storm, late" for m in ("run0", "run2", "run4")}
    assert labeled["legend"][-1] == "storm, late"  # the map's legend has the new class at once
    assert undone["labels"] == {}
    assert "SENSE: undid step 1 (3 members)" in undone["messages"][-1]
    assert len(record["selected"]) == 4  # the suggestions, selected in the map
    assert record["labels"] == labeled["labels"]
    assert final["job"] == "done" and final["watched"] is False
    assert final["bundle"] != str(bundle) and "e.npz.sense" in final["bundle"]
    assert any("training done" in m for m in final["messages"])


BUTTONS_SCRIPT = """
from paraview.simple import *
from vtkmodules.vtkCommonCore import vtkCommand, vtkOutputWindow
from sense_core import label_store

messages = []
def keep(obj, event, text=None):
    if text and text.strip() not in messages:
        messages.append(text.strip())
keep.CallDataType = "string0"
for event in (vtkCommand.ErrorEvent, vtkCommand.MessageEvent):
    vtkOutputWindow.GetInstance().AddObserver(event, keep)
reader = SENSEEnsembleReader(FileName=ENS)
embedding = SENSEEmbedding(Input=reader, Bundle=BUNDLE, Projection="PCA", LinkedLayout=0)
Show(embedding)
for command in ("TrainingStatus", "CancelTraining", "TrainHead", "UndoLabeling"):
    embedding.SMProxy.InvokeCommand(command)
embedding.ClassName = "  "
SelectIDs(IDs=[0, 1, 0, 3], FieldType="POINT", Source=embedding)
embedding.SMProxy.InvokeCommand("LabelSelectedPoints")
embedding.ClassName = "braided"
embedding.SMProxy.InvokeCommand("LabelSelectedPoints")
rows = label_store.read_labels(ENS).records
RESULT = {"messages": messages, "labels": {m: r.class_name for m, r in rows.items()}}
"""


def test_the_panels_buttons_say_what_went_wrong_and_label(tmp_path):
    """The buttons as pvpython invokes them (the same methods the GUI's buttons call): each
    says in one line what it did or why it could not (no training yet, one class to train on,
    nothing to undo, an empty class name); then a selection is labeled."""
    (tmp_path / "data").mkdir()
    ensemble, truth = separable()
    one_class = np.where(np.arange(len(truth)) < 6, 0, -1)  # hand labels of one class
    ensemble = dataclasses.replace(ensemble, labels=one_class)
    ens = write_ensemble(ensemble, tmp_path / "data" / "e.npz")
    make_runtime_bundle(tmp_path / "bundle", projector=True)
    script = f"ENS = {str(ens)!r}\nBUNDLE = {str(tmp_path / 'bundle')!r}\n" + BUTTONS_SCRIPT
    result = run_paraview_script(script, tmp_path)["result"]
    said = [m.split(": ", 1)[1] if m.startswith("SENSE:") else m for m in result["messages"]]
    assert said[0] == "no training started from this map's panel"
    assert said[1] == "no training is running for this map"
    assert "every hand label is class 'straight'" in said[2]
    assert "no labeling step to undo" in said[3]
    assert "the class name is empty" in said[4]
    assert said[5].startswith("step 1: labeled 2 members as 'braided'")
    assert result["labels"] == {"run1": "braided", "run3": "braided"}


FIRST_START = """
from paraview.simple import *
reader = SENSEEnsembleReader(FileName={ens!r})
Show(reader)
SetActiveSource(reader)
Render()
"""

WAIT_FOR_TRAINING = """
from sense_paraview.training_jobs import first_use_job
first_use_job({ens!r}).wait(timeout=200)  # the person waits; the Output Messages say how far
"""

FIRST_REPORT = """
import json
from paraview import servermanager
from paraview.simple import *
embedding = FindSource("SENSEEmbedding1")
table = servermanager.Fetch(embedding, idx=1)
with open({report_path!r}, "w") as f:
    json.dump({{"points": embedding.GetDataInformation(0).GetNumberOfPoints(),
               "bundle": embedding.Bundle,
               "classes": sorted(set(table.GetColumnByName("class_name").GetValue(i)
                                     for i in range(table.GetNumberOfRows())))}}, f)
"""


@pytest.mark.training
@pytest.mark.slow
def test_the_first_apply_without_a_bundle_trains_and_training_status_shows_the_map(tmp_path):
    """An unlabeled ensemble of a shape no bundle takes: Filters > SENSE Embedding > Apply
    starts the label-free training (the filter fails meanwhile, saying so); once it is done,
    *Training Status* shows the map, coloured by the suggested groups."""
    (tmp_path / "data").mkdir()
    ensemble, truth = separable()
    ensemble = dataclasses.replace(ensemble, labels=np.full(len(truth), -1))
    ens = write_ensemble(ensemble, tmp_path / "data" / "e.npz")
    report_path = tmp_path / "report.json"
    events = [
        ("pqClientMainWindow/menubar/menuFilters/Alphabetical", "activate", "SENSEEmbedding"),
        (f"{PANEL}/Accept", "activate", ""),
        (MACROS, "activate", "sense_wait"),
        button("TrainingStatus"),
        (MACROS, "activate", "sense_report"),
    ]
    macros = {
        "sense_wait": WAIT_FOR_TRAINING.format(ens=str(ens)),
        "sense_report": FIRST_REPORT.format(report_path=str(report_path)),
    }
    output = play(tmp_path, FIRST_START.format(ens=str(ens)), events, macros, report_path)
    assert report_path.exists(), output[-4000:]
    report = json.loads(report_path.read_text())
    assert "training a label-free bundle in the background" in output
    assert "the label-free bundle is ready" in output
    assert report["points"] == len(truth)
    assert report["bundle"].endswith("e.npz.sense/bundles/001")
    assert report["classes"][0].startswith("group ") and len(report["classes"]) >= 2
