"""Fuzzing the readers: whatever bytes, rows or JSON a user's files hold, SENSE reads them or
raises its own clear error (EnsembleError / BundleError) naming the file; never another
exception, never a hang, never a crash, and memory stays bounded.

Two fuzzers. Hypothesis (property tests, in this process): whole-file damage (cuts, flipped
bytes) of every format, and structured inputs built from each format's parts (npz headers with
odd shapes and dtypes, label arrays of odd dtypes and values, class names, .npy headers, .vti
XML and compression headers, CSV rows, JSON edits). ``SENSE_FUZZ_EXAMPLES`` sets the examples
per property (60 by default). Atheris (coverage-guided, libFuzzer): ``tests/fuzz/
fuzz_readers.py`` has one target per reader; each runs here in a subprocess for
``SENSE_FUZZ_SECONDS`` (5 by default), so that a segfault, abort, hang or memory blow-up is a
failing test, not a dead pytest.

The .vti reader is SENSE's own (VTK's C++ reader aborts or hangs on crafted sizes); the tests at
the end check that it reads what VTK writes exactly as VTK does, and refuses what crashed VTK.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, make_ensemble, make_linear_onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sense_core.bundle import Bundle, add_model, new_manifest
from sense_core.ensemble import NormalizationStats
from sense_core.errors import EnsembleError, SenseError
from sense_core.io import open_ensemble, read_member_file, write_ensemble

FUZZ = settings(
    max_examples=int(os.environ.get("SENSE_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The memory guard's limit while fuzzing, and what one example may add to the peak RSS.
MEMORY_LIMIT = "64M"
MAX_RSS_GROWTH = 512 * 2**20
EXAMPLE_SECONDS = 30  # CPU seconds for one example reading one small file; far above any seen
FUZZ_SECONDS = int(os.environ.get("SENSE_FUZZ_SECONDS", "5"))
FUZZ_SCRIPT = REPO / "tests" / "fuzz" / "fuzz_readers.py"
ATHERIS_TARGETS = [
    "labels_csv",
    "metadata_csv",
    "ensemble_json",
    "npz",
    "npy",
    "png",
    "tiff",
    "vti",
    "sense_json",
]


NAMES = ["a", "b", "", "a", "x|y", "line\nbreak", "=cmd", " ", "run0", "../x", "é"]


@pytest.fixture(autouse=True)
def _memory_limit(monkeypatch):
    monkeypatch.setenv("SENSE_MEMORY_LIMIT", MEMORY_LIMIT)


class Hang(BaseException):
    """An example used more than EXAMPLE_SECONDS of CPU time (a BaseException: readers that
    turn any Exception into their own error cannot swallow it)."""


def _on_timer(signum, frame):  # noqa: ARG001
    raise Hang(f"one example ran longer than {EXAMPLE_SECONDS} s of CPU time")


def read_or_refuse(name: str | tuple[str, ...], read: Callable[[], object]) -> object | None:
    """``read()``'s result, or None when it raised SENSE's own error naming ``name`` (or one
    of several). Anything
    else fails the test: another exception, more than EXAMPLE_SECONDS of CPU time (a virtual
    timer: pytest-timeout owns SIGALRM), or a peak RSS that grew by more than MAX_RSS_GROWTH."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    previous = signal.signal(signal.SIGVTALRM, _on_timer)
    signal.setitimer(signal.ITIMER_VIRTUAL, EXAMPLE_SECONDS)
    try:
        result = read()
    except SenseError as error:
        names = (name,) if isinstance(name, str) else name
        assert any(n in str(error) for n in names), f"the error does not name {name}: {error}"
        result = None
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert growth < MAX_RSS_GROWTH, f"reading grew the peak memory by {growth >> 20} MiB"
    return result


def damage(data: st.DataObject, blob: bytes) -> bytes:
    """``blob`` cut somewhere and with a few bytes replaced."""
    damaged = bytearray(blob)
    for position in data.draw(st.lists(st.integers(0, len(blob) - 1), max_size=8)):
        damaged[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(min_value=0, max_value=len(blob)))
    return bytes(damaged[:cut])


def check_ensemble(source) -> None:
    """What a successful read must give: consistent counts, finite fields, labels in range."""
    ensemble = source.load()
    count = len(ensemble.member_ids)
    assert ensemble.fields.shape[0] == count == len(ensemble.labels) > 0
    assert ensemble.fields.ndim == 4 and ensemble.fields.dtype == np.float32
    assert np.isfinite(ensemble.fields).all()
    assert ((ensemble.labels >= -1) & (ensemble.labels < len(ensemble.class_names))).all()
    assert all(isinstance(name, str) and name for name in ensemble.class_names)
    assert len(set(ensemble.class_names)) == len(ensemble.class_names)
    for values in ensemble.metadata.values():
        assert len(values) == count


# ----- side files of a member folder: labels.csv, metadata.csv, ensemble.json ---------------


