"""VTK outputs of SENSE's ParaView filters: numpy/``sense_core`` results to VTK data objects, and
the dispatch between one process and MPI ranks (``vtkmodules`` imported lazily, as in io.vti).
The algorithms (:mod:`sense_paraview.algorithms`) call :func:`member_view`,
:func:`embed_input` and :func:`store_piece_to_multiblock`.

- The member view: for a selection of member ids, a multiblock with the tiled mosaic of their
  fields, points labelling each tile with its member id, the pixel-wise mean and standard
  deviation, laid out side by side in one render view, and their titles (member id, "mean",
  "std") as text geometry in each tile's top-left corner. When a channel holds a few integer
  codes (facies), blocks ``probability_<code>`` and ``entropy`` follow (sense_core.categorical),
  in a row under mean and std.
- The embedding: the 2D map as points (x, y, 0) and as a table, one row per member.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sense_core.categorical import category_images, selection_categories
from sense_core.errors import SenseError, describe_exception
from sense_core.io.vti import FIELD_ARRAY, composite_members, member_to_image, store_member_image
from sense_core.projection import ProjectionOptions
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


# Title letters: this fraction of a tile's height, inset by half that from the tile's corner.
TITLE_HEIGHT = 0.14
DENSE_TITLE_HEIGHT = 0.22


def _titles(boxes) -> object:
    """Text geometry (``vtkVectorText`` polygons, z = 0.1 so it lies on the images in a 2D
    view) for ``boxes`` of (text, left x, top y, box width, box height[, height fraction]) in
    world units: each text in its box's top-left corner, ``TITLE_HEIGHT`` (or the fraction)
    of the box high and narrowed to fit its width. Geometry rather than view annotations, so
    that the titles are part of the filter's output and appear wherever it is shown (GUI,
    pvbatch screenshots) without extra setup. The polygons carry the title as a ``title`` cell
    array."""
    from vtkmodules.vtkCommonCore import vtkStringArray
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersCore import vtkAppendPolyData
    from vtkmodules.vtkFiltersGeneral import vtkTransformPolyDataFilter
    from vtkmodules.vtkRenderingFreeType import vtkVectorText

    append = vtkAppendPolyData()
    for text, left, top, width, height, *fraction in boxes:
        letters = vtkVectorText()
        letters.SetText(text)
        letters.Update()
        x0, x1, y0, y1, _, _ = letters.GetOutput().GetBounds()
        size = (fraction[0] if fraction else TITLE_HEIGHT) * height
        scale = min(size / max(y1 - y0, 1e-6), 0.9 * width / max(x1 - x0, 1e-6))
        place = vtkTransform()
        place.Translate(left + size / 2, top - size / 2 - scale * (y1 - y0), 0.1)
        place.Scale(scale, scale, 1.0)
        place.Translate(-x0, -y0, 0.0)
        moved = vtkTransformPolyDataFilter()
        moved.SetInputConnection(letters.GetOutputPort())
        moved.SetTransform(place)
        moved.Update()
        piece = moved.GetOutput()
        names = vtkStringArray()
        names.SetName("title")
        for _ in range(piece.GetNumberOfCells()):
            names.InsertNextValue(text)
        piece.GetCellData().AddArray(names)
        append.AddInputData(piece)
    append.Update()
    return append.GetOutput()


MEMBER_VIEW_BLOCKS = ("mosaic", "tile_labels", "mean", "std", "titles")


def _named_blocks(outputs):
    from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet, vtkMultiBlockDataSet

    blocks = vtkMultiBlockDataSet()
    blocks.SetNumberOfBlocks(len(outputs))
    for index, (name, data) in enumerate(outputs):
        if data is not None:
            blocks.SetBlock(index, data)
        blocks.GetMetaData(index).Set(vtkCompositeDataSet.NAME(), name)
    return blocks


def _selected_fields(ids: Sequence[str], fields: np.ndarray, member_ids: Sequence[str]):
    position = {member_id: i for i, member_id in enumerate(ids)}
    unknown = [m for m in member_ids if m not in position]
    if unknown:
        shown = ", ".join(repr(m) for m in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise SenseError(f"member id(s) not in the ensemble: {shown}")
    return fields[[position[m] for m in member_ids]]


# At most this many members are tiled (their ids readable); mean and std cover all of them.
MAX_TILES = 64


def member_view_from_fields(
    selected: np.ndarray, member_ids: Sequence[str], columns=None, max_tiles: int = MAX_TILES
):
    """Blocks ``mosaic``, ``tile_labels``, ``mean``, ``std`` and ``titles`` of the (k, C, H, W)
    fields of the selected members (in ``member_ids`` order), then, for each categorical
    channel, ``probability_<code>`` and ``entropy`` blocks (one row each, under mean and std).

    The first ``max_tiles`` members are tiled (a title above the mosaic says "showing 64 of N");
    mean, std and the categorical maps cover every selected member. Mean and std stand to the
    right of the mosaic, one above the other, scaled up to about the mosaic's height (so they
    stay readable beside a large mosaic); titles scale with the image they name."""
    count = len(member_ids)
    shown = min(count, max(1, int(max_tiles)))
    mosaic = tile_members(selected[:shown], columns)
    mean, std = selection_statistics(selected)
    categories = selection_categories(selected)
    _, height, width = mosaic.image.shape
    tile_height, tile_width = selected.shape[2:]
    # mean, std and each categorical row stacked in a column, together about the mosaic's height
    stacked = 2 + len(categories)
    scale = max(1.0, mosaic.rows / (1.5 * stacked - 0.5))

    outputs = [
        ("mosaic", member_to_image(mosaic.image, FIELD_ARRAY, {"count": count})),
        ("tile_labels", _tile_labels(mosaic.origins, member_ids[:shown], height)),
        ("mean", member_to_image(mean, FIELD_ARRAY, {"count": count})),
        ("std", member_to_image(std, FIELD_ARRAY, {"count": count})),
    ]
    left = width + tile_width // 2
    step_x, step_y = 1.5 * tile_width * scale, 1.5 * tile_height * scale
    # titles at the top-left corner of each image (image points sit at whole units)
    # ids of small tiles (many members, each small on screen) get larger letters
    id_height = TITLE_HEIGHT if mosaic.rows < 4 else DENSE_TITLE_HEIGHT
    boxes = [
        (m, x - 0.5, height - top - 0.5, tile_width, tile_height, id_height)
        for (top, x), m in zip(mosaic.origins, member_ids)
    ]
    extra = category_images(categories, selected.shape[1])
    placed = [("mean", left, 0), ("std", left, 1)]
    for row, item in enumerate(categories, start=2):
        names = item.names(selected.shape[1])
        placed += [(name, left + i * step_x, row) for i, name in enumerate(names)]
    images = dict(outputs + extra)
    for name, x, row in placed:
        top = height - 1 - row * step_y
        images[name].SetSpacing(scale, scale, 1.0)
        images[name].SetOrigin(x, top - (tile_height - 1) * scale, 0.0)
        box_width, box_height = tile_width * scale, tile_height * scale
        boxes.append((name, x - 0.5 * scale, top + 0.5 * scale, box_width, box_height))
    if shown < count:
        note = f"showing {shown} of {count} (mean and std of all {count})"
        size = TITLE_HEIGHT * tile_height  # the note is twice a title's height
        boxes.append((note, -0.5, height - 0.5 + 4.0 * size, width, 2 * tile_height))
    outputs.append(("titles", _titles(boxes)))
    return _named_blocks(outputs + extra)


def member_view_blocks(
    ensemble, member_ids: Sequence[str], array_name: str | None = None, columns: int | None = None
):
    """Blocks of :data:`MEMBER_VIEW_BLOCKS` for the selected members."""
    if not member_ids:
        raise SenseError("no members selected")
    ids, fields = composite_members(ensemble, array_name)
    return member_view_from_fields(_selected_fields(ids, fields, member_ids), member_ids, columns)


def member_view_blocks_distributed(
    comm,
    ensemble,
    member_ids: Sequence[str],
    array_name: str | None = None,
    columns: int | None = None,
):
    """Collective: each rank sends the selected members it holds to rank 0, which builds the
    member view; the other ranks return the same blocks, empty (ParaView merges the ranks'
    outputs block by block, so every rank keeps the structure). Rank 0's ``member_ids`` are
    the selection on every rank (a pvbatch --symmetric script sets them on each rank itself).
    An error on any rank (reading its members, or rank 0's unknown ids) is raised on every
    rank, so that every rank's filter fails and no script goes on into a collective alone."""
    from sense_core.distributed import on_root
    from sense_core.io.vti import images_to_ensemble

    member_ids = comm.bcast(list(member_ids), root=0)
    held: dict[str, np.ndarray] = {}
    error = ""
    images = [(name, image) for _, name, image in indexed_composite_images(ensemble)]
    if images:
        try:
            local = images_to_ensemble(images, array_name)
            wanted = set(member_ids)
            held = {m: f for m, f in zip(local.member_ids, local.fields) if m in wanted}
        except Exception as exc:  # noqa: BLE001 - raised on every rank below, never a hang
            error = describe_exception(exc)
    gathered = comm.gather((held, error), root=0)

    def build():
        errors = [f"rank {r}: {e}" for r, (_, e) in enumerate(gathered) if e]
        if errors:
            raise SenseError("; ".join(errors))
        fields: dict[str, np.ndarray] = {}
        for part, _ in gathered:
            fields.update(part)
        ids = list(fields)
        stacked = np.stack([fields[m] for m in ids]) if ids else np.empty((0, 1, 1, 1), np.float32)
        chosen = _selected_fields(ids, stacked, member_ids)
        return member_view_from_fields(chosen, member_ids, columns)

    blocks = on_root(comm, build, share=False)
    # every rank keeps rank 0's structure, categorical blocks included
    count = blocks.GetNumberOfBlocks() if blocks is not None else 0
    names = comm.bcast([blocks.GetMetaData(i).Get(blocks.NAME()) for i in range(count)], root=0)
    return blocks if blocks is not None else _named_blocks([(n, None) for n in names])


def member_view(
    ensemble, member_ids: Sequence[str], array_name: str | None = None, columns: int | None = None
):
    """The member view of ``ensemble`` (a composite of member images): built here, or
    collectively over the MPI ranks that each hold some of the members."""
    comm = mpi_communicator()
    if comm is not None:
        return member_view_blocks_distributed(comm, ensemble, member_ids, array_name, columns)
    return member_view_blocks(ensemble, member_ids, array_name, columns)


def _embedding_columns(embedding) -> list:
    """VTK arrays, one value per member: ids, labels, class names, sources, hand flags,
    confidences, the unusual-member scores (when computed), metadata, latents."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonCore import VTK_DOUBLE, VTK_FLOAT, VTK_INT, vtkStringArray

    from sense_core.embedding import metadata_columns, unusual_columns

    def strings(name, values):
        array = vtkStringArray()
        array.SetName(name)
        for value in values:
            array.InsertNextValue(str(value))
        return array

    def numbers(name, values, vtk_type):
        array = numpy_to_vtk(np.ascontiguousarray(values), deep=True, array_type=vtk_type)
        array.SetName(name)
        return array

    class_of = [embedding.class_names[i] if i >= 0 else "" for i in embedding.labels]
    own = ["member_id", "label", "class_name", "label_source", "hand_labeled", "confidence"]
    own += ["label_certainty", "latent", "x", "y"]
    metadata = [  # colour or threshold the map by any per-member metadata
        numbers(name, values.astype(np.float64), VTK_DOUBLE)
        if values.dtype.kind in "biuf"
        else strings(name, values)
        for name, values in metadata_columns(
            embedding, own + list(unusual_columns(embedding))
        ).items()
    ]
    unusual = [  # with a bundle that has a decoder: colour the map by them (docs/unusual.md)
        numbers(name, np.asarray(values), VTK_INT if name == "unusual_rank" else VTK_FLOAT)
        for name, values in unusual_columns(embedding).items()
    ]
    return [
        strings("member_id", embedding.member_ids),
        numbers("label", embedding.labels.astype(np.int32), VTK_INT),
        strings("class_name", class_of),
        strings("label_source", embedding.label_source),
        # numeric, so that a Threshold can pick the hand labels (the map rings them)
        numbers("hand_labeled", (embedding.label_source == "manual").astype(np.int32), VTK_INT),
        numbers("confidence", embedding.confidence.astype(np.float32), VTK_FLOAT),
        # the map's point size and opacity: confidence, 0 where unlabeled (NaN confidence)
        numbers("label_certainty", np.nan_to_num(embedding.confidence, nan=0.0), VTK_FLOAT),
        *unusual,
        *metadata,
        numbers("latent", embedding.latents.astype(np.float32), VTK_FLOAT),
    ]


def _provenance_field_data(data, embedding) -> None:
    import json

    from vtkmodules.vtkCommonCore import vtkStringArray

    inference = embedding.provenance.get("inference", {})
    for name, value in (
        ("provider", inference.get("provider", "")),
        ("provenance", json.dumps(embedding.provenance, default=str)),
        ("class_names", json.dumps(list(embedding.class_names))),
    ):
        array = vtkStringArray()
        array.SetName(name)
        array.InsertNextValue(str(value))
        data.GetFieldData().AddArray(array)


def embedding_to_polydata(embedding):
    """The 2D map as points (x, y, 0), one vertex per member, with per-member arrays and the
    provenance (provider, timings, bundle checksum) as field data."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonCore import VTK_FLOAT, vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    xyz = np.zeros((len(embedding), 3), dtype=np.float32)
    xyz[:, :2] = embedding.xy
    points = vtkPoints()
    points.SetData(numpy_to_vtk(xyz, deep=True, array_type=VTK_FLOAT))
    vertices = vtkCellArray()
    for index in range(len(embedding)):
        vertices.InsertNextCell(1)
        vertices.InsertCellPoint(index)
    polydata = vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetVerts(vertices)
    for array in _embedding_columns(embedding):
        polydata.GetPointData().AddArray(array)
    polydata.GetPointData().SetActiveScalars("label")
    _provenance_field_data(polydata, embedding)
    return polydata


def embedding_to_table(embedding):
    """The same per-member values as a table (x, y columns first), for spreadsheet and chart
    views."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonCore import VTK_FLOAT
    from vtkmodules.vtkCommonDataModel import vtkTable

    table = vtkTable()
    for axis, values in (("x", embedding.xy[:, 0]), ("y", embedding.xy[:, 1])):
        column = numpy_to_vtk(
            np.ascontiguousarray(values, dtype=np.float32), deep=True, array_type=VTK_FLOAT
        )
        column.SetName(axis)
        table.AddColumn(column)
    for array in _embedding_columns(embedding):
        table.AddColumn(array)
    _provenance_field_data(table, embedding)
    return table


def embed_images(
    images,
    bundle: str,
    array_name: str | None = None,
    projection: ProjectionOptions | None = None,
    cache: dict | None = None,
    input_key=None,
    source: str = "",
    views: str | None = None,
    **inference,
):
    """Embed (fallback id, vtkImageData) members with ``bundle`` (default: the shipped bundle
    for their shape; where there is none, ``views`` go to the label-free training the GUI
    starts, :func:`sense_paraview.training_jobs.bundle_for_filter`); return (embedding,
    polydata, table). ``inference`` goes to
    :func:`sense_core.embedding.embed_ensemble` (device, batch_size, threads, use_labeler).

    With a ``cache`` dict (kept by the filter between executions) and an ``input_key`` that
    identifies the input data (e.g. its MTime), a re-execution for the same input, bundle, array
    and inference options only projects the cached latents again: changing the seed or the
    projection in the GUI costs the projection, not the models' run over every member.
    ``source``: the ensemble's path, for the provenance (the images do not know it).
    """
    from sense_core.bundle import bundle_checksum
    from sense_core.embedding import embed_ensemble, reproject
    from sense_core.io.vti import images_to_ensemble

    projection = projection or ProjectionOptions()
    ensemble = images_to_ensemble(images, array_name)
    if not bundle:  # shipped for the shape, else the ensemble's newest kept version
        from sense_paraview.training_jobs import bundle_for_filter

        bundle = bundle_for_filter(
            ensemble.member_shape, ensemble.class_names, source or None, views=views
        )
    key = None
    if cache is not None and input_key is not None:
        try:
            checksum = bundle_checksum(bundle)
            key = (input_key, bundle, checksum, array_name, sorted(inference.items()))
        except OSError:
            key = None  # no readable sense.json: embed_ensemble says what is wrong
    if key is not None and cache.get("key") == key:
        embedding = reproject(
            cache["embedding"],
            projection,
            bundle_folder=bundle,
            device=inference.get("device", "cpu"),
        )
    else:
        embedding = embed_ensemble(ensemble, bundle, projection=projection, **inference)
        if cache is not None:
            cache.clear()
            if key is not None:
                cache.update(key=key, embedding=embedding)
    return _outputs(embedding, source)


def _outputs(embedding, source: str = ""):
    """(embedding, polydata, table), the provenance naming the ensemble's ``source`` path;
    its warnings (foreign data) go to Output Messages."""
    from sense_paraview.failures import report_warning

    for warning in embedding.provenance.get("warnings", []):
        report_warning(warning)
    if source:
        ensemble = embedding.provenance.setdefault("ensemble", {})
        ensemble["path"] = source
    return embedding, embedding_to_polydata(embedding), embedding_to_table(embedding)


# Field data of the reader's output: the ensemble's path, which the embedding's provenance
# records (the members themselves do not know where they were read from).
SOURCE_ARRAY = "ensemble_path"


def _mark_source(blocks, store) -> object:
    from vtkmodules.vtkCommonCore import vtkStringArray

    path = getattr(store, "path", None)
    if path:
        array = vtkStringArray()
        array.SetName(SOURCE_ARRAY)
        array.InsertNextValue(str(Path(path).resolve()))
        blocks.GetFieldData().AddArray(array)
    return blocks


def source_path(data) -> str:
    """The ensemble path the SENSE reader recorded on ``data`` ("" when another reader made
    it)."""
    field_data = data.GetFieldData() if data is not None else None
    array = field_data.GetAbstractArray(SOURCE_ARRAY) if field_data is not None else None
    return str(array.GetValue(0)) if array is not None and array.GetNumberOfValues() else ""


def store_piece_to_multiblock(store, piece: int, pieces: int, array_name: str = FIELD_ARRAY):
    """The ensemble as a multiblock with every member's block named, but only the members of
    ``piece`` (a contiguous share, :func:`sense_core.distributed.member_share`) read and set:
    what one MPI rank of a parallel ParaView holds. One piece: the whole ensemble. Under MPI
    the ranks agree on the reading: a member that fails on one rank fails the reader on every
    rank (else the ranks would go on with different inputs: a map without that rank's
    members, or a rank waiting for another one). The multiblock's field data ``ensemble_path``
    names the ensemble, for the embedding's provenance."""
    from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet, vtkMultiBlockDataSet

    from sense_core.distributed import agree, member_share
    from sense_core.io.vti import store_to_multiblock

    if pieces <= 1:
        return _mark_source(store_to_multiblock(store, array_name), store)
    share = list(member_share(len(store), piece, pieces))
    blocks = vtkMultiBlockDataSet()
    blocks.SetNumberOfBlocks(len(store))
    for index, member_id in enumerate(store.member_ids):
        blocks.GetMetaData(index).Set(vtkCompositeDataSet.NAME(), member_id)

    def read_share() -> None:
        for index, member in zip(share, store.read_members(share) if share else []):
            blocks.SetBlock(index, store_member_image(store, index, member, array_name))

    comm = mpi_communicator()
    agree(comm if comm is not None and comm.Get_size() == pieces else None, read_share)
    return _mark_source(blocks, store)


def indexed_composite_images(composite) -> list[tuple[int, str, object]]:
    """(flat index, block name or ``block<i>``, image) of the 2D image leaves this process holds;
    the flat index orders members the same way on every MPI rank."""
    from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet, vtkImageData

    iterator = composite.NewIterator()
    iterator.SkipEmptyNodesOn()
    found = []
    iterator.InitTraversal()
    while not iterator.IsDoneWithTraversal():
        block = iterator.GetCurrentDataObject()
        if isinstance(block, vtkImageData):
            index = iterator.GetCurrentFlatIndex()
            name = iterator.GetCurrentMetaData().Get(vtkCompositeDataSet.NAME())
            found.append((index, name or f"block{index}", block))
        iterator.GoToNextItem()
    return found


def embed_images_distributed(
    comm,
    indexed_images,
    bundle: str,
    array_name: str | None = None,
    projection: ProjectionOptions | None = None,
    source: str = "",
    **inference,
):
    """Collective over ``comm``: every rank embeds its (flat index, fallback id, image) members,
    rank 0 projects all of them and returns (embedding, polydata, table); others return None.
    An error on any rank fails every rank (see :func:`sense_core.distributed.embed_distributed`).
    """
    from sense_core.bundle import find_shipped_bundle
    from sense_core.distributed import embed_distributed
    from sense_core.io.vti import image_class_names, image_member_info, images_to_ensemble

    images = [(name, image) for _, name, image in indexed_images]
    names: dict[int, str] = {}
    for name, image in images:
        _, label, class_name = image_member_info(image, name)
        if label >= 0 and class_name:
            names[label] = class_name
        for listed_label, listed_name in enumerate(image_class_names(image)):
            names.setdefault(listed_label, listed_name)
    fields, ids, labels, error = None, [], [], ""
    if images:
        try:
            local = images_to_ensemble(images, array_name)
            fields, ids, labels = local.fields, list(local.member_ids), list(local.labels)
            bundle = bundle or str(find_shipped_bundle(local.member_shape, local.class_names))
        except Exception as exc:  # noqa: BLE001 - raised on every rank below, never a hang
            error = describe_exception(exc)
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise SenseError(errors[0])
    bundle = next((b for b in comm.allgather(bundle) if b), "")
    indices = [index for index, _, _ in indexed_images] if fields is not None else []
    embedding = embed_distributed(
        comm, indices, ids, labels, names, fields, bundle, projection=projection, **inference
    )
    if embedding is None:
        return None
    return _outputs(embedding, source)


def embed_input(
    data,
    bundle: str,
    array_name: str | None,
    projection: ProjectionOptions,
    inference: dict,
    cache: dict | None = None,
    series: list | None = None,
    views: str | None = None,
):
    """(polydata, table) of the embedding of a filter's input, or None on the MPI ranks that
    hold no result. ``data``: a composite of member images (under MPI each rank holds some of
    them: embedded collectively) or one image; ``series``: the (id, image) members of a time
    series collected by the filter (every rank has all of them: rank 0 embeds). ``cache``: see
    :func:`embed_images`; keyed on the input object and its modification time (a time series
    is collected anew on every execution, so it is not cached). ``views``: see
    :func:`embed_images`."""
    from vtkmodules.vtkCommonDataModel import vtkImageData

    comm = mpi_communicator()
    composite = series is None and not isinstance(data, vtkImageData)
    source = source_path(data) if composite else ""
    if comm is not None and composite:
        result = embed_images_distributed(
            comm,
            indexed_composite_images(data),
            bundle,
            array_name,
            projection,
            source=source,
            **inference,
        )
    elif comm is not None and comm.Get_rank() != 0:
        result = None  # every rank has every image; rank 0 embeds
    else:
        if series is not None:
            images, input_key = series, None
        else:
            images = (
                [(name, image) for _, name, image in indexed_composite_images(data)]
                if composite
                else [("t000000", data)]
            )
            input_key = (data.GetAddressAsString("vtkObject"), data.GetMTime())
        result = embed_images(
            images, bundle, array_name, projection, cache, input_key, source, views, **inference
        )
    return None if result is None else result[1:]


def mpi_communicator():
    """mpi4py's world communicator when this ParaView runs on several MPI ranks, else None
    (mpi4py is then never imported, so serial runs do not start MPI)."""
    from vtkmodules.vtkParallelCore import vtkMultiProcessController

    controller = vtkMultiProcessController.GetGlobalController()
    if controller is None or controller.GetNumberOfProcesses() < 2:
        return None
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise SenseError(
            "SENSE Embedding on several MPI ranks needs mpi4py (Debian: python3-mpi4py) built "
            f"for ParaView's MPI: {exc}"
        ) from exc
    return MPI.COMM_WORLD
