"""Decoding a point of the map in ParaView (issue 19, item 5): the SENSE Decode filter, its
picked-point property, ``sense_paraview.decode`` / ``show_decoded`` and the error without a
decoder; and unusual-member scores of embeddings made on several MPI ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO,
    SENSE,
    doc_blocks,
    make_ensemble,
    make_runtime_bundle,
    run_paraview_gui,
    run_paraview_script,
    run_process_tree,
)

from sense_core.io import write_ensemble
from sense_paraview import plugin_file

pytestmark = pytest.mark.paraview
PLUGIN = plugin_file()
SHAPE = (1, 12, 10)
LATENT = 6


def add_linear_decoder(folder: Path, shape=SHAPE, latent_dim: int = LATENT, seed: int = 3):
    """Give a :func:`make_runtime_bundle` bundle a decoder: latent (B, D) -> MatMul + Add ->
    Reshape (B, C, H, W), normalised fields; returns (weights, bias) for reference values."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from sense_core.bundle import add_model, read_manifest

    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    weights = rng.normal(size=(latent_dim, size)).astype(np.float32) / np.sqrt(latent_dim)
    bias = rng.normal(size=size).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["latent", "w"], ["flat0"]),
            helper.make_node("Add", ["flat0", "b"], ["flat"]),
            helper.make_node("Reshape", ["flat", "shape"], ["fields"]),
        ],
        "decoder",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", latent_dim])],
        [helper.make_tensor_value_info("fields", TensorProto.FLOAT, ["batch", *shape])],
        initializer=[
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(np.array([-1, *shape], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder.parent / f".{folder.name}-decoder.onnx"
    onnx.save(model, str(path))
    manifest = read_manifest(folder)
    add_model(
        folder,
        "decoder",
        path,
        manifest,
        input_name="latent",
        output_name="fields",
        opset=17,
        details={"encoder_sha256": manifest["models"]["encoder"]["sha256"]},
    )
    return weights, bias


@pytest.fixture(scope="module")
def decoding(tmp_path_factory):
    """An ensemble of 25 members, a linear bundle with a decoder and one without."""
    folder = tmp_path_factory.mktemp("decode_paraview")
    ensemble = make_ensemble(count=25)
    path = write_ensemble(ensemble, folder / "ens.npz")
    bundle, plain = folder / "bundle", folder / "plain"
    make_runtime_bundle(bundle)
    add_linear_decoder(bundle)
    make_runtime_bundle(plain)
    return ensemble, path, bundle, plain


def test_decode_algorithm_in_process_equals_sense_core_decode(decoding):
    """The algorithm on a map made in this process (plain VTK, no plugin): its image is
    sense_core's decode_points at that point, laid out like SENSE's member images."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonExecutionModel import vtkTrivialProducer

    from sense_core.decode import decode_points
    from sense_core.embedding import embed_ensemble
    from sense_core.errors import SenseError
    from sense_core.io.vti import image_to_member
    from sense_core.projection import ProjectionOptions
    from sense_paraview.decoding import Decode, decode_on_map
    from sense_paraview.vtk_views import embedding_to_polydata

    ensemble, _, bundle, plain = decoding
    embedding = embed_ensemble(ensemble, bundle, projection=ProjectionOptions("pca"))
    polydata = embedding_to_polydata(embedding)
    point = embedding.xy[:2].mean(axis=0)  # between two members
    expected = decode_points(embedding, bundle, point[None])[0]

    producer = vtkTrivialProducer()
    producer.SetOutput(polydata)
    algorithm = Decode()
    algorithm.SetInputConnection(producer.GetOutputPort())
    algorithm.SetPoint(float(point[0]), float(point[1]), 0.0)
    algorithm.Update()
    image = algorithm.GetOutputDataObject(0)
    assert image.GetDimensions() == (10, 12, 1) and image.GetSpacing() == (1.0, 1.0, 1.0)
    assert image.GetPointData().GetArray("field") is not None
    np.testing.assert_allclose(image_to_member(image), expected, rtol=1e-5, atol=1e-5)
    assert vtk_to_numpy(image.GetFieldData().GetArray("decoded_x"))[0] == pytest.approx(point[0])
    # on a member: its own latent vector, i.e. its reconstruction
    on_member = decode_on_map(polydata, embedding.xy[3:4])
    np.testing.assert_allclose(on_member, decode_points(embedding, bundle, embedding.xy[3:4]))

    other = embed_ensemble(ensemble, plain, projection=ProjectionOptions("pca"))
    with pytest.raises(SenseError, match="has no decoder.*sense fit --data ENSEMBLE"):
        decode_on_map(embedding_to_polydata(other), [[0.0, 0.0]])
    with pytest.raises(SenseError, match="no 'latent' point array"):
        from vtkmodules.vtkFiltersSources import vtkPointSource

        source = vtkPointSource()
        source.Update()
        decode_on_map(source.GetOutput(), [[0.0, 0.0]])


PV_SCRIPT = """
import numpy as np
from paraview.simple import *
from paraview import servermanager
from vtkmodules.util.numpy_support import vtk_to_numpy
import sense_paraview
from sense_paraview import FilterError
from sense_core.embedding import read_embedding
LoadPlugin({plugin!r}, ns=globals())
reader = SENSEEnsembleReader(FileName={path!r})
embedding = SENSEEmbedding(Input=reader, Bundle={bundle!r}, Projection="PCA", LinkedLayout=0)
decoder = SENSEDecode(Input=OutputPort(embedding, 0))
proxy = decoder.SMProxy
groups = [proxy.GetPropertyGroup(i) for i in range(proxy.GetNumberOfPropertyGroups())]
handle = [g for g in groups if g.GetPanelWidget() == "InteractiveHandle"]
RESULT = {{"handle": [
    (g.GetFunction(g.GetProperty(0)), proxy.GetPropertyName(g.GetProperty(0))) for g in handle
]}}

# what the GUI's handle does when the user drags it: a widget representation whose
# WorldPosition is linked to the group's property, pushed to the proxy, then Apply
widget = servermanager.rendering.HandleWidgetRepresentation()
points = {points!r}
fields = []
for x, y in points:
    widget.WorldPosition = [x, y, 0.0]
    decoder.Point = widget.WorldPosition
    sense_paraview.update_or_raise(decoder)
    image = servermanager.Fetch(decoder)
    fields.append(vtk_to_numpy(image.GetPointData().GetArray("field")).tolist())
RESULT["fields"] = fields
RESULT["dims"] = list(image.GetDimensions())
RESULT["extent"] = list(decoder.GetDataInformation().GetExtent())
RESULT["helper"] = sense_paraview.decode(embedding, points).tolist()
table = servermanager.Fetch(embedding, idx=1)
RESULT["latent"] = vtk_to_numpy(table.GetColumnByName("latent")).tolist()
RESULT["x"] = vtk_to_numpy(table.GetColumnByName("x")).tolist()
RESULT["y"] = vtk_to_numpy(table.GetColumnByName("y")).tolist()

plain = SENSEEmbedding(Input=reader, Bundle={plain!r}, Projection="PCA", LinkedLayout=0)
try:
    sense_paraview.update_or_raise(SENSEDecode(Input=plain, Point=[0.0, 0.0, 0.0]))
    RESULT["error"] = ""
except FilterError as exc:
    RESULT["error"] = str(exc)
"""


def test_decode_filter_in_pvpython_picked_point_helper_and_no_decoder(decoding, tmp_path):
    """In pvpython: the SENSE Decode proxy has the handle widget's property group; points set
    as the GUI's handle sets them decode to sense_core's fields (≤ 1e-5), as does
    ``sense_paraview.decode``; a bundle without a decoder fails the filter with a message that
    names the command that makes one."""
    from types import SimpleNamespace

    from sense_core.decode import decode_points

    ensemble, path, bundle, plain = decoding
    points = [[0.3, -0.2], [1.5, 0.7], [-2.0, 4.0]]
    script = PV_SCRIPT.format(
        plugin=str(PLUGIN), path=str(path), bundle=str(bundle), plain=str(plain), points=points
    )
    result = run_paraview_script(script, tmp_path)["result"]
    assert result["handle"] == [["WorldPosition", "Point"]]
    assert result["dims"] == [10, 12, 1] and result["extent"] == [0, 9, 0, 11, 0, 0]
    latents = np.asarray(result["latent"], dtype=np.float32).reshape(len(ensemble), -1)
    xy = np.stack([result["x"], result["y"]], axis=1)
    expected = decode_points(SimpleNamespace(xy=xy, latents=latents), bundle, np.asarray(points))
    # VTK's image rows go bottom-up: the filter's point array is the field flipped
    flipped = expected[:, 0, ::-1, :].reshape(len(points), -1)
    np.testing.assert_allclose(result["fields"], flipped, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["helper"], expected, rtol=1e-5, atol=1e-5)
    assert "has no decoder" in result["error"] and "sense fit" in result["error"]


MPI_SCRIPT = """
import json, sys
from paraview import servermanager
from paraview.simple import *
from vtkmodules.vtkParallelCore import vtkMultiProcessController
from vtkmodules.util.numpy_support import vtk_to_numpy
from sense_paraview import update_or_raise

path, bundle, out = sys.argv[1:4]
rank = vtkMultiProcessController.GetGlobalController().GetLocalProcessId()
reader = SENSEEnsembleReader(FileName=path)
embedding = SENSEEmbedding(Input=reader, Bundle=bundle, Projection="PCA", LinkedLayout=0)
update_or_raise(embedding)
table = servermanager.Fetch(embedding, idx=1)  # collective
decoder = SENSEDecode(Input=OutputPort(embedding, 0), Point=[0.5, 0.25, 0.0])
update_or_raise(decoder)
image = servermanager.Fetch(decoder)  # collective: rank 0 decodes
report = {}
if rank == 0:
    for name in ("reconstruction_error", "prototype_distance", "unusualness", "unusual_rank",
                 "x", "y", "latent"):
        column = table.GetColumnByName(name)
        report[name] = None if column is None else vtk_to_numpy(column).tolist()
    ids = table.GetColumnByName("member_id")
    report["member_id"] = [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]
    provenance = json.loads(table.GetFieldData().GetAbstractArray("provenance").GetValue(0))
    report["distributed"] = provenance["distributed"]
    report["unusual"] = provenance.get("unusual")
    report["decoded"] = vtk_to_numpy(image.GetPointData().GetArray("field")).tolist()
with open(f"{out}.{rank}.json", "w") as f:
    json.dump(report, f)
"""


def test_two_ranks_carry_the_single_process_unusual_scores_and_decode(decoding, tmp_path):
    """``mpirun -np 2 pvbatch --symmetric``: each rank holds half of the members; the map on
    rank 0 carries the unusual-member scores one process gives (prototypes over every member),
    and SENSE Decode on it decodes as sense_core does."""
    from types import SimpleNamespace

    from test_mpi import mpirun

    from sense_core.decode import decode_points
    from sense_core.embedding import embed_ensemble
    from sense_core.io import open_ensemble
    from sense_core.projection import ProjectionOptions

    _, path, bundle, _ = decoding
    script, out = tmp_path / "unusual_mpi.py", tmp_path / "report"
    script.write_text(MPI_SCRIPT)
    command = [*mpirun(2), SENSE, "pvbatch", "--no-xvfb"]
    completed = run_process_tree(
        [*command, "--symmetric", str(script), str(path), str(bundle), str(out)], 300, cwd=REPO
    )
    output = f"{completed.stdout}\n{completed.stderr}"
    assert completed.returncode == 0, output[-4000:]
    assert "SENSE:" not in output, output[-4000:]
    report = json.loads(out.with_name("report.0.json").read_text())
    assert report["distributed"]["members_per_rank"] == [12, 13]

    store = open_ensemble(path)
    serial = embed_ensemble(store, bundle, projection=ProjectionOptions("pca"))
    assert report["member_id"] == list(serial.member_ids)
    for name in ("reconstruction_error", "prototype_distance", "unusualness"):
        np.testing.assert_allclose(
            report[name], getattr(serial, name), rtol=1e-4, atol=1e-5, err_msg=name
        )
    assert report["unusual_rank"] == serial.unusual_rank.tolist()
    assert report["unusual"]["prototypes"] == serial.provenance["unusual"]["prototypes"]

    xy = np.stack([report["x"], report["y"]], axis=1)
    latents = np.asarray(report["latent"], dtype=np.float32).reshape(len(xy), -1)
    expected = decode_points(SimpleNamespace(xy=xy, latents=latents), bundle, [[0.5, 0.25]])
    np.testing.assert_allclose(
        report["decoded"], expected[0, 0, ::-1, :].ravel(), rtol=1e-5, atol=1e-5
    )


def test_the_documented_decode_script_runs_and_shows_the_decoded_field(decoding, tmp_path):
    """docs/paraview.md's decode_map.py under ``sense pvbatch`` (private Xvfb): it decodes the
    point between two members, prints the field's shape and saves the screenshot."""
    _, path, bundle, _ = decoding
    docs = (REPO / "docs" / "paraview.md").read_text()
    (code,) = [code for _, marker, code in doc_blocks(docs) if marker == "file decode_map.py"]
    (tmp_path / "decode_map.py").write_text(code)
    completed = run_process_tree(
        [SENSE, "pvbatch", "decode_map.py", str(path), str(bundle)], 300, cwd=tmp_path
    )
    output = f"{completed.stdout}\n{completed.stderr}"
    assert completed.returncode == 0, output[-4000:]
    assert "SENSE:" not in output, output[-4000:]
    assert "between run1 and run2: (1, 1, 12, 10)" in completed.stdout, output[-2000:]
    assert (tmp_path / "decoded.png").stat().st_size > 10_000


GUI_SCRIPT = """
import json
from paraview.simple import *
reader = SENSEEnsembleReader(FileName={path!r})
embedding = SENSEEmbedding(Input=reader, Bundle={bundle!r}, Projection="PCA", LinkedLayout=0)
view = GetActiveViewOrCreate("RenderView")
Show(embedding, view)
xmin, xmax, ymin, ymax = embedding.GetDataInformation(0).GetBounds()[:4]
height = ymax - ymin
view.SMProxy.ResetCamera([xmin - 1, xmax + 1, ymin - height / 2, ymax + height / 2, -1, 1])
places = [[xmin, ymin - 0.2 * height], [xmax, ymax + 0.2 * height]]  # off the members
decoder = SENSEDecode(Input=embedding, Point=places[0] + [0.0])
SetActiveSource(decoder)  # the Properties panel builds the handle widget
report = {{"display": []}}
renderer = view.GetRenderer()
for index, (x, y) in enumerate(places):
    decoder.Point = [x, y, 0.0]
    decoder.UpdatePipeline()
    Render(view)
    renderer.SetWorldPoint(x, y, 0.0, 1.0)
    renderer.WorldToDisplay()
    report["display"].append(list(renderer.GetDisplayPoint())[:2])
    SaveScreenshot({shots!r} + f"{{index}}.png", view, ImageResolution=list(view.ViewSize))
json.dump(report, open({result!r}, "w"))
"""


def test_gui_shows_the_point_handle_where_the_point_is(decoding, tmp_path):
    """In the GUI (under Xvfb), the active SENSE Decode's panel puts the handle widget (a white
    cross) at its Point in the map's view, and moves it with the Point: the pixels around each
    point are bright exactly in the screenshot taken with the Point there."""
    from PIL import Image

    _, path, bundle, _ = decoding
    shots, result = tmp_path / "handle", tmp_path / "handle.json"
    script = tmp_path / "gui_decode.py"
    script.write_text(
        GUI_SCRIPT.format(path=str(path), bundle=str(bundle), shots=str(shots), result=str(result))
    )
    completed = run_paraview_gui(f"--script={script}", config_home=tmp_path / "config")
    assert completed.returncode == 0 and result.exists(), completed.stderr[-4000:]
    assert "SENSE:" not in completed.stdout + completed.stderr
    display = json.loads(result.read_text())["display"]
    for index in range(2):
        pixels = np.asarray(Image.open(f"{shots}{index}.png").convert("L"), dtype=float)
        for point, (x, y) in enumerate(display):
            row, column = round(pixels.shape[0] - 1 - y), round(x)
            around = pixels[row - 3 : row + 4, column - 3 : column + 4].max()
            assert (around > 200) == (point == index), (index, point, around)