def member_folder(tmp_path: Path) -> Path:
    """A folder of four valid members run0..run3 (written once per test)."""
    folder = tmp_path / "f"
    if not folder.exists():
        write_ensemble(make_ensemble(count=4), folder, member_format="npy")
        for name in ("ensemble.json", "labels.csv", "metadata.csv"):
            (folder / name).unlink(missing_ok=True)
    return folder


def read_side_file(
    tmp_path: Path, name: str, content: bytes | str, others: dict[str, bytes] | None = None
) -> None:
    """Put ``content`` in side file ``name`` (and the ``others`` beside it), open and load."""
    folder = member_folder(tmp_path)
    for other in ("ensemble.json", "labels.csv", "metadata.csv"):
        (folder / other).unlink(missing_ok=True)
    for other, blob in (others or {}).items():
        (folder / other).write_bytes(blob)
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    files = (name, *(others or {}))
    source = read_or_refuse(files, lambda: open_ensemble(folder, nan_policy="fill"))
    if source is not None:
        assert len(source) == 4
        read_or_refuse(files, lambda: check_ensemble(source))


@FUZZ
@given(text=st.text(max_size=300))
def test_any_labels_csv_is_read_or_rejected_clearly(tmp_path, text):
    read_side_file(tmp_path, "labels.csv", text)


member_cells = st.sampled_from(["run0", "run1", "run2", "run3", "ghost", "", " run1 ", "run0\n"])
odd_cells = st.sampled_from(
    [
        "",
        "-1",
        "0",
        "2",
        "7",
        "1e9",
        "999999999999",
        "straight",
        "x y",
        '"q,"',
        "=cmd|' /C calc'!A0",
    ]
) | st.text(max_size=5)
label_rows = st.lists(st.tuples(member_cells, odd_cells), max_size=8)


@FUZZ
@given(rows=label_rows, names=st.none() | st.lists(st.sampled_from(NAMES), max_size=4))
def test_structured_labels_csv_is_read_or_rejected_clearly(tmp_path, rows, names):
    """Rows of odd ids and labels, with or without class names (odd ones) in ensemble.json."""
    text = "member_id,label\n" + "".join(f"{member},{label}\n" for member, label in rows)
    description = {"format": "sense-ensemble-folder", "version": 1, "class_names": names}
    others = {} if names is None else {"ensemble.json": json.dumps(description).encode()}
    read_side_file(tmp_path, "labels.csv", text, others)


