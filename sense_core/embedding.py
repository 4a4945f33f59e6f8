"""The job behind ``sense embed``: ensemble + bundle -> one 2D point (and latent vector, label,
confidence) per member, with provenance, written as ``.npz``/``.csv``, a scatter PNG and a report.

Labels: a member labeled by hand keeps its label (``label_source`` = ``manual``, confidence 1);
otherwise the bundle's labeler predicts one (``predicted``, confidence = its probability); without
a labeler the member stays unlabeled (``none``, label -1, confidence NaN). The labeler's
prediction is also kept for hand-labeled members (``predicted_label``), so its agreement with the
hand labels can be checked.

Classes are the bundle's (the labeler's index order); a hand-label class that the bundle does not
know is appended after them, so no label is lost or renumbered silently.

Unusual members (:mod:`sense_core.unusual`): with a bundle that has a decoder, every member also
gets its reconstruction error, its distance to its class prototype and their combined
unusualness (columns of embedding.csv/.npz, and of the ParaView map).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.bundle import bundle_checksum
from sense_core.ensemble import UNLABELED, MemberStore
from sense_core.errors import SenseError, SignalGate, WriteError
from sense_core.foreign import foreign_data_warning
from sense_core.io.atomic import atomic_path, output_lock
from sense_core.io.escape import csv_writer, md_cell, md_code
from sense_core.projection import ProjectionOptions, project

EMBEDDING_FORMAT = "sense-embedding"
EMBEDDING_FORMAT_VERSION = 1
REPORT_UNUSUAL = 10  # members listed in report.md's "Most unusual members"
OUTPUT_FILES = {
    "npz": "embedding.npz",
    "csv": "embedding.csv",
    "png": "scatter.png",
    "report": "report.md",
}


@dataclass
class Embedding:
    """Per-member results of an embedding run (arrays in member order) and its provenance."""

    member_ids: tuple[str, ...]
    latents: np.ndarray  # float32 (N, D)
    xy: np.ndarray  # float32 (N, 2)
    labels: np.ndarray  # int64 (N,), -1 = no label
    label_source: np.ndarray  # str (N,): manual | predicted | none
    confidence: np.ndarray  # float32 (N,), NaN where there is no label
    class_names: tuple[str, ...]
    predicted_labels: np.ndarray | None = None  # int64 (N,), the labeler's class for every member
    predicted_confidence: np.ndarray | None = None
    split: np.ndarray | None = None  # str (N,): train | validation | test | '' (hand labels)
    provenance: dict[str, Any] = field(default_factory=dict)
    # unusual members (sense_core.unusual), float32 (N,) each; None when not computed
    reconstruction_error: np.ndarray | None = None  # needs the bundle's decoder
    prototype_distance: np.ndarray | None = None
    unusualness: np.ndarray | None = None  # in [0, 1], 1 = the most unusual
    # the ensemble's per-member metadata (generator parameters, source image, chain...): one
    # array per name, numbers or strings, carried to the CSV, the npz and the ParaView map
    metadata: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.member_ids)

    @property
    def unusual_rank(self) -> np.ndarray | None:
        """Per member, 1 = the most unusual (None without the scores)."""
        if self.unusualness is None:
            return None
        from sense_core.unusual import unusual_ranks

        return unusual_ranks(self.reconstruction_error, self.prototype_distance)

    @property
    def manual_labels(self) -> np.ndarray:
        """Hand labels (-1 where the label is predicted or absent): what metrics are scored on."""
        return np.where(self.label_source == "manual", self.labels, UNLABELED)

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Members per class name and label source."""
        counts: dict[str, dict[str, int]] = {}
        for source in ("manual", "predicted"):
            chosen = self.labels[self.label_source == source]
            per_class = np.bincount(chosen, minlength=len(self.class_names))
            counts[source] = {n: int(c) for n, c in zip(self.class_names, per_class)}
        counts["none"] = {"unlabeled": int(np.count_nonzero(self.label_source == "none"))}
        return counts


