"""Unusual members: which members of an ensemble the model finds odd, and by how much.

Two scores per member, both "higher = more unusual":

- **reconstruction error** (needs the bundle's decoder): the mean squared difference between
  the member's normalised field and the decoder's output of the member's latent vector. A member
  unlike those the autoencoder learned from is reconstructed badly;
- **prototype distance**: the Mahalanobis distance, in the latent space, from the member to the
  prototype of its class, divided by √D (D = the latent size), so that its root mean square
  over the members that estimate the covariance is about 1. The prototype of a class is the
  mean latent of its hand-labeled members, or, when it has fewer than ``min_members`` of them,
  of every member that carries the class (hand-labeled or predicted). The covariance is the one
  of those members around their own class's prototype, pooled over the classes (a tied
  covariance, as in Lee et al. 2018, "A simple unified framework for detecting
  out-of-distribution samples"), shrunk towards its diagonal (weight ``max(0.05, D /
  members)``: more when few members estimate it; each latent dimension keeps its variance),
  with a tiny ridge for dimensions without any. A member without a class (unlabeled, or of a
  class without a prototype) gets its distance to the nearest prototype; with no class at all,
  the single prototype is the mean of every member, with their covariance.

**Unusualness** combines them without caring for their units: each score becomes an empirical
p-value (the share of members that score at least as high: 1/N for the top member, 1 for the
bottom one), and the p-values are combined by Fisher's method, ``T = -Σ ln p``; unusualness is
``1 - P(χ²(2k) ≥ 2T)`` for k scores, in [0, 1] (1 - p for a single score). Unlike the mean of the
percentile ranks, a member at the very top of one score and ordinary in the other still ranks
high (with 4 members of another generator planted among 600, over 8 seeds, the last planted
member ranked 14th at worst by Fisher's method, 20th by the rank average: docs/unusual.md).
Members are ordered by ``T`` (computed in float64 from the two scores, so that
the order is exact where unusualness rounds to 1), then by their larger percentile rank;
``unusual_rank`` numbers them from 1 (the most unusual). See docs/unusual.md for how to use them
(``sense unusual``, the ParaView map).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.errors import SenseError

UNLABELED = -1
MIN_PROTOTYPE_MEMBERS = 3
MIN_SHRINKAGE = 0.05
RIDGE = 1e-6  # times the mean variance, added to every dimension's variance
SCORE_COLUMNS = ("reconstruction_error", "prototype_distance", "unusualness")
RANK_COLUMN = "unusual_rank"


@dataclass
class Prototypes:
    """Class prototypes in the latent space and the (tied) covariance distances are measured
    with (see the module docstring)."""

    centres: np.ndarray  # (K, D); NaN rows for classes without a prototype
    members: np.ndarray  # (K,) members each prototype is the mean of
    sources: tuple[str, ...]  # per class: manual | labeled (hand + predicted) | all | ''
    precision: np.ndarray  # (D, D) inverse of the shrunk pooled covariance
    shrinkage: float

    @property
    def available(self) -> np.ndarray:
        """Per class: does it have a prototype?"""
        return np.isfinite(self.centres[:, 0])

    def distances(self, latents: np.ndarray) -> np.ndarray:
        """(N, K) Mahalanobis distances / √D of ``latents`` to every prototype (NaN columns for
        classes without one), one class at a time (memory N x K, not N x K x D)."""
        latents = np.asarray(latents, dtype=np.float64)
        scale = math.sqrt(latents.shape[1])
        result = np.full((len(latents), len(self.centres)), np.nan)
        for k in np.flatnonzero(self.available):
            offset = latents - self.centres[k]
            squared = np.einsum("nd,de,ne->n", offset, self.precision, offset)
            result[:, k] = np.sqrt(np.maximum(squared, 0.0)) / scale
        return result

    def describe(self, class_names: Sequence[str] = ()) -> dict[str, Any]:
        """JSON-ready: per class with a prototype, how many members it averages and from where."""
        extra = range(len(class_names), len(self.sources))
        names = list(class_names) + [f"class {k}" for k in extra]
        if self.sources and self.sources[0] == "all":
            names[0] = "(all members)"
        return {
            "classes": {
                names[k]: {"members": int(self.members[k]), "from": self.sources[k]}
                for k in np.flatnonzero(self.available)
            },
            "covariance": "pooled within-class, shrunk towards its diagonal",
            "shrinkage": round(self.shrinkage, 6),
        }


def class_prototypes(
    latents: np.ndarray,
    labels: np.ndarray,
    label_source: np.ndarray | None = None,
    num_classes: int | None = None,
    min_members: int = MIN_PROTOTYPE_MEMBERS,
) -> Prototypes:
    """The class prototypes of ``latents`` (N, D) with ``labels`` (N,) (-1: none) whose
    ``label_source`` is ``manual`` for hand labels (default: every label is a hand label), and
    their tied covariance."""
    latents = np.asarray(latents, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if latents.ndim != 2 or len(latents) != len(labels):
        raise SenseError(
            f"prototypes need latents (N, D) and N labels, got {latents.shape} and {labels.shape}"
        )
    if len(latents) == 0:
        raise SenseError("prototypes need at least one member")
    if not np.isfinite(latents).all():
        raise SenseError("prototypes need finite latent vectors")
    manual = (
        labels != UNLABELED
        if label_source is None
        else np.asarray(label_source).astype(str) == "manual"
    )
    count = int(num_classes if num_classes is not None else max(labels.max() + 1, 0))
    size = max(count, 1)
    centres = np.full((size, latents.shape[1]), np.nan)
    members = np.zeros(size, dtype=np.int64)
    sources = [""] * size
    owner = np.full(len(latents), -1, dtype=np.int64)  # the prototype each member helped make
    for k in range(count):
        hand = (labels == k) & manual
        chosen, source = (hand, "manual") if hand.sum() >= min_members else (labels == k, "labeled")
        if chosen.any():
            centres[k], members[k], sources[k] = latents[chosen].mean(axis=0), chosen.sum(), source
            owner[chosen] = k
    if not np.isfinite(centres[:, 0]).any():  # no class at all: one prototype, the mean member
        centres[0], members[0], sources[0] = latents.mean(axis=0), len(latents), "all"
        owner[:] = 0
    used = owner >= 0
    residuals = latents[used] - centres[owner[used]]
    classes = int(np.sum(members > 0))
    dim = latents.shape[1]
    covariance = residuals.T @ residuals / max(len(residuals) - classes, 1)
    shrinkage = min(1.0, max(MIN_SHRINKAGE, dim / max(len(residuals), 1)))
    level = np.trace(covariance) / dim
    if not level > 1e-12:  # every member on its prototype: plain distances
        covariance, level, shrinkage = np.eye(dim), 1.0, 1.0
    diagonal = np.diag(np.diag(covariance))
    covariance = (1.0 - shrinkage) * covariance + shrinkage * diagonal
    covariance += RIDGE * level * np.eye(dim)
    return Prototypes(centres, members, tuple(sources), np.linalg.inv(covariance), shrinkage)


def prototype_distances(
    latents: np.ndarray,
    labels: np.ndarray,
    label_source: np.ndarray | None = None,
    num_classes: int | None = None,
    min_members: int = MIN_PROTOTYPE_MEMBERS,
) -> tuple[np.ndarray, Prototypes]:
    """Per member, its distance to its class prototype (to the nearest prototype when it has
    no class or its class has none): float32 (N,), and the prototypes."""
    prototypes = class_prototypes(latents, labels, label_source, num_classes, min_members)
    labels = np.asarray(labels, dtype=np.int64)
    every = prototypes.distances(latents)
    distance = np.nanmin(every, axis=1)
    if prototypes.sources[0] != "all":  # members of a class with a prototype: that one
        available = prototypes.available
        mine = (labels >= 0) & (labels < len(available))
        mine[mine] = available[labels[mine]]
        rows = np.flatnonzero(mine)
        distance[rows] = every[rows, labels[rows]]
    return distance.astype(np.float32), prototypes


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank among the finite ones, scaled to [0, 1] (0 = smallest, 1 = largest;
    ties at their average rank; a single value 0.5); NaN where the value is not finite."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    count = int(finite.sum())
    if count == 1:
        ranks[finite] = 0.5
    elif count > 1:
        _, inverse, counts = np.unique(values[finite], return_inverse=True, return_counts=True)
        average = (np.cumsum(counts) - counts) + (counts - 1) / 2.0  # 0-based average rank
        ranks[finite] = average[inverse] / (count - 1)
    return ranks


def empirical_p_values(values: np.ndarray) -> np.ndarray:
    """Per value, the share of the finite values at least as high (ties at their average
    rank): 1/N for the largest, 1 for the smallest; NaN where the value is not finite."""
    values = np.asarray(values, dtype=np.float64)
    count = int(np.isfinite(values).sum())
    return 1.0 - percentile_ranks(values) * (count - 1) / max(count, 1)


def fisher_statistics(*scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per member, ``T = -Σ ln p`` over the empirical p-values of the given scores (None: not
    available; a score that is not finite for a member is left out for it) and how many scores
    entered it: float64 (N,) and int (N,)."""
    given = [empirical_p_values(s) for s in scores if s is not None]
    if not given:
        raise SenseError("unusualness needs at least one score")
    stacked = np.stack(given)
    finite = np.isfinite(stacked)
    total = -np.where(finite, np.log(np.where(finite, stacked, 1.0)), 0.0).sum(axis=0)
    return total, finite.sum(axis=0)