@FUZZ
@given(data=st.data())
def test_any_metadata_csv_is_read_or_rejected_clearly(tmp_path, data):
    columns = data.draw(st.lists(odd_cells | st.just("member_id"), max_size=4))
    rows = data.draw(st.lists(st.tuples(member_cells, st.lists(odd_cells, max_size=5)), max_size=6))
    text = ",".join(["member_id", *columns]) + "\n"
    text += "".join(",".join([member, *cells]) + "\n" for member, cells in rows)
    if data.draw(st.booleans()):
        text = data.draw(st.text(max_size=200))
    read_side_file(tmp_path, "metadata.csv", text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["float64", "int64", "<U3", "O", "V8", "foo", "sense-ensemble-folder"])
    | st.sampled_from(["e.onnx", "../e.onnx", "/etc/passwd", "sub/../encoder.onnx", "a\\b", "."]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
DESCRIPTION_KEYS = [
    "format",
    "version",
    "members",
    "member_shape",
    "member_format",
    "class_names",
    "metadata_dtypes",
    "amplitude",
]


@FUZZ
@given(path=st.lists(st.sampled_from(DESCRIPTION_KEYS), min_size=1, max_size=2), value=json_values)
def test_any_edit_of_ensemble_json_is_read_or_rejected_clearly(tmp_path, path, value):
    """ensemble.json as SENSE writes it, one key (or key of a key) set to any JSON value; a
    metadata.csv is there so that ``metadata_dtypes`` is used."""
    written = tmp_path / "w"
    if not written.exists():
        write_ensemble(make_ensemble(count=4), written, member_format="npy")
    description = json.loads((written / "ensemble.json").read_text())
    node = description
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    metadata = (written / "metadata.csv").read_bytes()
    read_side_file(tmp_path, "ensemble.json", json.dumps(description), {"metadata.csv": metadata})


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_any_ensemble_json_text_is_read_or_rejected_clearly(tmp_path, text):
    read_side_file(tmp_path, "ensemble.json", text)


# ----- .npz ensembles -------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_damaged_npz_is_read_or_rejected_clearly(tmp_path, data):
    original = tmp_path / "ok.npz"
    if not original.exists():
        write_ensemble(make_ensemble(count=6), original)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(damage(data, original.read_bytes()))
    source = read_or_refuse("damaged.npz", lambda: open_ensemble(damaged, nan_policy="fill"))
    if source is not None:
        read_or_refuse("damaged.npz", lambda: check_ensemble(source))


def npy_entry(descr: str, shape: str, fortran: bool, body: bytes) -> bytes:
    """A ``.npy`` file with any header text (numpy's writer refuses odd ones) and body."""
    header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body


def npy_of(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, array, allow_pickle=True)
    return stream.getvalue()


DESCRS = [
    "'<f4'",
    "'>f8'",
    "'<f2'",
    "'|u1'",
    "'<i8'",
    "'|b1'",
    "'<c8'",
    "'|O'",
    "'|S3'",
    "'<U2'",
    "'<M8[s]'",
    "'|V4'",
    "[('a', '<f4')]",
    "('<f4', (2,))",
    "'<q'",
    "'x'",
]
dims = st.integers(-2, 4) | st.sampled_from([2**31, 2**40, 2**63 - 1, 2**70])
shapes = st.lists(dims, max_size=5).map(
    lambda s: f"({', '.join(map(str, s))}{',' if len(s) == 1 else ''})"
)
LABEL_VALUES = [-5, -1, 0, 1, 2, 3, 2**40, 1.5, float("nan"), float("inf"), True]
LABEL_DTYPES = ["<i8", "|i1", "<u8", "<f8", "|b1", "<U3", "<c16", "<f4", "O"]


def odd_array(data: st.DataObject, count: int, values: list, dtypes: list[str]) -> np.ndarray:
    """An array of ``count`` (sometimes one more or fewer, sometimes 2D) odd values."""
    length = max(0, count + data.draw(st.sampled_from([0, 0, 0, -1, 1])))
    items = data.draw(st.lists(st.sampled_from(values), min_size=length, max_size=length))
    dtype = data.draw(st.sampled_from(dtypes))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # out-of-range integers wrap
            array = np.array(items, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        array = np.array(items, dtype=object)
    if data.draw(st.booleans()) and array.size % 2 == 0 and array.size:
        array = array.reshape(2, -1)
    return array


@FUZZ
@given(data=st.data())
def test_structured_npz_is_read_or_rejected_clearly(tmp_path, data):
    """An .npz assembled from odd parts: a fields header of any shape and dtype, labels of
    odd dtypes and values, class names and member ids of odd strings, metadata of odd lengths."""
    count = data.draw(st.integers(1, 4))
    entries: dict[str, bytes] = {}
    if data.draw(st.booleans()):
        fields = np.arange(count * 6, dtype=np.float32).reshape(count, 1, 2, 3)
        entries["fields"] = npy_of(fields.astype(data.draw(st.sampled_from(["<f4", ">f8", "|u1"]))))
    else:
        body = data.draw(st.binary(max_size=128) | st.just(bytes(count * 24)))
        entries["fields"] = npy_entry(
            data.draw(st.sampled_from(DESCRS)), data.draw(shapes), data.draw(st.booleans()), body
        )
    if data.draw(st.booleans()):
        entries["labels"] = npy_of(odd_array(data, count, LABEL_VALUES, LABEL_DTYPES))
    for key in ("class_names", "member_ids"):
        if data.draw(st.booleans()):
            values = NAMES if key == "class_names" else [*NAMES, "run1", "run2", "run3"]
            entries[key] = npy_of(odd_array(data, count, values, ["<U12", "|S12", "O"]))
    if data.draw(st.booleans()):
        entries["meta_x"] = npy_of(odd_array(data, count, LABEL_VALUES, LABEL_DTYPES))
    path = tmp_path / "odd.npz"
    method = data.draw(st.sampled_from(ZIP_METHODS))
    with zipfile.ZipFile(path, "w", method) as archive:
        for key, blob in entries.items():
            archive.writestr(f"{key}.npy", blob)
    source = read_or_refuse("odd.npz", lambda: open_ensemble(path, nan_policy="fill"))
    if source is not None:
        read_or_refuse("odd.npz", lambda: check_ensemble(source))


ZIP_METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def zip_with(method: int, damage_at: int | None) -> bytes:
    """A small ensemble .npz compressed with ``method``; with ``damage_at``, each entry's data
    has that byte (counted from the entry's data) replaced by 0xFF."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", method) as archive:
        archive.writestr("fields.npy", npy_of(np.zeros((2, 3, 4), np.float32)))
        archive.writestr("labels.npy", npy_of(np.array([0, 1])))
    blob = bytearray(stream.getvalue())
    if damage_at is not None:
        with zipfile.ZipFile(io.BytesIO(bytes(blob))) as archive:
            for info in archive.infolist():
                start = info.header_offset + 30 + len(info.filename) + len(info.extra)
                blob[start + damage_at] = 0xFF
    return bytes(blob)


@pytest.mark.parametrize(
    "method",
    [
        zipfile.ZIP_STORED,
        zipfile.ZIP_DEFLATED,
        zipfile.ZIP_BZIP2,
        zipfile.ZIP_LZMA,
    ],
    ids=["stored", "deflated", "bzip2", "lzma"],
)
def test_npz_entries_of_every_zip_compression_are_read_or_refused(tmp_path, method):
    """np.load reads any compression zipfile knows; damaged, each must be SENSE's error."""
    path = tmp_path / "z.npz"
    path.write_bytes(zip_with(method, None))
    assert open_ensemble(path).load().fields.shape == (2, 1, 3, 4)
    path.write_bytes(zip_with(method, 4))  # the LZMA properties, bzip2's block header ...
    source = read_or_refuse("z.npz", lambda: open_ensemble(path, nan_policy="fill"))
    if source is not None:
        read_or_refuse("z.npz", lambda: check_ensemble(source))


# ----- member files: .npy, .png, .tif, .vti -----------------------------------------------


def member_files(folder: Path) -> dict[str, list[bytes]]:
    """Valid members of each format, in several encodings, as bytes (written once)."""
    import tifffile
    from PIL import Image

    from sense_core.io.vti import member_to_image, write_vti

    cache = folder / "members.json"
    if cache.exists():
        return {k: [bytes.fromhex(b) for b in v] for k, v in json.loads(cache.read_text()).items()}
    folder.mkdir(exist_ok=True)
    field = np.arange(48, dtype=np.float32).reshape(1, 6, 8)
    blobs: dict[str, list[bytes]] = {".npy": [], ".png": [], ".tif": [], ".vti": []}
    for array in (field, field[0].astype(">f8"), np.asfortranarray(field[0].astype(np.uint16))):
        blobs[".npy"].append(npy_of(array))
    for mode in ("L", "I;16", "RGB", "P"):
        stream = io.BytesIO()
        image = Image.fromarray(field[0].astype(np.uint8))
        (image if mode == "L" else image.convert(mode)).save(stream, format="PNG")
        blobs[".png"].append(stream.getvalue())
    for array, options in (
        (field[0], {}),
        (np.concatenate([field] * 3), {"compression": "zlib", "photometric": "minisblack"}),
        (field[0].astype(np.uint8), {"byteorder": ">", "bigtiff": True, "rowsperstrip": 2}),
    ):
        stream = io.BytesIO()
        tifffile.imwrite(stream, array, **options)
        blobs[".tif"].append(stream.getvalue())
    write_vti(folder / "m.vti", member_to_image(np.concatenate([field, -field])))
    blobs[".vti"] = [(folder / "m.vti").read_bytes(), *vtk_written(folder, field)]
    cache.write_text(json.dumps({k: [b.hex() for b in v] for k, v in blobs.items()}))
    return blobs


VTK_MODES = [
    # data mode, compressor, encode appended data, header type, byte order, pieces
    ("Appended", "ZLib", False, 32, "Little", 1),
    ("Appended", "ZLib", True, 64, "Big", 2),
    ("Appended", "None", False, 64, "Little", 1),
    ("Appended", "None", True, 32, "Big", 1),
    ("Appended", "LZ4", False, 32, "Little", 3),
    ("Appended", "LZMA", True, 64, "Little", 1),
    ("Binary", "None", True, 32, "Little", 1),
    ("Binary", "ZLib", True, 64, "Big", 2),
    ("Binary", "LZ4", True, 32, "Little", 1),
    ("Ascii", "None", True, 32, "Little", 2),
]


def vtk_write(path: Path, image, mode, compressor, encode, header, order, pieces, block=None):
    from vtkmodules.vtkIOXML import vtkXMLImageDataWriter

    writer = vtkXMLImageDataWriter()
    writer.SetInputData(image)
    writer.SetFileName(str(path))
    getattr(writer, f"SetDataModeTo{mode}")()
    getattr(writer, f"SetCompressorTypeTo{compressor}")()
    writer.SetEncodeAppendedData(encode)
    getattr(writer, f"SetHeaderTypeToUInt{header}")()
    getattr(writer, f"SetByteOrderTo{order}Endian")()
    writer.SetNumberOfPieces(pieces)
    if block:
        writer.SetBlockSize(block)
    assert writer.Write() == 1
    return path


def vtk_written(folder: Path, field: np.ndarray) -> list[bytes]:
    from sense_core.io.vti import member_to_image

    image = member_to_image(field)
    return [vtk_write(folder / "v.vti", image, *mode).read_bytes() for mode in VTK_MODES[::3]]


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".npy", ".png", ".tif", ".vti"]))
def test_damaged_member_files_are_read_or_rejected_clearly(tmp_path, data, suffix):
    blob = data.draw(st.sampled_from(member_files(tmp_path / "valid")[suffix]))
    damaged = tmp_path / f"damaged{suffix}"
    damaged.write_bytes(damage(data, blob))
    member = read_or_refuse(
        f"damaged{suffix}", lambda: read_member_file(damaged, nan_policy="fill")
    )
    if member is not None:
        assert member.dtype == np.float32 and member.ndim == 3 and member.size > 0
        assert np.isfinite(member).all()