def set_unusual_scores(embedding: Embedding, scores) -> None:
    """Store :class:`sense_core.unusual.UnusualScores` in ``embedding`` (its arrays and, in the
    provenance, how they were made)."""
    embedding.reconstruction_error = scores.reconstruction_error
    embedding.prototype_distance = scores.prototype_distance
    embedding.unusualness = scores.unusualness
    embedding.provenance["unusual"] = scores.describe(embedding.class_names)


def _unusual_scores(
    embedding: Embedding, store: MemberStore, bundle, device: str, threads, batch_size: int,
    progress: bool,
) -> float:  # fmt: skip
    """Reconstruction errors (the bundle's decoder), prototype distances and unusualness of
    every member, into ``embedding``; a note instead when the bundle has no decoder. Returns the
    seconds it took."""
    from sense_core.inference import Decoder
    from sense_core.unusual import score_members

    tick = time.perf_counter()
    if "decoder" not in bundle.models:
        embedding.provenance.setdefault("notes", []).append(
            "the bundle has no decoder (trained before SENSE exported decoders): no "
            "unusual-member scores; train the encoder again (sense fit) to get them"
        )
        return 0.0
    decoder = Decoder(bundle, device=device, threads=threads, batch_size=batch_size)
    errors = decoder.reconstruction_errors(store, embedding.latents, progress=progress)
    scores = score_members(
        embedding.latents,
        embedding.labels,
        embedding.label_source,
        len(embedding.class_names),
        reconstruction_error=errors,
    )
    set_unusual_scores(embedding, scores)
    embedding.provenance["inference"]["models"]["decoder"] = decoder.model.describe()
    return round(time.perf_counter() - tick, 3)


def _merge_classes(
    bundle_classes: tuple[str, ...], ensemble_classes: tuple[str, ...]
) -> tuple[tuple[str, ...], np.ndarray]:
    """Class list = the bundle's, then unknown ensemble classes; map of ensemble index -> new."""
    names = list(bundle_classes)
    mapping = []
    for name in ensemble_classes:
        if name not in names:
            names.append(name)
        mapping.append(names.index(name))
    return tuple(names), np.asarray(mapping, dtype=np.int64)


def _split_column(store: MemberStore) -> tuple[np.ndarray, dict[str, Any]]:
    """Per member train/validation/test of the default deterministic split ('' elsewhere)."""
    from sense_core.ensemble import split_labeled

    column = np.full(len(store), "", dtype="<U10")
    try:
        split = split_labeled(store)
    except SenseError as exc:
        return column, {"error": str(exc)}
    for part in ("train", "validation", "test"):
        column[getattr(split, part)] = part
    return column, {"seed": split.seed, "fractions": list(split.fractions)}


def _scored_metrics(embedding: Embedding) -> dict[str, Any]:
    from sense_core.metrics import embedding_metrics

    labels = embedding.manual_labels
    present = np.unique(labels[labels != UNLABELED])
    if len(present) == 0:
        return {"note": "no member is labeled by hand: no class metrics (silhouette, k-NN)"}
    if len(present) < 2:
        return {
            "note": f"the hand labels cover one class ({embedding.class_names[present[0]]!r}): "
            "a silhouette and the other class metrics are undefined with fewer than two "
            "classes, so none are computed"
        }
    test = train = None
    if embedding.split is not None and np.any(embedding.split == "test"):
        test = np.flatnonzero(embedding.split == "test")
        train = np.flatnonzero(embedding.split == "train")
    metrics: dict[str, Any] = embedding_metrics(
        embedding.latents, embedding.xy, labels, test_indices=test, train_indices=train
    )
    if embedding.predicted_labels is not None:
        manual = labels != UNLABELED
        agree = embedding.predicted_labels[manual] == labels[manual]
        metrics["labeler_agreement_manual"] = round(float(np.mean(agree)), 6)
        if test is not None:
            test_agree = embedding.predicted_labels[test] == labels[test]
            metrics["labeler_accuracy_test"] = round(float(np.mean(test_agree)), 6)
    undefined = sorted(k for k, v in metrics.items() if isinstance(v, float) and np.isnan(v))
    if undefined:
        metrics["note"] = (
            f"undefined (nan): {', '.join(undefined)}; a silhouette needs two or more classes "
            "and more labeled members than classes, k-NN and k-means enough members per class "
            "(few hand-labeled members, or a test split with one member per class)"
        )
    return metrics


