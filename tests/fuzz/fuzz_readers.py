"""Coverage-guided fuzzing of SENSE's readers with atheris (libFuzzer for Python).

    python tests/fuzz/fuzz_readers.py TARGET [libFuzzer options] [CORPUS_DIR ...]
    python tests/fuzz/fuzz_readers.py --list

Each target writes the fuzzer's bytes into one file of its kind and reads it as SENSE does. The
reader must return, or raise SENSE's own error (``SenseError``: ``EnsembleError``,
``BundleError``) naming the file. Anything else is a finding: another exception (atheris prints
it and saves the input as ``crash-<sha1>``), a segfault or abort, an input that takes longer
than ``-timeout`` seconds (default 10 here) or a process whose resident memory exceeds
:data:`RSS_LIMIT_MB` after an input (the memory guard is set to ``SENSE_MEMORY_LIMIT=256M``
unless the environment says otherwise). libFuzzer's own ``-rss_limit_mb`` is off by default
here: it reads the peak RSS, which Linux carries across fork and exec, so a run started from a
large process (pytest, late in the suite, holds about 2 GB) reported "out-of-memory" at its
first input; the harness measures the current RSS after each input instead.

Valid files of the target's kind (written by SENSE, numpy, Pillow, tifffile and VTK) seed the
corpus, and a dictionary of the format's tokens guides the mutations. New inputs go to the first
CORPUS_DIR given, else to a temporary folder (removed by the next run). Run for a bounded time with
``-max_total_time=SECONDS``; ``tests/test_fuzz.py`` runs every target for a few seconds
(``SENSE_FUZZ_SECONDS``, default 5). Reproduce a finding with
``python tests/fuzz/fuzz_readers.py TARGET crash-<sha1>``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

# What each target reads, and the Python packages whose code is instrumented for coverage
# besides sense_core (the decoders SENSE calls).
TARGETS: dict[str, tuple[str, list[str]]] = {
    "labels_csv": ("labels.csv", []),
    "metadata_csv": ("metadata.csv", []),
    "ensemble_json": ("ensemble.json", []),
    "npz": ("ensemble .npz", ["numpy.lib.format", "zipfile"]),
    "npy": (".npy member", ["numpy.lib.format"]),
    "png": (".png member", ["PIL"]),
    "tiff": (".tif member", ["tifffile"]),
    "vti": (".vti member", []),
    "sense_json": ("bundle sense.json", []),
}
MEMBER_IDS = ("run0", "run1", "run2", "run3")
MEMORY_LIMIT = "256M"
DEFAULT_OPTIONS = {"-timeout": "10", "-rss_limit_mb": "0"}
RSS_LIMIT_MB = 1024


def resident_mb() -> float:
    """This process's current resident memory in MiB (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def within_memory(read: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """``read``, then a MemoryError (a finding) when the process holds over RSS_LIMIT_MB."""

    def checked(data: bytes) -> None:
        read(data)
        used = resident_mb()
        if used > RSS_LIMIT_MB:
            raise MemoryError(f"resident memory {used:.0f} MiB > {RSS_LIMIT_MB} after this input")

    return checked