@FUZZ
@given(
    descr=st.sampled_from(DESCRS),
    shape=shapes,
    fortran=st.booleans(),
    body=st.binary(max_size=64) | st.integers(0, 200).map(bytes),
)
def test_any_npy_header_is_read_or_rejected_clearly(tmp_path, descr, shape, fortran, body):
    path = tmp_path / "odd.npy"
    path.write_bytes(npy_entry(descr, shape, fortran, body))
    member = read_or_refuse("odd.npy", lambda: read_member_file(path, nan_policy="fill"))
    if member is not None:
        assert member.dtype == np.float32 and member.ndim == 3 and member.size > 0


VTI_TYPES = ["Float32", "Float64", "Int8", "UInt16", "Int64", "String", "Bit", None]
extent_numbers = st.integers(-3, 6) | st.sampled_from([2**31, 2**40, -(2**40), 2**62, 2**70])
extents = st.lists(extent_numbers, min_size=6, max_size=6).map(lambda e: " ".join(map(str, e)))
header_words = st.lists(
    st.integers(0, 40) | st.sampled_from([2**31, 2**32 - 1, 2**64 - 1]), max_size=6
)


@st.composite
def vti_documents(draw) -> bytes:
    """A .vti file from odd parts: attributes, extents, components, formats, and binary data
    whose size or compression header says anything."""
    header_type = draw(st.sampled_from(["UInt32", "UInt64", "UInt16", None]))
    compressor = draw(
        st.sampled_from(
            [None, "vtkZLibDataCompressor", "vtkLZ4DataCompressor", "vtkLZMADataCompressor", "x"]
        )
    )
    order = draw(st.sampled_from(["LittleEndian", "BigEndian", "Middle", None]))
    attributes = " ".join(
        f'{key}="{value}"'
        for key, value in (
            ("header_type", header_type),
            ("compressor", compressor),
            ("byte_order", order),
        )
        if value is not None
    )
    whole = draw(st.sampled_from(["0 3 0 2 0 0", "0 3 0 0 0 2", "1 1 0 2 0 3"]) | extents)
    piece = draw(st.just(whole) | extents)
    form = draw(st.sampled_from(["appended", "binary", "ascii", "other"]))
    array_type = draw(st.sampled_from(VTI_TYPES))
    components = draw(st.sampled_from(["1", "2", "0", "-1", "65536", "2147483648", "x"]))
    offset = draw(st.sampled_from([0, 0, 3, 10**6]))
    array = (
        f'<DataArray Name="field" format="{form}" offset="{offset}" '
        f'NumberOfComponents="{components}"' + (f' type="{array_type}"' if array_type else "") + ">"
    )
    word = "<Q" if header_type == "UInt64" else "<I"
    words = draw(header_words)
    blob = b"".join(struct.pack(word, w % (2**64 if word == "<Q" else 2**32)) for w in words)
    if draw(st.booleans()):
        blob += zlib.compress(draw(st.binary(max_size=48)))
    blob += draw(st.binary(max_size=48))
    inline = ""
    if form == "ascii":
        inline = " ".join(
            draw(st.lists(st.sampled_from(["1", "-2.5", "nan", "1e400", "x", "7"]), max_size=30))
        )
    elif form == "binary":
        import base64

        inline = base64.b64encode(blob).decode()
    document = (
        f'<?xml version="1.0"?>\n<VTKFile type="ImageData" version="1.0" {attributes}>\n'
        f'<ImageData WholeExtent="{whole}"><Piece Extent="{piece}"><PointData Scalars="field">'
        f"{array}{inline}</DataArray></PointData></Piece></ImageData>\n"
    ).encode()
    if form == "appended" or draw(st.booleans()):
        encoding = draw(st.sampled_from(["raw", "base64"]))
        if encoding == "base64":
            import base64

            blob = base64.b64encode(blob)
        document += f'<AppendedData encoding="{encoding}">_'.encode() + blob + b"</AppendedData>\n"
    return document + b"</VTKFile>\n"