def embed_ensemble(
    store: MemberStore,
    bundle_folder: str | os.PathLike,
    *,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int = 64,
    projection: ProjectionOptions | None = None,
    use_labeler: bool = True,
    metrics: bool = True,
    progress: bool = False,
    unusual: bool = True,
) -> Embedding:
    """Encode every member of ``store`` with the bundle, label and project them.

    ``projection``: how latents are mapped to 2D (default :class:`ProjectionOptions`: the
    bundle's projector if it has one, else UMAP with seed 0); its parameters are recorded.
    Members are streamed in batches of ``batch_size``; ``device`` is ``auto``/``cpu``/``cuda``
    and the provider really used is recorded in the provenance. ``unusual``: with a bundle that
    has a decoder, score every member (:mod:`sense_core.unusual`; reads each member once more).
    """
    from sense_core import __version__
    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder, Labeler, run_over_store

    projection = projection or ProjectionOptions()
    started = time.perf_counter()
    bundle = Bundle.load(bundle_folder)
    where = str(getattr(store, "path", "") or "the ensemble")
    bundle.check_compatible(store, where)
    foreign = foreign_data_warning(store, bundle.normalization)
    if projection.method == "projector":
        bundle.model("projector")  # fail before the long part when it is missing
    encoder = Encoder(bundle, device=device, threads=threads, batch_size=batch_size)
    labeler = None
    if use_labeler and "labeler" in bundle.models:
        labeler = Labeler(bundle, device=device, threads=threads, batch_size=batch_size)
    run = run_over_store(store, encoder, labeler, progress=progress)
    assert run.latents is not None

    class_names, mapping = _merge_classes(bundle.class_names, tuple(store.class_names))
    unknown = [name for name in store.class_names if name not in bundle.class_names]
    hand = np.asarray(store.labels, dtype=np.int64)
    manual = hand != UNLABELED
    labels = np.full(len(store), UNLABELED, dtype=np.int64)
    labels[manual] = mapping[hand[manual]]
    source = np.where(manual, "manual", "none").astype("<U9")
    confidence = np.where(manual, 1.0, np.nan).astype(np.float32)
    predicted = predicted_confidence = None
    if run.prediction is not None:
        predicted = run.prediction.labels
        predicted_confidence = run.prediction.confidence
        labels[~manual] = predicted[~manual]
        source[~manual] = "predicted"
        confidence[~manual] = predicted_confidence[~manual]

    projected = project(run.latents, projection, bundle=bundle, device=device)
    split, split_info = _split_column(store)
    models = {"encoder": encoder.model.describe()}
    if labeler is not None:
        models["labeler"] = labeler.model.describe()
    provenance: dict[str, Any] = {
        "format": EMBEDDING_FORMAT,
        "format_version": EMBEDDING_FORMAT_VERSION,
        "sense_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ensemble": {
            "path": str(getattr(store, "path", "")),
            "members": len(store),
            "member_shape": list(store.member_shape),
        },
        "bundle": {
            "path": str(Path(bundle_folder).resolve()),
            "checksum": bundle_checksum(bundle_folder),
            "models": {role: entry.sha256 for role, entry in bundle.models.items()},
        },
        "inference": {
            "device": device,
            "provider": encoder.provider,
            "batch_size": batch_size,
            "threads": threads,
            "models": models,
            "seconds": run.seconds,
            "members_per_second": round(run.members_per_second, 2),
        },
        "projection": projected.describe(),
        "split": split_info,
    }
    if foreign:
        provenance["warnings"] = [foreign]
    if unknown:
        provenance["notes"] = [
            f"classes the bundle does not know: {unknown}; their hand labels are kept (appended "
            f"after the bundle's {len(bundle.class_names)} classes), the labeler never predicts "
            "them"
        ]
    embedding = Embedding(
        member_ids=tuple(store.member_ids),
        latents=run.latents,
        xy=projected.xy,
        labels=labels,
        label_source=source,
        confidence=confidence,
        class_names=class_names,
        predicted_labels=predicted,
        predicted_confidence=predicted_confidence,
        split=split,
        provenance=provenance,
        metadata={name: np.asarray(values) for name, values in store.metadata.items()},
    )
    unusual_seconds = (
        _unusual_scores(embedding, store, bundle, device, threads, batch_size, progress)
        if unusual
        else 0.0
    )
    tick = time.perf_counter()
    if metrics:
        provenance["metrics"] = _scored_metrics(embedding)
    provenance["seconds"] = {
        "inference": run.seconds["total"],
        "projection": round(sum(projected.seconds.values()), 3),
        "metrics": round(time.perf_counter() - tick, 3),
        "total": round(time.perf_counter() - started, 3),
    }
    if unusual_seconds:
        provenance["seconds"]["unusual"] = unusual_seconds
    return embedding


