"""Run a bundle's ONNX models with onnxruntime: encoder (fields -> latent), labeler (-> classes)
and decoder (latent -> fields).

Members are normalised with the bundle's statistics and run in batches; :func:`run_over_store`
streams any :class:`~sense_core.ensemble.MemberStore` batch by batch, so memory stays bounded by
one batch of fields plus the (small) outputs, whatever the ensemble's size.

Devices: ``cpu``; ``cuda`` (onnxruntime-gpu's CUDA provider, an error that says why when it
cannot be used); ``auto`` (CUDA when it really works, otherwise the CPU, with the reason kept in
``device_note``). onnxruntime-gpu falls back to the CPU *silently* when its CUDA libraries are
missing (DESIGN.md §4), so the provider reported here is always read back from the session
(``session.get_providers()``), never assumed from what was asked for.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.bundle import Bundle, ModelEntry
from sense_core.ensemble import MemberStore
from sense_core.errors import SenseError

DEVICES = ("auto", "cpu", "cuda")
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
DEFAULT_BATCH_SIZE = 64
LATENT_INPUT = "latent"  # sense.json details of a model that reads latent vectors

log = logging.getLogger("sense")


class DeviceError(SenseError):
    """The requested device cannot be used; the message says why and what to install."""


class NonFiniteOutputError(SenseError):
    """A model gave NaN or Inf; ``rows`` marks the inputs of the batch it happened for."""

    def __init__(self, message: str, rows: np.ndarray) -> None:
        super().__init__(message)
        self.rows = rows


def non_finite_rows(output: np.ndarray) -> np.ndarray:
    """Per row of ``output`` (B, ...): does it hold NaN or Inf?"""
    output = np.asarray(output)
    if output.dtype.kind not in "fc" or output.ndim == 0:
        return np.zeros(output.shape[:1], dtype=bool)
    return ~np.isfinite(output.reshape(len(output), -1)).all(axis=1)


def non_finite_error(path: Path, rows: np.ndarray, what: str = "input(s)") -> NonFiniteOutputError:
    """The error for a model ``path`` whose outputs hold NaN/Inf in ``rows``."""
    return NonFiniteOutputError(
        f"{path}: the model gives NaN/Inf for {int(rows.sum())} of {len(rows)} {what} (a broken "
        "or diverged model, or inputs far outside what it was trained on)",
        rows,
    )


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise SenseError(
            "onnxruntime is not installed: pip install 'sense-ensembles[cpu]' (or [gpu] for "
            "onnxruntime-gpu)"
        ) from exc
    return onnxruntime


def _onnxruntime_package() -> str:
    """Which onnxruntime distribution is installed (the CPU and GPU wheels share one module)."""
    from importlib import metadata

    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "onnxruntime (unknown distribution)"


_preload_result: str | None = None


def _preload_cuda_libraries(ort) -> str:
    """Call ``onnxruntime.preload_dlls()`` once (loads CUDA/cuDNN from nvidia-* wheels when
    present); return '' or the problem it reported."""
    global _preload_result
    if _preload_result is None:
        _preload_result = ""
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - any failure is only a diagnosis here
                _preload_result = f"onnxruntime.preload_dlls() failed: {exc}"
    return _preload_result


def cuda_problem() -> str:
    """Why onnxruntime cannot use CUDA here, or '' when nothing is known to be wrong.

    Checks that the CUDA provider is compiled in (onnxruntime-gpu, not onnxruntime) and that its
    shared library loads: a missing ``libcublasLt``/``libcudnn`` shows up by name in the loader's
    message. A session can still fall back afterwards (no GPU visible); :class:`OnnxModel` checks
    the providers the session really got.
    """
    ort = _onnxruntime()
    available = ort.get_available_providers()
    if CUDA_PROVIDER not in available:
        return (
            f"the installed {_onnxruntime_package()} has no CUDA provider (available: "
            f"{', '.join(available)}); install onnxruntime-gpu instead of onnxruntime, one per "
            "environment: pip uninstall onnxruntime && pip install 'sense-ensembles[gpu]'"
        )
    preload = _preload_cuda_libraries(ort)
    capi = Path(ort.__file__).parent / "capi"
    names = ["onnxruntime_providers_cuda.dll"] if sys.platform == "win32" else []
    names.append("libonnxruntime_providers_cuda.so")
    library = next((capi / n for n in names if (capi / n).exists()), None)
    if library is None:
        return f"the CUDA provider library is missing from {capi}" + (
            f"; {preload}" if preload else ""
        )
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return (
            f"onnxruntime's CUDA provider cannot load: {exc}. Install the CUDA and cuDNN "
            f"libraries that {_onnxruntime_package()} needs (its release notes name the versions; "
            "e.g. the nvidia-cublas/cudnn pip wheels, which onnxruntime.preload_dlls() finds)"
            + (f"; {preload}" if preload else "")
        )
    return ""


def _session_options(ort, threads: int | None):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; the provider outcome is reported by SENSE
    if threads is not None:
        if threads < 1:
            raise SenseError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


class OnnxModel:
    """One ONNX model in an onnxruntime session on the chosen device.

    Attributes: ``provider`` (the execution provider the session really uses), ``providers``
    (all of the session's providers, in priority order), ``device_note`` (why ``auto`` ended on
    the CPU, or ''), ``input_shape`` (per sample, as the model declares it).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        input_name: str,
        output_name: str,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        if device not in DEVICES:
            raise SenseError(f"device must be one of {DEVICES}, got {device!r}")
        ort = _onnxruntime()
        self.path = Path(path)
        self.input_name = input_name
        self.output_name = output_name
        self.device_requested = device
        self.device_note = ""
        options = _session_options(ort, threads)

        want_cuda = device == "cuda"
        if device == "auto":
            want_cuda = CUDA_PROVIDER in ort.get_available_providers()
        if device == "cuda" and CUDA_PROVIDER not in ort.get_available_providers():
            raise DeviceError(f"device 'cuda' requested for {self.path.name}, but {cuda_problem()}")
        if want_cuda:
            _preload_cuda_libraries(ort)
        cuda_failure = ""
        if want_cuda:
            try:
                self.session = ort.InferenceSession(
                    str(self.path), options, providers=[CUDA_PROVIDER, CPU_PROVIDER]
                )
            except Exception as exc:  # some versions raise instead of falling back
                cuda_failure = f"creating a CUDA session failed: {exc}"
                want_cuda = device == "cuda"
                if device == "cuda":
                    raise DeviceError(
                        f"device 'cuda' requested for {self.path.name}, but {cuda_failure}"
                        f" ({cuda_problem() or 'no further diagnosis'})"
                    ) from exc
        if not want_cuda:
            try:
                self.session = ort.InferenceSession(
                    str(self.path), options, providers=[CPU_PROVIDER]
                )
            except Exception as exc:  # onnxruntime raises its own exception types
                raise SenseError(f"{self.path}: onnxruntime cannot load the model: {exc}") from exc
        self.providers = list(self.session.get_providers())
        self.provider = self.providers[0]

        if want_cuda and self.provider != CUDA_PROVIDER:
            reason = cuda_problem() or (
                "onnxruntime created the session without its CUDA provider (no usable GPU "
                "visible? check nvidia-smi and CUDA_VISIBLE_DEVICES)"
            )
            if device == "cuda":
                raise DeviceError(f"device 'cuda' requested for {self.path.name}, but {reason}")
            self.device_note = f"CUDA not used: {reason}"
            log.warning("%s: running on the CPU. %s", self.path.name, self.device_note)
        elif cuda_failure:
            self.device_note = f"CUDA not used: {cuda_failure}"
            log.warning("%s: running on the CPU. %s", self.path.name, self.device_note)
        elif device == "auto" and self.provider == CPU_PROVIDER:
            self.device_note = "no CUDA provider in this onnxruntime (CPU build)"
        self._check_names()

    def _check_names(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if self.input_name not in inputs:
            raise SenseError(
                f"{self.path}: the model has no input {self.input_name!r} (it has {list(inputs)})"
            )
        if self.output_name not in outputs:
            raise SenseError(
                f"{self.path}: the model has no output {self.output_name!r} (it has {outputs})"
            )
        declared = inputs[self.input_name].shape
        self.input_shape = tuple(s if isinstance(s, int) else None for s in declared[1:])

    @property
    def threads(self) -> int:
        """The intra-op thread count asked for (0 = onnxruntime's default, one per core)."""
        return int(self.session.get_session_options().intra_op_num_threads)

    def run(self, batch: np.ndarray, check_finite: bool = True) -> np.ndarray:
        """The model's output for one batch (float32, contiguous). An output with NaN or Inf
        raises :class:`NonFiniteOutputError` naming the model file (``check_finite``: the
        caller checks the rows that matter itself)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            (output,) = self.session.run([self.output_name], {self.input_name: batch})
        except Exception as exc:
            raise SenseError(
                f"{self.path}: inference failed on a batch of shape {batch.shape}: {exc}"
            ) from exc
        if check_finite:
            rows = non_finite_rows(output)
            if rows.any():
                raise non_finite_error(self.path, rows)
        return output

    def describe(self) -> dict[str, Any]:
        """JSON-ready: file, provider really used, device asked for, note."""
        return {
            "file": self.path.name,
            "provider": self.provider,
            "providers": self.providers,
            "device_requested": self.device_requested,
            "device_note": self.device_note,
            "threads": self.threads,
        }


class _FieldModel:
    """A bundle model that takes members' fields: checks shapes, normalises, batches."""

    role = ""

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise SenseError(f"batch size must be >= 1, got {batch_size}")
        self.bundle = bundle
        self.entry: ModelEntry = bundle.model(self.role)
        self.batch_size = int(batch_size)
        self.requested_threads = threads
        self.model = OnnxModel(
            self.entry.path, self.entry.input_name, self.entry.output_name, device, threads
        )
        self._check_input(self.model.input_shape)

    def _check_input(self, declared: tuple[int | None, ...]) -> None:
        if len(declared) != 3 or any(
            d is not None and d != e for d, e in zip(declared, self.bundle.input_shape)
        ):
            raise SenseError(
                f"{self.entry.path}: the model's input is (B, {', '.join(map(str, declared))}) "
                f"but sense.json says members are {self.bundle.input_shape}"
            )

    @property
    def provider(self) -> str:
        return self.model.provider

    def _raw(self, fields: np.ndarray) -> np.ndarray:
        fields = np.asarray(fields, dtype=np.float32)
        if fields.ndim == 3:
            fields = fields[None]
        if tuple(fields.shape[1:]) != self.bundle.input_shape:
            raise SenseError(
                f"fields of shape {fields.shape[1:]} given to {self.entry.path.name}, which "
                f"expects {self.bundle.input_shape}"
            )
        return self._batched(fields, self.bundle.normalization.apply)

    def _batched(self, inputs: np.ndarray, prepare=None, check_finite: bool = True) -> np.ndarray:
        """The model over ``inputs`` in batches of ``batch_size`` (each through ``prepare``)."""
        outputs = [
            self.model.run(
                (prepare or np.asarray)(inputs[start : start + self.batch_size]), check_finite
            )
            for start in range(0, len(inputs), self.batch_size)
        ]
        return np.concatenate(outputs) if outputs else np.empty((0, 0), np.float32)

    def _check_latent_input(self, declared: tuple[int | None, ...], kind: str) -> int | None:
        """A model that reads the encoder's latent vectors must take (B, D), D the encoder's
        latent size; returns D (None when neither says)."""
        latent_dim = self.bundle.model("encoder").details.get("latent_dim")
        if len(declared) != 1 or (
            declared[0] is not None and latent_dim is not None and declared[0] != latent_dim
        ):
            raise SenseError(
                f"{self.entry.path}: {kind} must take (B, {latent_dim or 'D'}) latent vectors, "
                f"but its input is (B, {', '.join(map(str, declared))})"
            )
        return declared[0] if declared[0] is not None else latent_dim


class Encoder(_FieldModel):
    """The bundle's encoder: raw member fields (B, C, H, W) -> latent vectors (B, D).

    ``Encoder(bundle, device="auto", threads=None, batch_size=64)``; ``provider`` is the
    execution provider really used.
    """

    role = "encoder"

    def encode(self, fields: np.ndarray) -> np.ndarray:
        """Latent vectors (N, D) of raw (not normalised) fields (N, C, H, W) or (C, H, W)."""
        return self._raw(fields)

    def encode_store(
        self, store: MemberStore, indices: Sequence[int] | None = None, progress: bool = False
    ) -> np.ndarray:
        """Latent vectors of the members of ``store`` (all, or ``indices``), streamed."""
        return run_over_store(store, self, None, indices=indices, progress=progress).latents


class Decoder(_FieldModel):
    """The bundle's decoder: latent vectors (B, D) -> fields (B, C, H, W) in the normalised
    space of the encoder's input (:meth:`decode`), or in the members' units (:meth:`decode_raw`).

    Bundles written before SENSE exported decoders have none: making one is then an error that
    says so. A decoder whose ``encoder_sha256`` is not the bundle's encoder (left from an encoder
    trained before) is refused, not used."""

    role = "decoder"

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if self.role not in bundle.models:
            raise SenseError(
                f"{bundle.folder}: the bundle has no decoder (bundles trained before SENSE "
                "exported decoders); train the encoder again (sense train-encoder or sense fit) "
                "for reconstruction errors and decoded fields"
            )
        super().__init__(bundle, device, threads, batch_size)

    def _check_input(self, declared: tuple[int | None, ...]) -> None:
        encoder = self.bundle.model("encoder")
        recorded = self.entry.details.get("encoder_sha256")
        if recorded is not None and recorded != encoder.sha256:
            raise SenseError(
                f"{self.entry.path}: the decoder belongs to another encoder than "
                f"{encoder.path.name} (sense.json encoder_sha256 differs); train the encoder "
                "again to export both together"
            )
        self.latent_dim = self._check_latent_input(declared, "a decoder")

    def decode(self, latents: np.ndarray, check_finite: bool = True) -> np.ndarray:
        """Normalised fields (N, C, H, W) of latent vectors (N, D) or (D,)."""
        latents = np.asarray(latents, dtype=np.float32)
        if latents.ndim == 1:
            latents = latents[None]
        expected = self.latent_dim
        if latents.ndim != 2 or (expected is not None and latents.shape[1] != expected):
            raise SenseError(
                f"latent vectors of shape {latents.shape[1:]} given to {self.entry.path.name}, "
                f"which expects ({self.latent_dim},)"
            )
        fields = self._batched(latents, check_finite=check_finite)
        if len(fields) == 0:
            fields = np.empty((0, *self.bundle.input_shape), np.float32)
        if tuple(fields.shape[1:]) != self.bundle.input_shape:
            raise SenseError(
                f"{self.entry.path}: the decoder gives fields of shape {fields.shape[1:]}, but "
                f"sense.json says members are {self.bundle.input_shape}"
            )
        return fields

    def decode_raw(self, latents: np.ndarray) -> np.ndarray:
        """Fields (N, C, H, W) in the members' own units (the normalisation undone)."""
        stats = self.bundle.normalization
        mean = np.asarray(stats.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(stats.std, dtype=np.float32)[:, None, None]
        return self.decode(latents) * std + mean

    def reconstruction_errors(
        self,
        store: MemberStore,
        latents: np.ndarray,
        indices: Sequence[int] | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Per member, the mean squared difference between its normalised field and the
        decoder's output of its latent vector (``latents`` in the order of ``indices``, default
        every member): float32 (N,). Members are streamed in batches (one more read of each)."""
        where = str(getattr(store, "path", "") or "the ensemble")
        self.bundle.check_compatible(store, where)
        order = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
        latents = np.asarray(latents, dtype=np.float32)
        if len(latents) != len(order):
            raise SenseError(
                f"{where}: {len(latents)} latent vectors for {len(order)} members to reconstruct"
            )
        errors = np.empty(len(order), dtype=np.float32)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(order), unit="member", desc="reconstructing", leave=False)
        position = 0
        try:
            for chunk, fields in store.iter_batches(self.batch_size, order):
                rows = slice(position, position + len(chunk))
                decoded = self.decode(latents[rows], check_finite=False)
                bad = non_finite_rows(decoded)
                if bad.any():
                    first = store.member_ids[int(np.asarray(chunk)[np.flatnonzero(bad)[0]])]
                    error = non_finite_error(self.entry.path, bad, "member(s) of a batch")
                    raise NonFiniteOutputError(f"{error} (first: member {first})", bad)
                difference = decoded - self.bundle.normalization.apply(fields)
                errors[rows] = np.mean(
                    np.square(difference.reshape(len(chunk), -1), dtype=np.float64), axis=1
                )
                position += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return errors


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class Prediction:
    """Labeler output: class index, its probability (confidence) and all probabilities."""

    labels: np.ndarray  # int64 (N,)
    confidence: np.ndarray  # float32 (N,)
    probabilities: np.ndarray  # float32 (N, K)

    @classmethod
    def from_logits(cls, logits: np.ndarray) -> Prediction:
        probabilities = softmax(np.asarray(logits, dtype=np.float64)).astype(np.float32)
        labels = probabilities.argmax(axis=1).astype(np.int64)
        return cls(labels, probabilities.max(axis=1), probabilities)


def takes_latents(entry: ModelEntry) -> bool:
    """Whether a bundle model reads the encoder's latent vectors instead of the fields
    (``"input": "latent"`` in its sense.json details: a labeler head on the latent space)."""
    return entry.details.get("input") == LATENT_INPUT


class Labeler(_FieldModel):
    """The bundle's labeler: raw member fields -> class logits (B, K), K = the bundle's classes.

    A labeler whose sense.json entry says ``"input": "latent"`` is a head on the encoder's latent
    vectors (B, D): it labels the encoder's output, so embedding a member runs the encoder once
    and the head on its latent (:func:`run_over_store`); given fields, it encodes them first."""

    role = "labeler"

    def _check_input(self, declared: tuple[int | None, ...]) -> None:
        self.takes_latents = takes_latents(self.entry)
        self._encoder: Encoder | None = None
        if not self.takes_latents:
            super()._check_input(declared)
            return
        self._check_latent_input(declared, "a labeler on the latent space")

    @property
    def encoder(self) -> Encoder:
        """The bundle's encoder, whose latents a latent-space labeler reads (made once)."""
        if self._encoder is None:
            self._encoder = Encoder(
                self.bundle, self.model.device_requested, self.requested_threads, self.batch_size
            )
        return self._encoder

    def logits(self, fields: np.ndarray) -> np.ndarray:
        if self.takes_latents:
            return self.logits_of_latents(self.encoder.encode(fields))
        logits = self._raw(fields)
        self.check_logits(logits)
        return logits

    def logits_of_latents(self, latents: np.ndarray) -> np.ndarray:
        """Class logits of latent vectors (N, D) (a latent-space labeler only)."""
        logits = self._batched(np.asarray(latents, dtype=np.float32))
        self.check_logits(logits)
        return logits

    def check_logits(self, logits: np.ndarray) -> None:
        classes = len(self.bundle.class_names)
        if logits.ndim != 2 or logits.shape[1] != classes:
            raise SenseError(
                f"{self.entry.path}: the labeler gives outputs of shape {logits.shape[1:]}, but "
                f"the bundle has {classes} classes {list(self.bundle.class_names)}"
            )

    def predict(self, fields: np.ndarray) -> Prediction:
        """Predicted class, confidence and probabilities of raw fields."""
        return Prediction.from_logits(self.logits(fields))

    def predict_store(
        self, store: MemberStore, indices: Sequence[int] | None = None, progress: bool = False
    ) -> Prediction:
        result = run_over_store(store, None, self, indices=indices, progress=progress)
        assert result.prediction is not None
        return result.prediction


@dataclass
class StoreRun:
    """What :func:`run_over_store` computed, with timings (seconds) and members per second."""

    latents: np.ndarray | None
    prediction: Prediction | None
    members: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def members_per_second(self) -> float:
        total = self.seconds.get("total", 0.0)
        return self.members / total if total > 0 else float("nan")


def _run_naming_members(
    model: OnnxModel, batch: np.ndarray, store: MemberStore, chunk: Sequence[int]
) -> np.ndarray:
    """``model.run(batch)``; NaN/Inf outputs are refused naming the first member concerned."""
    output = model.run(batch, check_finite=False)
    rows = non_finite_rows(output)
    if rows.any():
        first = store.member_ids[int(np.asarray(chunk)[np.flatnonzero(rows)[0]])]
        error = non_finite_error(model.path, rows, "member(s) of a batch")
        raise NonFiniteOutputError(f"{error} (first: member {first})", rows)
    return output


def run_over_store(
    store: MemberStore,
    encoder: Encoder | None,
    labeler: Labeler | None = None,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> StoreRun:
    """Read each member once, in batches, and run the encoder and/or labeler on it.

    Memory: one batch of fields (read + normalised copy) plus the outputs, (N, D) latents and
    (N, K) probabilities, whatever N. Timings separate reading from inference.
    """
    models = [m for m in (encoder, labeler) if m is not None]
    if not models:
        raise ValueError("run_over_store needs an encoder or a labeler")
    wanted_latents = encoder is not None
    if labeler is not None and labeler.takes_latents and encoder is None:
        encoder = labeler.encoder  # the head reads the encoder's latents
    bundle = models[0].bundle
    where = str(getattr(store, "path", "") or "the ensemble")
    bundle.check_compatible(store, where)
    batch_size = batch_size or models[0].batch_size
    order = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    count = len(order)
    if count == 0:
        raise SenseError(f"{where}: no members to run the models on")
    latents = logits = None
    seconds = {"read": 0.0, "normalize": 0.0, "encoder": 0.0, "labeler": 0.0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count, unit="member", desc="embedding", leave=False)
    started = time.perf_counter()
    position = 0
    try:
        batches = store.iter_batches(batch_size, order)
        while True:
            tick = time.perf_counter()
            try:
                chunk, fields = next(batches)
            except StopIteration:
                break
            seconds["read"] += time.perf_counter() - tick
            tick = time.perf_counter()
            normalized = bundle.normalization.apply(fields)
            seconds["normalize"] += time.perf_counter() - tick
            rows = slice(position, position + len(chunk))
            if encoder is not None:
                tick = time.perf_counter()
                out = _run_naming_members(encoder.model, normalized, store, chunk)
                seconds["encoder"] += time.perf_counter() - tick
                if latents is None:
                    latents = np.empty((count, *out.shape[1:]), dtype=np.float32)
                latents[rows] = out
            if labeler is not None:
                tick = time.perf_counter()
                inputs = latents[rows] if labeler.takes_latents else normalized
                out = _run_naming_members(labeler.model, inputs, store, chunk)
                seconds["labeler"] += time.perf_counter() - tick
                labeler.check_logits(out)
                if logits is None:
                    logits = np.empty((count, out.shape[1]), dtype=np.float32)
                logits[rows] = out
            position += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    seconds["total"] = time.perf_counter() - started
    prediction = Prediction.from_logits(logits) if logits is not None else None
    latents = latents if wanted_latents else None
    return StoreRun(latents, prediction, count, {k: round(v, 4) for k, v in seconds.items()})