def main(argv: list[str]) -> None:
    """Fuzz the target named in ``argv[1]`` with libFuzzer options and corpus folders."""
    if len(argv) < 2 or argv[1] not in TARGETS:
        if len(argv) < 2 or argv[1] not in ("--list", "-h", "--help"):
            print(f"usage: {argv[0]} TARGET [libFuzzer options] [CORPUS_DIR ...]", file=sys.stderr)
        for name, (what, _) in TARGETS.items():
            print(f"  {name:14s} {what}")
        raise SystemExit(0 if len(argv) >= 2 and argv[1] in ("--list", "-h", "--help") else 2)
    target = argv[1]
    os.environ.setdefault("SENSE_MEMORY_LIMIT", MEMORY_LIMIT)
    with atheris.instrument_imports(include=["sense_core", *TARGETS[target][1]]):
        import zipfile  # noqa: F401  (instrumented for the npz target: it parses the archive)

        import numpy  # noqa: F401  (numpy.lib.format, the .npy header parser, likewise)

        import sense_core.bundle  # noqa: F401
        import sense_core.io  # noqa: F401
        import sense_core.io.vti  # noqa: F401

        if target == "png":
            import PIL.Image
            import PIL.PngImagePlugin  # noqa: F401
        if target == "tiff":
            import tifffile  # noqa: F401
    work = _work_folder(target)
    seeds = work / "seeds"
    seeds.mkdir()
    for index, blob in enumerate(SEEDS[target](work)):
        (seeds / f"seed{index:02d}").write_bytes(blob)
    dictionary = work / "tokens.dict"
    dictionary.write_text("".join(_dictionary_line(t) for t in TOKENS.get(target, ())))
    options = [a for a in argv[2:] if a.startswith("-")]
    folders = [a for a in argv[2:] if not a.startswith("-")]
    given = {a.split("=")[0] for a in options}
    options += [f"{k}={v}" for k, v in DEFAULT_OPTIONS.items() if k not in given]
    if "-dict" not in given and TOKENS.get(target):
        options.append(f"-dict={dictionary}")
    if not (len(folders) == 1 and Path(folders[0]).is_file()):  # not reproducing one input
        folders.append(str(seeds))
    one_input = within_memory(READERS[target](work))
    atheris.Setup([argv[0], *options, *folders], one_input)
    atheris.Fuzz()


def _work_folder(target: str) -> Path:
    """A fresh folder for this run's files (in memory where /dev/shm exists). libFuzzer ends
    the process with _exit, so atexit cannot remove it: each run removes the folders of runs
    whose process is gone."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    for old in parent.glob("sense-fuzz-*-pid*-*"):
        pid = re.search(r"-pid(\d+)-", old.name)
        if pid and not Path(f"/proc/{pid.group(1)}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"sense-fuzz-{target}-pid{os.getpid()}-", dir=parent))


def _dictionary_line(token: str) -> str:
    """One libFuzzer dictionary entry: the token's bytes (latin-1) in quotes, escaped."""
    escaped = "".join(
        chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02X}"
        for b in token.encode("latin-1")
    )
    return f'"{escaped}"\n'


def _expect_sense_error(names: str | tuple[str, ...], read: Callable[[], object]) -> None:
    """Run ``read``; a SENSE error must name the file (one of ``names``), any other exception
    is a finding."""
    from sense_core.errors import SenseError

    try:
        read()
    except SenseError as error:
        if not any(name in str(error) for name in ((names,) if isinstance(names, str) else names)):
            raise AssertionError(f"the error does not name {names}: {error}") from error


# ----- the readers ---------------------------------------------------------------------------


def _member_folder(work: Path) -> Path:
    """A folder of four small valid .npy members (the side files are fuzzed)."""
    import numpy as np

    folder = work / "members"
    if not folder.exists():
        folder.mkdir()
        for index, member_id in enumerate(MEMBER_IDS):
            np.save(folder / f"{member_id}.npy", np.full((1, 4, 3), index, np.float32))
    return folder


def _side_file_reader(
    name: str, others: dict[str, bytes] | None = None
) -> Callable[[Path], Callable[[bytes], None]]:
    """Side file ``name`` of a member folder, next to the fixed side files ``others``."""

    def make(work: Path) -> Callable[[bytes], None]:
        from sense_core.io import open_ensemble

        folder = _member_folder(work)
        for other, blob in (others or {}).items():
            (folder / other).write_bytes(blob)
        target = folder / name
        files = (name, *(others or {}))

        def one_input(data: bytes) -> None:
            target.write_bytes(data)
            _expect_sense_error(files, lambda: open_ensemble(folder).load())

        return one_input

    return make


def _file_reader(name: str, read: Callable[[Path], object]) -> Callable[[Path], Callable]:
    def make(work: Path) -> Callable[[bytes], None]:
        path = work / name

        def one_input(data: bytes) -> None:
            path.write_bytes(data)
            _expect_sense_error(name, lambda: read(path))

        return one_input

    return make


