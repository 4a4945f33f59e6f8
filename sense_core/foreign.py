"""Foreign data: members whose values are not what the bundle was trained on.

A bundle normalises fields with the mean and standard deviation of its training members. Given
members on another scale (8-bit images, 0-255, to a bundle trained on 0-1 fields) or of another
kind, the encoder still returns latent vectors, and the map looks like a map: nothing fails, and
it means nothing. Before embedding, SENSE compares a sample of the members with the bundle's
training statistics, per channel, and warns with what differs and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sense_core.ensemble import MemberStore, NormalizationStats

SAMPLE = 256  # members read for the check (evenly spread over the ensemble)
# A channel is foreign when its mean is this many training standard deviations away from the
# training mean, or its spread differs from the training spread by this factor either way.
MEAN_SHIFT_LIMIT = 3.0
SPREAD_FACTOR_LIMIT = 4.0


def compare_with_training(normalization: NormalizationStats, fields: np.ndarray) -> list[str]:
    """What differs, per channel, between ``fields`` (N, C, H, W) and the training statistics:
    one sentence per foreign channel, none when they agree."""
    fields = np.asarray(fields, dtype=np.float64)
    problems = []
    for channel, (mean, std) in enumerate(zip(normalization.mean, normalization.std)):
        values = fields[:, channel][np.isfinite(fields[:, channel])]
        if values.size == 0:
            continue
        here_mean, here_std = float(values.mean()), float(values.std())
        shift = abs(here_mean - mean) / std
        factor = max(here_std, 1e-12) / std
        if shift > MEAN_SHIFT_LIMIT or not 1 / SPREAD_FACTOR_LIMIT <= factor <= SPREAD_FACTOR_LIMIT:
            problems.append(
                f"channel {channel}: values {values.min():.4g}..{values.max():.4g} (mean "
                f"{here_mean:.4g}, std {here_std:.4g}), but the bundle was trained on mean "
                f"{mean:.4g}, std {std:.4g} ({shift:.1f} training std away, spread x{factor:.3g})"
            )
    return problems


def foreign_data_warning(
    store: MemberStore, normalization: NormalizationStats, sample: int = SAMPLE
) -> str | None:
    """One warning naming how the members differ from the bundle's training data and what to
    do, or None. Reads at most ``sample`` members, evenly spread."""
    count = len(store)
    indices: Sequence[int] = np.unique(np.linspace(0, count - 1, min(sample, count)).astype(int))
    problems = compare_with_training(normalization, store.read_members(indices))
    if not problems:
        return None
    return (
        "these members do not look like the bundle's training data: "
        + "; ".join(problems)
        + ". The map may mean nothing: put the fields on the scale the bundle was trained on "
        "(e.g. divide 8-bit images by 255), or fit a bundle on this ensemble (sense fit)"
    )
