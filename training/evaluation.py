"""Score encoders the way the paper does, and more, next to raw-field baselines.

The paper's metric (``silhouette_2d_test``): the latent vectors of the **hand-labeled test
members** are mapped to 2D with UMAP (seeded), and the silhouette of those 2D points against
their hand labels is the score; reported as mean ± sd over several UMAP seeds (default 3).

Protocol (:func:`evaluate`):

- the test members are those of the encoder's own split (the fractions and split seed recorded
  in the bundle), so no test member was trained on; the labels are the hand labels only;
- the map is fitted on the *fit set*: the test members plus the hand-labeled training members
  plus a seeded sample of the other members, up to ``max_fit`` members (``fit="all"``, the map a
  user sees), or on the test members alone (``fit="test"``); only test points are scored;
- additional columns: silhouette of the test latents (``silhouette_latent_test``), k-NN accuracy
  (k = 5) of a classifier fitted on the hand-labeled training latents and scored on the test
  latents (``knn_accuracy_latent``), adjusted Rand index of k-means on the test latents
  (``kmeans_ari_latent``), trustworthiness of the 2D map of the fit set (``trustworthiness``),
  and the test members' reconstruction error (mean squared error on normalised fields, when the
  run's checkpoint with the decoder is available);
- baselines on the same members and the same seeds: ``pca_raw`` (PCA(2) of the normalised raw
  fields), ``umap_raw`` (UMAP of the normalised raw fields); a plain AE is simply another bundle
  trained with ``--loss recon``.

Outputs (:func:`write_report`): ``evaluation.json``, ``evaluation.csv``, ``evaluation.md`` and
``maps.png`` (the first seed's 2D maps side by side, test members coloured by class).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.ensemble import UNLABELED, MemberStore, split_hand_labeled
from sense_core.errors import SenseError
from sense_core.io.atomic import atomic_path, atomic_write_text, output_lock
from sense_core.io.escape import csv_writer, md_cell
from sense_training.config import DEVICES, ConfigSection, option

BASELINES = ("pca_raw", "umap_raw")
FIT_CHOICES = ("all", "test")
PROJECTIONS = ("umap", "pca")
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class EvaluationConfig(ConfigSection):
    """How :func:`evaluate` scores encoders (the options of ``sense evaluate``, ``fit`` and
    ``train-encoder --evaluate``, and the keys of an experiment file)."""

    seeds: tuple[int, ...] = option(DEFAULT_SEEDS, "UMAP seeds the 2D scores are averaged over")
    baselines: tuple[str, ...] = option(
        BASELINES, "raw-field baselines: pca_raw, umap_raw, or none"
    )
    fit: str = option(
        "all",
        "fit the map on test + training + other members (all) or on the test members only",
        choices=FIT_CHOICES,
    )
    max_fit: int = option(2000, "fit-set size limit")
    projection: str = option("umap", "2D projection of the latents", choices=PROJECTIONS)
    device: str = option(
        "cpu", "onnxruntime device for the encoder", flag="--eval-device", choices=DEVICES
    )

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)  # type: ignore[assignment]
        names = [self.baselines] if isinstance(self.baselines, str) else self.baselines
        parts = [p.strip() for name in names for p in str(name).split(",")]
        self.baselines = tuple(p for p in parts if p and p != "none")  # type: ignore[assignment]
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise SenseError(f"unknown baseline(s) {sorted(unknown)}; choose from {BASELINES}")
        if self.fit not in FIT_CHOICES:
            raise SenseError(f"fit must be one of {FIT_CHOICES}, got {self.fit!r}")
        if self.projection not in PROJECTIONS:
            raise SenseError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        if not self.seeds:
            raise SenseError("at least one seed is needed")

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`evaluate`."""
        return {f: getattr(self, f) for f in self.own_fields()}


def encoder_training_config(bundle) -> dict[str, Any]:
    """The bundle's encoder configuration flattened (saved nested, or flat by older versions);
    ``losses`` is the list of loss terms."""
    recorded = bundle.manifest.get("training", {}).get("encoder", {}).get("config", {})
    flat: dict[str, Any] = {}
    for key, value in recorded.items():
        if isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    if "terms" in flat and "losses" not in flat:
        flat["losses"] = flat["terms"]
    return flat


# Columns of the tables, in order (mean and sd of the 2D silhouette first).
COLUMNS = (
    "silhouette_2d_test_mean",
    "silhouette_2d_test_sd",
    "silhouette_latent_test",
    "knn_accuracy_latent",
    "kmeans_ari_latent",
    "trustworthiness",
    "recon_error_test",
)


