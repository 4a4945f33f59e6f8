"""VTK adapters: one member <-> ``vtkImageData``, ``.vti`` files, and ParaView index files.

``vtkmodules`` is imported inside the functions, from the host's ParaView/VTK (never the PyPI
``vtk`` wheel, which crashes ParaView), so that the rest of ``sense_core`` works without VTK.
Reading a ``.vti`` member (:func:`read_vti`) needs no VTK at all: SENSE parses the file itself,
so that a damaged or crafted file is an error naming it, never a crash of VTK's C++ reader.

Orientation: member arrays are in image order (row 0 = top). In VTK, y grows upwards, so rows
are flipped on the way in and out; a member then looks in ParaView as it does in an image viewer,
like ParaView's own PNG reader shows it.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import lzma
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

import numpy as np

from sense_core.errors import EnsembleError, SenseError

FIELD_ARRAY = "field"
CLASS_NAMES_ARRAY = "class_names"  # field data: the ensemble's class names, on every member
# field data: the member's metadata as one JSON string (numeric field data arrays beside the
# others break ParaView's client/server transfer of the reader's output)
METADATA_ARRAY = "sense_metadata"


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
    field_data = {
        "member_id": store.member_ids[index],
        "label": label,
        "class_name": store.class_names[label] if label >= 0 else "",
    }
    # per-member metadata travels with the member, so that the map can be coloured by it
    metadata = {}
    for name, values in (getattr(store, "metadata", None) or {}).items():
        value = np.asarray(values)[index]
        kind = value.dtype.kind
        metadata[name] = (
            int(value) if kind == "b" else value.item() if kind in "iuf" else str(value)
        )
    if metadata:
        field_data[METADATA_ARRAY] = json.dumps(metadata)
    image = member_to_image(member, array_name, field_data=field_data)
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


# Reading .vti files. SENSE parses them itself instead of handing a user's file to VTK's
# vtkXMLImageDataReader: VTK's C++ reader trusts the sizes a file states, so a damaged or
# crafted file can abort the process, ParaView included (a compression header claiming four
# billion blocks is an uncaught std::bad_alloc). Here every size a file states is checked
# against the file's length and the memory guard before anything is allocated, and any damage
# is an EnsembleError naming the file.

VTI_MAX_DEPTH = 32  # VTK image files nest 6 elements deep
_VTK_TYPES = {
    "Int8": "i1",
    "UInt8": "u1",
    "Int16": "i2",
    "UInt16": "u2",
    "Int32": "i4",
    "UInt32": "u4",
    "Int64": "i8",
    "UInt64": "u8",
    "Float32": "f4",
    "Float64": "f8",
}
_COMPRESSORS = ("vtkZLibDataCompressor", "vtkLZ4DataCompressor", "vtkLZMADataCompressor")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/=\s]*")
_BASE64_PADDED = re.compile(rb"[^=]*=*")
_MEMBER_MEMORY_HINT = "SENSE works on 2D fields of moderate size: resample or crop the members"


class _Damaged(Exception):
    """A .vti file that cannot be read; the message says why (read_vti adds the file)."""


@dataclass
class _VtiArray:
    attrs: dict[str, str]
    text: list[str] = dataclasses.field(default_factory=list)  # inline content (ascii / binary)


@dataclass
class _VtiPiece:
    extent: tuple[int, ...]
    scalars: str | None = None
    arrays: list[_VtiArray] = dataclasses.field(default_factory=list)


@dataclass
class _VtiDocument:
    root: dict[str, str] = dataclasses.field(default_factory=dict)
    image: dict[str, str] | None = None
    pieces: list[_VtiPiece] = dataclasses.field(default_factory=list)
    appended_offsets: set[int] = dataclasses.field(default_factory=set)
    appended_encoding: str | None = None


def read_vti(path: str | os.PathLike, array_name: str | None = None) -> np.ndarray:
    """Read one member, a (C, H, W) float32 array, from a ``.vti`` file: the point array
    ``array_name``, else the active scalars, else the first numeric point array."""
    from sense_core.ensemble import check_memory
    from sense_core.io.members import to_float32

    path = Path(path)
    try:
        size = path.stat().st_size
        check_memory(
            2 * size, f"reading a .vti file of {size} bytes", str(path), _MEMBER_MEMORY_HINT
        )
        data = path.read_bytes()
    except OSError as exc:
        raise EnsembleError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        values = _decode_vti(data, array_name, path)
    except _Damaged as exc:
        raise EnsembleError(f"{path}: cannot read .vti ({exc})") from exc
    return to_float32(values, str(path))


def _decode_vti(data: bytes, array_name: str | None, path: Path) -> np.ndarray:
    """The (C, H, W) values of the chosen point array, in the file's dtype."""
    from sense_core.ensemble import check_memory

    document, appended_start = _parse_vti_xml(data)
    root = document.root
    if root.get("type") != "ImageData":
        raise _Damaged(f"a VTK file of type {root.get('type')!r}, not an image (ImageData)")
    order = {"LittleEndian": "<", "BigEndian": ">", None: "<"}.get(root.get("byte_order"))
    if order is None:
        raise _Damaged(f"unknown byte_order {root.get('byte_order')!r}")
    header = {"UInt32": order + "u4", "UInt64": order + "u8", None: order + "u4"}.get(
        root.get("header_type")
    )
    if header is None:
        raise _Damaged(f"unknown header_type {root.get('header_type')!r}")
    compressor = root.get("compressor") or None
    if compressor is not None and compressor not in _COMPRESSORS:
        raise _Damaged(f"unknown compressor {compressor!r}")
    if document.image is None or not document.pieces:
        raise _Damaged("no ImageData piece")
    whole = _extent(document.image.get("WholeExtent"), "WholeExtent")
    dims = [whole[2 * i + 1] - whole[2 * i] + 1 for i in range(3)]
    if min(dims) < 1:
        raise _Damaged(f"the image is empty (WholeExtent {' '.join(map(str, whole))})")
    flat = [i for i, d in enumerate(dims) if d == 1]
    if not flat:
        raise EnsembleError(f"{path}: image is 3D ({dims[0]}x{dims[1]}x{dims[2]}); SENSE needs 2D")
    width, height = [d for i, d in enumerate(dims) if i != flat[-1]][:2]
    chosen = [_choose_array(piece, array_name) for piece in document.pieces]
    attrs = chosen[0].attrs
    type_name = attrs.get("type")
    if type_name not in _VTK_TYPES:
        raise _Damaged(f"point array {attrs.get('Name')!r} has type {type_name!r}, not a number")
    components = _integer(attrs.get("NumberOfComponents", "1"), "NumberOfComponents")
    if components < 1:
        raise _Damaged(f"NumberOfComponents is {components}")
    for array in chosen[1:]:
        if (array.attrs.get("type"), array.attrs.get("NumberOfComponents", "1")) != (
            type_name,
            attrs.get("NumberOfComponents", "1"),
        ):
            raise _Damaged("the pieces' point arrays differ in type or components")
    shape = (components, height, width)
    check_memory(
        2 * 4 * components * height * width,  # Python integers: no overflow for any extent
        f"a member of shape {shape}",
        str(path),
        _MEMBER_MEMORY_HINT,
    )
    dtype = np.dtype(order + _VTK_TYPES[type_name])
    values = np.empty((dims[2], dims[1], dims[0], components), dtype=dtype.newbyteorder("="))
    covered = np.zeros(values.shape[:3], dtype=bool)
    for piece, array in zip(document.pieces, chosen):
        extent = piece.extent
        if any(
            extent[2 * i] < whole[2 * i] or extent[2 * i + 1] > whole[2 * i + 1] for i in range(3)
        ):
            raise _Damaged(f"piece Extent {' '.join(map(str, extent))} is outside the WholeExtent")
        size = [extent[2 * i + 1] - extent[2 * i] + 1 for i in range(3)]
        if min(size) < 1:
            continue
        count = size[0] * size[1] * size[2] * components
        raw = _array_values(array, count, dtype, header, compressor, data, document, appended_start)
        box = tuple(
            slice(extent[2 * i] - whole[2 * i], extent[2 * i + 1] - whole[2 * i] + 1)
            for i in (2, 1, 0)
        )
        values[box] = raw.reshape(size[2], size[1], size[0], components)
        covered[box] = True
    if not covered.all():
        raise _Damaged("the pieces do not cover the WholeExtent")
    values = values.reshape(height, width, components)
    return np.ascontiguousarray(values.transpose(2, 0, 1)[:, ::-1, :])


