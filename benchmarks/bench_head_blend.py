"""Would a labeler that uses both the latent vectors and the raw fields beat the choice between
them? On the bundles a label-efficiency run kept (``bench_label_efficiency.py --out DIR``: one
fitted bundle per ensemble, fraction and seed in ``DIR/bundles``), this refits, on all hand-labeled
members of each cell, the linear classifiers ``sense fit``'s latent labeler chooses between and two
that combine them, and scores each on the members whose labels the benchmark hid:

- ``bundle``: the bundle's own labeler (what ``sense fit`` chose; its pseudo-labels);
- ``latent``: logistic regression on the encoder's latent vectors
  (:class:`sense_training.heads.LinearHead`, as ``sense fit`` fits it);
- ``raw``: the same on the normalised raw fields;
- ``concatenated``: the same on [latent, raw fields] side by side (standardised per column);
- ``averaged``: the mean of the ``latent`` and ``raw`` class probabilities.

For the final bundle (``final_*``) and for the first labeler's bundle, whose pseudo-labels the
final encoder trained with (``first_*``, ``fit_run/hand_bundle``). The members are regenerated
exactly as the label-efficiency benchmark made them (its ``--n``/``--size`` defaults).

Run: ``.venv/bin/python benchmarks/bench_head_blend.py out/le_small --json FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_label_efficiency import kept_cells  # noqa: E402


def hidden_accuracies(folder: Path, fields: np.ndarray, truth: np.ndarray, labeled: np.ndarray):
    """Accuracy on the hidden members of the bundle's labeler and of the four linear heads."""
    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder, Labeler, softmax
    from sense_training.heads import LinearHead

    bundle = Bundle.load(folder)
    classes = len(bundle.class_names)
    latents = Encoder(bundle).encode(fields)
    raw = bundle.normalization.apply(fields).reshape(len(fields), -1)
    both = np.hstack([latents, raw])
    hidden = ~labeled

    def score(predicted: np.ndarray) -> float:
        return float(np.mean(predicted[hidden] == truth[hidden]))

    heads = {
        name: (LinearHead.fit(x[labeled], truth[labeled], classes), x)
        for name, x in (("latent", latents), ("raw", raw), ("concatenated", both))
    }
    probabilities = [softmax(head.logits(x).astype(np.float64)) for head, x in heads.values()]
    scores = {"bundle": score(Labeler(bundle).predict(fields).labels)}
    scores.update({name: score(head.predict(x)) for name, (head, x) in heads.items()})
    scores["averaged"] = score((probabilities[0] + probabilities[1]).argmax(axis=1))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an --out folder of bench_label_efficiency.py")
    parser.add_argument("--n", type=int, default=1200, help="members per generated ensemble")
    parser.add_argument("--size", type=int, default=32, help="field size")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)

    rows = []
    for folder, name, fraction, seed, ensemble, labeled in kept_cells(args.run, args.n, args.size):
        fields = np.asarray(ensemble.fields, dtype=np.float32)
        truth = np.asarray(ensemble.labels)
        method = folder.name.split("_")[-1]
        row = {"ensemble": name, "fraction": fraction, "seed": seed, "method": method}
        for stage, bundle in (("final", folder), ("first", folder / "fit_run" / "hand_bundle")):
            scores = hidden_accuracies(bundle, fields, truth, labeled)
            row.update({f"{stage}_{key}": value for key, value in scores.items()})
        rows.append(row)
        print(
            f"{folder.name:30s} "
            + " ".join(f"{k[6:]} {v:.3f}" for k, v in row.items() if k.startswith("final_")),
            flush=True,
        )
    if args.json:
        machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