def _read_npz(path: Path) -> object:
    from sense_core.io import open_ensemble

    source = open_ensemble(path, nan_policy="fill")
    return source.load()


def _read_member(path: Path) -> object:
    from sense_core.io import read_member_file

    return read_member_file(path, nan_policy="fill")


def _bundle_reader(work: Path) -> Callable[[bytes], None]:
    from sense_core.bundle import Bundle

    bundle = _bundle(work)

    def one_input(data: bytes) -> None:
        (bundle / "sense.json").write_bytes(data)
        _expect_sense_error(str(bundle), lambda: Bundle.load(bundle))

    return one_input


READERS: dict[str, Callable[[Path], Callable[[bytes], None]]] = {
    "labels_csv": _side_file_reader("labels.csv"),
    "metadata_csv": _side_file_reader("metadata.csv"),
    "ensemble_json": _side_file_reader(
        "ensemble.json",
        {  # so that the description's class names and metadata dtypes are used
            "labels.csv": b"member_id,label\nrun0,straight\nrun1,1\n",
            "metadata.csv": b"member_id,amplitude,chain\nrun0,0.5,1\nrun2,,2\n",
        },
    ),
    "npz": _file_reader("ens.npz", _read_npz),
    "npy": _file_reader("m.npy", _read_member),
    "png": _file_reader("m.png", _read_member),
    "tiff": _file_reader("m.tif", _read_member),
    "vti": _file_reader("m.vti", _read_member),
    "sense_json": _bundle_reader,
}


# ----- seeds: valid files of each kind -------------------------------------------------------


def _labels_seeds(work: Path) -> list[bytes]:
    return [
        b"member_id,label\nrun0,straight\nrun1,meander\nrun2,\nrun3,-1\n",
        b"member_id,label\nrun0,0\nrun1,2\nrun3,1\n",
        b'\xef\xbb\xbfmember_id,label,note\r\n"run0","a,b"\r\nrun2,x y,z\r\n',
    ]


def _metadata_seeds(work: Path) -> list[bytes]:
    return [
        b"member_id,amplitude,chain,name\nrun0,0.5,1,a\nrun1,1e3,2,b\nrun2,,3,c\nrun3,nan,4,d\n",
        b"member_id,x\nrun1,-inf\nrun0,12\n",
    ]


def _ensemble_json_seeds(work: Path) -> list[bytes]:
    from sense_core.io import write_ensemble

    from_sense = work / "written"
    write_ensemble(_small_ensemble(), from_sense, member_format="npy")
    return [
        (from_sense / "ensemble.json").read_bytes(),
        json.dumps({"format": "sense-ensemble-folder", "version": 1, "class_names": []}).encode(),
    ]


def _small_ensemble():
    import numpy as np

    from sense_core.ensemble import Ensemble

    return Ensemble(
        fields=np.arange(4 * 2 * 3 * 2, dtype=np.float32).reshape(4, 2, 3, 2),
        labels=[0, 1, -1, 0],
        class_names=("straight", "meander"),
        member_ids=list(MEMBER_IDS),
        metadata={"amplitude": np.array([0.5, 1.0, 2.0, 4.0]), "chain": np.arange(4)},
    )


def _npz_seeds(work: Path) -> list[bytes]:
    import numpy as np

    from sense_core.io import write_ensemble

    blobs = [write_ensemble(_small_ensemble(), work / "a.npz").read_bytes()]
    for arrays, compressed in (
        ({"fields": np.ones((3, 4, 5)), "labels": np.array([0, 1, -1])}, False),
        ({"fields": np.asfortranarray(np.ones((2, 1, 3, 3), np.uint8))}, True),
        (
            {
                "fields": np.zeros((2, 2, 2), ">f8"),
                "class_names": np.array(["a"]),
                "member_ids": np.array(["x", "y"]),
                "meta_t": np.array([1.5, 2.5]),
            },
            True,
        ),
    ):
        stream = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(stream, **arrays)
        blobs.append(stream.getvalue())
    return blobs


