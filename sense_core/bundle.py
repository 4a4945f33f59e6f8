"""Model bundles: a folder with ONNX models and ``sense.json``, everything needed to use them.

::

    bundle/
      sense.json      what the models expect and how they were made (see below)
      labeler.onnx    classifier: fields (B, C, H, W) normalised -> logits (B, K)
      encoder.onnx    encoder: fields (B, C, H, W) normalised -> latent (B, D) (a VAE exports mu)
      projector.onnx  optional parametric projector: latent (B, D) -> (B, 2)
      decoder.onnx    optional decoder: latent (B, D) -> fields (B, C, H, W) normalised (its
                      entry records the SHA-256 of the encoder it belongs to)

``sense.json`` holds the input shape, the normalisation statistics, the class names, one entry
per model (file, SHA-256, opset, input/output names, role-specific details such as the latent
size, and the SHA-256 of every external-data file the ONNX model refers to), the training
command and configuration and metrics of each stage, and the software versions. Loading
validates all of it: unknown or newer formats, paths escaping the folder, missing files,
checksum mismatches and external-data files that sense.json does not list are errors that say
what is wrong; the manifest parser bounds size, nesting and integers and reads NaN/Infinity as
null. Bundles are plain JSON + ONNX: nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from sense_core.ensemble import MemberStore, NormalizationStats
from sense_core.errors import SenseError, SignalGate
from sense_core.io.atomic import atomic_path

MANIFEST = "sense.json"
BUNDLE_FORMAT = "sense-bundle"
BUNDLE_FORMAT_VERSION = 1
MODEL_ROLES = ("labeler", "encoder", "projector", "decoder")
# Bounds of what the sense.json parser accepts (a manifest is a few KB): anything beyond is
# refused with a BundleError before it can cost memory or recursion.
MAX_MANIFEST_BYTES = 32 << 20
MAX_MANIFEST_DEPTH = 64
MAX_INT_DIGITS = 40


class BundleError(SenseError):
    """A bundle that cannot be used: the message names the bundle and the problem."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bounded_int(token: str) -> int:
    digits = len(token.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(token)


def _finite_or_none(token: str) -> float | None:
    value = float(token)
    return value if math.isfinite(value) else None


def _nesting(value: Any) -> int:
    """The deepest nesting of lists/dicts in a parsed JSON value (iterative: no recursion)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_manifest(text: str, where: str) -> dict:
    """``sense.json``'s text as a dict, or a :class:`BundleError` naming ``where``.

    JSON has no NaN or Infinity: Python's extensions ``NaN``/``Infinity``/``-Infinity`` and
    numbers that overflow a float (``1e999``) are read as ``null`` (older SENSE versions wrote
    NaN metrics; a field that needs a number then fails validation with a BundleError). Nesting
    deeper than :data:`MAX_MANIFEST_DEPTH` and integers longer than :data:`MAX_INT_DIGITS` digits
    are refused (so that code walking the manifest never meets a deep structure)."""
    try:
        manifest = json.loads(
            text,
            parse_int=_bounded_int,
            parse_float=_finite_or_none,
            parse_constant=lambda _token: None,
        )
    except RecursionError as exc:  # the C parser counts its depth against the recursion limit
        raise BundleError(
            f"{where}: nested deeper than {sys.getrecursionlimit()} levels; not a SENSE bundle "
            "manifest"
        ) from exc
    except ValueError as exc:  # json.JSONDecodeError and the bounds above
        raise BundleError(f"{where}: not valid JSON ({exc})") from exc
    deepest = _nesting(manifest)
    if deepest > MAX_MANIFEST_DEPTH:
        raise BundleError(
            f"{where}: nested {deepest} levels deep (at most {MAX_MANIFEST_DEPTH}); not a SENSE "
            "bundle manifest"
        )
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: not a SENSE bundle manifest (not a JSON object)")
    return manifest


def read_manifest_file(path: str | os.PathLike) -> dict:
    """Parse the manifest file ``path`` (:func:`parse_manifest`), refusing huge files."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer (regular files ignore it)
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise BundleError(f"{path}: not a regular file")
            data = stream.read(MAX_MANIFEST_BYTES + 1)  # also bounds a file that grows
        if len(data) > MAX_MANIFEST_BYTES:
            raise BundleError(
                f"{path}: more bytes than a bundle manifest holds ({MAX_MANIFEST_BYTES >> 20} MiB "
                "at most)"
            )
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    return parse_manifest(text, str(path))


def _json_ready(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (JSON has no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return value


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """``sense.json``'s text for ``manifest``: strict JSON (NaN/Infinity written as null)."""
    return json.dumps(_json_ready(manifest), indent=2, allow_nan=False) + "\n"


def software_versions(*packages: str) -> dict[str, str]:
    """Versions of Python, SENSE and the named packages that are installed."""
    from importlib import metadata

    from sense_core import __version__

    versions = {"python": platform.python_version(), "sense": __version__}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _inside(folder: Path, relative: str, where: str) -> Path:
    """Resolve a file name from the manifest; refuse anything that leaves the bundle folder."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or "\\" in relative:
        raise BundleError(f"{where}: file name {relative!r} must stay inside the bundle folder")
    path = (folder / relative).resolve()
    if folder.resolve() not in path.parents:
        raise BundleError(f"{where}: file name {relative!r} must stay inside the bundle folder")
    return path


_ENTRY_KEYS = ("file", "sha256", "input_name", "output_name", "opset", "external_data")

# --------------------------------------------------------------------------- ONNX external data
# Which fields of the ONNX protobuf messages hold other messages that can contain tensors
# (onnx.proto); a TensorProto's field 13 lists its external data as key/value entries.
_ONNX_NESTED = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("malformed varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _protobuf_fields(data: memoryview):
    """(field number, value) of every field of one protobuf message: the bytes of
    length-delimited fields, None for others; groups are skipped. ValueError when malformed."""
    pos, groups = 0, []
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value = None
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 3:
            groups.append(number)
        elif wire == 4 and groups and groups[-1] == number:
            groups.pop()
        else:
            raise ValueError(f"wire type {wire} of field {number}")
        if pos > len(data):
            raise ValueError("truncated message")
        if not groups and value is not None:
            yield number, value
    if groups:
        raise ValueError("unterminated group")


def onnx_external_files(model: bytes) -> list[str]:
    """The external-data file names (``location``, relative to the model's folder) that the
    ONNX model ``model`` (its bytes) refers to, in every tensor it holds: initializers, sparse
    ones, node attributes, subgraphs, functions and training graphs. Read from the protobuf
    wire format directly (no onnx package in the runtime), iteratively (no recursion limit).
    ValueError when the bytes are not a protobuf message."""
    found: set[str] = set()
    pending = [("model", memoryview(model))]
    while pending:
        kind, data = pending.pop()
        nested = _ONNX_NESTED[kind]
        if kind == "entry":
            entry = dict(_protobuf_fields(data))
            if bytes(entry.get(1, b"")) == b"location":
                found.add(bytes(entry.get(2, b"")).decode("utf-8", "replace"))
            continue
        for number, value in _protobuf_fields(data):
            if number in nested:
                pending.append((nested[number], value))
    return sorted(found)


@dataclass(frozen=True)
class ModelEntry:
    """One model of a bundle, as described in ``sense.json``."""

    role: str
    path: Path
    sha256: str
    input_name: str
    output_name: str
    opset: int
    details: Mapping[str, Any]


class Bundle:
    """A validated model bundle (use :meth:`load`)."""

    def __init__(self, folder: Path, manifest: dict, verify_checksums: bool = True) -> None:
        self.folder = folder
        self.manifest = manifest
        where = str(folder / MANIFEST)
        self._check_format(where)
        try:
            shape = manifest["input"]["shape"]
            self.input_shape: tuple[int, int, int] = tuple(int(s) for s in shape)  # type: ignore
            if len(self.input_shape) != 3 or min(self.input_shape) < 1:
                raise ValueError(f"input shape {shape} is not (C, H, W)")
            self.class_names: tuple[str, ...] = tuple(str(c) for c in manifest["class_names"])
            self.normalization = NormalizationStats.from_dict(manifest["normalization"])
            models = manifest["models"]
            if not isinstance(models, dict):
                raise ValueError("'models' must be an object")
        except (KeyError, TypeError, ValueError, SenseError) as exc:
            raise BundleError(f"{where}: malformed ({exc})") from exc
        if len(self.normalization.mean) != self.input_shape[0]:
            raise BundleError(
                f"{where}: normalisation has {len(self.normalization.mean)} channel(s) but the "
                f"input has {self.input_shape[0]}"
            )
        self.models: dict[str, ModelEntry] = {}
        for role, entry in models.items():
            self.models[role] = self._model_entry(role, entry, where, verify_checksums)

    def _check_format(self, where: str) -> None:
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{where}: not a SENSE bundle manifest")
        version = self.manifest.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise BundleError(f"{where}: format_version {version!r} is not valid")
        if version > BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format {version} is newer than this SENSE understands "
                f"({BUNDLE_FORMAT_VERSION}); update SENSE"
            )

    def _model_entry(self, role: str, entry: Any, where: str, verify: bool) -> ModelEntry:
        if role not in MODEL_ROLES:
            raise BundleError(f"{where}: unknown model role {role!r} (known: {MODEL_ROLES})")
        try:
            path = _inside(self.folder, str(entry["file"]), where)
            model = ModelEntry(
                role=role,
                path=path,
                sha256=str(entry["sha256"]),
                input_name=str(entry["input_name"]),
                output_name=str(entry["output_name"]),
                opset=int(entry["opset"]),
                details={k: v for k, v in entry.items() if k not in _ENTRY_KEYS},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: model {role!r} is malformed ({exc!r})") from exc
        if not path.is_file():
            raise BundleError(f"{where}: model {role!r}: file {entry['file']} is missing")
        if verify:
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise BundleError(f"{where}: model {role!r}: {path.name}: {exc.strerror}") from exc
            if hashlib.sha256(content).hexdigest() != model.sha256:
                raise BundleError(
                    f"{where}: model {role!r}: {path.name} does not match its checksum "
                    "(modified or corrupt; re-export the model)"
                )
            self._verify_external_data(role, entry, path, content, where)
        return model

    def _verify_external_data(
        self, role: str, entry: Mapping[str, Any], path: Path, content: bytes, where: str
    ) -> None:
        """Every external-data file the model refers to must be listed in its entry
        (``external_data``: name -> SHA-256) and match; a listed file must exist and match."""
        recorded = entry.get("external_data") or {}
        if not isinstance(recorded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()
        ):
            raise BundleError(f"{where}: model {role!r}: 'external_data' is malformed")
        try:
            referenced = onnx_external_files(content)
        except ValueError:
            referenced = []  # not a protobuf message: onnxruntime refuses it when loading
        for name in referenced:
            if name not in recorded:
                raise BundleError(
                    f"{where}: model {role!r}: {path.name} refers to the external data file "
                    f"{name!r}, which sense.json does not list with a checksum (add the model "
                    "to the bundle again)"
                )
        for name, digest in recorded.items():
            relative = str(PurePosixPath(path.relative_to(self.folder.resolve()).parent) / name)
            data_path = _inside(self.folder, relative, f"{where}: model {role!r}")
            if not data_path.is_file():
                raise BundleError(
                    f"{where}: model {role!r}: external data file {relative} is missing"
                )
            if file_sha256(data_path) != digest:
                raise BundleError(
                    f"{where}: model {role!r}: external data file {relative} does not match its "
                    "checksum (modified or corrupt; re-export the model)"
                )

    @classmethod
    def load(cls, folder: str | os.PathLike, verify_checksums: bool = True) -> Bundle:
        """Read and validate ``folder/sense.json`` and the files it names."""
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{folder}: not a SENSE bundle (no {MANIFEST})")
        return cls(folder, read_manifest_file(manifest_path), verify_checksums)

    def model(self, role: str) -> ModelEntry:
        """The model of ``role``; an error that lists what the bundle has if it is absent."""
        if role not in self.models:
            raise BundleError(
                f"{self.folder}: the bundle has no {role} model (it has: "
                f"{', '.join(self.models) or 'none'})"
            )
        return self.models[role]

    def check_compatible(self, store: MemberStore, where: str = "") -> None:
        """Refuse an ensemble whose member shape is not the one the models were trained on."""
        shape = tuple(store.member_shape)
        if shape != self.input_shape:
            source = where or str(getattr(store, "path", "the ensemble"))
            raise BundleError(
                f"{source}: members are (C, H, W) = {shape}, but the bundle {self.folder} expects "
                f"{self.input_shape} ({self.input_shape[0]} channel(s) of "
                f"{self.input_shape[1]}x{self.input_shape[2]})"
            )


def new_manifest(
    input_shape: tuple[int, int, int],
    normalization: NormalizationStats,
    class_names: tuple[str, ...] | list[str],
) -> dict:
    """The manifest of a bundle that has no model yet."""
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"shape": [int(s) for s in input_shape], "layout": "NCHW", "dtype": "float32"},
        "normalization": normalization.to_dict(),
        "class_names": list(class_names),
        "models": {},
        "training": {},
    }


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The raw manifest of a bundle folder, or None when there is none yet."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    return read_manifest_file(path)


def add_model(
    folder: str | os.PathLike,
    role: str,
    onnx_file: str | os.PathLike,
    manifest: dict,
    *,
    input_name: str,
    output_name: str,
    opset: int,
    details: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Bundle:
    """Put ``onnx_file`` into the bundle as ``<role>.onnx`` and record it in ``sense.json``.

    ``manifest`` is the bundle's manifest to update (from :func:`new_manifest` or
    :func:`read_manifest`); ``training`` (command, config, metrics, ...) is stored under
    ``training.<role>``. The model file and the manifest are written under temporary names and
    renamed into place together (a SIGTERM waits until both are); the returned bundle is
    re-read and validated.

    External-data files the model refers to (ONNX's ``location``, next to the model) are copied
    along with it and recorded with their SHA-256 (``external_data``), so that loading verifies
    them as it verifies the model file.
    """
    if role not in MODEL_ROLES:
        raise ValueError(f"role must be one of {MODEL_ROLES}, got {role!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{role}.onnx"
    manifest = json.loads(json.dumps(manifest))  # a copy
    with SignalGate() as gate, contextlib.ExitStack() as stack:
        written = target
        if Path(onnx_file).resolve() != target.resolve():
            written = stack.enter_context(atomic_path(target))
            shutil.copyfile(onnx_file, written)
        entry = {
            "file": target.name,
            "sha256": file_sha256(written),
            "input_name": input_name,
            "output_name": output_name,
            "opset": int(opset),
            **{k: v for k, v in dict(details or {}).items() if k != "external_data"},
        }
        external = _add_external_data(folder, role, Path(onnx_file), manifest, stack)
        if external:
            entry["external_data"] = external
        manifest.setdefault("models", {})[role] = entry
        if training is not None:
            manifest.setdefault("training", {})[role] = dict(training)
        manifest["software"] = {**manifest.get("software", {}), **software_versions()}
        text = manifest_text(manifest)
        stack.enter_context(atomic_path(folder / MANIFEST)).write_text(text, encoding="utf-8")
        gate.close()  # the model and sense.json are renamed together; a SIGTERM waits for both
    return Bundle.load(folder)


def _add_external_data(
    folder: Path, role: str, source: Path, manifest: Mapping[str, Any], stack: contextlib.ExitStack
) -> dict[str, str]:
    """Copy the external-data files of the ONNX model ``source`` into the bundle (under
    temporary names renamed with the model, see :func:`add_model`); return name -> SHA-256."""
    try:
        names = onnx_external_files(source.read_bytes())
    except ValueError:
        return {}  # not a protobuf message: loading the bundle refuses it with onnxruntime's reason
    others = {
        name: digest
        for other, entry in (manifest.get("models") or {}).items()
        if other != role and isinstance(entry, dict)
        for name, digest in (entry.get("external_data") or {}).items()
    }
    recorded = {}
    for name in names:
        origin = _inside(source.resolve().parent, name, f"{source}: external data")
        if not origin.is_file():
            raise BundleError(f"{source}: external data file {name} is missing")
        destination = _inside(folder, name, f"{folder / MANIFEST}: model {role!r}")
        written = destination
        if origin != destination:
            destination.parent.mkdir(parents=True, exist_ok=True)
            written = stack.enter_context(atomic_path(destination))
            shutil.copyfile(origin, written)
        recorded[name] = file_sha256(written)
        if others.get(name, recorded[name]) != recorded[name]:
            raise BundleError(
                f"{folder}: another model of the bundle keeps different external data in {name}; "
                f"rename the {role} model's external data file"
            )
    return recorded


def shipped_bundles_dir() -> Path:
    """Where SENSE's shipped default bundles live: ``SENSE_MODELS_DIR`` when set, else the copy
    installed with the package (``sense_core/shipped_models`` in a wheel), else the source tree's
    ``models/`` folder (editable installs)."""
    override = os.environ.get("SENSE_MODELS_DIR")
    if override:
        return Path(override)
    installed = Path(__file__).resolve().parent / "shipped_models"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "models"


def find_shipped_bundle(
    member_shape: tuple[int, int, int], class_names: Sequence[str] | None = None
) -> Path:
    """The shipped bundle whose input shape is ``member_shape``; among several, the one whose
    class names equal ``class_names`` (else the one sharing most of them, then by folder name).
    An error listing the shipped bundles and their shapes when none takes that shape."""
    matching, shipped = [], []
    folder = shipped_bundles_dir()
    for manifest_path in sorted(folder.glob(f"*/{MANIFEST}")) if folder.is_dir() else []:
        try:
            manifest = read_manifest_file(manifest_path)
            shape = tuple(manifest["input"]["shape"])
            names = [str(name) for name in manifest.get("class_names", [])]
        except (BundleError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if shape == tuple(member_shape):
            matching.append((manifest_path.parent, names))
        shipped.append(f"{manifest_path.parent.name} {shape}")
    if matching:
        wanted = [str(name) for name in class_names or ()]

        def fit(candidate: tuple[Path, list[str]]) -> tuple[bool, int]:
            return candidate[1] == wanted, len(set(candidate[1]) & set(wanted))

        return max(matching, key=fit)[0]  # max keeps the first (by name) among equals
    raise BundleError(
        f"no bundle given, and no shipped bundle takes members of shape (C, H, W) = "
        f"{tuple(member_shape)} (shipped: {', '.join(shipped) or 'none'}); choose a bundle "
        "trained for this ensemble (sense fit) or resample the members"
    )


def bundle_checksum(bundle_folder: str | os.PathLike) -> str:
    """SHA-256 of the bundle's ``sense.json``, which holds every model's SHA-256: one checksum
    that identifies the models and their settings."""
    return file_sha256(Path(bundle_folder) / MANIFEST)


def describe_bundle(path: str | Path) -> dict[str, Any]:
    """JSON-ready description of a bundle folder: input, normalisation, classes, each model
    (file, size, checksum, opset, input/output names and shapes, details), training commands and
    metrics, software versions, and the bundle checksum. Validates the bundle (checksums too)."""
    bundle = Bundle.load(path)
    manifest = bundle.manifest
    models: dict[str, Any] = {}
    for role, entry in bundle.models.items():
        models[role] = {
            "file": entry.path.name,
            "bytes": entry.path.stat().st_size,
            "sha256": entry.sha256,
            "opset": entry.opset,
            "input": entry.input_name,
            "output": entry.output_name,
            **_onnx_shapes(entry.path),
            "details": dict(entry.details),
        }
    training = manifest.get("training", {}) or {}
    return {
        "path": str(Path(path)),
        "checksum": bundle_checksum(path),
        "created": manifest.get("created"),
        "input_shape": list(bundle.input_shape),
        "normalization": bundle.normalization.to_dict(),
        "class_names": list(bundle.class_names),
        "models": models,
        "training": {
            role: {k: v for k, v in info.items() if k in ("command", "metrics", "seconds")}
            for role, info in training.items()
            if isinstance(info, dict)
        },
        "software": manifest.get("software", {}),
    }


def _onnx_shapes(path: Path) -> dict[str, Any]:
    """Declared input/output shapes read by onnxruntime (empty when it is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return {}
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: onnxruntime cannot load the model: {reason}") from exc
    return {
        "input_shape": [s if isinstance(s, int) else str(s) for s in session.get_inputs()[0].shape],
        "output_shape": [
            s if isinstance(s, int) else str(s) for s in session.get_outputs()[0].shape
        ],
    }


def print_bundle_summary(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print :func:`describe_bundle`'s result for people."""
    out = stream or sys.stdout
    c, h, w = summary["input_shape"]
    print(f"{summary['path']}: SENSE model bundle, members {c} channel(s) of {h}x{w}", file=out)
    print(f"  checksum (sense.json SHA-256) {summary['checksum']}", file=out)
    if summary.get("created"):
        print(f"  created {summary['created']}", file=out)
    norm = summary["normalization"]
    print(f"  normalisation mean {norm['mean']}, std {norm['std']}", file=out)
    names = summary["class_names"]
    print(f"  classes ({len(names)}): {', '.join(names)}", file=out)
    for role, model in summary["models"].items():
        shapes = ""
        if "input_shape" in model:
            shapes = f" {model['input_shape']} -> {model['output_shape']}"
        print(
            f"  {role}: {model['file']} ({model['bytes'] / 1e6:.2f} MB, opset {model['opset']}, "
            f"{model['input']} -> {model['output']}{shapes})",
            file=out,
        )
        if model["details"]:
            details = ", ".join(f"{k}={v}" for k, v in model["details"].items())
            print(f"    {details}", file=out)
        training = summary["training"].get(role, {})
        if training.get("command"):
            print(f"    trained by: {training['command']}", file=out)
        if training.get("metrics"):
            metrics = training["metrics"]
            text = (
                json.dumps(metrics)
                if not isinstance(metrics, dict)
                else ", ".join(
                    f"{k}={v}" for k, v in metrics.items() if not isinstance(v, dict | list)
                )
            )
            print(f"    metrics: {text}", file=out)
    missing = [r for r in ("labeler", "encoder", "projector") if r not in summary["models"]]
    if missing:
        print(f"  no {', '.join(missing)} model", file=out)
    if summary.get("software"):
        versions = ", ".join(f"{k} {v}" for k, v in summary["software"].items())
        print(f"  software: {versions}", file=out)
