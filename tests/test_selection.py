"""Mosaic and statistics of a selection of members (the linked view's content)."""

from __future__ import annotations

import numpy as np
import pytest

from sense_core.errors import SenseError
from sense_core.selection import selection_statistics, tile_members


def test_tiles_are_placed_row_by_row_with_gaps():
    fields = np.arange(5 * 2 * 3 * 4, dtype=np.float32).reshape(5, 2, 3, 4)
    mosaic = tile_members(fields, gap=1)
    assert (mosaic.rows, mosaic.columns) == (2, 3)
    assert mosaic.image.shape == (2, 2 * 3 + 1, 3 * 4 + 2)
    for index, (top, left) in enumerate(mosaic.origins):
        tile = mosaic.image[:, top : top + 3, left : left + 4]
        np.testing.assert_array_equal(tile, fields[index])
    assert np.isnan(mosaic.image[:, 3, :]).all()  # the gap row
    assert np.isnan(mosaic.image[:, 4:, 10:]).all()  # the empty sixth tile
    assert tile_members(fields, columns=1).image.shape == (2, 5 * 3 + 4 * 2, 4)


def test_statistics_match_numpy_and_bad_selections_are_errors():
    fields = np.random.default_rng(0).normal(size=(6, 1, 5, 5))
    mean, std = selection_statistics(fields)
    np.testing.assert_allclose(mean, fields.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, fields.std(axis=0), rtol=1e-5)
    with pytest.raises(SenseError, match="non-empty"):
        selection_statistics(np.zeros((0, 1, 5, 5)))
    with pytest.raises(SenseError, match="non-empty"):
        tile_members(np.zeros((5, 5)))


def test_member_view_titles_each_image_in_its_top_left_corner():
    """The titles block: every selected member's id inside its own tile's top-left corner,
    "mean" and "std" on theirs, as text polygons in front of the images (z > 0)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonCore import vtkIdList

    from sense_paraview.vtk_views import MEMBER_VIEW_BLOCKS, member_view_from_fields

    fields = np.random.default_rng(0).normal(size=(3, 1, 12, 10)).astype(np.float32)
    ids = ["run3", "run7", "a-much-longer-member-name"]
    blocks = member_view_from_fields(fields, ids)
    names = [blocks.GetMetaData(i).Get(blocks.NAME()) for i in range(blocks.GetNumberOfBlocks())]
    assert names == list(MEMBER_VIEW_BLOCKS) == ["mosaic", "tile_labels", "mean", "std", "titles"]
    titles = blocks.GetBlock(names.index("titles"))
    labels = titles.GetCellData().GetAbstractArray("title")
    points = vtk_to_numpy(titles.GetPoints().GetData())
    assert (points[:, 2] > 0).all()
    mosaic = blocks.GetBlock(0)
    x_min, _, _, y_max, _, _ = mosaic.GetBounds()
    # 3 members -> 2 x 2 tiles of 12 x 10 with 2-pixel gaps; (left, top) of each image
    mean_left = blocks.GetBlock(2).GetBounds()[0]
    std_left, _, _, std_top, _, _ = blocks.GetBlock(3).GetBounds()  # std under mean
    corners = {"run3": (0, y_max), "run7": (12, y_max), ids[2]: (0, y_max - 14),
               "mean": (mean_left, y_max), "std": (std_left, std_top)}  # fmt: skip
    seen = set()
    for cell in range(titles.GetNumberOfCells()):
        text = labels.GetValue(cell)
        seen.add(text)
        point_ids = vtkIdList()
        titles.GetCellPoints(cell, point_ids)
        xy = points[[point_ids.GetId(i) for i in range(point_ids.GetNumberOfIds())], :2]
        left, top = corners[text]
        # inside the tile (10 wide, 12 high, pixels centred on whole units) ...
        assert (xy[:, 0] >= left - 0.5).all() and (xy[:, 0] <= left + 9.5).all(), text
        assert (xy[:, 1] <= top + 0.5).all() and (xy[:, 1] >= top - 11.5).all(), text
        # ... and in its upper part
        assert (xy[:, 1] >= top - 0.5 - 12 * 0.5).all(), text
    assert seen == set(corners)
    assert x_min == 0
