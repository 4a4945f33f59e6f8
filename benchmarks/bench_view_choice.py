"""Can the hand labels say which views keep a member's class? (a check, not adopted).

``ssl`` needs the views of the ensemble's kind (docs/label_efficiency.md): with the generic ones
it labels worse than ``latent``. This benchmark tries to choose them without the user: for each
view op it cross-validates (stratified, up to 5 folds, seeded) a logistic regression on the
standardised raw fields of the hand-labeled members, trained once on the members and once on
the members plus one view of each (same label), and tests both on untransformed held-out
members. An op that turns one class into another (``rot90`` on channels: east-west becomes
north-south) should add contradicting examples and cost accuracy; a valid one should not.

Prints, per ensemble and hand-labeled fraction, the base accuracy and each op's change with the
members it fixed / broke, and the ops of the ensemble's preset (``VIEWS`` of
bench_label_efficiency.py) beside it, so one sees whether the change singles out the invalid
ops.

Run: ``.venv/bin/python benchmarks/bench_view_choice.py [--ensembles channels,drops,...]
[--fractions 0.05,0.15] [--seed 0] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from bench_label_efficiency import VIEWS, hand_labeled, make_ensemble


def cross_validated(fields: np.ndarray, labels: np.ndarray, op: str | None, seed: int):
    """Which hand-labeled members a logistic regression trained on the other folds (plus one
    ``op`` view of each of their members) classifies correctly."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sense_training.data import InstanceViews

    counts = np.bincount(labels)
    folds = StratifiedKFold(min(5, int(counts[counts > 0].min())), shuffle=True, random_state=seed)
    flat = fields.reshape(len(fields), -1)
    correct = np.zeros(len(labels), dtype=bool)
    views = None if op is None else InstanceViews((op,))
    for train, test in folds.split(flat, labels):
        inputs, targets = [flat[train]], [labels[train]]
        if views is not None:
            viewed = [views.apply(fields[i], np.random.default_rng([seed, int(i)])) for i in train]
            inputs.append(np.stack(viewed).reshape(len(train), -1))
            targets.append(labels[train])
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(np.concatenate(inputs), np.concatenate(targets))
        correct[test] = model.predict(flat[test]) == labels[test]
    return correct


def main(argv: list[str] | None = None) -> int:
    from sense_training.config import VIEW_OPS, view_ops

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensembles", default="channels,drops,digits,ising,grayscott,textures")
    parser.add_argument("--fractions", default="0.05,0.15")
    parser.add_argument("--n", type=int, default=1200, help="members per generated ensemble")
    parser.add_argument("--size", type=int, default=32, help="field size of generated ensembles")
    parser.add_argument("--seed", type=int, default=0, help="hand-label draw and folds (0)")
    parser.add_argument("--json", type=Path, help="write the rows and the machine here")
    args = parser.parse_args(argv)

    rows = []
    for name in [e for e in args.ensembles.split(",") if e]:
        ensemble = make_ensemble(name, args.n, args.size, 0, [])
        fields = np.asarray(ensemble.fields, dtype=np.float32)
        fields = (fields - fields.mean()) / fields.std()  # the views act on normalised fields
        truth = np.asarray(ensemble.labels)
        preset = view_ops(VIEWS[name])
        for fraction in [f for f in args.fractions.split(",") if f]:
            chosen = np.flatnonzero(hand_labeled(truth, fraction, args.seed))
            members, labels = fields[chosen], truth[chosen]
            started = time.perf_counter()
            base = cross_validated(members, labels, None, args.seed)
            ops = {}
            for op in VIEW_OPS:
                if op == "rot90" and members.shape[-1] != members.shape[-2]:
                    continue
                viewed = cross_validated(members, labels, op, args.seed)
                ops[op] = {
                    "change": round(float(viewed.mean() - base.mean()), 4),
                    "fixed": int(np.sum(~base & viewed)),
                    "broken": int(np.sum(base & ~viewed)),
                    "in_preset": op in preset,
                }
            row = {
                "ensemble": name,
                "fraction": fraction,
                "hand_labels": len(chosen),
                "base_accuracy": round(float(base.mean()), 4),
                "preset": VIEWS[name],
                "ops": ops,
                "seconds": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            changes = " ".join(
                f"{op}{'*' * o['in_preset']} {o['change']:+.3f} ({o['fixed']}/{o['broken']})"
                for op, o in ops.items()
            )
            print(
                f"{name} {fraction} ({len(chosen)} labels): base {row['base_accuracy']:.3f}; "
                f"{changes}",
                flush=True,
            )
    print("* = op of the ensemble's preset; (fixed/broken) hand-labeled members")
    if args.json:
        machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