def _parse_vti_xml(data: bytes) -> tuple[_VtiDocument, int]:
    """The elements SENSE needs, and where the appended data start (-1: none). As VTK does, the
    XML ends at ``<AppendedData ...>``: the raw bytes after it are not XML."""
    xml, appended_start = data, -1
    tag = data.find(b"<AppendedData")
    if tag >= 0:
        close = data.find(b">", tag)
        if close < 0:
            raise _Damaged("truncated in the AppendedData tag")
        opening = data[tag:close]
        xml = data[:close] + (b">" if opening.endswith(b"/") else b"/>") + b"\n</VTKFile>\n"
        appended_start = close + 1
        while appended_start < len(data) and data[appended_start] in b" \t\r\n":
            appended_start += 1
        if data[appended_start : appended_start + 1] == b"_":
            appended_start += 1
    document = _VtiDocument()
    stack: list[str] = []
    collecting: list[_VtiArray] = []  # the point array whose inline data come next, if any

    def start(name: str, attrs: dict[str, str]) -> None:
        if len(stack) >= VTI_MAX_DEPTH:
            raise _Damaged("elements nested too deeply")
        where = tuple(stack)
        collecting.clear()  # inline data end where an element (e.g. InformationKey) starts
        if not stack:
            if name != "VTKFile":
                raise _Damaged(f"not a VTK XML file (root element {name!r})")
            document.root = attrs
        elif where == ("VTKFile",) and name == "ImageData":
            if document.image is not None:
                raise _Damaged("more than one ImageData element")
            document.image = attrs
        elif where == ("VTKFile",) and name == "AppendedData":
            document.appended_encoding = attrs.get("encoding", "base64")
        elif where == ("VTKFile", "ImageData") and name == "Piece":
            document.pieces.append(_VtiPiece(_extent(attrs.get("Extent"), "Piece Extent")))
        elif where == ("VTKFile", "ImageData", "Piece") and name == "PointData":
            document.pieces[-1].scalars = attrs.get("Scalars")
        elif where == ("VTKFile", "ImageData", "Piece", "PointData") and name in (
            "DataArray",
            "Array",
        ):
            document.pieces[-1].arrays.append(_VtiArray(attrs))
            collecting.append(document.pieces[-1].arrays[-1])
        if name in ("DataArray", "Array") and attrs.get("format") == "appended":
            document.appended_offsets.add(_integer(attrs.get("offset"), "offset"))
        stack.append(name)

    def end(name: str) -> None:  # noqa: ARG001
        stack.pop()
        collecting.clear()

    def text(content: str) -> None:
        if collecting:
            collecting[-1].text.append(content)

    def no_entities(*args: object) -> None:  # noqa: ARG001
        raise _Damaged("XML entity declarations are not allowed in a .vti file")

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.EntityDeclHandler = no_entities
    try:
        parser.Parse(xml, True)
    except expat.ExpatError as exc:
        raise _Damaged(f"not valid XML: {expat.ErrorString(exc.code)}, line {exc.lineno}") from None
    except RecursionError:
        raise _Damaged("elements nested too deeply") from None
    if document.appended_encoding is not None and appended_start < 0:
        raise _Damaged("no appended data")
    return document, appended_start


