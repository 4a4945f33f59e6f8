"""Export a trained torch model to ONNX, checked and verified against torch.

:func:`export_onnx` is the one way SENSE writes ONNX models (labeler, encoder, projector):

- one input ``(B, ...)`` with a dynamic batch axis (the other axes are fixed: export once per
  member shape) and one output;
- ``onnx.checker.check_model(full_check=True)`` (includes shape inference);
- parity with torch through onnxruntime (CPU provider) on given real inputs and on random
  normal inputs at two batch sizes (which also proves the batch axis dynamic): the largest
  absolute difference must be at most ``tolerance`` (default 1e-4) -- or, where the model is so
  ill-conditioned that torch's own float32 result is further than that from its float64 result
  (white noise through a trained network whose batch norms saw variances of 1e-9 gives logits
  of 75 that float32 gets right only to 3e-2), at most ``ROUNDING_FACTOR`` (10) times that
  rounding error: two float32 implementations that sum in different orders differ by a few
  times their distance to the exact result (after one epoch on 45 members: torch 0.21 from
  float64, onnxruntime 0.9 from torch), while a wrong graph differs by the output's own
  size. Both figures are reported. Otherwise :class:`ExportError` is raised and nothing is
  written;
- the file appears only when complete and verified (temporary file + rename), as one
  self-contained ``.onnx`` file (no external-data side files).

Exporter choice: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript) is the
default. The TorchScript-based exporter is deprecated in torch and will go; the dynamo exporter
is the maintained path, gives the same numbers here (both within 4e-6 of torch on
EfficientNetV2, DESIGN.md §4), and folds timm's ``tf_*`` "SAME" padding into static pads where
the legacy one keeps it dynamic (~10% slower at inference). ``exporter="torchscript"`` stays
available as a fallback for a model the dynamo exporter cannot trace; the report records which
one wrote the file.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sense_core.errors import SenseError, SignalGate
from sense_core.io.atomic import atomic_path, remove_stale_temporaries

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
# Where torch float32 is itself further than the tolerance from float64, ONNX may differ from
# torch by this many times that rounding error (see the module docstring).
ROUNDING_FACTOR = 10.0
# Batch sizes of the random parity inputs: 1 and an odd size that differs from the example's,
# so that a batch axis that was accidentally fixed at export fails the check.
PARITY_BATCH_SIZES = (1, 3)


class ExportError(SenseError):
    """An export that failed or does not reproduce the torch model; names the file."""


# Scratch folders of earlier versions had no process id in their name (tempfile's
# ``.<role>-export-XXXXXXXX``): removed when older than this (an export takes seconds to minutes).
LEGACY_SCRATCH_AGE = 3600.0


@contextlib.contextmanager
def scratch_folder(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """A hidden temporary folder ``<parent>/.<name>.<pid>.<random>.part`` for the duration of
    the block (exports write their ONNX file there before it is added to the bundle).

    A SIGKILL leaves such a folder behind; the next scratch folder of the same ``name`` removes
    those whose process is gone (:func:`sense_core.io.atomic.remove_stale_temporaries`), and
    the pid-less ones of earlier versions once they are an hour old."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(parent / name)
    _remove_legacy_scratch(parent, name)
    path: Path | None = None
    try:
        with SignalGate() as gate:  # a SIGTERM waits until ``path`` names the folder to remove
            gate.close()
            path = Path(
                tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".part", dir=parent)
            )
        yield path
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


# The scratch folders SENSE's exports make in a bundle folder (see scratch_folder).
SCRATCH_NAMES = tuple(
    f"{role}-{step}"
    for role in ("labeler", "encoder", "decoder")
    for step in ("export", "compress")
) + ("projector",)