def _npy_seeds(work: Path) -> list[bytes]:
    import numpy as np

    blobs = []
    for array in (
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.ones((2, 3, 4), ">f8"),
        np.asfortranarray(np.arange(6, dtype=np.uint16).reshape(2, 3)),
        np.array([[True, False]]),
    ):
        stream = io.BytesIO()
        np.save(stream, array)
        blobs.append(stream.getvalue())
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.zeros((2, 2), np.int8), version=(2, 0))
    return [*blobs, stream.getvalue()]


def _png_seeds(work: Path) -> list[bytes]:
    import numpy as np
    from PIL import Image

    values = np.arange(48).reshape(6, 8)
    images = [
        Image.fromarray(values.astype(np.uint8)),
        Image.fromarray(values.astype(np.uint16) * 1000),
        Image.fromarray(np.stack([values] * 3, axis=-1).astype(np.uint8)),
        Image.fromarray(np.stack([values] * 4, axis=-1).astype(np.uint8)),
        Image.fromarray(values.astype(np.uint8)).convert("P"),
        Image.fromarray(values > 20),
    ]
    blobs = []
    for image in images:
        stream = io.BytesIO()
        image.save(stream, format="PNG")
        blobs.append(stream.getvalue())
    return blobs


def _tiff_seeds(work: Path) -> list[bytes]:
    import numpy as np
    import tifffile

    values = np.arange(48, dtype=np.float32).reshape(6, 8)
    blobs = []
    for array, options in (
        (values.astype(np.uint8), {}),
        (values, {"compression": "zlib"}),
        (np.stack([values] * 3).astype(np.uint16), {"planarconfig": "separate"}),
        (np.stack([values] * 3, axis=-1).astype(np.uint8), {"photometric": "rgb"}),
        (values, {"byteorder": ">", "bigtiff": True}),
        (np.zeros((32, 32), np.int16), {"tile": (16, 16)}),
        (values.astype(np.float64), {"compression": "lzma"}),
    ):
        stream = io.BytesIO()
        try:
            tifffile.imwrite(stream, array, **options)
        except Exception:  # noqa: BLE001 - an option this tifffile cannot write: skip the seed
            continue
        blobs.append(stream.getvalue())
    return blobs


ASCII_VTI = b"""<?xml version="1.0"?>
<VTKFile type="ImageData" version="1.0" byte_order="LittleEndian" header_type="UInt64">
  <ImageData WholeExtent="0 2 0 1 0 0" Origin="0 0 0" Spacing="1 1 1">
    <Piece Extent="0 2 0 1 0 0">
      <PointData Scalars="field">
        <DataArray type="Float32" Name="field" NumberOfComponents="1" format="ascii">
          0 1 2 3 4 5
        </DataArray>
      </PointData>
    </Piece>
  </ImageData>
</VTKFile>
"""


