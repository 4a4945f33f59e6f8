"""Which members to label next: the ones whose hand labels would help the labeler most.

Two things make a label useful: the labeler is unsure of the member (its label settles a
question the model cannot), and the member stands for a part of the map that no hand label
covers yet (a label there teaches a whole region, not one more example of a known one). So:

1. The map is cut into ``count`` regions: k-means of the standardised latent vectors (seeded;
   fitted on a sample of at most :data:`KMEANS_SAMPLE` members).
2. Each member gets an uncertainty in [0, 1]: from the labeler's class probabilities, the
   margin (1 - (p1 - p2), default: it looks only at the two likeliest classes, so many
   unlikely classes do not drown it) or the normalised entropy; without a labeler, the
   distance to the nearest hand-labeled member (relative to the largest such distance).
3. One member per region: in a region without any hand label, its most typical unlabeled
   member (nearest the region's centre: its label names the region, where the most uncertain
   one would be an outlier); in a region with hand labels, its most uncertain unlabeled member.
   Regions without hand labels come first (largest first), then the others by uncertainty;
   regions without unlabeled members leave their slot to the most uncertain members left.

Deterministic for a given seed. Used by ``sense suggest`` and ``sense_paraview.suggest``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.ensemble import UNLABELED, MemberStore
from sense_core.errors import SenseError

UNCERTAINTY_METHODS = ("margin", "entropy")
KMEANS_SAMPLE = 20_000
PCA_SAMPLE = 4_000
PCA_COMPONENTS = 32
SUGGESTIONS_HEADER = ("member_id", "rank", "reason", "score", "region")


@dataclass
class Suggestion:
    """Members to label next, most useful first: their indices, why (one line each), their
    uncertainty (``scores``, 0 = sure .. 1 = unsure) and region; every member's region."""

    indices: np.ndarray  # int64 (n,)
    reasons: tuple[str, ...]
    scores: np.ndarray  # float32 (n,)
    region_of: np.ndarray  # int64 (n,): region of each suggested member
    regions: np.ndarray  # int64 (N,): region of every member
    method: str  # margin | entropy | distance

    def __len__(self) -> int:
        return len(self.indices)

    def member_ids(self, all_ids) -> list[str]:
        """The suggested members' ids, in order."""
        return [str(all_ids[i]) for i in self.indices]

    def record(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "method": self.method,
            "regions": int(self.regions.max()) + 1 if len(self.regions) else 0,
            "indices": self.indices.tolist(),
            "scores": [round(float(s), 4) for s in self.scores],
            "reasons": list(self.reasons),
        }


def uncertainty_of(probabilities: np.ndarray, method: str = "margin") -> np.ndarray:
    """Per-member uncertainty in [0, 1] of class probabilities (N, K): ``margin`` 1 - (p1 - p2),
    or ``entropy`` divided by log K."""
    p = np.asarray(probabilities, dtype=np.float64)
    if method not in UNCERTAINTY_METHODS:
        raise SenseError(f"uncertainty {method!r} is not one of {', '.join(UNCERTAINTY_METHODS)}")
    if p.shape[1] < 2:
        return np.zeros(len(p))
    if method == "margin":
        top = np.sort(p, axis=1)[:, -2:]
        return np.clip(1.0 - (top[:, 1] - top[:, 0]), 0.0, 1.0)
    logs = np.log(np.clip(p, 1e-12, 1.0))
    return np.clip(-(p * logs).sum(axis=1) / np.log(p.shape[1]), 0.0, 1.0)


def _distance_uncertainty(scaled: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """Distance to the nearest hand-labeled member over the largest one (1 without labels)."""
    if not labeled.any():
        return np.ones(len(scaled))
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=1).fit(scaled[labeled])
    distance = index.kneighbors(scaled, return_distance=True)[0][:, 0]
    top = distance.max()
    return distance / top if top > 0 else np.zeros(len(scaled))


