"""VTK outputs of SENSE's ParaView views (``vtkmodules`` imported lazily, as in io.vti).

The member view: for a selection of member ids, a multiblock with the tiled mosaic of their
fields, points labelling each tile with its member id, and the pixel-wise mean and standard
deviation, laid out side by side in one render view.
"""

from __future__ import annotations

from collections.abc import Sequence

from sense_core.errors import SenseError
from sense_core.io.vti import FIELD_ARRAY, composite_members, member_to_image
from sense_core.selection import selection_statistics, tile_members


def _tile_labels(origins, member_ids, mosaic_height: int):
    from vtkmodules.vtkCommonCore import vtkPoints, vtkStringArray
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    points, vertices, names = vtkPoints(), vtkCellArray(), vtkStringArray()
    names.SetName("member_id")
    for index, ((top, left), member_id) in enumerate(zip(origins, member_ids)):
        # VTK's y axis points up: a tile's top row is at y = mosaic_height - 1 - top.
        points.InsertNextPoint(left, mosaic_height - top + 0.5, 0.0)
        vertices.InsertNextCell(1)
        vertices.InsertCellPoint(index)
        names.InsertNextValue(member_id)
    labels = vtkPolyData()
    labels.SetPoints(points)
    labels.SetVerts(vertices)
    labels.GetPointData().AddArray(names)
    return labels


def member_view_blocks(
    ensemble, member_ids: Sequence[str], array_name: str | None = None, columns: int | None = None
):
    """Blocks ``mosaic``, ``tile_labels``, ``mean`` and ``std`` for the selected members."""
    from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet, vtkMultiBlockDataSet

    if not member_ids:
        raise SenseError("no members selected")
    ids, fields = composite_members(ensemble, array_name)
    position = {member_id: i for i, member_id in enumerate(ids)}
    unknown = [m for m in member_ids if m not in position]
    if unknown:
        shown = ", ".join(repr(m) for m in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise SenseError(f"member id(s) not in the ensemble: {shown}")
    selected = fields[[position[m] for m in member_ids]]
    mosaic = tile_members(selected, columns)
    mean, std = selection_statistics(selected)
    _, height, width = mosaic.image.shape
    tile_height, tile_width = selected.shape[2:]

    outputs = [
        ("mosaic", member_to_image(mosaic.image, FIELD_ARRAY, {"count": len(member_ids)})),
        ("tile_labels", _tile_labels(mosaic.origins, member_ids, height)),
        ("mean", member_to_image(mean, FIELD_ARRAY, {"count": len(member_ids)})),
        ("std", member_to_image(std, FIELD_ARRAY, {"count": len(member_ids)})),
    ]
    # Mean and std stand to the right of the mosaic, top-aligned, half a tile apart.
    mean_x = width + tile_width // 2
    for name, x in (("mean", mean_x), ("std", mean_x + tile_width + tile_width // 2)):
        image = dict(outputs)[name]
        image.SetOrigin(x, height - tile_height, 0.0)
    blocks = vtkMultiBlockDataSet()
    blocks.SetNumberOfBlocks(len(outputs))
    for index, (name, data) in enumerate(outputs):
        blocks.SetBlock(index, data)
        blocks.GetMetaData(index).Set(vtkCompositeDataSet.NAME(), name)
    return blocks