@dataclass
class EvaluationRow:
    """One method's scores (JSON-ready through :meth:`to_dict`)."""

    name: str
    kind: str  # "encoder" or "baseline"
    scores: dict[str, float | None]
    per_seed: list[float]
    maps: list[np.ndarray] = field(default_factory=list, repr=False)  # fit-set xy per seed
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            **{k: _clean(v) for k, v in self.scores.items()},
            "silhouette_2d_test_per_seed": [_clean(v) for v in self.per_seed],
            "details": self.details,
        }


@dataclass
class Evaluation:
    """All rows plus what they were computed on."""

    rows: list[EvaluationRow]
    fit_indices: np.ndarray
    test_positions: np.ndarray  # positions of the test members within fit_indices
    labels: np.ndarray  # hand labels of the fit set (-1 where none)
    class_names: tuple[str, ...]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "rows": [r.to_dict() for r in self.rows]}

    def row(self, name: str) -> EvaluationRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)


def _clean(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else round(float(value), 6)
    return value


# --------------------------------------------------------------------------- members
class TooFewTestLabels(SenseError):
    """Too few hand-labeled test members (fewer than 4, or of one class) to evaluate a bundle."""


def evaluation_members(
    store: MemberStore,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    split_seed: int = 0,
    fit: str = "all",
    max_fit: int = 2000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(fit_indices, test_positions, train_positions, labels)``: store indices of the fit set,
    positions of the test and hand-labeled training members inside it, and its hand labels."""
    if fit not in FIT_CHOICES:
        raise SenseError(f"fit must be one of {FIT_CHOICES}, got {fit!r}")
    manual, split = split_hand_labeled(store, tuple(fractions), split_seed)
    if len(split.test) < 4 or np.unique(store.labels[split.test]).size < 2:
        raise TooFewTestLabels(
            f"only {len(split.test)} hand-labeled test member(s) in "
            f"{np.unique(store.labels[split.test]).size} class(es): label more members or raise "
            "the test fraction to evaluate"
        )
    chosen = list(split.test)
    if fit == "all":
        chosen += list(split.train)
        rest = np.setdiff1d(np.arange(len(store)), np.concatenate([split.test, split.train]))
        room = max(0, max_fit - len(chosen))
        if room and len(rest):
            rng = np.random.default_rng(seed)
            chosen += list(rng.choice(rest, size=min(room, len(rest)), replace=False))
    fit_indices = np.sort(np.asarray(chosen, dtype=np.int64))
    position = {int(index): i for i, index in enumerate(fit_indices)}
    test_positions = np.array([position[int(i)] for i in split.test], dtype=np.int64)
    train_positions = np.array(
        [position[int(i)] for i in split.train if int(i) in position], dtype=np.int64
    )
    labels = np.full(len(fit_indices), UNLABELED, dtype=np.int64)
    labels[test_positions] = store.labels[fit_indices[test_positions]]
    labels[train_positions] = store.labels[fit_indices[train_positions]]
    return fit_indices, test_positions, train_positions, labels


# --------------------------------------------------------------------------- scoring
def _project(points: np.ndarray, method: str, seed: int) -> np.ndarray:
    from sense_core.projection import pca_project, umap_project

    if method == "pca":
        return pca_project(points).xy
    return umap_project(points, seed=seed).xy


def score_points(
    name: str,
    kind: str,
    points: np.ndarray,
    labels: np.ndarray,
    test_positions: np.ndarray,
    train_positions: np.ndarray,
    seeds: Sequence[int],
    method: str = "umap",
    latent_scores: bool = True,
) -> EvaluationRow:
    """Project ``points`` (the fit set) once per seed and score the test members."""
    from sense_core import metrics

    test_labels = labels[test_positions]
    per_seed, maps = [], []
    seeds = list(seeds) if method == "umap" else list(seeds)[:1]  # PCA is deterministic
    for seed in seeds:
        xy = _project(points, method, seed)
        maps.append(xy)
        per_seed.append(metrics.silhouette(xy[test_positions], test_labels, sample_size=None))
    scores: dict[str, float | None] = {
        "silhouette_2d_test_mean": float(np.mean(per_seed)),
        "silhouette_2d_test_sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
        "trustworthiness": metrics.trustworthiness(points, maps[0], sample_size=2000),
    }
    if latent_scores:
        test_points = points[test_positions]
        scores["silhouette_latent_test"] = metrics.silhouette(
            test_points, test_labels, sample_size=None
        )
        scores["knn_accuracy_latent"] = metrics.knn_accuracy(
            points[train_positions], labels[train_positions], test_points, test_labels
        )
        scores["kmeans_ari_latent"] = metrics.kmeans_ari(test_points, test_labels)
    return EvaluationRow(name, kind, scores, per_seed, maps, {"projection": method})


def _raw_points(store: MemberStore, indices: np.ndarray, normalization) -> np.ndarray:
    fields = store.read_members(indices)
    if normalization is not None:
        fields = normalization.apply(fields)
    return fields.reshape(len(indices), -1).astype(np.float32)


def _reconstruction_error(bundle_dir: Path, store: MemberStore, indices, bundle) -> float | None:
    """Mean squared error on normalised test fields, from the run's checkpoint (decoder)."""
    checkpoint = bundle_dir / "encoder_run" / "checkpoint.pt"
    if not checkpoint.is_file():
        return None
    import torch

    from sense_training.encoder import load_encoder_checkpoint

    details = bundle.models["encoder"].details
    selected = encoder_training_config(bundle).get("select")
    model = load_encoder_checkpoint(checkpoint, selected or "best")
    if model.latent_dim != int(details.get("latent_dim", model.latent_dim)):
        return None  # the checkpoint belongs to another run
    fields = torch.from_numpy(bundle.normalization.apply(store.read_members(indices)))
    with torch.no_grad():
        reconstruction = model(fields)["reconstruction"]
    return float((reconstruction - fields).pow(2).mean())


def evaluate(
    store: MemberStore,
    bundles: Mapping[str, str | os.PathLike],
    *,
    baselines: Sequence[str] = BASELINES,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    fit: str = "all",
    max_fit: int = 2000,
    projection: str = "umap",
    fractions: Sequence[float] | None = None,
    split_seed: int | None = None,
    device: str = "cpu",
    log=print,
) -> Evaluation:
    """Score each bundle's encoder (name → bundle folder) and the ``baselines`` on ``store``.

    The split's fractions and seed default to those recorded with the first bundle's encoder.
    """
    from sense_core.bundle import Bundle

    settings = EvaluationConfig(tuple(seeds), baselines, fit, max_fit, projection, device)
    loaded = {name: Bundle.load(folder) for name, folder in bundles.items()}
    first = next(iter(loaded.values()), None)
    recorded = encoder_training_config(first) if first else {}
    fractions = tuple(fractions or recorded.get("fractions", (0.7, 0.15, 0.15)))
    split_seed = int(split_seed if split_seed is not None else recorded.get("split_seed", 0))
    members = evaluation_members(store, fractions, split_seed, fit, max_fit, seed=0)
    fit_indices, test_positions, _, labels = members
    log(
        f"evaluating on {len(test_positions)} hand-labeled test members (fit set "
        f"{len(fit_indices)}, {projection}, seeds {list(settings.seeds)})"
    )
    rows = []
    for name, bundle in loaded.items():
        rows.append(_encoder_row(name, bundle, Path(bundles[name]), store, members, settings))
        log(_row_line(rows[-1]))
    normalization = first.normalization if first is not None else None
    rows += _baseline_rows(store, members, settings, normalization, log)
    summary = {
        "members": len(store),
        "fit": fit,
        "fit_members": int(len(fit_indices)),
        "test_members": int(len(test_positions)),
        "max_fit": max_fit,
        "projection": projection,
        "seeds": list(settings.seeds),
        "split": {"fractions": list(fractions), "seed": split_seed},
        "class_names": list(store.class_names),
    }
    return Evaluation(rows, fit_indices, test_positions, labels, tuple(store.class_names), summary)


def _encoder_row(name, bundle, folder: Path, store, members, settings) -> EvaluationRow:
    """One bundle's encoder scored on the fit set ``members`` (see :func:`evaluation_members`)."""
    from sense_core.inference import Encoder

    fit_indices, test_positions, train_positions, labels = members
    tick = time.perf_counter()
    encoder = Encoder(bundle, device=settings.device)
    latents = encoder.encode_store(store, indices=fit_indices)
    row = score_points(
        name, "encoder", latents, labels, test_positions, train_positions, settings.seeds,
        settings.projection,
    )  # fmt: skip
    row.scores["recon_error_test"] = _reconstruction_error(
        folder, store, fit_indices[test_positions], bundle
    )
    entry = bundle.models["encoder"]
    row.details.update(
        bundle=str(folder),
        architecture=entry.details.get("architecture"),
        latent_dim=entry.details.get("latent_dim"),
        losses=encoder_training_config(bundle).get("losses"),
        provider=encoder.provider,
        seconds=round(time.perf_counter() - tick, 2),
    )
    return row


def _baseline_rows(store, members, settings, normalization, log) -> list[EvaluationRow]:
    """The raw-field baselines on the same fit set, normalised like the first bundle (else
    with statistics of the hand-labeled training members)."""
    fit_indices, test_positions, train_positions, labels = members
    if not settings.baselines:
        return []
    if normalization is None:
        from sense_core.ensemble import NormalizationStats

        normalization = NormalizationStats.from_store(store, fit_indices[train_positions])
    raw = _raw_points(store, fit_indices, normalization)
    rows = []
    for name in settings.baselines:
        tick = time.perf_counter()
        method = "pca" if name == "pca_raw" else settings.projection
        row = score_points(
            name, "baseline", raw, labels, test_positions, train_positions, settings.seeds, method
        )
        row.scores["recon_error_test"] = None
        row.details["seconds"] = round(time.perf_counter() - tick, 2)
        rows.append(row)
        log(_row_line(row))
    return rows


def _row_line(row: EvaluationRow) -> str:
    s = row.scores
    return (
        f"  {row.name}: 2D test silhouette {s['silhouette_2d_test_mean']:.3f} ± "
        f"{s['silhouette_2d_test_sd']:.3f}"
    )


# --------------------------------------------------------------------------- reports
def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_table(evaluation: Evaluation) -> str:
    """The results as a Markdown table (one row per method); a method name with ``|`` or a line
    break is escaped (:func:`sense_core.io.escape.md_cell`)."""
    header = [
        "method",
        "2D test silhouette (mean ± sd)",
        "latent silhouette",
        "kNN acc.",
        "k-means ARI",
        "trustworthiness",
        "recon. MSE",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in evaluation.rows:
        s = row.scores
        cells = [
            md_cell(row.name),
            f"{_format(s['silhouette_2d_test_mean'])} ± {_format(s['silhouette_2d_test_sd'])}",
            *(_format(s.get(c)) for c in COLUMNS[2:]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(evaluation: Evaluation) -> str:
    """The results as CSV (one row per method), every cell escaped against spreadsheet formulas
    (:func:`sense_core.io.escape.csv_writer`)."""
    buffer = io.StringIO()
    writer = csv_writer(buffer, lineterminator="\n")
    writer.writerow(["method", "kind", *COLUMNS, "silhouette_2d_test_per_seed"])
    for row in evaluation.rows:
        writer.writerow(
            [
                row.name,
                row.kind,
                *(_format(row.scores.get(c)) for c in COLUMNS),
                " ".join(_format(v) for v in row.per_seed),
            ]
        )
    return buffer.getvalue()


def plot_maps(evaluation: Evaluation, path: str | os.PathLike, title: str = "") -> Path:
    """The first seed's 2D map of every row side by side: other members grey, test members
    coloured by hand label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(evaluation.rows)
    fig, axes = plt.subplots(1, count, figsize=(3.6 * count, 3.8), squeeze=False)
    test = evaluation.test_positions
    labels = evaluation.labels[test]
    cmap = plt.get_cmap("tab10" if len(evaluation.class_names) <= 10 else "tab20")
    for ax, row in zip(axes[0], evaluation.rows):
        xy = row.maps[0]
        ax.scatter(xy[:, 0], xy[:, 1], s=3, c="lightgrey", linewidths=0)
        for k, name in enumerate(evaluation.class_names):
            chosen = test[labels == k]
            if len(chosen):
                ax.scatter(xy[chosen, 0], xy[chosen, 1], s=10, color=cmap(k % cmap.N), label=name)
        score = row.scores["silhouette_2d_test_mean"]
        ax.set_title(f"{row.name}\nsilhouette {_format(score)}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=7, loc="best", markerscale=1.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_report(evaluation: Evaluation, out_dir: str | os.PathLike, title: str = "") -> dict:
    """``evaluation.json``, ``.csv``, ``.md`` and ``maps.png`` in ``out_dir``; returns paths.
    The folder is locked meanwhile, so two reports written into it at once cannot mix."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(out_dir):
        return _write_report(evaluation, out_dir, title)


def _write_report(evaluation: Evaluation, out_dir: Path, title: str) -> dict:
    paths = {
        "json": out_dir / "evaluation.json",
        "csv": out_dir / "evaluation.csv",
        "md": out_dir / "evaluation.md",
        "png": out_dir / "maps.png",
    }
    atomic_write_text(paths["json"], json.dumps(evaluation.to_dict(), indent=2) + "\n")
    atomic_write_text(paths["csv"], csv_table(evaluation))
    settings = evaluation.settings
    intro = (
        f"{md_cell(title or 'Evaluation')}: {settings['test_members']} hand-labeled test "
        f"members, map fitted on {settings['fit_members']} members "
        f"({settings['projection']}, seeds {settings['seeds']}).\n\n"
    )
    atomic_write_text(paths["md"], intro + markdown_table(evaluation))
    plot_maps(evaluation, paths["png"], title)
    return {k: str(v) for k, v in paths.items()}