def reproject(
    embedding: Embedding,
    projection: ProjectionOptions,
    *,
    bundle_folder: str | os.PathLike | None = None,
    device: str = "cpu",
    metrics: bool = True,
) -> Embedding:
    """The same members and latents mapped again with another projection (no encoder run);
    ``auto`` and ``projector`` use the projector of ``bundle_folder``."""
    bundle = None
    if bundle_folder is not None:
        from sense_core.bundle import Bundle

        bundle = Bundle.load(bundle_folder)
    elif projection.method == "projector":
        raise SenseError("the projector projection needs --bundle (the bundle with a projector)")
    started = time.perf_counter()
    projected = project(embedding.latents, projection, bundle=bundle, device=device)
    provenance = json.loads(json.dumps(embedding.provenance))
    provenance["projection"] = projected.describe()
    if bundle_folder is not None and projected.method == "projector":
        provenance["projection"]["bundle_checksum"] = bundle_checksum(bundle_folder)
    result = replace(embedding, xy=projected.xy, provenance=provenance)
    tick = time.perf_counter()
    if metrics:
        provenance["metrics"] = _scored_metrics(result)
    provenance["seconds"] = {
        "projection": round(sum(projected.seconds.values()), 3),
        "metrics": round(time.perf_counter() - tick, 3),
        "total": round(time.perf_counter() - started, 3),
    }
    provenance["reprojected_from"] = embedding.provenance.get("projection", {})
    return result


# ----------------------------------------------------------------------------- writers / reader


@contextlib.contextmanager
def _target(path: Path, atomic: bool) -> Iterator[Path]:
    """Where to write ``path``: a temporary renamed into place (``atomic``), or ``path`` itself
    (when it is already a temporary, as in :func:`write_outputs`)."""
    if atomic:
        with atomic_path(path) as tmp:
            yield tmp
    else:
        yield path


def write_npz(embedding: Embedding, path: str | os.PathLike, atomic: bool = True) -> Path:
    """``.npz`` with member_ids, latent, x, y, label, label_source, confidence, class_names,
    predicted_label/_confidence (with a labeler), split and provenance (a JSON string). Written
    atomically; read back with :func:`read_embedding` (no pickles)."""
    arrays: dict[str, np.ndarray] = {
        "member_ids": np.asarray(embedding.member_ids, dtype=str),
        "latent": np.asarray(embedding.latents, dtype=np.float32),
        "x": embedding.xy[:, 0].astype(np.float32),
        "y": embedding.xy[:, 1].astype(np.float32),
        "label": embedding.labels.astype(np.int64),
        "label_source": np.asarray(embedding.label_source, dtype=str),
        "confidence": embedding.confidence.astype(np.float32),
        "class_names": np.asarray(embedding.class_names, dtype=str),
        "provenance": np.asarray(json.dumps(embedding.provenance)),
    }
    if embedding.predicted_labels is not None:
        arrays["predicted_label"] = embedding.predicted_labels.astype(np.int64)
        arrays["predicted_confidence"] = np.asarray(embedding.predicted_confidence, np.float32)
    if embedding.split is not None:
        arrays["split"] = np.asarray(embedding.split, dtype=str)
    for name, values in unusual_columns(embedding).items():
        arrays[name] = values
    for name, values in embedding.metadata.items():
        values = np.asarray(values)
        arrays[f"{METADATA_PREFIX}{name}"] = (
            values.astype(str) if values.dtype.kind in "OU" else values
        )
    path = Path(path)
    with _target(path, atomic) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        # what np.savez writes, but closed properly when interrupted midway
        for key, values in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.asanyarray(values), allow_pickle=False)
    return path


