"""How much of the train–validation clustering gap is the sample size of the two parts?

The gap is ``(1 − s̄_val) − (1 − s̄_train)`` with s̄ the mean silhouette of a part's latent codes
against its labels. The silhouette of a smaller set can be lower even when both parts come from
the same distribution (b(i) is a minimum over noisy class means), which would show a gap
without overfitting (280 training vs 60 validation members on channels). This script trains
the given variants (settings of ``explore_remedies.py``) and scores each model's hand-labeled
training members three ways: all of them, random subsets with the validation part's class
counts (``DRAWS`` draws, mean), and the validation part itself. Measured on channels 32 px
(docs/encoder.md): the subsets score within 0.007 of the whole part, so size is not the cause.

Usage (from the repo root)::

    .venv/bin/python docs/experiments/gap_measurement.py out/enc/channels32.npz out/enc/gapcheck \
        '{"plain_ae": {"losses": "recon"}, "sense_cluster": {}}'
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from sklearn.metrics import silhouette_score

from sense_core.io import open_ensemble
from sense_training.data import EnsembleDataset
from sense_training.encoder import EncoderConfig, encode_dataset, train_encoder

sys.path.insert(0, "docs/experiments")
from explore_remedies import BASE  # noqa: E402

DRAWS = 50


def matched_silhouette(code, labels, target_counts, rng) -> float:
    """Mean silhouette over random subsets of (code, labels) with ``target_counts`` per class."""
    scores = []
    for _ in range(DRAWS):
        picks = np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == c), size=n, replace=False)
                for c, n in target_counts.items()
            ]
        )
        scores.append(silhouette_score(code[picks], labels[picks]))
    return float(np.mean(scores))


def main(argv: list[str]) -> int:
    data, out, spec = argv
    store = open_ensemble(data)
    for name, values in json.loads(spec).items():
        result = train_encoder(
            store,
            f"{out}/{name}",
            EncoderConfig.from_dict({**BASE, **values}),
            export=False,
            log=lambda *_: None,
            command=["gap_measurement.py", name],
        )
        parts, model = result.parts, result.model
        device = torch.device("cpu")
        scores = {}
        for part, members in (("train", parts.split.train), ("val", parts.split.validation)):
            dataset = EnsembleDataset(store, members, result.normalization)
            encoded = encode_dataset(model, dataset, device)
            scores[part] = (encoded["code"], np.asarray(store.labels)[members])
        val_labels = scores["val"][1]
        counts = {int(c): int(n) for c, n in zip(*np.unique(val_labels, return_counts=True))}
        rng = np.random.default_rng(0)
        s_train = silhouette_score(*scores["train"])
        s_matched = matched_silhouette(*scores["train"], counts, rng)
        s_val = silhouette_score(*scores["val"])
        selected = result.metrics["selected"]
        print(
            f"{name}: n_train {len(scores['train'][1])} n_val {len(val_labels)} | "
            f"s_train {s_train:.3f} s_train_matched {s_matched:.3f} s_val {s_val:.3f} | "
            f"gap all {s_train - s_val:.3f} matched {s_matched - s_val:.3f} "
            f"(history gap {selected.get('cluster_gap', float('nan')):.3f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
