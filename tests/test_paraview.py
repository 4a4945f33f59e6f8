"""ParaView 5.11 integration through the ``sense`` launchers: the getargspec shim, the
environment, the SENSE plugin's reader, and ParaView's own readers on files SENSE writes.
These run in CI (under Xvfb where rendering is involved); they never skip."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import REPO, run_paraview_script, run_process_tree

from sense_core.io import write_ensemble
from sense_paraview import plugin_file

pytestmark = pytest.mark.paraview
PLUGIN = plugin_file()  # package data of sense_paraview


def test_shim_restores_getargspec_and_environment_is_visible(tmp_path):
    run = run_paraview_script(
        """
        import inspect, sys
        import paraview.detail.pythonalgorithm  # fails on 5.11 + Python 3.11 without the shim
        import numpy, sense_core, sense_training, sklearn
        spec = inspect.getargspec(lambda a, b=2, *rest: None)
        RESULT = {
            "args": spec.args, "varargs": spec.varargs, "defaults": list(spec.defaults),
            "numpy": numpy.__version__, "sense_core": sense_core.__file__,
        }
        """,
        tmp_path,
    )
    result = run["result"]
    assert result["args"] == ["a", "b"] and result["varargs"] == "rest"
    assert result["defaults"] == [2]
    assert int(result["numpy"].split(".")[0]) < 2
    assert result["sense_core"].startswith(str(REPO))


def test_plugin_reader_loads_npz_and_member_folders(tmp_path, ensemble):
    npz = write_ensemble(ensemble, tmp_path / "ens.npz")
    folder = write_ensemble(ensemble, tmp_path / "members", member_format="npy")
    run = run_paraview_script(
        f"""
        from paraview.simple import *
        from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet
        from vtkmodules.util.numpy_support import vtk_to_numpy
        LoadPlugin({str(PLUGIN)!r}, ns=globals())
        RESULT = {{}}
        for name, path in (("npz", {str(npz)!r}), ("folder", {str(folder)!r})):
            reader = SENSEEnsembleReader(FileName=path)
            reader.UpdatePipeline()
            data = servermanager.Fetch(reader)
            block = data.GetBlock(3)
            RESULT[name] = {{
                "blocks": data.GetNumberOfBlocks(),
                "name": data.GetMetaData(3).Get(vtkCompositeDataSet.NAME()),
                "dims": list(block.GetDimensions()),
                "values": vtk_to_numpy(block.GetPointData().GetArray("field")).tolist(),
                "label": int(block.GetFieldData().GetArray("label").GetValue(0)),
                "class": block.GetFieldData().GetAbstractArray("class_name").GetValue(0),
            }}
        """,
        tmp_path,
    )
    expected = ensemble.fields[3, 0, ::-1, :].ravel()  # VTK's y axis points up
    for name in ("npz", "folder"):
        result = run["result"][name]
        assert result["blocks"] == len(ensemble)
        assert result["name"] == ensemble.member_ids[3]
        assert result["dims"] == [10, 12, 1]
        np.testing.assert_array_equal(np.float32(result["values"]), expected)
        assert result["label"] == 2 and result["class"] == "braided"


def test_paraview_own_readers_open_sense_vti_folders(tmp_path, ensemble):
    folder = write_ensemble(ensemble, tmp_path / "members")
    run = run_paraview_script(
        f"""
        from paraview.simple import *
        from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet
        from vtkmodules.util.numpy_support import vtk_to_numpy
        blocks = OpenDataFile({str(folder / "ensemble.vtm")!r})
        blocks.UpdatePipeline()
        data = servermanager.Fetch(blocks)
        series = OpenDataFile({str(folder / "ensemble.pvd")!r})
        series.UpdatePipeline(5.0)
        step = servermanager.Fetch(series)
        member = OpenDataFile({str(folder / "run7.vti")!r})
        member.UpdatePipeline()
        RESULT = {{
            "blocks": data.GetNumberOfBlocks(),
            "names": [data.GetMetaData(i).Get(vtkCompositeDataSet.NAME())
                      for i in range(data.GetNumberOfBlocks())],
            "block7": vtk_to_numpy(data.GetBlock(7).GetPointData().GetArray("field")).tolist(),
            "timesteps": len(series.TimestepValues),
            "step5": vtk_to_numpy(step.GetPointData().GetArray("field")).tolist(),
            "member_id": servermanager.Fetch(member).GetFieldData()
                .GetAbstractArray("member_id").GetValue(0),
        }}
        """,
        tmp_path,
    )
    result = run["result"]
    assert result["blocks"] == len(ensemble)
    assert result["names"] == list(ensemble.member_ids)
    np.testing.assert_array_equal(np.float32(result["block7"]), ensemble.fields[7, 0, ::-1].ravel())
    assert result["timesteps"] == len(ensemble)
    np.testing.assert_array_equal(np.float32(result["step5"]), ensemble.fields[5, 0, ::-1].ravel())
    assert result["member_id"] == "run7"


def test_pvbatch_renders_a_member_under_a_virtual_display(tmp_path, ensemble):
    folder = write_ensemble(ensemble, tmp_path / "members")
    shot = tmp_path / "member.png"
    run_paraview_script(
        f"""
        from paraview.simple import *
        member = OpenDataFile({str(folder / "run5.vti")!r})
        view = CreateRenderView()
        view.ViewSize = [200, 160]
        display = Show(member, view)
        display.Representation = "Slice"
        ColorBy(display, ("POINTS", "field"))
        ResetCamera(view)
        SaveScreenshot({str(shot)!r}, view)
        RESULT = "rendered"
        """,
        tmp_path,
        program="pvbatch",
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (160, 200)
    assert pixels.std() > 5  # the field is drawn, not a blank frame


def test_plugin_reader_reports_bad_input_and_leaves_an_empty_output(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"not numpy at all")
    run = run_paraview_script(
        f"""
        from paraview.simple import *
        LoadPlugin({str(PLUGIN)!r}, ns=globals())
        reader = SENSEEnsembleReader(FileName={str(folder)!r})
        reader.UpdatePipeline()
        RESULT = {{"blocks": servermanager.Fetch(reader).GetNumberOfBlocks()}}
        """,
        tmp_path,
    )
    assert run["returncode"] == 0
    assert run["result"]["blocks"] == 0
    assert "SENSE:" in run["output"] and "a.npy: not a valid .npy array" in run["output"]


def test_member_view_shows_the_selected_members_with_mean_and_std(tmp_path, ensemble):
    folder = write_ensemble(ensemble, tmp_path / "members")
    selected = ["run3", "run7", "run1"]
    run = run_paraview_script(
        f"""
        from paraview.simple import *
        from vtkmodules.util.numpy_support import vtk_to_numpy
        LoadPlugin({str(PLUGIN)!r}, ns=globals())
        ensemble = OpenDataFile({str(folder / "ensemble.vtm")!r})
        view = SENSEMemberView(Input=ensemble, MemberIds={selected!r})
        view.UpdatePipeline()
        data = servermanager.Fetch(view)
        def values(index):
            block = data.GetBlock(index)
            return {{
                "dims": list(block.GetDimensions()),
                "values": vtk_to_numpy(block.GetPointData().GetArray("field")).tolist(),
            }}
        labels = data.GetBlock(1).GetPointData().GetAbstractArray("member_id")
        RESULT = {{
            "names": [data.GetMetaData(i).Get(data.NAME())
                      for i in range(data.GetNumberOfBlocks())],
            "mosaic": values(0), "mean": values(2), "std": values(3),
            "labels": [labels.GetValue(i) for i in range(labels.GetNumberOfValues())],
        }}
        view.MemberIds = ["run3", "nobody"]
        view.UpdatePipeline()
        RESULT["after_bad_id"] = servermanager.Fetch(view).GetNumberOfBlocks()
        """,
        tmp_path,
    )
    result = run["result"]
    assert result["names"] == ["mosaic", "tile_labels", "mean", "std", "titles"]
    assert result["labels"] == selected
    chosen = ensemble.fields[[3, 7, 1]].astype(np.float64)
    for name, expected in (("mean", chosen.mean(axis=0)), ("std", chosen.std(axis=0))):
        assert result[name]["dims"] == [10, 12, 1]
        actual = np.array(result[name]["values"]).reshape(12, 10)[::-1]
        np.testing.assert_allclose(actual, expected[0], rtol=1e-5, atol=1e-5)
    # 3 members -> 2 x 2 tiles of 12 x 10 with 2-pixel gaps
    assert result["mosaic"]["dims"] == [22, 26, 1]
    mosaic = np.array(result["mosaic"]["values"], dtype=np.float32).reshape(26, 22)[::-1]
    np.testing.assert_array_equal(mosaic[14:26, 0:10], ensemble.fields[1, 0])
    assert result["after_bad_id"] == 0
    assert "member id(s) not in the ensemble: 'nobody'" in run["output"]


def test_selecting_points_in_a_scatter_updates_the_member_view(tmp_path, ensemble):
    folder = write_ensemble(ensemble, tmp_path / "members")
    run = run_paraview_script(
        f"""
        from paraview.simple import *
        from sense_paraview import link_selection
        LoadPlugin({str(PLUGIN)!r}, ns=globals())
        scatter = ProgrammableSource(OutputDataSetType="vtkPolyData")
        scatter.Script = '''
        from vtkmodules.vtkCommonCore import vtkPoints, vtkStringArray
        from vtkmodules.vtkCommonDataModel import vtkCellArray
        points, ids, cells = vtkPoints(), vtkStringArray(), vtkCellArray()
        ids.SetName("member_id")
        for i in range(24):
            points.InsertNextPoint(i % 6, i // 6, 0)
            ids.InsertNextValue("run%d" % i)
            cells.InsertNextCell(1)
            cells.InsertCellPoint(i)
        output.SetPoints(points)
        output.SetVerts(cells)
        output.GetPointData().AddArray(ids)
        '''.replace("\\n        ", "\\n")
        ensemble = OpenDataFile({str(folder / "ensemble.vtm")!r})
        members = SENSEMemberView(Input=ensemble)
        view = CreateRenderView()
        Show(scatter, view)
        SetActiveView(view)
        link = link_selection(scatter, members, views=[view])
        SelectIDs(IDs=[0, 4, 0, 9, 0, 2], FieldType="POINT", Source=scatter)
        members.UpdatePipeline()
        selected = list(members.MemberIds)
        blocks = servermanager.Fetch(members).GetNumberOfBlocks()
        ClearSelection(scatter)
        RESULT = {{"selected": selected, "blocks": blocks, "cleared": list(members.MemberIds)}}
        """,
        tmp_path,
    )
    result = run["result"]
    assert sorted(result["selected"]) == ["run2", "run4", "run9"]
    assert result["blocks"] == 5  # mosaic, tile_labels, mean, std, titles
    assert result["cleared"] == []


EMBED_SCRIPT = """
from paraview.simple import *
from vtkmodules.util.numpy_support import vtk_to_numpy
LoadPlugin({plugin!r}, ns=globals())
source = {source}
embedding = SENSEEmbedding(Input=source, Bundle={bundle!r}, Projection={projection!r})
embedding.UpdatePipeline()
points = servermanager.Fetch(embedding, idx=0)
table = servermanager.Fetch(embedding, idx=1)
def strings(data, name):
    array = data.GetAbstractArray(name)
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())] if array else []
RESULT = {{
    "points": vtk_to_numpy(points.GetPoints().GetData()).tolist()
        if points.GetPoints() else [],
    "member_id": strings(points.GetPointData(), "member_id"),
    "label": vtk_to_numpy(points.GetPointData().GetArray("label")).tolist()
        if points.GetNumberOfPoints() else [],
    "label_source": strings(points.GetPointData(), "label_source"),
    "latent_components": points.GetPointData().GetArray("latent").GetNumberOfComponents()
        if points.GetNumberOfPoints() else 0,
    "provider": strings(points.GetFieldData(), "provider"),
    "table_rows": table.GetNumberOfRows(),
    "table_x": vtk_to_numpy(table.GetColumnByName("x")).tolist() if table.GetNumberOfRows() else [],
}}
"""


def run_embedding(tmp_path, source, bundle, projection="Parametric projector", check=True):
    script = EMBED_SCRIPT.format(
        plugin=str(PLUGIN), source=source, bundle=str(bundle), projection=projection
    )
    return run_paraview_script(script, tmp_path, check=check)


def expected_embedding(ensemble, weights):
    from helpers import mlp_reference

    normalised = (ensemble.fields.reshape(len(ensemble), -1) - 0.5) / 2.0
    latents = normalised @ weights["encoder"]
    predicted = np.argmax(normalised @ weights["labeler"], axis=1)
    labels = np.where(ensemble.labels >= 0, ensemble.labels, predicted)
    return mlp_reference(latents, weights["projector"]), labels


def test_embedding_filter_maps_every_member_of_a_multiblock(tmp_path, ensemble):
    from helpers import make_runtime_bundle

    weights = make_runtime_bundle(tmp_path / "bundle", projector=True)
    npz = write_ensemble(ensemble, tmp_path / "ens.npz")
    run = run_embedding(
        tmp_path, f"SENSEEnsembleReader(FileName={str(npz)!r})", tmp_path / "bundle"
    )
    result = run["result"]
    xy, labels = expected_embedding(ensemble, weights)
    assert result["member_id"] == list(ensemble.member_ids)
    np.testing.assert_allclose(np.array(result["points"])[:, :2], xy, rtol=1e-4, atol=1e-4)
    assert np.all(np.array(result["points"])[:, 2] == 0)
    assert result["label"] == labels.tolist()
    assert result["label_source"] == [
        "manual" if label >= 0 else "predicted" for label in ensemble.labels
    ]
    assert result["latent_components"] == 6
    assert result["provider"] == ["CPUExecutionProvider"]
    assert result["table_rows"] == len(ensemble)
    np.testing.assert_allclose(result["table_x"], xy[:, 0], rtol=1e-4, atol=1e-4)


def test_embedding_filter_takes_a_time_series_of_members(tmp_path, ensemble):
    from helpers import make_runtime_bundle

    weights = make_runtime_bundle(tmp_path / "bundle", projector=True)
    folder = write_ensemble(ensemble, tmp_path / "members")
    pvd = folder / "ensemble.pvd"
    run = run_embedding(tmp_path, f"OpenDataFile({str(pvd)!r})", tmp_path / "bundle")
    result = run["result"]
    xy, _ = expected_embedding(ensemble, weights)
    assert result["member_id"] == list(ensemble.member_ids)
    np.testing.assert_allclose(np.array(result["points"])[:, :2], xy, rtol=1e-4, atol=1e-4)


def test_embedding_filter_reports_bad_bundles_and_shapes(tmp_path, ensemble):
    from helpers import make_runtime_bundle

    make_runtime_bundle(tmp_path / "bundle", shape=(1, 8, 8))
    npz = write_ensemble(ensemble, tmp_path / "ens.npz")
    source = f"SENSEEnsembleReader(FileName={str(npz)!r})"
    run = run_embedding(tmp_path, source, tmp_path / "bundle", projection="PCA")
    assert run["result"]["table_rows"] == 0 and run["result"]["points"] == []
    assert "expects (1, 8, 8)" in run["output"]
    run = run_embedding(tmp_path, source, tmp_path / "nowhere", projection="PCA")
    assert run["result"]["table_rows"] == 0
    assert "not a SENSE bundle" in run["output"]


def test_batch_script_writes_csv_selection_and_layout_screenshot(tmp_path, ensemble):
    import csv

    from helpers import SENSE, make_runtime_bundle
    from PIL import Image

    make_runtime_bundle(tmp_path / "bundle", projector=True)
    npz = write_ensemble(ensemble, tmp_path / "ens.npz")
    script = REPO / "plugin" / "sense_paraview" / "scripts" / "embed_ensemble.py"
    out = tmp_path / "out"
    completed = run_process_tree(
        [SENSE, "pvbatch", str(script), str(npz), str(out), "--bundle", str(tmp_path / "bundle"),
         "--select", "label == 1"],
        300,
        cwd=REPO,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = list(csv.DictReader((out / "embedding.csv").open()))
    assert [row["member_id"] for row in rows] == list(ensemble.member_ids)
    assert "selected 6 member(s)" in completed.stdout
    assert (out / "selection.vtm").exists()
    pixels = np.asarray(Image.open(out / "layout.png").convert("L"), dtype=float)
    assert pixels.shape == (800, 1600)
    left, right = pixels[:, :800], pixels[:, 800:]
    assert left.std() > 5 and right.std() > 5  # scatter and members both drawn
    # the members' mosaic fills the right pane (the empty pane's hint alone covers about 1 %)
    background = np.median(right)
    assert np.mean(np.abs(right - background) > 10) > 0.05


def test_new_seed_or_projection_reprojects_cached_latents_without_rerunning_models(tmp_path):
    """A second Apply that changes only projection settings reuses the latents of the first
    (the models' run over every member dominates the wait); a new bundle runs them again."""
    from helpers import make_ensemble, make_runtime_bundle

    make_runtime_bundle(tmp_path / "bundle", projector=True)
    make_runtime_bundle(tmp_path / "other", projector=True, mean=0.1)
    npz = write_ensemble(make_ensemble(count=30), tmp_path / "ens.npz")
    run = run_paraview_script(
        f"""
        import json
        from paraview.simple import *
        from vtkmodules.util.numpy_support import vtk_to_numpy
        LoadPlugin({str(PLUGIN)!r}, ns=globals())
        reader = SENSEEnsembleReader(FileName={str(npz)!r})
        embedding = SENSEEmbedding(Input=reader, Bundle={str(tmp_path / "bundle")!r},
                                   Projection="PCA")
        def state():
            embedding.UpdatePipeline()
            points = servermanager.Fetch(embedding, idx=0)
            provenance = json.loads(points.GetFieldData().GetAbstractArray("provenance")
                                    .GetValue(0))
            return {{"reused": "reprojected_from" in provenance,
                     "method": provenance["projection"]["method"],
                     "latent": vtk_to_numpy(points.GetPointData().GetArray("latent")).tolist()}}
        first = state()
        embedding.Projection = "Parametric projector"
        second = state()
        embedding.Bundle = {str(tmp_path / "other")!r}
        third = state()
        RESULT = [first, second, third]
        """,
        tmp_path,
    )
    first, second, third = run["result"]
    assert (first["reused"], first["method"]) == (False, "pca")
    assert (second["reused"], second["method"]) == (True, "projector")
    assert second["latent"] == first["latent"]
    assert third["reused"] is False and third["latent"] != first["latent"]