def read_embedding(path: str | os.PathLike) -> Embedding:
    """An :class:`Embedding` from a ``.npz`` written by :func:`write_npz`."""
    from sense_core.io.npz import check_npz_entries

    path = Path(path)
    try:
        check_npz_entries(path)  # entries' sizes within the memory guard, before np.load
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            needed = {"member_ids", "latent", "x", "y", "label", "label_source", "confidence"}
            if not needed <= keys:
                raise SenseError(
                    f"{path}: not a SENSE embedding (missing {sorted(needed - keys)}); "
                    "write one with `sense embed`"
                )
            provenance = json.loads(str(data["provenance"])) if "provenance" in keys else {}
            version = provenance.get("format_version", 1)
            if isinstance(version, int) and version > EMBEDDING_FORMAT_VERSION:
                raise SenseError(f"{path}: embedding format {version} is newer; update SENSE")
            return Embedding(
                member_ids=tuple(str(m) for m in data["member_ids"]),
                latents=data["latent"].astype(np.float32),
                xy=np.stack([data["x"], data["y"]], axis=1).astype(np.float32),
                labels=data["label"].astype(np.int64),
                label_source=data["label_source"].astype(str),
                confidence=data["confidence"].astype(np.float32),
                class_names=tuple(str(c) for c in data.get("class_names", [])),
                predicted_labels=data["predicted_label"] if "predicted_label" in keys else None,
                predicted_confidence=(
                    data["predicted_confidence"] if "predicted_confidence" in keys else None
                ),
                split=data["split"].astype(str) if "split" in keys else None,
                provenance=provenance,
                **{
                    name: data[name].astype(np.float32) if name in keys else None
                    for name in ("reconstruction_error", "prototype_distance", "unusualness")
                },
                metadata={
                    key[len(METADATA_PREFIX) :]: data[key]
                    for key in sorted(keys)
                    if key.startswith(METADATA_PREFIX)
                },
            )
    except FileNotFoundError as exc:
        raise SenseError(f"{path}: no such file") from exc
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise SenseError(f"{path}: cannot read the embedding ({exc})") from exc


def unusual_columns(embedding: Embedding) -> dict[str, np.ndarray]:
    """The unusual-member columns (reconstruction_error when there is one, prototype_distance,
    unusualness, unusual_rank), or none when the embedding has no scores."""
    if embedding.unusualness is None:
        return {}
    columns = {
        "reconstruction_error": embedding.reconstruction_error,
        "prototype_distance": embedding.prototype_distance,
        "unusualness": embedding.unusualness,
    }
    columns = {k: np.asarray(v, np.float32) for k, v in columns.items() if v is not None}
    columns["unusual_rank"] = embedding.unusual_rank
    return columns


METADATA_PREFIX = "metadata_"  # for a metadata name that is also one of SENSE's own columns