def _vti_seeds(work: Path) -> list[bytes]:
    import numpy as np

    blobs = [ASCII_VTI]
    try:
        from vtkmodules.vtkIOXML import vtkXMLImageDataWriter

        from sense_core.io.vti import member_to_image
    except ImportError:
        return blobs  # no VTK to write more: the hand-written file alone
    image = member_to_image(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    for index, (mode, compressor, encode, header) in enumerate(
        [
            ("Appended", "ZLib", False, 32),
            ("Appended", "ZLib", True, 32),
            ("Appended", "None", False, 64),
            ("Appended", "LZ4", False, 32),
            ("Appended", "LZMA", True, 64),
            ("Binary", "None", True, 32),
            ("Binary", "ZLib", True, 64),
            ("Ascii", "None", True, 32),
        ]
    ):
        writer = vtkXMLImageDataWriter()
        writer.SetInputData(image)
        path = work / f"seed{index}.vti"
        writer.SetFileName(str(path))
        getattr(writer, f"SetDataModeTo{mode}")()
        getattr(writer, f"SetCompressorTypeTo{compressor}")()
        writer.SetEncodeAppendedData(encode)
        getattr(writer, f"SetHeaderTypeToUInt{header}")()
        writer.Write()
        blobs.append(path.read_bytes())
    return blobs


def _bundle(work: Path) -> Path:
    """A bundle folder whose model file is a few bytes (loading checks its checksum, not ONNX)."""
    bundle = work / "bundle"
    if not bundle.exists():
        bundle.mkdir()
        (bundle / "encoder.onnx").write_bytes(b"not parsed by Bundle.load")
    return bundle


def _sense_json_seeds(work: Path) -> list[bytes]:
    from sense_core.bundle import new_manifest
    from sense_core.ensemble import NormalizationStats

    bundle = _bundle(work)
    manifest = new_manifest((1, 4, 3), NormalizationStats((0.5,), (2.0,), 4), ["a", "b"])
    manifest["models"]["encoder"] = {
        "file": "encoder.onnx",
        "sha256": hashlib.sha256((bundle / "encoder.onnx").read_bytes()).hexdigest(),
        "input_name": "fields",
        "output_name": "latent",
        "opset": 17,
        "latent_dim": 8,
    }
    return [json.dumps(manifest, indent=1).encode(), json.dumps(manifest).encode()]


SEEDS: dict[str, Callable[[Path], list[bytes]]] = {
    "labels_csv": _labels_seeds,
    "metadata_csv": _metadata_seeds,
    "ensemble_json": _ensemble_json_seeds,
    "npz": _npz_seeds,
    "npy": _npy_seeds,
    "png": _png_seeds,
    "tiff": _tiff_seeds,
    "vti": _vti_seeds,
    "sense_json": _sense_json_seeds,
}

_JSON_TOKENS = ["{", "}", "[", "]", ":", ",", '""', "null", "true", "-1", "1e999", "0.0"]
TOKENS: dict[str, list[str]] = {
    "labels_csv": ["member_id", "label", "run0", "run3", ",", '"', "\r\n", "-1", "class_9999999"],
    "metadata_csv": ["member_id", "run1", ",", '"', "\n", "nan", "inf", "1e309", "-0"],
    "ensemble_json": [
        *_JSON_TOKENS,
        '"format"',
        '"sense-ensemble-folder"',
        '"version"',
        '"class_names"',
        '"metadata_dtypes"',
        '"int64"',
        '"float32"',
        '"members"',
    ],
    "npz": ["PK\x03\x04", "PK\x01\x02", "PK\x05\x06", "fields.npy", "labels.npy", "\x93NUMPY"],
    "npy": [
        "\x93NUMPY",
        "'descr': '<f8'",
        "'fortran_order': True",
        "'shape': (",
        "<i8",
        "|O",
        "<c16",
        "|S4",
    ],
    "vti": [
        "<DataArray",
        "</DataArray>",
        '<AppendedData encoding="raw">',
        '<AppendedData encoding="base64">',
        '<Piece Extent="0 2 0 1 0 0">',
        'WholeExtent="0 99999 0 99999 0 0"',
        'format="appended"',
        'format="binary"',
        'format="ascii"',
        'offset="0"',
        'NumberOfComponents="65535"',
        'header_type="UInt64"',
        'byte_order="BigEndian"',
        'compressor="vtkZLibDataCompressor"',
        'compressor="vtkLZ4DataCompressor"',
        'compressor="vtkLZMADataCompressor"',
        'type="Float64"',
        'type="String"',
        'Scalars="field"',
        "<!DOCTYPE",
        "&amp;",
    ],
    "sense_json": [
        *_JSON_TOKENS,
        '"models"',
        '"encoder"',
        '"labeler"',
        '"projector"',
        '"file"',
        '"sha256"',
        '"input"',
        '"shape"',
        '"normalization"',
        '"mean"',
        '"std"',
        '"class_names"',
        '"format_version"',
        '"../x"',
    ],
}


if __name__ == "__main__":
    main(sys.argv)
