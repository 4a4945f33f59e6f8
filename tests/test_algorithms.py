"""SENSE's ParaView algorithms in-process, with plain VTK: no ParaView process, no plugin.

The algorithms (sense_paraview.algorithms) are ordinary VTK Python algorithms; the plugin file
only declares ParaView properties on them. A failure reports its message and fails the
algorithm (the executive's Update returns 0) with an empty output."""

from __future__ import annotations

import pytest
from helpers import make_ensemble, make_runtime_bundle

from sense_core.io import write_ensemble
from sense_core.projection import ProjectionOptions

vtk_common = pytest.importorskip("vtkmodules.vtkCommonCore")

from sense_paraview import algorithms  # noqa: E402 - needs VTK


@pytest.fixture
def silenced_errors():
    """Collect what the algorithms report through VTK's output window (and keep it off
    stderr); yields the list of messages."""
    window = vtk_common.vtkOutputWindow.GetInstance()
    messages: list[str] = []

    def catch(obj, event, text=None):
        messages.append(str(text))

    catch.CallDataType = "string0"
    tag = window.AddObserver(vtk_common.vtkCommand.ErrorEvent, catch)
    previous = window.GetGlobalWarningDisplay()
    window.SetGlobalWarningDisplay(0)
    yield messages
    window.SetGlobalWarningDisplay(previous)
    window.RemoveObserver(tag)


def test_reader_and_embedding_run_without_paraview(tmp_path):
    path = write_ensemble(make_ensemble(count=12), tmp_path / "ens.npz")
    make_runtime_bundle(tmp_path / "bundle")
    reader = algorithms.EnsembleReader()
    reader.SetFileName(str(path))
    embedding = algorithms.Embedding()
    embedding.SetInputConnection(reader.GetOutputPort())
    embedding.SetBundle(str(tmp_path / "bundle"))
    embedding.SetProjection("pca")
    embedding.SetDevice(1)  # as ParaView sets a drop-down: by position (CPU)
    assert embedding.GetExecutive().Update() == 1
    points, table = embedding.GetOutputDataObject(0), embedding.GetOutputDataObject(1)
    assert points.GetNumberOfPoints() == table.GetNumberOfRows() == 12
    assert table.GetColumnByName("member_id").GetValue(0) == "run0"

    members = algorithms.MemberView()
    members.SetInputConnection(reader.GetOutputPort())
    members.AddMemberId("run1")
    members.AddMemberId("run2")
    assert members.GetExecutive().Update() == 1
    assert members.GetOutputDataObject(0).GetNumberOfBlocks() == 5


def test_a_failure_fails_the_algorithm_with_its_message_and_an_empty_output(
    tmp_path, silenced_errors
):
    path = write_ensemble(make_ensemble(count=12), tmp_path / "ens.npz")
    reader = algorithms.EnsembleReader()
    reader.SetFileName(str(tmp_path / "missing.npz"))
    assert reader.GetExecutive().Update() == 0
    assert reader.GetOutputDataObject(0).GetNumberOfBlocks() == 0
    assert any(f"SENSE: {tmp_path / 'missing.npz'}: file not found" in m for m in silenced_errors)

    reader.SetFileName(str(path))
    embedding = algorithms.Embedding()
    embedding.SetInputConnection(reader.GetOutputPort())
    embedding.SetBundle(str(tmp_path / "nowhere"))
    embedding.SetProjection("pca")
    assert embedding.GetExecutive().Update() == 0
    assert embedding.GetOutputDataObject(0).GetNumberOfPoints() == 0
    assert any("nowhere: not a SENSE bundle" in m for m in silenced_errors)


def test_projection_properties_default_to_the_shared_projection_options():
    embedding = algorithms.Embedding()
    assert embedding._projection == ProjectionOptions()
    embedding.SetUMAPNeighbors(30)
    embedding.SetSeed(-1)
    assert embedding._projection == ProjectionOptions(n_neighbors=30, seed=None)


def test_drop_down_xml_comes_from_a_tuple():
    xml = algorithms.enumeration_xml(
        "Device", "SetDevice", algorithms.DEVICES, "cpu", "Where the models run & why."
    )
    assert 'default_values="1"' in xml
    assert '<Entry value="2" text="CUDA"/>' in xml
    assert "run &amp; why." in xml