def metadata_columns(embedding: Embedding, taken: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The embedding's metadata as named columns: each under its own name, or
    ``metadata_<name>`` where that name is one of ``taken`` (SENSE's own columns)."""
    taken = set(taken)
    return {
        (f"{METADATA_PREFIX}{name}" if name in taken else name): np.asarray(values)
        for name, values in embedding.metadata.items()
    }


def write_csv(embedding: Embedding, path: str | os.PathLike, atomic: bool = True) -> Path:
    """CSV, one row per member: member_id, x, y, label, class_name, label_source, confidence,
    [predicted_label, predicted_confidence,] [reconstruction_error, prototype_distance,
    unusualness, unusual_rank,] latent_0 ... latent_{D-1}. Written atomically; a member id or
    class name that a spreadsheet would run as a formula is escaped
    (:mod:`sense_core.io.escape`)."""
    dim = embedding.latents.shape[1]
    header = ["member_id", "x", "y", "label", "class_name", "label_source", "confidence"]
    with_prediction = embedding.predicted_labels is not None
    if with_prediction:
        header += ["predicted_label", "predicted_confidence"]
    unusual = unusual_columns(embedding)
    header += list(unusual)
    metadata = metadata_columns(embedding, header + [f"latent_{i}" for i in range(dim)])
    header += list(metadata)
    header += [f"latent_{i}" for i in range(dim)]

    def number(value: float) -> str:
        return "" if not np.isfinite(value) else f"{value:.7g}"

    path = Path(path)
    with _target(path, atomic) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv_writer(stream)
        writer.writerow(header)
        for i, member_id in enumerate(embedding.member_ids):
            label = int(embedding.labels[i])
            row = [
                member_id,
                number(embedding.xy[i, 0]),
                number(embedding.xy[i, 1]),
                label,
                embedding.class_names[label] if label >= 0 else "",
                embedding.label_source[i],
                number(embedding.confidence[i]),
            ]
            if with_prediction:
                row += [
                    int(embedding.predicted_labels[i]),
                    number(embedding.predicted_confidence[i]),
                ]
            row += [
                int(values[i]) if values.dtype.kind == "i" else number(values[i])
                for values in unusual.values()
            ]
            row += [
                number(values[i]) if values.dtype.kind == "f" else values[i]
                for values in metadata.values()
            ]
            row += [number(v) for v in embedding.latents[i]]
            writer.writerow(row)
    return path


def write_columns_csv(columns: dict[str, Any], path: str | os.PathLike) -> Path:
    """Per-member ``columns`` (name -> array; an (N, D) array becomes name_0 ... name_{D-1}) as
    CSV, member_id first, floats with 7 significant digits (blank where not finite), through
    the same escaping writer as :func:`write_csv`. Written atomically. ParaView's batch script
    writes its embedding table with it, so that no SENSE CSV bypasses the escaping."""
    header, cells = [], []
    for name in sorted(columns, key=lambda name: name != "member_id"):  # stable: member_id first
        values = np.asarray(columns[name])
        if values.ndim == 1:
            header.append(name)
            values = values[:, None]
        else:
            header += [f"{name}_{k}" for k in range(values.shape[1])]
        for part in values.T:
            if part.dtype.kind == "f":
                cells.append(["" if not np.isfinite(v) else f"{v:.7g}" for v in part])
            else:
                cells.append(part.tolist())
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv_writer(stream)
        writer.writerow(header)
        writer.writerows(zip(*cells))
    return path


def write_scatter_png(
    embedding: Embedding,
    path: str | os.PathLike,
    title: str | None = None,
    dpi: int = 120,
    atomic: bool = True,
) -> Path:
    """Scatter of the map coloured by class: hand labels as outlined dots, predicted labels as
    plain dots, unlabeled members grey. Uses matplotlib's Agg canvas without pyplot, so it
    changes no global backend (safe inside ParaView)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 6.0), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    count = len(embedding)
    size = float(np.clip(4000.0 / max(count, 1), 1.0, 30.0))
    xy = embedding.xy
    unlabeled = embedding.labels == UNLABELED
    if unlabeled.any():
        axes.scatter(*xy[unlabeled].T, s=size, c="#b0b0b0", linewidths=0, label="unlabeled")
    palette = "tab10" if len(embedding.class_names) <= 10 else "tab20"
    cmap = colormaps[palette]
    for index, name in enumerate(embedding.class_names):
        colour = cmap(index % cmap.N)
        predicted = (embedding.labels == index) & (embedding.label_source == "predicted")
        manual = (embedding.labels == index) & (embedding.label_source == "manual")
        if predicted.any():
            axes.scatter(*xy[predicted].T, s=size, color=colour, linewidths=0, alpha=0.7)
        if manual.any() or predicted.any():
            axes.scatter(
                *xy[manual].T,
                s=size * 1.6,
                color=colour,
                edgecolors="black",
                linewidths=0.4,
                label=f"{name} ({int(manual.sum())} hand, {int(predicted.sum())} predicted)",
            )
    method = embedding.provenance.get("projection", {}).get("method", "")
    axes.set_title(title or f"SENSE map of {count} members ({method})")
    axes.set_xlabel("x")
    axes.set_ylabel("y")
    axes.legend(loc="best", fontsize="small", markerscale=1.5, framealpha=0.8)
    figure.tight_layout()
    path = Path(path)
    with _target(path, atomic) as tmp:
        figure.savefig(tmp, format="png")
    return path


def _table(rows: list[tuple[str, str]]) -> str:
    """A two-column Markdown table; keys and values are cell text already (see :func:`md_cell`,
    :func:`md_code`)."""
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _plain(rows: list[tuple[Any, Any]]) -> list[tuple[str, str]]:
    return [(md_cell(key), md_cell(value)) for key, value in rows]


def report_markdown(embedding: Embedding, files: dict[str, str] | None = None) -> str:
    """A short Markdown report: inputs, provider, projection, counts, metrics, timings. Every
    table cell goes through :func:`sense_core.io.escape.md_cell` (or ``md_code``), so a class
    name with ``|`` or a line break cannot break a table."""
    prov = embedding.provenance
    inference = prov.get("inference", {})
    projection = prov.get("projection", {})
    seconds = prov.get("seconds", {})
    bundle = prov.get("bundle", {})
    parts = ["# SENSE embedding", ""]
    rows = [
        ("ensemble", md_code(prov.get("ensemble", {}).get("path", ""))),
        ("members", md_cell(len(embedding))),
        (
            "member shape (C, H, W)",
            md_cell(tuple(prov.get("ensemble", {}).get("member_shape", []))),
        ),
        ("bundle", md_code(bundle.get("path", ""))),
        ("bundle checksum (sense.json SHA-256)", md_code(bundle.get("checksum", ""))),
        ("latent size", md_cell(embedding.latents.shape[1])),
        (
            "execution provider",
            md_cell(f"{inference.get('provider', '')} (asked: {inference.get('device')})"),
        ),
    ]
    notes = {m.get("device_note") for m in inference.get("models", {}).values()} - {"", None}
    rows += _plain([("device note", note) for note in sorted(notes)])
    params = ", ".join(f"{k}={v}" for k, v in projection.get("params", {}).items())
    rows += _plain([("projection", f"{projection.get('method', '')} ({params})")])
    parts += [_table(rows), "", "## Members per class", ""]
    counts = embedding.class_counts()
    lines = ["| class | hand-labeled | predicted |", "|---|---|---|"]
    for name in embedding.class_names:
        lines.append(
            f"| {md_cell(name)} | {counts['manual'][name]} | {counts['predicted'][name]} |"
        )
    lines.append(f"| (unlabeled) | | {counts['none']['unlabeled']} |")
    parts += lines
    if prov.get("warnings"):
        parts += ["", "## Warnings", ""] + [f"- {md_cell(w)}" for w in prov["warnings"]]
    if prov.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {md_cell(note)}" for note in prov["notes"]]
    metrics = prov.get("metrics")
    if metrics:
        parts += ["", "## Metrics (hand-labeled members)", ""]
        parts += [_table(_plain(list(metrics.items())))]
        parts += [
            "",
            "`*_test`: the labeled test split (`sense info` shows it); the labeler's agreement on "
            "all hand-labeled members includes the members it was trained on.",
        ]
    if embedding.unusualness is not None:
        from sense_core.unusual import unusual_rows

        parts += ["", "## Most unusual members", ""]
        lines = ["| rank | member | unusualness | reconstruction error | prototype distance |"]
        lines.append("|---|---|---|---|---|")
        for row in unusual_rows(embedding, REPORT_UNUSUAL):
            recon = row["reconstruction_error"]
            lines.append(
                f"| {row['rank']} | {md_cell(row['member_id'])} | {row['unusualness']:.4f} | "
                f"{'' if recon is None else f'{recon:.4g}'} | {row['prototype_distance']:.3f} |"
            )
        parts += lines
        parts += ["", "Unusualness combines the scores' ranks (Fisher's method; docs/unusual.md)."]
    timing_rows = [(k, f"{v} s") for k, v in seconds.items()]
    if inference.get("members_per_second"):
        timing_rows.append(("inference rate", f"{inference['members_per_second']} members/s"))
    parts += ["", "## Timings", "", _table(_plain(timing_rows))]
    if files:
        parts += ["", "## Files", ""] + [f"- {what}: `{name}`" for what, name in files.items()]
    return "\n".join(parts) + "\n"


def output_paths(out_dir: str | os.PathLike, plot: bool = True) -> dict[str, Path]:
    """The files :func:`write_outputs` writes into ``out_dir``."""
    out = Path(out_dir)
    return {k: out / name for k, name in OUTPUT_FILES.items() if plot or k != "png"}


def check_outputs(out_dir: str | os.PathLike, overwrite: bool, plot: bool = True) -> None:
    """Refuse, before any work, outputs that exist (without ``overwrite``) or a folder that is
    missing or not writable."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SenseError(f"{out}: exists and is not a folder")
    existing = [p.name for p in output_paths(out, plot).values() if p.exists()]
    if existing and not overwrite:
        raise SenseError(f"{out}: {', '.join(existing)} already exist (use --overwrite)")
    if not out.exists() and not out.parent.is_dir():
        raise SenseError(f"{out}: the folder {out.parent} does not exist")
    folder = out if out.exists() else out.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SenseError(f"{out}: the folder {folder} is not writable")


def write_outputs(
    embedding: Embedding, out_dir: str | os.PathLike, overwrite: bool = False, plot: bool = True
) -> dict[str, Path]:
    """Write embedding.npz, embedding.csv, scatter.png (unless ``plot`` is off) and report.md
    into ``out_dir`` (created if needed), all or nothing: every file is written under a
    temporary name first, and they are renamed into place only when all are complete, so a
    failure (disk full, interruption) leaves the previous outputs as they were. The folder is
    locked meanwhile (:func:`~sense_core.io.atomic.output_lock`): a second writer stops at
    once, so two runs never mix their files."""
    check_outputs(out_dir, overwrite, plot)
    with output_lock(out_dir):
        check_outputs(out_dir, overwrite, plot)  # again under the lock: one may have finished
        return _write_outputs(embedding, Path(out_dir), plot)


def _write_outputs(embedding: Embedding, out_dir: Path, plot: bool) -> dict[str, Path]:
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise SenseError(f"{out_dir}: cannot create the folder ({exc.strerror or exc})") from exc
    paths = output_paths(out_dir, plot)
    files = {k: p.name for k, p in paths.items() if k != "report"}
    try:
        with SignalGate() as gate, contextlib.ExitStack() as stack:
            # renamed in the reverse order of entering: embedding.npz first, report.md last
            tmp = {key: stack.enter_context(atomic_path(paths[key])) for key in reversed(paths)}
            write_npz(embedding, tmp["npz"], atomic=False)
            write_csv(embedding, tmp["csv"], atomic=False)
            if plot:
                write_scatter_png(embedding, tmp["png"], atomic=False)
            tmp["report"].write_text(report_markdown(embedding, files), encoding="utf-8")
            gate.close()  # a SIGTERM now waits until all four files are in place
    except WriteError as exc:
        cause = exc.__cause__
        reason = getattr(cause, "strerror", None) or str(cause or exc)
        raise WriteError(
            f"{out_dir}: the outputs were not written ({reason}); the files that were there "
            "are unchanged"
        ) from exc
    return paths


def embedding_digest(embedding: Embedding) -> str:
    """SHA-256 of the per-member results (ids, latents, map, labels): equal runs, equal digests."""
    digest = hashlib.sha256()
    digest.update("\n".join(embedding.member_ids).encode())
    for array in (embedding.latents, embedding.xy, embedding.labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
