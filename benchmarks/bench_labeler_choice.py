"""How reliable is ``sense fit``'s choice between the latent head and the raw-field classifier
with few hand labels? On the bundles a label-efficiency run kept (``bench_label_efficiency.py
--out DIR``), for the first labeler's bundle (``first``, whose pseudo-labels the final encoder
trained with) and the final one (``final``): both linear classifiers fitted on the hand labels
of ``fit``'s training split and scored on its validation split (what the choice sees), their
stratified cross-validated accuracy on training + validation hand labels, and both refitted on
training + validation and scored on the members whose labels the benchmark hid (the truth).

One JSON line per bundle and stage. Run: ``.venv/bin/python benchmarks/bench_labeler_choice.py
out/le_small [--only ising,textures] > FILE.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_label_efficiency import kept_cells  # noqa: E402


def cross_validated(features: np.ndarray, labels: np.ndarray, classes: int) -> float | None:
    """Accuracy of :class:`LinearHead` over ``fit``'s stratified folds (None: too few labels)."""
    from sense_training.heads import LinearHead, cross_validation_folds

    folds = cross_validation_folds(labels, 0)
    if not folds:
        return None
    right = 0
    for train, test in folds:
        head = LinearHead.fit(features[train], labels[train], classes)
        right += int(np.sum(head.predict(features[test]) == labels[test]))
    return right / len(labels)


def accuracy(
    features: np.ndarray, truth: np.ndarray, fitted_on: np.ndarray, scored_on: np.ndarray, classes
) -> float:
    """A :class:`LinearHead` fitted on members ``fitted_on``, scored on members ``scored_on``."""
    from sense_training.heads import LinearHead

    head = LinearHead.fit(features[fitted_on], truth[fitted_on], classes)
    return float(np.mean(head.predict(features[scored_on]) == truth[scored_on]))


def main(argv: list[str] | None = None) -> int:
    from sense_core.bundle import Bundle
    from sense_core.ensemble import UNLABELED, Ensemble, split_hand_labeled
    from sense_core.inference import Encoder
    from sense_training.pipeline import profile_configs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an --out folder of bench_label_efficiency.py")
    parser.add_argument("--only", default="", help="comma-separated bundle name prefixes")
    parser.add_argument("--n", type=int, default=1200, help="members per generated ensemble")
    parser.add_argument("--size", type=int, default=32, help="field size")
    args = parser.parse_args(argv)

    split = profile_configs("quick").encoder.split
    prefixes = tuple(p for p in args.only.split(",") if p)
    cells = kept_cells(args.run, args.n, args.size, prefixes)
    for folder, _, _, _, ensemble, labeled in cells:
        truth = np.asarray(ensemble.labels)
        hidden = Ensemble(
            fields=ensemble.fields,
            labels=np.where(labeled, truth, UNLABELED),
            class_names=ensemble.class_names,
        )
        parts = split_hand_labeled(hidden, split.fractions, split.split_seed)[1]
        train, validation = np.sort(parts.train), np.sort(parts.validation)
        pool = np.sort(np.concatenate([train, validation]))
        classes = len(ensemble.class_names)
        fields = np.asarray(ensemble.fields, dtype=np.float32)
        for stage, bundle_dir in (("first", folder / "fit_run" / "hand_bundle"), ("final", folder)):
            bundle = Bundle.load(bundle_dir)
            inputs = {
                "lat": Encoder(bundle).encode(fields),
                "raw": bundle.normalization.apply(fields).reshape(len(truth), -1),
            }
            row = {"cell": folder.name, "stage": stage, "n_val": len(validation)}
            for kind, x in inputs.items():
                row[f"{kind}_val"] = accuracy(x, truth, train, validation, classes)
                row[f"{kind}_cv"] = cross_validated(x[pool], truth[pool], classes)
                row[f"{kind}_hidden"] = accuracy(x, truth, pool, np.flatnonzero(~labeled), classes)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
