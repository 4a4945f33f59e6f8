"""VTK adapters: one member <-> ``vtkImageData``, ``.vti`` files, and ParaView index files.

``vtkmodules`` is imported inside the functions, from the host's ParaView/VTK (never the PyPI
``vtk`` wheel, which crashes ParaView), so that the rest of ``sense_core`` works without VTK.

Orientation: member arrays are in image order (row 0 = top). In VTK, y grows upwards, so rows
are flipped on the way in and out; a member then looks in ParaView as it does in an image viewer,
like ParaView's own PNG reader shows it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from sense_core.errors import EnsembleError, SenseError

FIELD_ARRAY = "field"
CLASS_NAMES_ARRAY = "class_names"  # field data: the ensemble's class names, on every member


def _vtk():
    try:
        from vtkmodules import vtkCommonCore, vtkCommonDataModel  # noqa: F401
        from vtkmodules.util import numpy_support
    except ImportError as exc:
        raise SenseError(
            "reading or writing .vti needs VTK's Python modules from ParaView "
            "(Debian: apt-get install python3-paraview); run `make setup`"
        ) from exc
    return vtkCommonCore, vtkCommonDataModel, numpy_support


def member_to_image(
    field: np.ndarray,
    array_name: str = FIELD_ARRAY,
    field_data: dict[str, str | int | float] | None = None,
):
    """A (C, H, W) member as ``vtkImageData`` of W x H x 1 points, C components per point."""
    core, datamodel, numpy_support = _vtk()
    field = np.asarray(field, dtype=np.float32)
    channels, height, width = field.shape
    image = datamodel.vtkImageData()
    image.SetDimensions(width, height, 1)
    values = np.ascontiguousarray(field[:, ::-1, :].reshape(channels, -1).T)
    array = numpy_support.numpy_to_vtk(values, deep=True, array_type=core.VTK_FLOAT)
    array.SetName(array_name)
    image.GetPointData().AddArray(array)
    image.GetPointData().SetActiveScalars(array_name)
    for key, value in (field_data or {}).items():
        if isinstance(value, str):
            text = core.vtkStringArray()
            text.SetName(key)
            text.InsertNextValue(value)
            image.GetFieldData().AddArray(text)
        else:
            number = numpy_support.numpy_to_vtk(np.array([value]), deep=True)
            number.SetName(key)
            image.GetFieldData().AddArray(number)
    return image


def store_member_image(store, index: int, member: np.ndarray, array_name: str = FIELD_ARRAY):
    """Member ``index`` of ``store`` as ``vtkImageData`` with SENSE's field data: ``member_id``,
    ``label``, ``class_name`` and the ensemble's full ``class_names`` (so that classes without
    a labeled member in a subset keep their names when read back)."""
    core, _, _ = _vtk()
    label = int(store.labels[index])
    image = member_to_image(
        member,
        array_name,
        field_data={
            "member_id": store.member_ids[index],
            "label": label,
            "class_name": store.class_names[label] if label >= 0 else "",
        },
    )
    names = core.vtkStringArray()
    names.SetName(CLASS_NAMES_ARRAY)
    for name in store.class_names:
        names.InsertNextValue(str(name))
    image.GetFieldData().AddArray(names)
    return image


def image_to_member(image, array_name: str | None = None, where: str = "") -> np.ndarray:
    """The (C, H, W) float32 member held by a 2D ``vtkImageData``'s point array."""
    _, _, numpy_support = _vtk()
    prefix = f"{where}: " if where else ""
    dims = image.GetDimensions()
    flat_axes = [i for i, d in enumerate(dims) if d == 1]
    if not flat_axes:
        raise EnsembleError(f"{prefix}image is 3D ({dims[0]}x{dims[1]}x{dims[2]}); SENSE needs 2D")
    width, height = [d for i, d in enumerate(dims) if i != flat_axes[-1]][:2]
    point_data = image.GetPointData()
    names = [point_data.GetArrayName(i) for i in range(point_data.GetNumberOfArrays())]
    if array_name is None:
        scalars = point_data.GetScalars()
        array = scalars if scalars is not None else (point_data.GetArray(0) if names else None)
        if array is None:
            raise EnsembleError(f"{prefix}image has no point arrays")
    else:
        array = point_data.GetArray(array_name)
        if array is None:
            raise EnsembleError(f"{prefix}no point array {array_name!r} (has {names})")
    values = numpy_support.vtk_to_numpy(array)
    values = values.reshape(height, width, -1).astype(np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1)[:, ::-1, :])