def combined_unusualness(*scores: np.ndarray | None) -> np.ndarray:
    """Fisher's combination of the scores' empirical p-values: ``1 - P(χ²(2k) ≥ 2T)`` =
    ``1 - e^-T Σ_{j<k} T^j / j!``, float32 (N,) in [0, 1]; NaN where no score is finite."""
    total, count = fisher_statistics(*scores)
    combined = np.zeros_like(total)
    term = np.ones_like(total)
    for j in range(int(count.max(initial=0))):
        if j:
            term = term * total / j
        combined += np.where(j < count, term, 0.0)
    unusualness = 1.0 - np.exp(-total) * combined
    return np.where(count > 0, unusualness, np.nan).astype(np.float32)


def unusual_order(*scores: np.ndarray | None) -> np.ndarray:
    """Member indices, most unusual first: by Fisher's ``T`` of the scores (None: not
    available), then by the larger of the member's percentile ranks, then by member order;
    members without any finite score come last."""
    total, count = fisher_statistics(*scores)
    primary = np.where(count > 0, total, -np.inf)
    stacked = np.stack([percentile_ranks(s) for s in scores if s is not None])
    secondary = np.where(np.isfinite(stacked), stacked, -np.inf).max(axis=0)
    return np.lexsort((np.arange(len(total)), -secondary, -primary))


