"""The clustering-loss gap of finished runs under both training-side definitions.

``sense_training.encoder`` scores the training side of the gap on the hand-labeled training
members (:func:`~sense_training.encoder.monitor_pool`); before 2026-11-26 it used a sample of
512 of *all* labelled training members, pseudo-labelled ones included. This script recomputes
both from the exported encoders, to show that a conclusion does not hinge on the definition.

Usage (repo root)::

    .venv/bin/python docs/experiments/gap_both_monitors.py out/enc/drops32_pseudo.npz \
        out/enc/exp_drops32_pseudo/pseudo/seed0 [MORE_BUNDLES ...]
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.metrics import silhouette_score

from sense_core.bundle import Bundle
from sense_core.inference import Encoder
from sense_core.io import open_ensemble
from sense_training.encoder import EncoderConfig, training_parts


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    store = open_ensemble(argv[0])
    hand_labels = np.asarray(store.labels)
    for folder in argv[1:]:
        bundle = Bundle.load(folder)
        parts = training_parts(
            store, EncoderConfig.from_dict(bundle.manifest["training"]["encoder"]["config"])
        )
        encoder = Encoder(bundle, device="cpu")

        def cluster_loss(members: np.ndarray, labels: np.ndarray, model=encoder) -> float:
            codes = model.encode(store.read_members(members)).astype(np.float64)
            return 1 - silhouette_score(codes, labels)

        labelled = parts.train[parts.labels[parts.train] >= 0]
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(labelled, size=min(512, len(labelled)), replace=False))
        hand, val = np.sort(parts.split.train), np.sort(parts.split.validation)
        validation = cluster_loss(val, hand_labels[val])
        every = cluster_loss(sample, parts.labels[sample])
        only_hand = cluster_loss(hand, hand_labels[hand])
        print(
            f"{folder}: validation {validation:.3f} | all labelled {every:.3f}, gap "
            f"{validation - every:.3f} | hand-labeled {only_hand:.3f}, gap "
            f"{validation - only_hand:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