def remove_stale_scratch(parent: str | os.PathLike) -> None:
    """Remove the scratch folders that killed exports left in the bundle folder ``parent``
    (every kind, not only the one about to be written: a resumed fit may export none)."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for name in SCRATCH_NAMES:
        remove_stale_temporaries(parent / name)
        _remove_legacy_scratch(parent, name)


def _remove_legacy_scratch(parent: Path, name: str) -> None:
    now = time.time()
    for old in parent.glob(f".{name}-*"):
        with contextlib.suppress(OSError):
            if (
                old.is_dir()
                and not old.is_symlink()
                and now - old.stat().st_mtime > LEGACY_SCRATCH_AGE
            ):
                shutil.rmtree(old)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well it matches torch (JSON-ready via to_dict)."""

    path: str
    exporter: str
    opset: int
    input_name: str
    output_name: str
    input_shape: list[int]  # per sample, without the batch axis
    output_shape: list[int]  # per sample
    dynamic_batch: bool
    tolerance: float
    max_abs_diff_random: float
    max_abs_diff_real: float | None
    # max |torch float32 - torch float64|: the rounding floor of the model on those inputs
    torch_float32_error_random: float
    torch_float32_error_real: float | None
    real_inputs: int
    providers: list[str]
    seconds: float
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _single_tensor(output: Any, where: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    raise ExportError(
        f"{where}: the model returns {type(output).__name__}, not one tensor; wrap it in a module "
        "whose forward returns the tensor to export (e.g. a VAE's mean)"
    )


def _export_to(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    output_name: str,
    opset: int,
    exporter: str,
) -> None:
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation warning: this is the fallback
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                opset_version=opset,
            )


def _parity(
    model: torch.nn.Module,
    exact: torch.nn.Module | None,
    session: Any,
    inputs: np.ndarray,
    input_name: str,
    batch: int = 64,
) -> tuple[float, float]:
    """Largest |ONNX - torch| over ``inputs``, and largest |torch float32 - torch float64| (the
    model's own rounding error; 0 without a float64 copy)."""
    worst = rounding = 0.0
    for start in range(0, len(inputs), batch):
        chunk = np.ascontiguousarray(inputs[start : start + batch], dtype=np.float32)
        with torch.no_grad():
            expected = _single_tensor(model(torch.from_numpy(chunk)), "parity").numpy()
            if exact is not None:
                reference = exact(torch.from_numpy(chunk).double()).numpy()
                rounding = max(rounding, float(np.max(np.abs(expected - reference))))
        (got,) = session.run(None, {input_name: chunk})
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from torch {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - expected))))
    return worst, rounding


