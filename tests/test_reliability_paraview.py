"""The ParaView rows of the reliability table (docs/reliability.md): every bad input through the
SENSE Ensemble Reader, and every unusable model through the SENSE Embedding filter, shows its
message in Output Messages (ParaView's vtkOutputWindow), fails the filter (a pvpython/pvbatch
script sees the failure: sense_paraview.update_or_raise raises, the example scripts exit with
status 1) and leaves an empty output, and the session keeps working afterwards: one pvpython
run for all rows (each start costs seconds), and one run of the GUI itself."""

from __future__ import annotations

import json

import pytest
from helpers import (
    make_ensemble,
    make_runtime_bundle,
    onnxruntime_cuda_works,
    run_paraview_gui,
    run_paraview_script,
    run_sense,
)
from test_reliability import INPUT_ROWS, MODEL_ROWS, _broken_bundle

from sense_core.io import write_ensemble
from sense_paraview import plugin_file, scripts_dir

pytestmark = pytest.mark.paraview
PLUGIN = plugin_file()  # package data of sense_paraview

SCRIPT = """
import os
from paraview.simple import *
from vtkmodules.vtkCommonCore import vtkCommand, vtkOutputWindow
from sense_paraview import FilterError, update_or_raise

LoadPlugin({plugin!r}, ns=globals())
messages = []
def catch(obj, event, text=None):
    messages.append(str(text))
catch.CallDataType = "string0"
vtkOutputWindow.GetInstance().AddObserver(vtkCommand.ErrorEvent, catch)

def sense_messages():
    found = [m.strip() for m in messages if "SENSE:" in m]
    messages.clear()
    return found

def failure(proxy):
    try:
        update_or_raise(proxy)
    except FilterError as exc:
        return str(exc)
    return ""

RESULT = {{"reader": {{}}, "filter": {{}}}}
for name, path, limit in {reader_cases!r}:
    if limit:
        os.environ["SENSE_MEMORY_LIMIT"] = limit
    reader = SENSEEnsembleReader(FileName=path)
    failed = failure(reader)
    blocks = servermanager.Fetch(reader).GetNumberOfBlocks()
    RESULT["reader"][name] = {{"blocks": blocks, "messages": sense_messages(), "failed": failed}}
    os.environ.pop("SENSE_MEMORY_LIMIT", None)
    Delete(reader)

for name, source, bundle, device in {filter_cases!r}:
    reader = SENSEEnsembleReader(FileName=source)
    embedding = SENSEEmbedding(Input=reader, Bundle=bundle, Projection="PCA", Device=device)
    failed = failure(embedding)
    points = servermanager.Fetch(embedding, idx=0)
    table = servermanager.Fetch(embedding, idx=1)
    RESULT["filter"][name] = {{
        "points": points.GetNumberOfPoints(),
        "rows": table.GetNumberOfRows(),
        "messages": sense_messages(),
        "failed": failed,
    }}
    Delete(embedding)
    Delete(reader)
"""


