"""The map as a scientist meets it (issue 17): how sure each colour is, colouring by any
per-member array, a legend clear of the points, a member view that scales with the selection,
a hint in the empty pane, no stale members after an error, and a second map in views of its own.

One pvbatch run (under the launcher's virtual display) builds the linked layout, renders each
state to a PNG and reports; the tests read the images and the report. The member view's
geometry is also checked in-process."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_ensemble, make_runtime_bundle, run_paraview_script
from PIL import Image

from sense_core.io import write_ensemble

SHAPE = (1, 24, 20)
COUNT = 90  # more than MAX_TILES (64), so that the cap shows

LAYOUT_SCRIPT = """
from paraview.simple import *
from sense_paraview import colour_map_by, show_linked_layout
from sense_paraview.layout import HINT
from sense_core.errors import SenseError

OUT = {out!r}
ensemble = SENSEEnsembleReader(FileName={npz!r})
linked = show_linked_layout(ensemble, bundle={bundle!r}, Projection="PCA")
scatter, members = linked.scatter_view, linked.members_view
for view in (scatter, members):
    view.ViewSize = [800, 800]
from sense_paraview.layout import frame_scatter
frame_scatter(linked.embedding, scatter)
grid = scatter.AxesGrid
main = GetDisplayProperties(linked.embedding, scatter)
rings_source = FindSource("SENSE hand labels")
rings = GetDisplayProperties(rings_source, scatter)
legend = GetScalarBar(GetColorTransferFunction("label"), scatter)
report = {{"arrays": sorted(linked.embedding.PointData.keys()),
          "legend_title": legend.Title,
          "rings": rings_source.GetDataInformation().GetNumberOfPoints(),
          "scale_array": list(main.SetScaleArray), "opacity_array": list(main.OpacityArray)}}

def shot(name, view):
    SaveScreenshot(f"{{OUT}}/{{name}}.png", view, ImageResolution=[800, 800])

# the points alone, the legend alone, the map without rings: for the geometry checks
grid.Visibility = 0
legend.Visibility = 0
shot("points", scatter)
main.Visibility = rings.Visibility = 0
legend.Visibility = 1
shot("legend", scatter)
main.Visibility = 1
legend.Visibility = 0
shot("no_rings", scatter)
rings.Visibility = 1
shot("rings", scatter)
legend.Visibility = grid.Visibility = 1
shot("scatter", scatter)

shot("members_empty", members)
hint = GetDisplayProperties(linked.link.hint, members)
report["hint_visible_empty"] = hint.Visibility

def tile_pixels():
    # a tile's width on screen: world units per pixel from the parallel camera
    return 20 / (2 * members.CameraParallelScale / members.ViewSize[1])

linked.select(["run1", "run2"])
shot("members_2", members)
report["hint_visible_2"] = hint.Visibility
report["tile_px_2"] = tile_pixels()
linked.select([f"run{{i}}" for i in range(40)])
report["tile_px_40"] = tile_pixels()
linked.select([f"run{{i}}" for i in range({count})])
shot("members_all", members)
report["tile_px_all"] = tile_pixels()
report["shown"] = len(linked.member_view.MemberIds)

linked.member_view.FieldArray = "no_such_array"
linked.select(["run3", "run4"])
report["error"] = linked.link.error
report["hint_text"] = linked.link.hint.Text
report["member_display_visible"] = GetDisplayProperties(linked.member_view, members).Visibility
shot("members_error", members)
linked.member_view.FieldArray = ""
ClearSelection(linked.embedding)

colour_map_by(linked, "chain")
chain = GetColorTransferFunction("chain")
report["chain"] = [chain.InterpretValuesAsCategories, list(chain.Annotations)]
colour_map_by(linked, "amplitude")
report["amplitude_categorical"] = GetColorTransferFunction("amplitude").InterpretValuesAsCategories
report["label_bar_after"] = legend.Visibility
try:
    colour_map_by(linked, "nothing")
except SenseError as exc:
    report["unknown"] = str(exc)
colour_map_by(linked, "label")

second = SENSEEmbedding(Input=ensemble, Bundle={bundle!r}, Projection="PCA", LinkedLayout=0)
Show(second, scatter)  # as the GUI's Apply does in the active view
other = show_linked_layout(ensemble, embedding=second, scatter_view=scatter)
report["second"] = {{
    "own_views": other.scatter_view != scatter and other.members_view != members,
    "own_layout": other.layout != linked.layout,
    "shown_in_first": GetDisplayProperties(second, scatter).Visibility,
    "shown_in_own": GetDisplayProperties(second, other.scatter_view).Visibility,
    "layouts": sorted(name for name, _ in GetLayouts()),
}}