@FUZZ
@given(document=vti_documents())
def test_any_vti_structure_is_read_or_rejected_clearly(tmp_path, document):
    path = tmp_path / "odd.vti"
    path.write_bytes(document)
    member = read_or_refuse("odd.vti", lambda: read_member_file(path, nan_policy="fill"))
    if member is not None:
        assert member.dtype == np.float32 and member.ndim == 3 and member.size > 0


# ----- bundles: sense.json ------------------------------------------------------------------


def bundle_folder(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    if not bundle.exists():
        make_linear_onnx(tmp_path / "e.onnx", (1, 4, 4), 2)
        manifest = new_manifest((1, 4, 4), NormalizationStats((0.0,), (1.0,), 1), ["a", "b"])
        add_model(
            bundle,
            "encoder",
            tmp_path / "e.onnx",
            manifest,
            input_name="fields",
            output_name="output",
            opset=17,
        )
        shutil.copy(bundle / "sense.json", tmp_path / "pristine.json")
    return bundle


def load_bundle(bundle: Path) -> None:
    loaded = read_or_refuse(str(bundle), lambda: Bundle.load(bundle))
    if loaded is not None:
        assert len(loaded.input_shape) == 3 and min(loaded.input_shape) >= 1
        assert all(np.isfinite(loaded.normalization.mean))
        assert all(np.isfinite(loaded.normalization.std))


SENSE_JSON_KEYS = [
    "input",
    "models",
    "encoder",
    "normalization",
    "shape",
    "file",
    "mean",
    "std",
    "class_names",
    "format_version",
    "sha256",
    "opset",
]


@FUZZ
@given(path=st.lists(st.sampled_from(SENSE_JSON_KEYS), min_size=1, max_size=3), value=json_values)
def test_any_edit_of_sense_json_is_loaded_or_rejected_clearly(tmp_path, path, value):
    bundle = bundle_folder(tmp_path)
    manifest = json.loads((tmp_path / "pristine.json").read_text())
    node = manifest
    for key in path[:-1]:
        if not isinstance(node, dict):
            break
        node = node.setdefault(key, {})
    if isinstance(node, dict):
        node[path[-1]] = value
    (bundle / "sense.json").write_text(json.dumps(manifest))
    load_bundle(bundle)


@FUZZ
@given(data=st.data())
def test_damaged_sense_json_is_loaded_or_rejected_clearly(tmp_path, data):
    bundle = bundle_folder(tmp_path)
    (bundle / "sense.json").write_bytes(damage(data, (tmp_path / "pristine.json").read_bytes()))
    load_bundle(bundle)


# ----- coverage-guided fuzzing (atheris), each target in a subprocess ----------------------


FINDINGS = {"crash", "timeout", "oom", "leak", "slow"}  # libFuzzer's names for saved inputs


@pytest.mark.parametrize("target", ATHERIS_TARGETS)
def test_coverage_guided_fuzzing_finds_no_failure(target, tmp_path):
    """``fuzz_readers.py TARGET`` for SENSE_FUZZ_SECONDS: exit status 0 means no uncaught
    exception, crash, hang (over 10 s for one input) or memory blow-up (over 1 GiB RSS)."""
    pytest.importorskip("atheris", reason="atheris (the dev extra) runs the coverage fuzzer")
    command = [
        sys.executable,
        str(FUZZ_SCRIPT),
        target,
        f"-max_total_time={FUZZ_SECONDS}",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=FUZZ_SECONDS + 300, cwd=tmp_path
    )
    findings = sorted(p.name for p in tmp_path.iterdir() if p.name.split("-")[0] in FINDINGS)
    assert done.returncode == 0 and not findings, (
        f"{target}: exit {done.returncode}, inputs saved: {findings} (rerun one with "
        f"`python {FUZZ_SCRIPT.relative_to(REPO)} {target} FILE`)\n{done.stderr[-4000:]}"
    )
    assert "stat::number_of_executed_units" in done.stderr  # it did fuzz


def test_the_fuzz_harness_judges_memory_by_current_not_inherited_peak_rss(monkeypatch):
    """libFuzzer's -rss_limit_mb reads the peak RSS, which Linux carries across fork and exec:
    started late in the suite (pytest at ~2 GB), every target "ran out of memory" at its first
    input. The harness checks the current RSS after each input instead."""
    pytest.importorskip("atheris", reason="atheris (the dev extra) runs the coverage fuzzer")
    sys.path.insert(0, str(FUZZ_SCRIPT.parent))
    try:
        import fuzz_readers
    finally:
        sys.path.remove(str(FUZZ_SCRIPT.parent))
    assert fuzz_readers.DEFAULT_OPTIONS["-rss_limit_mb"] == "0"
    seen = []
    checked = fuzz_readers.within_memory(seen.append)
    monkeypatch.setattr(fuzz_readers, "RSS_LIMIT_MB", 10**6)
    checked(b"x")
    assert seen == [b"x"] and fuzz_readers.resident_mb() > 0
    monkeypatch.setattr(fuzz_readers, "RSS_LIMIT_MB", 1)
    with pytest.raises(MemoryError, match="resident memory"):
        checked(b"y")


# ----- the .vti reader: as VTK reads, minus VTK's crashes ----------------------------------


@pytest.mark.parametrize("mode", VTK_MODES, ids=lambda m: "-".join(map(str, m)))
def test_vti_reader_reads_what_vtk_writes_as_vtk_does(tmp_path, mode):
    """SENSE's own .vti reader against VTK's, on files VTK writes: every data mode, compressor,
    header type, byte order, several pieces and compression blocks; three arrays of different
    types, chosen by name or as the active scalars."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkIOXML import vtkXMLImageDataReader

    from sense_core.io.vti import image_to_member, read_vti

    rng = np.random.default_rng(len(tmp_path.name))
    image = vtkImageData()
    image.SetExtent(3, 42, -2, 0, 5, 5)  # 40 x 3 points, not starting at 0
    for name, dtype, components in (
        ("f64", np.float64, 3),
        ("i16", np.int16, 1),
        ("u8", np.uint8, 2),
    ):
        values = (rng.normal(size=(120, components)) * 100).astype(dtype)
        array = numpy_support.numpy_to_vtk(values, deep=True)
        array.SetName(name)
        image.GetPointData().AddArray(array)
    image.GetPointData().SetActiveScalars("i16")
    path = vtk_write(tmp_path / "m.vti", image, *mode, block=256)
    for name in (None, "f64", "u8"):
        reader = vtkXMLImageDataReader()
        reader.SetFileName(str(path))
        reader.Update()
        expected = image_to_member(reader.GetOutput(), name)
        np.testing.assert_array_equal(read_vti(path, name), expected)


def crafted_vti(tmp_path: Path, case: str) -> Path:
    """Files on which VTK's reader aborts (std::bad_alloc) or runs for minutes."""
    from sense_core.io.vti import member_to_image

    image = member_to_image(np.ones((1, 6, 8), np.float32))
    path = vtk_write(tmp_path / f"{case}.vti", image, "Appended", "ZLib", False, 32, "Little", 1)
    text = path.read_bytes()
    start = text.index(b"_", text.index(b"<AppendedData")) + 1
    first_array = start + int(text.split(b'Name="field"')[1].split(b'offset="')[1].split(b'"')[0])
    if case == "four billion blocks":
        text = text[:first_array] + struct.pack("<I", 0xFFFFFFF0) + text[first_array + 4 :]
    elif case == "a billion components":
        text = text.replace(b'Name="field"', b'Name="field" NumberOfComponents="1073741824"')
    elif case == "two billion squared points":
        text = text.replace(b"0 7 0 5 0 0", b"0 2147483000 0 2147483000 0 0")
    path.write_bytes(text)
    return path


VTK_CRASHES = ["four billion blocks", "a billion components", "two billion squared points"]


def test_vti_files_that_crash_vtk_give_one_clear_line(tmp_path):
    """In a subprocess (a regression would abort it, not pytest): each file is refused with
    SENSE's error, within seconds. VTK's reader aborts (std::bad_alloc) on the first and third
    and ran for over a minute on the second."""
    paths = [crafted_vti(tmp_path, case) for case in VTK_CRASHES]
    script = (
        "import sys\nfrom sense_core.io import read_member_file\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n        read_member_file(path)\n        print('read', path)\n"
        "    except Exception as error:\n        print(type(error).__name__, error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(VTK_CRASHES)
    for line, case, message in zip(
        lines,
        VTK_CRASHES,
        [
            "4294967280 blocks",
            "shape (1073741824, 6, 8) needs",
            "shape (1, 2147483001, 2147483001)",
        ],
    ):
        assert line.startswith(f"EnsembleError {tmp_path / case}.vti") and message in line, line


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace(b"<VTKFile", b'<!DOCTYPE v [<!ENTITY a "aaaa">]><VTKFile'), "entity"),
        (lambda t: t.replace(b"<ImageData", b"<x>" * 40 + b"<ImageData"), "nested too deeply"),
        (lambda t: t.replace(b'type="ImageData"', b'type="PolyData"'), "PolyData"),
        (lambda t: t.replace(b'WholeExtent="0 7 0 5 0 0"', b'WholeExtent="0 7 0 5 0 1"'), "3D"),
        (lambda t: t.replace(b'Extent="0 7 0 5 0 0"   ', b'Extent="0 3 0 5 0 0"   '), "cover"),
        (lambda t: t.replace(b"vtkZLibDataCompressor", b"vtkZstdCompressor"), "compressor"),
        (lambda t: t.replace(b'type="Float32"', b'type="String"'), "not a number"),
        (lambda t: t[:-45], "truncated"),
    ],
    ids=["entities", "depth", "not an image", "3D", "piece", "compressor", "type", "truncated"],
)
def test_vti_structure_problems_are_named(tmp_path, edit, message):
    from sense_core.io.vti import member_to_image, write_vti

    path = tmp_path / "m.vti"
    write_vti(path, member_to_image(np.ones((1, 6, 8), np.float32)))
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(EnsembleError, match=message) as error:
        read_member_file(path)
    assert str(path) in str(error.value)