def test_every_failure_fails_the_filter_and_reaches_output_messages(tmp_path):
    reader_cases, reader_expected = [], {}
    for number, (row, (build, message)) in enumerate(INPUT_ROWS.items()):
        folder = tmp_path / f"input{number}"
        folder.mkdir()
        limit = "1M" if row == "huge member" else ""
        reader_cases.append((row, str(build(folder)), limit))
        reader_expected[row] = message
    models = tmp_path / "models"
    models.mkdir()
    for name, count, shape in (("ens", 12, {}), ("square", 12, {"height": 8, "width": 8})):
        write_ensemble(make_ensemble(count=count, **shape), models / f"{name}.npz")
    write_ensemble(make_ensemble(count=12, channels=2), models / "two_channels.npz")
    make_runtime_bundle(models / "good")
    filter_cases, filter_expected = [], {}
    for row, (change, ensemble, options, message) in MODEL_ROWS.items():
        if "--device" in options and onnxruntime_cuda_works():
            continue  # CUDA works here: the 'CUDA unusable' row cannot happen
        bundle = models / "good"
        if change is not None:
            bundle = _broken_bundle(models, row.replace(" ", "_"), change)
        device = "CUDA" if "--device" in options else "CPU"
        filter_cases.append((row, str(models / f"{ensemble}.npz"), str(bundle), device))
        filter_expected[row] = message
    filter_cases.append(("good bundle afterwards", str(models / "ens.npz"), str(models / "good"),
                         "CPU"))  # fmt: skip

    script = SCRIPT.format(plugin=str(PLUGIN), reader_cases=reader_cases, filter_cases=filter_cases)
    run = run_paraview_script(script, tmp_path)
    assert run["returncode"] == 0
    result = run["result"]
    for row, message in reader_expected.items():
        outcome = result["reader"][row]
        assert outcome["blocks"] == 0, row
        assert len(outcome["messages"]) == 1 and message in outcome["messages"][0], (row, outcome)
        assert message in outcome["failed"], (row, outcome)  # the script can tell it failed
    for row, message in filter_expected.items():
        outcome = result["filter"][row]
        assert outcome["points"] == outcome["rows"] == 0, row
        assert any(message in text for text in outcome["messages"]), (row, outcome)
        assert message in outcome["failed"], (row, outcome)
    # the session survived every failure: the same pipeline with a good bundle works
    assert result["filter"]["good bundle afterwards"] == {
        "points": 12,
        "rows": 12,
        "messages": [],
        "failed": "",
    }


@pytest.mark.parametrize("script", ["embed_ensemble.py", "render_members.py"])
def test_example_scripts_exit_with_an_error_on_a_failed_filter(tmp_path, script):
    """The pvbatch example scripts stop with the filter's message and exit status 1."""
    missing = tmp_path / "missing.npz"
    arguments = {
        "embed_ensemble.py": [str(missing), str(tmp_path / "out"), "--projection", "pca"],
        "render_members.py": [str(missing), str(tmp_path / "shot.png"), "run1"],
    }[script]
    completed = run_sense("pvbatch", str(scripts_dir() / script), *arguments, check=False)
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert f"{script}: error: {missing}: file not found" in completed.stderr


GUI_SCRIPT = """
import json
from paraview.simple import *
from vtkmodules.vtkCommonCore import vtkCommand, vtkOutputWindow

messages = []
def catch(obj, event, text=None):
    messages.append(str(text))
catch.CallDataType = "string0"
vtkOutputWindow.GetInstance().AddObserver(vtkCommand.ErrorEvent, catch)
broken = SENSEEnsembleReader(FileName={broken!r})
Show(broken)
Render()
reader = SENSEEnsembleReader(FileName={good!r})
embedding = SENSEEmbedding(Input=reader, Bundle={bundle!r}, Projection="PCA")
Show(embedding)
Render()
json.dump({{
    "blocks": servermanager.Fetch(broken).GetNumberOfBlocks(),
    "points": servermanager.Fetch(embedding, idx=0).GetNumberOfPoints(),
    "messages": [m.strip() for m in messages if "SENSE:" in m],
}}, open({result!r}, "w"))
"""


def test_the_gui_keeps_running_after_failures(tmp_path):
    """In the real GUI (under Xvfb): a broken file and a bundle for other members show their
    messages, leave empty outputs, and the GUI goes on to run the rest of the script."""
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    good = write_ensemble(make_ensemble(count=12), tmp_path / "ens.npz")
    make_runtime_bundle(tmp_path / "bundle", shape=(1, 8, 8))
    result = tmp_path / "gui_result.json"
    script = tmp_path / "gui_script.py"
    script.write_text(
        GUI_SCRIPT.format(
            broken=str(tmp_path / "broken.npz"),
            good=str(good),
            bundle=str(tmp_path / "bundle"),
            result=str(result),
        )
    )
    # its own settings folder: no welcome dialog state shared
    completed = run_paraview_gui(f"--script={script}", config_home=tmp_path / "config")
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(result.read_text())
    assert report["blocks"] == 0 and report["points"] == 0
    assert any("broken.npz: not a readable .npz archive" in m for m in report["messages"])
    assert any("expects (1, 8, 8)" in m for m in report["messages"])