def _integer(text: str | None, what: str) -> int:
    if text is None:
        raise _Damaged(f"no {what}")
    try:
        value = int(text.strip())
    except ValueError:
        raise _Damaged(f"{what} {text[:40]!r} is not an integer") from None
    if abs(value) > 2**62:
        raise _Damaged(f"{what} {value} is out of range")
    return value


def _extent(text: str | None, what: str) -> tuple[int, ...]:
    parts = (text or "").split()
    if len(parts) != 6:
        raise _Damaged(f"{what} {(text or '')[:60]!r} is not six integers")
    return tuple(_integer(part, what) for part in parts)


def _choose_array(piece: _VtiPiece, array_name: str | None) -> _VtiArray:
    names = [array.attrs.get("Name") for array in piece.arrays]
    if array_name is not None:
        if array_name not in names:
            raise _Damaged(f"no point array {array_name!r} (has {names})")
        return piece.arrays[names.index(array_name)]
    if piece.scalars is not None and piece.scalars in names:
        return piece.arrays[names.index(piece.scalars)]
    for array in piece.arrays:
        if array.attrs.get("type") in _VTK_TYPES:
            return array
    raise _Damaged(
        "image has no point arrays" if not names else f"no numeric point array ({names})"
    )


def _array_values(
    array: _VtiArray,
    count: int,
    dtype: np.dtype,
    header: str,
    compressor: str | None,
    data: bytes,
    document: _VtiDocument,
    appended_start: int,
) -> np.ndarray:
    """``count`` values of ``array`` as a flat array of ``dtype``."""
    form = array.attrs.get("format")
    name = array.attrs.get("Name")
    if form == "ascii":
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns, and stops, at a token it cannot parse
            try:
                values = np.fromstring("".join(array.text), dtype=dtype.newbyteorder("="), sep=" ")
            except (ValueError, DeprecationWarning):
                raise _Damaged(f"point array {name!r}: values that are not numbers") from None
        if values.size < count:
            raise _Damaged(f"point array {name!r} holds {values.size} values, expected {count}")
        return values[:count]
    if form == "binary":
        stream = _base64("".join(array.text).encode("ascii", "replace"))
    elif form == "appended":
        if appended_start < 0:
            raise _Damaged(f"point array {name!r} is appended, but there are no appended data")
        start = appended_start + _integer(array.attrs.get("offset"), "offset")
        if not appended_start <= start <= len(data):
            raise _Damaged(f"point array {name!r}: offset beyond the end of the file")
        if document.appended_encoding == "raw":
            stream = memoryview(data)[start:]
        else:
            run = _BASE64_RUN.match(data, start).end()
            later = [appended_start + o for o in document.appended_offsets]
            end = min([p for p in later if start < p < run] + [run])
            stream = _base64(data[start:end])
    else:
        raise _Damaged(f"point array {name!r} has format {form!r} (not ascii, binary, appended)")
    raw = _binary_values(stream, count * dtype.itemsize, header, compressor)
    return np.frombuffer(raw, dtype=dtype)


