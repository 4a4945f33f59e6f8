"""Decode a point of the map: the field a member at that place would have.

The map is 2D, the latent space D-dimensional, and neither UMAP nor the bundle's projector has
an inverse. A point's latent vector is interpolated from the members nearest to it on the map
(inverse-distance weights of the ``neighbours`` nearest; a point on a member gives that member's
latent vector), and the bundle's decoder turns it into a field in the members' units. Between
clusters the result is a blend of the neighbours' latents: the decoder shows what the model makes
of it, not a physical state (docs/runtime.md, "Decoding the map").

:func:`decoding_fidelity` measures how far decoded fields are from real members: for a sample
of members, the field decoded at the member's own map position *without* that member among the
neighbours (what decoding an empty spot next to it would give), against the member itself and
against its reconstruction (decoder of its own latent).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sense_core.ensemble import MemberStore
from sense_core.errors import SenseError

NEIGHBOURS = 8


def latents_at(
    xy: np.ndarray,
    latents: np.ndarray,
    points: np.ndarray,
    neighbours: int = NEIGHBOURS,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Latent vectors (P, D) of map ``points`` (P, 2): inverse-distance weights of the
    ``neighbours`` members nearest on the map (``xy`` (N, 2), ``latents`` (N, D)).
    ``exclude`` (P,): a member index to leave out for each point (-1: none)."""
    from sklearn.neighbors import NearestNeighbors

    xy = np.asarray(xy, dtype=np.float64)
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    if points.shape[1] != 2 or not np.isfinite(points).all():
        raise SenseError(f"map points must be finite (x, y) pairs, got shape {points.shape}")
    count = min(neighbours + (exclude is not None), len(xy))
    distance, index = NearestNeighbors(n_neighbors=count).fit(xy).kneighbors(points)
    if exclude is not None:
        keep = index != np.asarray(exclude)[:, None]
        keep[keep.all(axis=1), -1] = False  # not among them: drop the farthest instead
        distance = distance[keep].reshape(len(points), -1)
        index = index[keep].reshape(len(points), -1)
    weights = 1.0 / np.maximum(distance, 1e-12)
    exact = distance <= 1e-12
    weights[exact.any(axis=1)] = exact[exact.any(axis=1)].astype(float)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("pk,pkd->pd", weights, np.asarray(latents, dtype=np.float64)[index]).astype(
        np.float32
    )


def decode_points(
    embedding, bundle_folder: str | os.PathLike, points: np.ndarray, **options: Any
) -> np.ndarray:
    """Fields (P, C, H, W), in the members' units, decoded at map ``points`` of ``embedding``
    (an :class:`~sense_core.embedding.Embedding` made with the same bundle)."""
    from sense_core.bundle import Bundle
    from sense_core.inference import Decoder

    neighbours = options.pop("neighbours", NEIGHBOURS)
    latents = latents_at(embedding.xy, embedding.latents, points, neighbours)
    return Decoder(Bundle.load(bundle_folder), **options).decode_raw(latents)


def decoding_fidelity(
    embedding,
    store: MemberStore,
    bundle_folder: str | os.PathLike,
    sample: int = 200,
    seed: int = 0,
    neighbours: int = NEIGHBOURS,
) -> dict[str, Any]:
    """RMSE (in members' standard deviations) of fields decoded at members' own map positions
    (leave-one-out) against the members and against their reconstructions, and of the
    reconstructions against the members, over a seeded sample."""
    from sense_core.bundle import Bundle
    from sense_core.inference import Decoder

    bundle = Bundle.load(bundle_folder)
    decoder = Decoder(bundle)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(embedding), min(sample, len(embedding)), replace=False))
    members = store.read_members(chosen).astype(np.float64)
    scale = float(members.std()) or 1.0
    interpolated = latents_at(
        embedding.xy, embedding.latents, embedding.xy[chosen], neighbours, exclude=chosen
    )
    decoded = decoder.decode_raw(interpolated).astype(np.float64)
    reconstructed = decoder.decode_raw(embedding.latents[chosen]).astype(np.float64)

    def rmse(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - b) ** 2)) / scale)

    return {
        "members": len(chosen),
        "neighbours": neighbours,
        "decoded_vs_member": rmse(decoded, members),
        "decoded_vs_reconstruction": rmse(decoded, reconstructed),
        "reconstruction_vs_member": rmse(reconstructed, members),
        "unit": "standard deviations of the sampled members' values",
    }
