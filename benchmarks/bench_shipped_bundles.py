"""How well shipped-bundle candidates label the built-in ensembles (the "The shipped bundles"
tables of docs/label_efficiency.md). For each bundle folder: the labeler's test accuracy and the
2D test silhouette from its ``fit_report.json``, then the bundle's labeler on

- ``1500``: the 1,500 members of ``sense generate <generator> --n 1500 --size 64
  --labeled-fraction 0.2 --seed 0`` (drops with ``--times-per-simulation 1``: the shipped
  ensembles' fields; for a bundle fitted on them this is mostly training accuracy);
- channels only, ``demo`` and ``demo_quick``: the 600 members ``sense demo`` and ``sense demo
  --quick`` generate (chains that mix, and the generator's default chains).

Each ensemble gives the agreement with its hand labels, the accuracy on all members against the
generator's classes, and how many members without a hand label each class is predicted for.

Run: ``.venv/bin/python benchmarks/bench_shipped_bundles.py channels models/channels64
[other bundle folders] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def labeler_scores(bundle: Path, ensemble) -> dict:
    """The bundle's labeler on ``ensemble``: agreement with its hand labels, accuracy against
    the generator's classes (metadata ``regime``), predictions per class of the other members."""
    from sense_core.embedding import embed_ensemble

    predicted = embed_ensemble(ensemble, bundle, unusual=False).predicted_labels
    truth = np.asarray(ensemble.metadata["regime"])
    hand = np.asarray(ensemble.labels) >= 0
    return {
        "agreement": round(float(np.mean(predicted[hand] == truth[hand])), 3),
        "all": round(float(np.mean(predicted == truth)), 3),
        "predicted_unlabeled": np.bincount(
            predicted[~hand], minlength=len(ensemble.class_names)
        ).tolist(),
    }


def ensembles(generator: str) -> dict:
    """The ensembles the candidates are scored on (see the module docstring)."""
    from sense_core.generators import generate_with_info
    from sense_paraview.demo import DEMO_CHANNELS

    shipped = {"times_per_simulation": 1} if generator == "drops" else {}
    found = {"1500": generate_with_info(generator, 1500, 64, 0.2, 0, **shipped)[0]}
    if generator == "channels":
        found["demo"] = generate_with_info("channels", 600, 64, 0.1, 0, **DEMO_CHANNELS)[0]
        found["demo_quick"] = generate_with_info("channels", 600, 64, 0.1, 0)[0]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("generator", choices=("channels", "drops"))
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders (with a fit report)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    scored = ensembles(args.generator)
    rows = {}
    for bundle in args.bundles:
        report = json.loads((bundle / "fit_report.json").read_text())
        row = {
            "test": report["labeler"].get("test_accuracy"),
            "silhouette_2d_test": report.get("silhouette_2d_test", {}).get("sense"),
            "fit_seconds": report["seconds"]["total"],
            **{name: labeler_scores(bundle, ensemble) for name, ensemble in scored.items()},
        }
        rows[str(bundle)] = row
        print(bundle, json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