def _check(latents, probabilities, labels) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    latents = np.asarray(latents, dtype=np.float64)
    if latents.ndim != 2 or len(latents) == 0:
        raise SenseError(f"suggesting members needs latent vectors (N, D), got {latents.shape}")
    if not np.isfinite(latents).all():
        raise SenseError("suggesting members: the latent vectors hold NaN or Inf")
    count = len(latents)
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or len(probabilities) != count:
            raise SenseError(
                f"probabilities have shape {probabilities.shape}, expected ({count}, classes)"
            )
        if not np.isfinite(probabilities).all():
            raise SenseError("suggesting members: the class probabilities hold NaN or Inf")
    labels = np.full(count, UNLABELED, np.int64) if labels is None else np.asarray(labels, np.int64)
    if labels.shape != (count,):
        raise SenseError(f"labels have shape {labels.shape}, expected ({count},)")
    return latents, probabilities, labels


def _regions(scaled: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means region of every member and its distance to the region's centre."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    sample = (
        np.sort(rng.choice(len(scaled), KMEANS_SAMPLE, replace=False))
        if len(scaled) > KMEANS_SAMPLE
        else np.arange(len(scaled))
    )
    with warnings.catch_warnings():  # fewer distinct members than regions: some stay empty
        warnings.simplefilter("ignore")
        model = KMeans(k, n_init=3, random_state=seed).fit(scaled[sample])
    regions = model.predict(scaled).astype(np.int64)
    distance = np.linalg.norm(scaled - model.cluster_centers_[regions], axis=1)
    return regions, distance


def suggest_members(
    latents: np.ndarray,
    probabilities: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    count: int = 20,
    seed: int = 0,
    uncertainty: str = "margin",
) -> Suggestion:
    """The ``count`` unlabeled members whose hand labels would help most (module docstring):
    ``latents`` (N, D), the labeler's ``probabilities`` (N, K) if there is one, the hand
    ``labels`` (N,), -1 = unlabeled (None: nothing labeled yet)."""
    from sklearn.preprocessing import StandardScaler

    latents, probabilities, labels = _check(latents, probabilities, labels)
    if int(count) < 1:
        raise SenseError(f"the number of members to suggest must be at least 1, got {count}")
    unlabeled = labels == UNLABELED
    if not unlabeled.any():
        raise SenseError("every member has a hand label: nothing left to suggest")
    wanted = min(int(count), int(unlabeled.sum()))
    scaled = StandardScaler().fit_transform(latents)
    if probabilities is not None:
        method = uncertainty
        unsure = uncertainty_of(probabilities, uncertainty)
    else:
        method = "distance"
        unsure = _distance_uncertainty(scaled, ~unlabeled)
    regions, centre = _regions(scaled, wanted, seed)

    picks: list[tuple[tuple, int, str]] = []
    for region in range(wanted):
        members = regions == region
        candidates = np.flatnonzero(members & unlabeled)
        if len(candidates) == 0:
            continue
        size = int(members.sum())
        if not (members & ~unlabeled).any():
            pick = int(candidates[np.lexsort((candidates, centre[candidates]))[0]])
            reason = f"typical member of a region without hand labels ({size} members)"
            picks.append(((0, -size, pick), pick, reason))
        else:
            pick = int(
                candidates[np.lexsort((candidates, centre[candidates], -unsure[candidates]))[0]]
            )
            reason = f"most uncertain of its region ({_describe(method, unsure[pick])})"
            picks.append(((1, -unsure[pick], pick), pick, reason))
    picks.sort(key=lambda item: item[0])
    chosen = [pick for _, pick, _ in picks]
    reasons = [reason for _, _, reason in picks]
    if len(chosen) < wanted:
        left = np.setdiff1d(np.flatnonzero(unlabeled), chosen)
        for pick in left[np.lexsort((left, -unsure[left]))][: wanted - len(chosen)]:
            chosen.append(int(pick))
            reasons.append(f"uncertain ({_describe(method, unsure[pick])})")
    indices = np.asarray(chosen, dtype=np.int64)
    return Suggestion(
        indices=indices,
        reasons=tuple(reasons),
        scores=unsure[indices].astype(np.float32),
        region_of=regions[indices],
        regions=regions,
        method=method,
    )


def _describe(method: str, value: float) -> str:
    if method == "distance":
        return f"far from the hand-labeled members: {value:.2f} of the largest distance"
    return f"{method} uncertainty {value:.2f}"