def _float64_copy(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module | None:
    """A float64 copy of ``model`` to measure its float32 rounding, or None if it cannot run."""
    try:
        exact = copy.deepcopy(model).double()
        with torch.no_grad():
            exact(example.double())
        return exact
    except Exception:
        return None


def export_onnx(
    model: torch.nn.Module,
    example_input: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    input_name: str = "fields",
    output_name: str = "output",
    *,
    real_inputs: torch.Tensor | np.ndarray | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` (evaluation mode, on the CPU; the caller's model is not changed) to
    ``path`` and verify it.

    ``example_input`` is a batch ``(B, ...)`` of the input the model expects (any B; only its
    per-sample shape matters). ``real_inputs`` (e.g. normalised validation members) are checked
    in addition to ``seed``-ed random normal inputs. Raises :class:`ExportError` when the export,
    the checker or the parity check fails; ``path`` is then left as it was.
    """
    import onnx

    from sense_training.common import training_versions

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    started = time.perf_counter()
    model = copy.deepcopy(model).cpu().eval()
    example = torch.as_tensor(np.asarray(example_input, dtype=np.float32))
    if example.ndim < 2:
        raise ValueError(
            f"example_input must be a batch (B, ...), got shape {tuple(example.shape)}"
        )
    sample_shape = tuple(int(s) for s in example.shape[1:])
    # torch.export specialises a dimension of size 1: trace with a batch of 2.
    example = example[:1].repeat(2, *([1] * len(sample_shape)))
    with torch.no_grad():
        output_shape = list(_single_tensor(model(example), str(path)).shape[1:])

    rng = np.random.default_rng(seed)
    random_inputs = rng.standard_normal((sum(PARITY_BATCH_SIZES), *sample_shape)).astype(np.float32)
    real = None
    if real_inputs is not None:
        real = np.asarray(
            real_inputs.cpu().numpy() if isinstance(real_inputs, torch.Tensor) else real_inputs,
            dtype=np.float32,
        )
        if real.shape[1:] != sample_shape:
            raise ValueError(f"real_inputs have shape {real.shape}, samples must be {sample_shape}")

    with atomic_path(path) as tmp:
        try:
            _export_to(model, example, tmp, input_name, output_name, opset, exporter)
            proto = onnx.load(str(tmp))
            onnx.checker.check_model(proto, full_check=True)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"{path}: ONNX export ({exporter}) failed: {exc}") from exc
        opset_used = next(
            (int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset
        )
        batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
        dynamic_batch = bool(batch_dim.dim_param) or not batch_dim.HasField("dim_value")

        session = _session(tmp, path)
        figures = _verified_parity(
            model, example, session, random_inputs, real, input_name, tolerance, path
        )
        diff_random, rounding_random, diff_real, rounding_real = figures
        providers = list(session.get_providers())
        del session

    return ExportReport(
        path=str(path),
        exporter=exporter,
        opset=opset_used,
        input_name=input_name,
        output_name=output_name,
        input_shape=list(sample_shape),
        output_shape=[int(s) for s in output_shape],
        dynamic_batch=dynamic_batch,
        tolerance=float(tolerance),
        max_abs_diff_random=diff_random,
        max_abs_diff_real=diff_real,
        torch_float32_error_random=rounding_random,
        torch_float32_error_real=rounding_real,
        real_inputs=0 if real is None else int(len(real)),
        providers=providers,
        seconds=round(time.perf_counter() - started, 3),
        versions={
            k: v
            for k, v in training_versions().items()
            if k in ("torch", "onnx", "onnxscript", "onnxruntime")
        },
    )


def _session(path: Path, name: Path | None = None):
    """An onnxruntime CPU session of ``path``; a model it cannot load is an
    :class:`ExportError` naming ``name`` (default ``path``)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, ...)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ExportError(f"{name or path}: onnxruntime cannot load the model: {reason}") from exc


def _verified_parity(
    model: torch.nn.Module,
    example: torch.Tensor,
    session,
    random_inputs: np.ndarray,
    real: np.ndarray | None,
    input_name: str,
    tolerance: float,
    path: Path,
) -> tuple[float, float, float | None, float | None]:
    """The ONNX model's largest difference from torch and torch's own float32 rounding error
    (random inputs, then real ones); raises :class:`ExportError` when a difference is larger
    than ``tolerance`` and than ``ROUNDING_FACTOR`` times that rounding error."""
    exact = _float64_copy(model, example)
    diff_random = rounding_random = 0.0
    start = 0
    for size in PARITY_BATCH_SIZES:  # one run per batch size: proves the axis is dynamic
        chunk = random_inputs[start : start + size]
        diff, rounding = _parity(model, exact, session, chunk, input_name)
        diff_random, rounding_random = max(diff_random, diff), max(rounding_random, rounding)
        start += size
    diff_real = rounding_real = None
    if real is not None:
        diff_real, rounding_real = _parity(model, exact, session, real, input_name)
    problems = []
    for what, diff, rounding in (
        ("random", diff_random, rounding_random),
        ("real", diff_real, rounding_real),
    ):
        if diff is None:
            continue
        allowed = max(tolerance, ROUNDING_FACTOR * rounding)
        if not np.isfinite(diff) or diff > allowed:
            problems.append(
                f"{what} inputs by {diff:.3g} (allowed {allowed:.3g}; torch float32 is "
                f"{rounding:.3g} from float64)"
            )
    if problems:
        raise ExportError(
            f"{path}: ONNX model differs from torch on {'; '.join(problems)}; nothing was written"
        )
    return diff_random, rounding_random, diff_real, rounding_real


# --------------------------------------------------------------------------- weight compression
WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def compress_weights_int8(
    source: str | os.PathLike, target: str | os.PathLike, *, min_elements: int = 1024
) -> dict[str, Any]:
    """Write ``source`` to ``target`` with its large weights stored as int8 (weight-only,
    symmetric, one scale per output channel) and restored by ``Cast`` + ``Mul`` nodes; the
    computation stays float32. Weights are the float initializers of at least ``min_elements``
    values that only feed the weight input of Conv/ConvTranspose/Gemm/MatMul. Returns sizes and
    counts.

    Quantisation: scale_c = max|w_c| / 127, q = round(w / scale_c) in [-127, 127], so each
    weight is off by at most scale_c / 2. onnxruntime folds the constant ``Cast``/``Mul`` into
    float weights when it creates the session, so the model runs at float speed with default
    session options (``DequantizeLinear`` instead would be kept for quantised kernels and ran
    3x slower on EfficientNetV2 here)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    source, target = Path(source), Path(target)
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SenseError(f"{source}: not an ONNX model ({reason})") from exc
    graph = model.graph
    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, position))
    kept, added, nodes = [], [], []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        uses = consumers.get(init.name, [])
        eligible = (
            array.dtype == np.float32
            and array.ndim >= 2
            and array.size >= min_elements
            and uses
            and all(WEIGHT_OPS.get(op) == position for op, position in uses)
        )
        if not eligible:
            kept.append(init)
            continue
        # output channels: axis 0 for Conv/Gemm weights, 1 for ConvTranspose, last for MatMul
        axis = array.ndim - 1 if all(op == "MatMul" for op, _ in uses) else 0
        if any(op == "ConvTranspose" for op, _ in uses):
            axis = 1
        moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
        scale = (np.abs(moved).max(axis=1) / 127.0).astype(np.float32)
        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        shape = [1] * array.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        quantized = np.clip(np.round(array / scale), -127, 127).astype(np.int8)
        added += [
            numpy_helper.from_array(quantized, f"{init.name}__int8"),
            numpy_helper.from_array(scale, f"{init.name}__scale"),
        ]
        nodes += [
            helper.make_node(
                "Cast", [f"{init.name}__int8"], [f"{init.name}__float"], to=TensorProto.FLOAT
            ),
            helper.make_node("Mul", [f"{init.name}__float", f"{init.name}__scale"], [init.name]),
        ]
    if not added:
        raise SenseError(f"{source}: no weight tensor of >= {min_elements} values to compress")
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + original)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise SenseError(f"{source}: the compressed model does not check: {exc}") from exc
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return {
        "weights": "int8, symmetric, per output channel (Cast + Mul, float32 compute)",
        "tensors": len(added) // 2,
        "bytes_before": source.stat().st_size,
        "bytes_after": target.stat().st_size,
    }


def compress_bundle_model(
    folder: str | os.PathLike,
    role: str,
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    min_elements: int = 1024,
) -> dict[str, Any]:
    """Replace the bundle's ``<role>.onnx`` by its weight-compressed form
    (:func:`compress_weights_int8`) and record the effect in ``sense.json``
    (``models.<role>.compression``): sizes, the largest output difference from the float model
    on ``inputs`` (normalised model inputs), the share of equal argmax (for classifiers) and,
    with ``labels``, the accuracy of both models on them. Returns that record."""
    from sense_core.bundle import Bundle, add_model, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or role not in manifest.get("models", {}):
        raise SenseError(f"{folder}: the bundle has no {role} model to compress")
    entry = dict(manifest["models"][role])
    if "compression" in entry:
        raise SenseError(f"{folder}: {entry['file']} is compressed already")
    source = folder / entry["file"]
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    with scratch_folder(folder, f"{role}-compress") as scratch:
        target = Path(scratch) / entry["file"]
        record = compress_weights_int8(source, target, min_elements=min_elements)
        outputs = []
        for path in (source, target):
            session = _session(path, source)
            outputs.append(
                np.concatenate(
                    [
                        session.run([entry["output_name"]], {entry["input_name"]: chunk})[0]
                        for chunk in np.array_split(inputs, max(1, len(inputs) // 128))
                    ]
                )
            )
        before, after = outputs
        record.update(
            members=int(len(inputs)),
            max_abs_diff=float(np.max(np.abs(before - after))),
            output_scale=float(np.max(np.abs(before))),
        )
        if before.ndim == 2 and before.shape[1] > 1:
            record["argmax_agreement"] = float(np.mean(before.argmax(1) == after.argmax(1)))
            if labels is not None:
                labels = np.asarray(labels)
                record["accuracy_float"] = float(np.mean(before.argmax(1) == labels))
                record["accuracy_compressed"] = float(np.mean(after.argmax(1) == labels))
        details = {
            k: v
            for k, v in entry.items()
            if k not in ("file", "sha256", "input_name", "output_name", "opset")
        }
        details["compression"] = record
        add_model(
            folder,
            role,
            target,
            manifest,
            input_name=entry["input_name"],
            output_name=entry["output_name"],
            opset=int(entry["opset"]),
            details=details,
        )
    Bundle.load(folder)  # verifies the new checksum
    return record