def read_vti(path: str | os.PathLike, array_name: str | None = None) -> np.ndarray:
    """Read one member from a ``.vti`` file."""
    from vtkmodules.vtkIOXML import vtkXMLImageDataReader

    _vtk()
    path = Path(path)
    reader = vtkXMLImageDataReader()
    if not reader.CanReadFile(str(path)):
        raise EnsembleError(f"{path}: not a readable VTK XML image (.vti) file")
    reader.SetFileName(str(path))
    errors = _ErrorCatcher()
    reader.AddObserver("ErrorEvent", errors)
    reader.GetExecutive().AddObserver("ErrorEvent", errors)
    with _vtk_errors_silenced():  # VTK's XML parser would print its own lines to stderr
        reader.UpdateInformation()  # reads the header only: the extent, before any value
        if not errors.messages:
            _check_extent_memory(path, reader)
        reader.Update()
    image = reader.GetOutput()
    if errors.messages or image is None or image.GetNumberOfPoints() == 0:
        reason = errors.messages[0].strip()[:200] if errors.messages else "damaged or truncated"
        raise EnsembleError(f"{path}: cannot read .vti ({reason})")
    return image_to_member(image, array_name, where=str(path))


@contextlib.contextmanager
def _vtk_errors_silenced() -> Iterator[None]:
    """Keep VTK's own error lines off stderr and ParaView's Output Messages while SENSE reads a
    file: SENSE reports the problem itself, once, naming the file."""
    from vtkmodules.vtkCommonCore import vtkObject

    previous = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtkObject.SetGlobalWarningDisplay(previous)


def _check_extent_memory(path: Path, reader) -> None:
    from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline

    from sense_core.io.members import check_member_memory

    extent = reader.GetOutputInformation(0).Get(vtkStreamingDemandDrivenPipeline.WHOLE_EXTENT())
    if extent is None:
        return
    dims = [max(0, extent[2 * i + 1] - extent[2 * i] + 1) for i in range(3)]
    check_member_memory(path, (dims[2], dims[1], dims[0]))


def write_vti(path: str | os.PathLike, image) -> None:
    """Write a ``vtkImageData`` to ``path`` (compressed, appended binary)."""
    from vtkmodules.vtkIOXML import vtkXMLImageDataWriter

    writer = vtkXMLImageDataWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.SetDataModeToAppended()
    writer.SetCompressorTypeToZLib()
    if writer.Write() != 1:
        raise SenseError(f"{path}: VTK could not write the file")


class _ErrorCatcher:
    """VTK reports read errors as events, not exceptions; collect them."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __call__(self, obj, event, calldata=None) -> None:  # noqa: ARG002
        self.messages.append(str(calldata) if calldata else f"{obj.GetClassName()} failed")

    __call__.CallDataType = "string0"  # type: ignore[attr-defined]


def write_index_files(folder: Path, member_ids: Sequence[str], files: Sequence[str]) -> None:
    """Write ``ensemble.vtm`` (a multiblock, one named block per member) and ``ensemble.pvd``
    (the same members as a time series, member i at time i) so that ParaView opens the folder."""
    blocks = "\n".join(
        f"    <DataSet index={quoteattr(str(i))} name={quoteattr(m)} file={quoteattr(f)}/>"
        for i, (m, f) in enumerate(zip(member_ids, files))
    )
    (folder / "ensemble.vtm").write_text(
        '<?xml version="1.0"?>\n'
        '<VTKFile type="vtkMultiBlockDataSet" version="1.0" byte_order="LittleEndian">\n'
        f"  <vtkMultiBlockDataSet>\n{blocks}\n  </vtkMultiBlockDataSet>\n</VTKFile>\n",
        encoding="utf-8",
    )
    steps = "\n".join(
        f'    <DataSet timestep={quoteattr(str(i))} part="0" file={quoteattr(f)}/>'
        for i, f in enumerate(files)
    )
    (folder / "ensemble.pvd").write_text(
        '<?xml version="1.0"?>\n'
        '<VTKFile type="Collection" version="0.1" byte_order="LittleEndian">\n'
        f"  <Collection>\n{steps}\n  </Collection>\n</VTKFile>\n",
        encoding="utf-8",
    )


def store_to_multiblock(store, array_name: str = FIELD_ARRAY):
    """An ensemble as a ``vtkMultiBlockDataSet``: one ``vtkImageData`` block per member, named by
    member id, with ``member_id``, ``label`` and ``class_name`` as the block's field data."""
    from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet, vtkMultiBlockDataSet

    from sense_core.ensemble import check_memory, member_nbytes

    _vtk()
    check_memory(
        2 * member_nbytes(store.member_shape, len(store)),
        f"showing all {len(store)} members of (C, H, W) = {tuple(store.member_shape)}",
        str(getattr(store, "path", "")),
        "open a subset of the members, or resample them",
    )
    blocks = vtkMultiBlockDataSet()
    blocks.SetNumberOfBlocks(len(store))
    for indices, batch in store.iter_batches():
        for index, member in zip(indices, batch):
            member_id = store.member_ids[index]
            blocks.SetBlock(int(index), store_member_image(store, index, member, array_name))
            blocks.GetMetaData(int(index)).Set(vtkCompositeDataSet.NAME(), member_id)
    return blocks