# --------------------------------------------------------------------------- from an ensemble
def field_latents(store: MemberStore, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Latent vectors without a bundle: PCA (at most 32 components) of the raw fields, fitted on
    a seeded sample of at most :data:`PCA_SAMPLE` members and applied to all, in batches."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    count = len(store)
    sample = np.sort(rng.choice(count, min(PCA_SAMPLE, count), replace=False))
    fit = store.read_members(sample).reshape(len(sample), -1).astype(np.float64)
    components = max(1, min(PCA_COMPONENTS, len(sample), fit.shape[1]))
    pca = PCA(components, random_state=seed).fit(fit)
    out = np.empty((count, components), dtype=np.float32)
    for chunk, fields in store.iter_batches(batch_size):
        out[chunk] = pca.transform(fields.reshape(len(chunk), -1).astype(np.float64))
    return out


def bundle_latents(
    store: MemberStore,
    bundle_folder: str | os.PathLike,
    device: str = "auto",
    batch_size: int = 64,
    use_labeler: bool = True,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The bundle's latent vectors (N, D) of every member and, when it has a labeler, its class
    probabilities (N, K): one pass over the members."""
    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder, Labeler, run_over_store

    bundle = Bundle.load(bundle_folder)
    encoder = Encoder(bundle, device=device, threads=threads, batch_size=batch_size)
    labeler = None
    if use_labeler and "labeler" in bundle.models:
        labeler = Labeler(bundle, device=device, threads=threads, batch_size=batch_size)
    run = run_over_store(store, encoder, labeler)
    assert run.latents is not None
    probabilities = run.prediction.probabilities if run.prediction is not None else None
    return run.latents, probabilities


def suggest_for_ensemble(
    store: MemberStore,
    bundle_folder: str | os.PathLike | None = None,
    count: int = 20,
    seed: int = 0,
    uncertainty: str = "margin",
    device: str = "auto",
    batch_size: int = 64,
    threads: int | None = None,
) -> Suggestion:
    """:func:`suggest_members` for an ensemble (its hand labels, sidecar included when it was
    opened with one): latents and probabilities from ``bundle_folder``, or, without a bundle,
    from PCA of the raw fields (distance-based uncertainty)."""
    if bundle_folder:
        latents, probabilities = bundle_latents(
            store, bundle_folder, device, batch_size, threads=threads
        )
    else:
        latents, probabilities = field_latents(store, seed), None
    return suggest_members(latents, probabilities, store.labels, count, seed, uncertainty)


def suggestions_csv_text(suggestion: Suggestion, member_ids) -> str:
    """``member_id,rank,reason,score,region`` rows, most useful first (cells escaped)."""
    import io

    from sense_core.io.escape import csv_writer

    buffer = io.StringIO()
    writer = csv_writer(buffer, lineterminator="\n")
    writer.writerow(SUGGESTIONS_HEADER)
    for rank, (index, reason, score, region) in enumerate(
        zip(suggestion.indices, suggestion.reasons, suggestion.scores, suggestion.region_of)
    ):
        writer.writerow([member_ids[index], rank, reason, f"{float(score):.4f}", int(region)])
    return buffer.getvalue()


def write_suggestions(
    suggestion: Suggestion,
    store: MemberStore,
    csv_path: str | os.PathLike,
    png_path: str | os.PathLike | None = None,
    per_row: int = 10,
) -> list[Path]:
    """Write the suggestions CSV and, with ``png_path``, a mosaic of the suggested members (in
    order, ``per_row`` a row); both atomically. Returns the paths written."""
    from sense_core.groups import write_mosaic_png
    from sense_core.io.atomic import atomic_write_text

    written = [atomic_write_text(csv_path, suggestions_csv_text(suggestion, store.member_ids))]
    if png_path is not None:
        per_row = max(1, min(per_row, len(suggestion)))
        rows = []
        for start in range(0, len(suggestion), per_row):
            first, last = start + 1, min(start + per_row, len(suggestion))
            rows.append((f"{first}-{last}", suggestion.indices[start : start + per_row]))
        written.append(write_mosaic_png(store, rows, png_path, per_row))
    return written