def unusual_ranks(*scores: np.ndarray | None) -> np.ndarray:
    """Per member, its place in :func:`unusual_order` (1 = the most unusual): int32 (N,)."""
    order = unusual_order(*scores)
    ranks = np.empty(len(order), dtype=np.int32)
    ranks[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return ranks


def most_unusual(count: int, *scores: np.ndarray | None) -> np.ndarray:
    """Indices of the ``count`` most unusual members (:func:`unusual_order` of ``scores``),
    most unusual first; fewer when the ensemble is smaller."""
    if count < 0:
        raise SenseError(f"the number of unusual members must be >= 0, got {count}")
    return unusual_order(*scores)[:count]


@dataclass
class UnusualScores:
    """The per-member scores of :func:`score_members` and how they were made."""

    reconstruction_error: np.ndarray | None  # float32 (N,), None without a decoder
    prototype_distance: np.ndarray  # float32 (N,)
    unusualness: np.ndarray  # float32 (N,) in [0, 1]
    prototypes: Prototypes

    @property
    def rank(self) -> np.ndarray:
        """1 = the most unusual member."""
        return unusual_ranks(self.reconstruction_error, self.prototype_distance)

    def most_unusual(self, count: int) -> np.ndarray:
        """Indices of the ``count`` most unusual members, most unusual first."""
        return most_unusual(count, self.reconstruction_error, self.prototype_distance)

    def describe(self, class_names: Sequence[str] = ()) -> dict[str, Any]:
        """JSON-ready provenance: which scores, how combined, the prototypes."""
        used = ["prototype_distance"]
        if self.reconstruction_error is not None:
            used.insert(0, "reconstruction_error")
        return {
            "scores": used,
            "unusualness": "Fisher's combination of the empirical p-values of "
            + " and ".join(used),
            "prototypes": self.prototypes.describe(class_names),
        }


def score_members(
    latents: np.ndarray,
    labels: np.ndarray,
    label_source: np.ndarray | None = None,
    num_classes: int | None = None,
    reconstruction_error: np.ndarray | None = None,
    min_members: int = MIN_PROTOTYPE_MEMBERS,
) -> UnusualScores:
    """Prototype distances of ``latents``, and unusualness from them and the members'
    ``reconstruction_error`` (when given; see the module docstring)."""
    distance, prototypes = prototype_distances(
        latents, labels, label_source, num_classes, min_members
    )
    if reconstruction_error is not None:
        reconstruction_error = np.asarray(reconstruction_error, dtype=np.float32)
        if reconstruction_error.shape != distance.shape:
            raise SenseError(
                f"{len(reconstruction_error)} reconstruction errors for {len(distance)} members"
            )
    return UnusualScores(
        reconstruction_error,
        distance,
        combined_unusualness(reconstruction_error, distance),
        prototypes,
    )


def unusual_rows(embedding, count: int) -> list[dict[str, Any]]:
    """The ``count`` most unusual members of an :class:`~sense_core.embedding.Embedding` that
    carries the scores, most unusual first, as rows (rank, member_id, scores, class)."""
    if embedding.unusualness is None:
        raise SenseError("the embedding has no unusual-member scores")
    recon, distance = embedding.reconstruction_error, embedding.prototype_distance
    rows = []
    for place, index in enumerate(most_unusual(count, recon, distance)):
        label = int(embedding.labels[index])
        rows.append(
            {
                "rank": place + 1,
                "member_id": embedding.member_ids[index],
                "unusualness": float(embedding.unusualness[index]),
                "reconstruction_error": None if recon is None else float(recon[index]),
                "prototype_distance": float(distance[index]),
                "label": label,
                "class_name": embedding.class_names[label] if label >= 0 else "",
                "label_source": str(embedding.label_source[index]),
            }
        )
    return rows


# --------------------------------------------------------------------------- command line
UNUSUAL_DESCRIPTION = """\
List the most unusual members of an ensemble: each member is encoded by the bundle's encoder
(and labeled by its labeler), reconstructed by its decoder, and scored by its reconstruction
error and its Mahalanobis distance to its class prototype in the latent space; unusualness
combines the two (Fisher's method on their ranks: near 1 = at the top of one or both).
Bundles without a decoder (trained before SENSE exported decoders) are ranked by the
prototype distance alone, with a note.

Prints the --count most unusual members, most unusual first; --out also writes them as CSV
(rank, member_id, unusualness, reconstruction_error, prototype_distance, label, class_name,
label_source). `sense embed` writes the scores of every member into embedding.csv/.npz, and the
ParaView map carries them as point arrays. See docs/unusual.md.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``sense unusual`` on the ``sense`` subcommands."""
    from sense_core.cli_options import add_inference_options, add_reader_options

    parser = commands.add_parser(
        "unusual",
        help="list the most unusual members (reconstruction error, distance to class prototype)",
        description=UNUSUAL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("ensemble", help="ensemble .npz file or folder of members")
    parser.add_argument("bundle", help="model bundle folder (with sense.json)")
    parser.add_argument(
        "--count", type=int, default=10, help="how many members to list (default 10)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write them to this CSV file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_inference_options(parser, labeler=False)
    parser.add_argument(
        "--no-labeler",
        action="store_true",
        help="do not predict classes: unlabeled members get the distance to the nearest prototype",
    )
    add_reader_options(parser)
    parser.set_defaults(handler=_run_unusual)


def _run_unusual(args: argparse.Namespace) -> int:
    from sense_core.cli_options import guard_output

    if args.count < 1:
        raise SenseError(f"--count must be >= 1, got {args.count}")
    if args.out is None:
        return _unusual(args)
    if args.out.exists() and not args.overwrite:
        raise SenseError(f"{args.out}: already exists (use --overwrite)")
    guarded = guard_output(_unusual, inputs=("ensemble",), bundles=("bundle",), replaces=True)
    return guarded(args)


def _unusual(args: argparse.Namespace) -> int:
    from sense_core.cli_options import open_from_args
    from sense_core.embedding import embed_ensemble, set_unusual_scores, write_columns_csv
    from sense_core.projection import ProjectionOptions

    store = open_from_args(args.ensemble, args)
    embedding = embed_ensemble(
        store,
        args.bundle,
        device=args.device,
        threads=args.threads,
        batch_size=args.batch_size,
        projection=ProjectionOptions(method="pca"),  # the map is not used: the cheapest one
        use_labeler=not args.no_labeler,
        metrics=False,
        progress=sys.stderr.isatty(),
    )
    notes = []
    if embedding.unusualness is None:
        scores = score_members(
            embedding.latents, embedding.labels, embedding.label_source, len(embedding.class_names)
        )
        set_unusual_scores(embedding, scores)
        notes.append(
            f"{args.bundle}: the bundle has no decoder (trained before SENSE exported "
            "decoders): ranked by prototype distance only; train the encoder again for "
            "reconstruction errors"
        )
    rows = unusual_rows(embedding, args.count)
    if args.out is not None:
        columns = {key: np.asarray([row[key] for row in rows]) for key in rows[0]}
        if columns["reconstruction_error"].dtype == object:
            columns["reconstruction_error"] = np.full(len(rows), np.nan)
        write_columns_csv(columns, args.out)
    if args.json:
        print(json.dumps({"members": len(embedding), "notes": notes, "unusual": rows}, indent=2))
        return 0
    for note in notes:
        print(f"note: {note}")
    print(f"the {len(rows)} most unusual of {len(embedding)} members (unusualness 0-1):")
    heading = ("rank", "unusualness", "recon_error", "proto_dist")
    print("{:>4}  {:>11}  {:>11}  {:>10}  member (class)".format(*heading))
    for row in rows:
        recon = row["reconstruction_error"]
        shown = "" if recon is None else f"{recon:.4g}"
        kind = f"{row['class_name']}, {row['label_source']}" if row["class_name"] else "no class"
        print(
            f"{row['rank']:>4}  {row['unusualness']:>11.4f}  {shown:>11}  "
            f"{row['prototype_distance']:>10.3f}  {row['member_id']} ({kind})"
        )
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0