def _field_value(image, name: str):
    array = image.GetFieldData().GetAbstractArray(name)
    if array is None or array.GetNumberOfValues() == 0:
        return None
    return array.GetValue(0)


def image_class_names(image) -> list[str]:
    """The ensemble's class names stored with a member image (empty when absent)."""
    array = image.GetFieldData().GetAbstractArray(CLASS_NAMES_ARRAY)
    if array is None:
        return []
    return [str(array.GetValue(i)) for i in range(array.GetNumberOfValues())]


def image_member_info(image, fallback_id: str) -> tuple[str, int, str]:
    """(member id, label, class name) of one member image from its field data (as SENSE writes
    it); the id falls back to ``fallback_id``, the label to -1 (unlabeled)."""
    member_id = _field_value(image, "member_id")
    label = _field_value(image, "label")
    class_name = _field_value(image, "class_name")
    return (
        str(member_id) if member_id not in (None, "") else fallback_id,
        int(label) if label is not None else -1,
        str(class_name) if class_name is not None else "",
    )


def composite_images(composite) -> list[tuple[str, object]]:
    """(block name or ``block<i>``, image) of every 2D image leaf of a multiblock /
    partitioned dataset collection, in traversal order."""
    from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet, vtkImageData

    _vtk()
    iterator = composite.NewIterator()
    iterator.SkipEmptyNodesOn()
    images = []
    iterator.InitTraversal()
    while not iterator.IsDoneWithTraversal():
        block = iterator.GetCurrentDataObject()
        if isinstance(block, vtkImageData):
            name = iterator.GetCurrentMetaData().Get(vtkCompositeDataSet.NAME())
            images.append((name or f"block{iterator.GetCurrentFlatIndex()}", block))
        iterator.GoToNextItem()
    return images


def images_to_ensemble(images, array_name: str | None = None):
    """An :class:`~sense_core.ensemble.Ensemble` from (fallback id, vtkImageData) pairs: ids,
    labels and class names from SENSE's field data where present."""
    from sense_core.ensemble import UNLABELED, Ensemble

    if not images:
        raise EnsembleError("the input holds no 2D image members")
    ids, labels, names, fields = [], [], {}, []
    listed: list[str] = []
    for fallback_id, image in images:
        member_id, label, class_name = image_member_info(image, fallback_id)
        ids.append(member_id)
        labels.append(label)
        if label != UNLABELED and class_name:
            names[label] = class_name
        listed = max(listed, image_class_names(image), key=len)
        fields.append(image_to_member(image, array_name, where=f"member {member_id!r}"))
    shapes = {f.shape for f in fields}
    if len(shapes) > 1:
        raise EnsembleError(
            f"the input's members have different shapes (C, H, W): {sorted(shapes)}; all "
            "members of an ensemble must have one shape"
        )
    count = max([*labels, -1, len(listed) - 1]) + 1
    class_names = [
        names.get(i, listed[i] if i < len(listed) else f"class_{i}") for i in range(count)
    ]
    return Ensemble(np.stack(fields), labels=labels, class_names=class_names, member_ids=ids)


def composite_members(composite, array_name: str | None = None) -> tuple[list[str], np.ndarray]:
    """Member ids and (k, C, H, W) fields of a multiblock / partitioned collection of images."""
    ensemble = images_to_ensemble(composite_images(composite), array_name)
    return list(ensemble.member_ids), ensemble.fields