# a bundle without a labeler: unlabeled members stay unlabeled (grey, small, in the legend)
plain = show_linked_layout(ensemble, bundle={plain_bundle!r}, Projection="PCA")
plain.scatter_view.ViewSize = [800, 800]
frame_scatter(plain.embedding, plain.scatter_view)
plain.scatter_view.AxesGrid.Visibility = 0
GetScalarBar(GetColorTransferFunction("label"), plain.scatter_view).Visibility = 0
shot("unlabeled", plain.scatter_view)
report["unlabeled_legend"] = list(GetColorTransferFunction("label").Annotations)[-2:]

# members in order (chain + step): their paths are drawn under the points, all of them when few
ordered = show_linked_layout(
    SENSEEnsembleReader(FileName={ordered_npz!r}), bundle={bundle!r}, Projection="PCA"
)
lines = servermanager.Fetch(ordered.paths)
report["paths"] = {{
    "without_order": linked.paths is None,
    "show": ordered.paths.Show.GetData(),
    "lines": lines.GetNumberOfLines(),
    "points": lines.GetNumberOfPoints(),
    "in_scatter": GetDisplayProperties(ordered.paths, ordered.scatter_view).Visibility,
    "companions": len(ordered.link.companions),
    "bar": GetScalarBar(GetColorTransferFunction("step"), ordered.scatter_view).Title,
}}
RESULT = report
"""


@pytest.fixture(scope="module")
def layout_run(tmp_path_factory) -> dict:
    """Run the layout script once; the report and the folder of screenshots."""
    tmp = tmp_path_factory.mktemp("map_views")
    npz = write_ensemble(make_ensemble(count=COUNT, height=SHAPE[1], width=SHAPE[2]), tmp / "e.npz")
    make_runtime_bundle(tmp / "bundle", shape=SHAPE)
    make_runtime_bundle(tmp / "plain", shape=SHAPE, labeler=False)
    ordered = make_ensemble(count=COUNT, height=SHAPE[1], width=SHAPE[2])
    ordered.metadata["step"] = np.arange(COUNT) // 3  # three chains (chain = index % 3)
    script = LAYOUT_SCRIPT.format(
        out=str(tmp),
        npz=str(npz),
        ordered_npz=str(write_ensemble(ordered, tmp / "ordered.npz")),
        bundle=str(tmp / "bundle"),
        plain_bundle=str(tmp / "plain"),
        count=COUNT,
    )
    result = run_paraview_script(script, tmp, program="pvbatch")
    return {"report": result["result"], "folder": tmp, "output": result["output"]}


def _image(run: dict, name: str) -> np.ndarray:
    return np.asarray(Image.open(run["folder"] / f"{name}.png").convert("RGB"), dtype=int)


def _drawn(pixels: np.ndarray) -> np.ndarray:
    """Pixels that differ from the background (the most common colour)."""
    flat = pixels.reshape(-1, 3)
    values, counts = np.unique(flat, axis=0, return_counts=True)
    background = values[counts.argmax()]
    return np.abs(pixels - background).sum(axis=2) > 30


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    assert rows.size, "nothing drawn"
    return rows.min(), rows.max(), cols.min(), cols.max()


def _saturated(pixels: np.ndarray) -> int:
    """Number of clearly coloured pixels (the fields' Viridis colours, not grey or white)."""
    return int(np.count_nonzero(pixels.max(axis=2) - pixels.min(axis=2) > 60))


@pytest.mark.paraview
def test_legend_is_clear_of_the_points(layout_run):
    points = _box(_drawn(_image(layout_run, "points")))
    legend = _box(_drawn(_image(layout_run, "legend")))
    # the legend lies to the right of every point, with a margin
    assert legend[2] > points[3] + 10, (points, legend)
    # the map fills its part of the view (MAP_BOX: 43 % of the width, 77 % of the height)
    width, height = points[3] - points[2], points[1] - points[0]
    assert max(width / (0.43 * 800), height / (0.77 * 800)) > 0.85, (width, height)


@pytest.mark.paraview
def test_colours_say_how_sure_they_are(layout_run):
    report = layout_run["report"]
    manual = sum(1 for i in range(COUNT) if i % 4 != 0)  # make_ensemble: every 4th unlabeled
    assert report["rings"] == manual
    assert report["scale_array"] == ["POINTS", "label_certainty"]
    assert report["opacity_array"] == ["POINTS", "label_certainty"]
    assert "hand label: ringed" in report["legend_title"]
    assert "faded by confidence" in report["legend_title"].replace("\n", " ")
    # the rings are black discs behind the points: dark pixels appear only with them
    rings, plain = _image(layout_run, "rings"), _image(layout_run, "no_rings")
    dark = lambda pixels: int(np.count_nonzero(pixels.max(axis=2) < 40))  # noqa: E731
    assert dark(plain) == 0 and dark(rings) > 20 * manual


@pytest.mark.paraview
def test_metadata_arrays_colour_the_map(layout_run):
    report = layout_run["report"]
    assert {"amplitude", "chain", "hand_labeled", "confidence"} <= set(report["arrays"])
    assert report["chain"] == [1, ["0", "0", "1", "1", "2", "2"]]
    assert report["amplitude_categorical"] == 0
    assert report["label_bar_after"] == 0  # one legend at a time
    assert "'nothing'" in report["unknown"] and "amplitude" in report["unknown"]


@pytest.mark.paraview
def test_member_view_scales_with_the_selection_and_caps_it(layout_run):
    report = layout_run["report"]
    assert report["tile_px_2"] > 2 * report["tile_px_40"] > 0
    assert report["tile_px_all"] > 40  # 64 tiles shown at most: ids stay readable
    assert report["shown"] == COUNT
    two = _image(layout_run, "members_2")
    assert _saturated(two) > 50_000
    # the images stay left of the colour bar (at 85 % of the width): a clear band between
    assert _saturated(two[:, 650:675]) == 0 and _saturated(two[:, 690:]) > 1000


@pytest.mark.paraview
def test_empty_pane_shows_a_hint_and_no_members(layout_run):
    report = layout_run["report"]
    empty = _image(layout_run, "members_empty")
    drawn = _drawn(empty)
    top, bottom, left, right = _box(drawn[:, :600])  # the hint, left of the colour bar
    assert 300 < (top + bottom) / 2 < 500 and right - left > 150
    assert _saturated(empty[:, :600]) == 0
    assert report["hint_visible_empty"] == 1 and report["hint_visible_2"] == 0


@pytest.mark.paraview
def test_member_view_is_cleared_after_an_error(layout_run):
    report = layout_run["report"]
    assert "no_such_array" in report["error"]
    assert report["member_display_visible"] == 0
    assert report["hint_text"].startswith("Could not show the selected members")
    failed = _image(layout_run, "members_error")
    assert _saturated(failed[:, :600]) == 0  # no stale members
    assert np.count_nonzero(_drawn(failed)[:, :600]) > 200  # the error is written there


@pytest.mark.paraview
def test_a_second_embedding_gets_its_own_views(layout_run):
    second = layout_run["report"]["second"]
    assert second["own_views"] and second["own_layout"]
    assert second["shown_in_first"] == 0 and second["shown_in_own"] == 1
    assert second["layouts"] == ["SENSE", "SENSE 2"]


@pytest.mark.paraview
def test_unlabeled_members_are_grey_and_visible(layout_run):
    assert layout_run["report"]["unlabeled_legend"] == ["-1", "unlabeled"]
    pixels = _image(layout_run, "unlabeled")
    # grey discs (UNLABELED_COLOUR blended at 35 % over the background or more)
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    grey = (spread < 22) & (pixels.mean(axis=2) > 105) & (pixels.mean(axis=2) < 200)
    unlabeled = COUNT // 4 + 1  # every 4th member of make_ensemble
    assert np.count_nonzero(grey) > 8 * unlabeled


def test_member_view_blocks_cap_the_tiles_and_scale_mean_and_std():
    """In-process: 80 members tile 64 with a note, mean/std over all 80 and drawn larger."""
    from sense_paraview.vtk_views import MAX_TILES, member_view_from_fields

    fields = make_ensemble(count=80, height=12, width=10).fields
    ids = [f"run{i}" for i in range(80)]

    def blocks_of(count):
        blocks = member_view_from_fields(fields[:count], ids[:count])
        return {
            blocks.GetMetaData(i).Get(blocks.NAME()): blocks.GetBlock(i)
            for i in range(blocks.GetNumberOfBlocks())
        }

    many, few = blocks_of(80), blocks_of(2)
    assert many["tile_labels"].GetNumberOfPoints() == MAX_TILES
    titles = many["titles"].GetCellData().GetAbstractArray("title")
    texts = {titles.GetValue(i) for i in range(titles.GetNumberOfValues())}
    assert "showing 64 of 80 (mean and std of all 80)" in texts and "run63" in texts
    assert "run64" not in texts
    from vtkmodules.util.numpy_support import vtk_to_numpy

    mean = vtk_to_numpy(many["mean"].GetPointData().GetArray("field")).reshape(12, 10)[::-1]
    np.testing.assert_allclose(mean, fields.mean(axis=0)[0], atol=1e-5)
    assert many["mean"].GetSpacing()[0] > 2 and few["mean"].GetSpacing()[0] == 1
    # mean above std, both right of the mosaic
    assert many["std"].GetBounds()[3] < many["mean"].GetBounds()[2]
    assert many["mean"].GetBounds()[0] > many["mosaic"].GetBounds()[1]


def test_member_metadata_travels_through_vtk_images(tmp_path):
    """Metadata of the reader's members reaches the ensemble that the embedding reads."""
    from sense_core.io import open_ensemble
    from sense_core.io.vti import composite_images, images_to_ensemble, store_to_multiblock

    ensemble = make_ensemble(count=6)
    store = open_ensemble(write_ensemble(ensemble, tmp_path / "e.npz"))
    back = images_to_ensemble(composite_images(store_to_multiblock(store)))
    assert sorted(back.metadata) == ["amplitude", "chain"]
    np.testing.assert_allclose(back.metadata["amplitude"], ensemble.metadata["amplitude"])
    assert back.metadata["chain"].tolist() == ensemble.metadata["chain"].tolist()


SECOND_MACRO = """
import json
from paraview import servermanager
from paraview.simple import *
pxm = servermanager.ProxyManager()
maps = [p for p in pxm.GetProxiesInGroup("sources").values()
        if p.SMProxy.GetXMLName() == "SENSEEmbedding"]
def shown_in(proxy):
    found = []
    for (name, _), view in pxm.GetProxiesInGroup("views").items():
        representation = view.SMProxy.FindRepresentation(proxy.SMProxy, 0)
        if representation is not None and representation.GetProperty("Visibility").GetElement(0):
            found.append(name)
    return found
json.dump({"maps": len(maps), "layouts": len(pxm.GetProxiesInGroup("layouts")),
           "shown": [shown_in(p) for p in maps]}, open(REPORT_PATH, "w"))
"""
SELECT_READER_MACRO = """
from paraview import servermanager
from paraview.simple import SetActiveSource
sources = servermanager.ProxyManager().GetProxiesInGroup("sources").values()
SetActiveSource(next(p for p in sources if p.SMProxy.GetXMLName() == "SENSEEnsembleReader"))
"""


@pytest.mark.paraview
def test_a_second_apply_in_the_gui_opens_its_own_layout(tmp_path):
    """In the GUI: Apply SENSE Embedding, select the ensemble again, Apply a second one: the
    second map gets a layout of its own and is not drawn over the first."""
    from test_gui import APPLY_EMBEDDING, reader_script, run_gui

    path = write_ensemble(make_ensemble(count=24, height=64, width=64), tmp_path / "ens.npz")
    select = ("pqClientMainWindow/menubar/menu_Macros", "activate", "select_reader")
    report = run_gui(
        tmp_path,
        [*APPLY_EMBEDDING, select, *APPLY_EMBEDDING],
        {"select_reader": SELECT_READER_MACRO, "sense_check": SECOND_MACRO},
        f"--script={reader_script(tmp_path, path)}",
    )
    assert report["maps"] == 2 and report["layouts"] == 2
    first, second = report["shown"]
    assert len(first) == 1 and len(second) == 1 and first != second, report


@pytest.mark.paraview
def test_ordered_members_get_their_paths_in_the_map(layout_run):
    paths = layout_run["report"]["paths"]
    assert paths["without_order"]  # no chain + step, simulation + time...: no paths
    assert paths["show"] == "All paths" and paths["in_scatter"] == 1
    assert paths["lines"] == 3 and paths["points"] == COUNT  # one polyline per chain
    assert paths["companions"] == 1  # the paths follow the map's selection with it
    assert paths["bar"] == "step (paths)"
