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