def _base64(text: bytes) -> bytes:
    """Decode VTK's base64: the header and the data may be encoded (and padded) separately."""
    text = re.sub(rb"\s+", b"", text)
    try:
        return b"".join(binascii.a2b_base64(part) for part in _BASE64_PADDED.findall(text) if part)
    except binascii.Error as exc:
        raise _Damaged(f"truncated or damaged base64 data ({exc})") from None


def _binary_values(stream, need: int, header: str, compressor: str | None) -> bytes:
    """``need`` bytes of an array from its binary block: a size header then the data, or a
    compression header (blocks, block size, last block size, compressed sizes) then blocks."""
    word = np.dtype(header).itemsize
    if compressor is None:
        if len(stream) < word:
            raise _Damaged("truncated data")
        stated = int(np.frombuffer(stream[:word], dtype=header)[0])
        if stated < need:
            raise _Damaged(f"the data hold {stated} bytes, expected {need}")
        if len(stream) < word + need:
            raise _Damaged(f"truncated data ({len(stream) - word} of {need} bytes)")
        return bytes(stream[word : word + need])
    if len(stream) < 3 * word:
        raise _Damaged("truncated compression header")
    blocks, block_size, last_size = (int(v) for v in np.frombuffer(stream[: 3 * word], header))
    if blocks > (len(stream) - 3 * word) // word:
        raise _Damaged(f"the compression header claims {blocks} blocks, more than the file holds")
    if last_size > block_size:
        raise _Damaged("the compression header is inconsistent")
    sizes = [int(v) for v in np.frombuffer(stream[3 * word : (3 + blocks) * word], header)]
    total = blocks * block_size - (block_size - last_size if blocks and last_size else 0)
    if total < need:
        raise _Damaged(f"the data hold {total} bytes, expected {need}")
    position = (3 + blocks) * word
    if sum(sizes) > len(stream) - position:
        raise _Damaged("truncated compressed data")
    out: list[bytes] = []
    produced = 0
    for index, compressed in enumerate(sizes):
        if produced >= need:
            break
        full = last_size if index == blocks - 1 and last_size else block_size
        take = min(full, need - produced)
        block = bytes(stream[position : position + compressed])
        position += compressed
        out.append(_decompress(compressor, block, take))
        produced += take
    return b"".join(out)