def test_vti_reading_needs_no_vtk(tmp_path):
    """Reading a .vti member imports no VTK module (writing one still uses VTK)."""
    from sense_core.io.vti import member_to_image, write_vti

    path = tmp_path / "m.vti"
    write_vti(path, member_to_image(np.arange(6, dtype=np.float32).reshape(1, 2, 3)))
    script = (
        "import sys\nfrom sense_core.io import read_member_file\n"
        f"member = read_member_file({str(path)!r})\n"
        "assert member.tolist() == [[[0, 1, 2], [3, 4, 5]]], member\n"
        "assert not [m for m in sys.modules if m.startswith('vtkmodules')]\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


# ----- TIFF: damage tifffile would hide, structures it would loop on -----------------------


def test_tiff_with_missing_strips_is_refused_not_read_as_zeros(tmp_path):
    """A TIFF whose header claims more rows than its strips hold: tifffile logs a warning and
    fills the missing strips with zeros; SENSE refuses the file, quoting tifffile."""
    import tifffile

    path = tmp_path / "m.tif"
    tifffile.imwrite(path, np.arange(1, 97, dtype=np.uint8).reshape(12, 8), rowsperstrip=4)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageLength"].overwrite(24)  # 6 strips expected, 3 present
    with pytest.raises(EnsembleError, match="m.tif: damaged TIFF image data .*expected 6 segments"):
        read_member_file(path)


def tiff_with_directory_loop(path: Path, pages: int) -> Path:
    """A TIFF of ``pages`` pages whose last directory points back to the second."""
    import tifffile

    tifffile.imwrite(path, np.zeros((pages, 4, 4), np.uint8), photometric="minisblack")
    data = bytearray(path.read_bytes())
    offsets, offset = [], struct.unpack("<I", data[4:8])[0]
    while offset:
        offsets.append(offset)
        next_field = offset + 2 + 12 * struct.unpack("<H", data[offset : offset + 2])[0]
        offset = struct.unpack("<I", data[next_field : next_field + 4])[0]
    assert len(offsets) == pages
    data[next_field : next_field + 4] = struct.pack("<I", offsets[1])
    path.write_bytes(bytes(data))
    return path


def test_tiff_with_a_directory_chain_that_loops_is_refused_at_once(tmp_path):
    """tifffile notices a loop only among its first 100 pages, then walks on for minutes (the
    fuzzer's 347-byte file took over 10 s); SENSE walks the chain first and refuses."""
    path = tiff_with_directory_loop(tmp_path / "loop.tif", 150)
    outcome = read_or_refuse("loop.tif", lambda: read_member_file(path))
    assert outcome is None
    with pytest.raises(EnsembleError, match="loop.tif: damaged TIFF .*loops back"):
        read_member_file(path)


def test_tiff_directory_walk_accepts_pages_subifds_and_bigtiff(tmp_path):
    import tifffile

    path = tmp_path / "p.tif"
    stack = np.arange(3 * 5 * 4, dtype=np.uint16).reshape(3, 5, 4)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for plane in stack:
            writer.write(plane, subifds=1, contiguous=False)
            writer.write(plane[::2, ::2], subfiletype=1)
    member = read_member_file(path)
    assert member.shape[1:] == (5, 4)
    np.testing.assert_array_equal(member[0], stack[0])


def test_a_tiff_of_too_many_pages_is_refused(tmp_path, monkeypatch):
    import tifffile

    import sense_core.io.members as members

    monkeypatch.setattr(members, "TIFF_MAX_DIRECTORIES", 20)
    path = tmp_path / "many.tif"
    tifffile.imwrite(path, np.zeros((21, 2, 2), np.uint8))
    with pytest.raises(EnsembleError, match="many.tif: a TIFF of more than 20 images"):
        read_member_file(path)
    tifffile.imwrite(path, np.zeros((20, 2, 2), np.uint8))
    assert read_member_file(path).shape == (20, 2, 2)


def test_image_decoders_print_nothing(tmp_path, capfd):
    """Damaged images are refused in SENSE's one line; the decoders' own warnings and log
    lines (tifffile logs every odd tag) stay off the terminal."""
    blobs = member_files(tmp_path / "valid")
    for suffix in (".tif", ".png"):
        blob = blobs[suffix][0]
        for cut in (20, len(blob) // 3, len(blob) // 2):
            path = tmp_path / f"cut{cut}{suffix}"
            path.write_bytes(blob[:cut])
            with pytest.raises(EnsembleError):
                read_member_file(path)
    captured = capfd.readouterr()
    assert captured.out == captured.err == ""


def test_the_memory_guard_sees_sizes_that_overflow_64_bits(tmp_path):
    """A header's shape of (2^32, 2^32, 2^32) once wrapped to 0 bytes in 64-bit integers and
    passed the guard; sizes are Python integers now."""
    from sense_core.ensemble import member_nbytes
    from sense_core.io.members import check_member_memory

    assert member_nbytes((2**32, 2**32, 2**32)) == 2**98
    with pytest.raises(EnsembleError, match=r"m.tif: a member of shape \(4294967296, "):
        check_member_memory(tmp_path / "m.tif", (2**32, 2**32, 2**32))
