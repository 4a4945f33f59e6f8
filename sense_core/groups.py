"""Suggested groups: a clustering of the members' latent vectors for an ensemble without hand
labels, so that a person has somewhere to start naming classes.

k-means on the standardised latents for every k in a range; the k with the highest silhouette
(on a seeded sample of at most :data:`SILHOUETTE_SAMPLE` members) is chosen: the silhouette
rewards groups that are tight and apart, and it is the score SENSE's maps are judged by. Each
group's members are ranked by distance to its centre: the first are its most typical members,
the ones to look at and name first.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.ensemble import MemberStore
from sense_core.errors import SenseError
from sense_core.io.atomic import atomic_path, atomic_write_text
from sense_core.io.escape import csv_writer

SILHOUETTE_SAMPLE = 3000
DEFAULT_K_RANGE = (2, 12)
GROUPS_CSV = "groups.csv"


@dataclass
class Groups:
    """Group of every member, the chosen k with every k's silhouette, and typicality ranks."""

    labels: np.ndarray  # int64 (N,): group of each member
    k: int
    silhouettes: dict[int, float]
    rank: np.ndarray  # int64 (N,): 0 = the member closest to its group's centre
    distance: np.ndarray  # float32 (N,): distance to the group's centre (standardised latents)
    criterion: str = field(default="highest silhouette of k-means on the standardised latents")

    def typical(self, group: int, count: int = 8) -> np.ndarray:
        """Indices of the ``count`` most typical members of ``group`` (closest first)."""
        members = np.flatnonzero(self.labels == group)
        return members[np.argsort(self.rank[members])][:count]

    def record(self) -> dict[str, Any]:
        """JSON-ready summary: k, the criterion, each k's silhouette and the group sizes."""
        return {
            "k": self.k,
            "criterion": self.criterion,
            "silhouette_by_k": {str(k): round(v, 4) for k, v in self.silhouettes.items()},
            "sizes": np.bincount(self.labels, minlength=self.k).tolist(),
        }


def suggest_groups(
    latents: np.ndarray, k_range: Sequence[int] = DEFAULT_K_RANGE, seed: int = 0
) -> Groups:
    """Cluster ``latents`` (N, D) into the k of ``k_range`` (inclusive) with the best silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    latents = np.asarray(latents, dtype=np.float64)
    if latents.ndim != 2 or len(latents) < 3:
        raise SenseError(f"suggesting groups needs at least 3 members, got {len(latents)}")
    if not np.isfinite(latents).all():
        raise SenseError("suggesting groups: the latent vectors hold NaN or Inf")
    scaled = StandardScaler().fit_transform(latents)
    low, high = int(k_range[0]), min(int(k_range[1]), len(latents) - 1)
    if low < 2 or high < low:
        raise SenseError(f"no k to try in {tuple(k_range)} for {len(latents)} members")
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(scaled), min(SILHOUETTE_SAMPLE, len(scaled)), replace=False)
    silhouettes: dict[int, float] = {}
    fitted = {}
    for k in range(low, high + 1):
        model = KMeans(k, n_init=4, random_state=seed).fit(scaled)
        if len(np.unique(model.labels_[sample])) < 2:
            continue
        silhouettes[k] = float(silhouette_score(scaled[sample], model.labels_[sample]))
        fitted[k] = model
    if not silhouettes:
        raise SenseError("the members' latent vectors do not split into groups (all alike)")
    best = max(silhouettes, key=lambda k: (silhouettes[k], -k))
    model = fitted[best]
    labels = model.labels_.astype(np.int64)
    distance = np.linalg.norm(scaled - model.cluster_centers_[labels], axis=1)
    rank = np.empty(len(labels), dtype=np.int64)
    for group in range(best):
        members = np.flatnonzero(labels == group)
        rank[members[np.argsort(distance[members], kind="stable")]] = np.arange(len(members))
    return Groups(labels, best, silhouettes, rank, distance.astype(np.float32))


def write_groups_csv(groups: Groups, member_ids: Sequence[str], path: str | os.PathLike) -> Path:
    """``member_id,group,rank,distance`` per member (rank 0 = most typical of its group),
    sorted by group and rank; written atomically, cells escaped like every SENSE CSV."""
    buffer = io.StringIO()
    writer = csv_writer(buffer, lineterminator="\n")
    writer.writerow(["member_id", "group", "rank", "distance"])
    for index in np.lexsort((groups.rank, groups.labels)):
        writer.writerow(
            [
                str(member_ids[index]),
                int(groups.labels[index]),
                int(groups.rank[index]),
                f"{float(groups.distance[index]):.4f}",
            ]
        )
    return atomic_write_text(path, buffer.getvalue())


def write_groups_png(
    groups: Groups, store: MemberStore, path: str | os.PathLike, per_group: int = 8
) -> Path:
    """A mosaic of each group's most typical members (first channel, one row per group, member
    ids as titles): what a person looks at to name the groups. Written atomically."""
    rows = []
    for group in range(groups.k):
        size = int(np.count_nonzero(groups.labels == group))
        rows.append((f"group {group}\n({size})", groups.typical(group, per_group)))
    return write_mosaic_png(store, rows, path, per_group)


def write_mosaic_png(
    store: MemberStore,
    rows: Sequence[tuple[str, Sequence[int]]],
    path: str | os.PathLike,
    per_row: int = 8,
) -> Path:
    """Members' first channel in a grid: one row per (title, member indices) of ``rows`` (at
    most ``per_row`` members each, in the given order, member ids as titles). Written
    atomically; shared by suggested groups and suggested members."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(rows), per_row, figsize=(per_row * 1.3, len(rows) * 1.45 + 0.3), squeeze=False
    )
    for row, (title, members) in enumerate(rows):
        chosen = np.asarray(members, dtype=np.int64)[:per_row]
        fields = store.read_members(np.sort(chosen))[:, 0]
        order = np.argsort(np.argsort(chosen))  # read sorted, shown in the given order
        for column in range(per_row):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(chosen):
                axis.imshow(fields[order[column]], cmap="viridis")
                axis.set_title(str(store.member_ids[chosen[column]]), fontsize=6)
            else:
                axis.set_axis_off()
        axes[row, 0].set_ylabel(title, fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)
    return Path(path)