def _decompress(compressor: str, block: bytes, size: int) -> bytes:
    """The first ``size`` bytes a compressed block decodes to; never more (a block claiming
    little and inflating to much cannot exhaust memory)."""
    try:
        if compressor == "vtkZLibDataCompressor":
            result = zlib.decompressobj().decompress(block, size) if size else b""
        elif compressor == "vtkLZMADataCompressor":
            result = lzma.LZMADecompressor().decompress(block, size) if size else b""
        else:
            result = _lz4_block(block, size)
    except (zlib.error, lzma.LZMAError) as exc:
        raise _Damaged(f"damaged compressed data ({exc})") from None
    if len(result) != size:
        raise _Damaged(f"a compressed block decodes to {len(result)} bytes, expected {size}")
    return result


def _lz4_block(source: bytes, size: int) -> bytes:
    """Decode an LZ4 block (VTK's vtkLZ4DataCompressor) up to ``size`` bytes, in Python."""
    out = bytearray()
    i, end = 0, len(source)
    try:
        while i < end and len(out) < size:
            token = source[i]
            i += 1
            length = token >> 4
            if length == 15:
                while True:
                    length += source[i]
                    i += 1
                    if source[i - 1] != 255:
                        break
            out += source[i : i + length]
            i += length
            if i >= end or len(out) >= size:
                break
            offset = source[i] | source[i + 1] << 8
            i += 2
            length = token & 15
            if length == 15:
                while True:
                    length += source[i]
                    i += 1
                    if source[i - 1] != 255:
                        break
            length += 4
            if offset == 0 or offset > len(out):
                raise _Damaged("damaged LZ4 data (a match before the start)")
            length = min(length, size - len(out))
            start = len(out) - offset
            if length <= offset:
                out += out[start : start + length]
            else:
                pattern = bytes(out[start:])
                out += (pattern * (length // offset + 1))[:length]
    except IndexError:
        raise _Damaged("truncated LZ4 data") from None
    return bytes(out[:size])


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


def image_metadata(image) -> dict:
    """The per-member metadata stored with a member image ({name: value}, empty when none)."""
    text = _field_value(image, METADATA_ARRAY)
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}  # not written by SENSE
    return found if isinstance(found, dict) else {}


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
    metadata: dict[str, list] = {}
    for fallback_id, image in images:
        member_id, label, class_name = image_member_info(image, fallback_id)
        for name, value in image_metadata(image).items():
            metadata.setdefault(name, []).append(value)
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
    complete = {n: np.asarray(v) for n, v in metadata.items() if len(v) == len(ids)}
    return Ensemble(
        np.stack(fields),
        labels=labels,
        class_names=class_names,
        member_ids=ids,
        metadata=complete,
    )


def composite_members(composite, array_name: str | None = None) -> tuple[list[str], np.ndarray]:
    """Member ids and (k, C, H, W) fields of a multiblock / partitioned collection of images."""
    ensemble = images_to_ensemble(composite_images(composite), array_name)
    return list(ensemble.member_ids), ensemble.fields
