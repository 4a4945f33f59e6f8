"""The labeling loop, measured: from an unlabeled ensemble to a map whose pseudo-labels are
>= 0.90 accurate, how many hand labels does a scientist need when SENSE suggests what to label,
and how many when they pick members at random?

A simulated user works as a person in ParaView would (docs/labeling.md):

1. ``sense fit`` with no hand labels (library :func:`sense_training.pipeline.fit`): a
   self-supervised encoder, the map, suggested groups. Trained once per ensemble (seed 0).
2. Each round the user is shown ``--per-round`` members — the ones ``sense suggest`` picks
   (:func:`sense_core.suggest.suggest_members`: the labeler's margin combined with coverage of
   the map; before any labeler, the typical member of each unlabeled region), or, for the
   baseline, members drawn at random — and answers their true class (the benchmark holds the
   truth; the loop sees only the answers).
3. The fast "head" training of the loop: :func:`sense_training.heads.choose_head` on the
   encoder's latent vectors (the candidates cross-validated on the answers so far).
4. Pseudo-label accuracy = the head's accuracy on every member the user has not labeled.

The curve (accuracy against hand labels, mean over seeds) goes to ``--plot``, the table of
"hand labels to reach the target" to ``--markdown`` and everything to ``--json``. The encoder is
kept fixed through the loop (what the seconds-fast head training of the GUI does); a full refit
with the labels would shape the latent space further.

Run (about 10 minutes per ensemble of 2,000 members on 2 cores, most of it the label-free fit):
``.venv/bin/python benchmarks/bench_labeling_loop.py --out out/labeling_loop
--json docs/benchmarks/labeling_loop.json --markdown docs/benchmarks/labeling_loop.md
--plot docs/images/labeling_loop.png``. Fits already made (in ``--out``/bundles) are reused.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

STRATEGIES = ("suggested", "random")


def label_free_latents(ensemble, name: str, out: Path, profile: str) -> tuple[np.ndarray, dict]:
    """The latent vectors of every member under a label-free ``fit`` of ``ensemble`` (cached)."""
    from sense_core.bundle import Bundle
    from sense_core.ensemble import UNLABELED, Ensemble
    from sense_core.inference import Encoder
    from sense_training.pipeline import fit

    bundle = out / "bundles" / name
    record_path = bundle / "fit_report.json"
    unlabeled = Ensemble(
        fields=ensemble.fields,
        labels=np.full(len(ensemble.fields), UNLABELED),
        class_names=ensemble.class_names,
        member_ids=ensemble.member_ids,
    )
    if not record_path.is_file():
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            fit(unlabeled, bundle, profile=profile, overwrite=True)
        print(f"{name}: label-free fit in {time.perf_counter() - started:.0f} s", flush=True)
    report = json.loads(record_path.read_text())
    latents = Encoder(Bundle.load(bundle)).encode_store(unlabeled)
    return np.asarray(latents), report


def run_loop(
    latents: np.ndarray,
    truth: np.ndarray,
    strategy: str,
    seed: int,
    per_round: int,
    max_labels: int,
    snapshots: dict[int, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """One simulated user: rounds of ``per_round`` answers until ``max_labels``; the head's
    accuracy on the members not yet labeled after each round. ``snapshots``: its keys are
    label counts; the answers given by then are stored under them (for the full refits)."""
    from sense_core.ensemble import UNLABELED
    from sense_core.inference import softmax
    from sense_core.suggest import suggest_members
    from sense_training.heads import choose_head

    classes = int(truth.max()) + 1
    rng = np.random.default_rng(seed)
    answers = np.full(len(truth), UNLABELED, dtype=np.int64)
    head = None
    curve = []
    while (answers != UNLABELED).sum() < max_labels:
        open_members = np.flatnonzero(answers == UNLABELED)
        if strategy == "suggested":
            probabilities = None if head is None else softmax(head.logits(latents))
            picks = suggest_members(
                latents, probabilities, answers, count=per_round, seed=seed + len(curve)
            ).indices
        else:
            picks = rng.choice(open_members, min(per_round, len(open_members)), replace=False)
        answers[picks] = truth[picks]
        known = answers != UNLABELED
        if snapshots is not None and int(known.sum()) in snapshots:
            snapshots[int(known.sum())] = answers.copy()
        seen = np.unique(answers[known])
        if len(seen) >= 2:
            choice = choose_head(latents, answers, classes, seed=seed)
            head, chosen = choice.head, choice.name
            predicted = head.predict(latents[~known])
        else:  # one class named so far: every member is that class
            head, chosen = None, "one class"
            predicted = np.full(int((~known).sum()), seen[0])
        curve.append(
            {
                "hand_labels": int(known.sum()),
                "classes_seen": int(len(seen)),
                "accuracy": float(np.mean(predicted == truth[~known])),
                "head": chosen,
            }
        )
    return curve


def refit(ensemble, answers: np.ndarray, truth: np.ndarray, tag: str, out: Path, args) -> dict:
    """A full ``sense fit`` with the answers so far as its hand labels (what *Train Full Fit*
    runs; ``--refit-method ssl`` with the ensemble's views as *Field Symmetries*), scored as the
    head is: the new bundle's labels on every member the user has not labeled."""
    from bench_label_efficiency import fit_and_score

    from sense_core.ensemble import UNLABELED, Ensemble

    labeled = answers != UNLABELED
    hidden = Ensemble(
        fields=ensemble.fields,
        labels=answers,
        class_names=ensemble.class_names,
        member_ids=ensemble.member_ids,
    )
    method = args.refit_method
    row = fit_and_score(hidden, truth, labeled, tag, "refit", 0, out, args.profile, method)
    if f"fit_error_{method}" in row:
        return {"hand_labels": int(labeled.sum()), "error": row[f"fit_error_{method}"]}
    return {
        "hand_labels": int(labeled.sum()),
        "method": method,
        "accuracy": row[f"sense_{method}"],
        "first_labeler_accuracy": row.get(f"pseudo_accuracy_{method}"),
        "silhouette_2d_test": row.get(f"silhouette_2d_test_{method}"),
        "fit_seconds": row[f"fit_seconds_{method}"],
    }


def refit_table(results: list[dict[str, Any]]) -> str:
    """Head on the label-free latents against a full refit with the same answers."""
    lines = [
        "| ensemble | picking | hand labels | head on the label-free latents (per seed) | "
        "full refit (per seed) | refit mean | fit seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for strategy in STRATEGIES:
            refits = result.get("refits", {}).get(strategy) or []
            counts = sorted({r["hand_labels"] for seed in refits for r in seed})
            for count in counts:
                heads = [
                    next(p["accuracy"] for p in curve if p["hand_labels"] == count)
                    for curve in result["curves"][strategy]
                ]
                done = [r for seed in refits for r in seed if r["hand_labels"] == count]
                scores = [r["accuracy"] for r in done if "accuracy" in r]
                lines.append(
                    f"| {result['ensemble']} | {strategy} | {count} | "
                    + ", ".join(f"{h:.3f}" for h in heads)
                    + " | "
                    + ", ".join(f"{v:.3f}" for v in scores)
                    + f" | {np.mean(scores):.3f} | "
                    + ", ".join(f"{r['fit_seconds']:.0f}" for r in done if "fit_seconds" in r)
                    + " |"
                )
    return "\n".join(lines) + "\n"


def labels_to_reach(curve: list[dict[str, Any]], target: float) -> int | None:
    """Hand labels after which the accuracy stays at or above ``target`` for the rest of the
    curve (None: never)."""
    reached = None
    for point in curve:
        if point["accuracy"] >= target:
            reached = point["hand_labels"] if reached is None else reached
        else:
            reached = None
    return reached


def markdown_table(results: list[dict[str, Any]], target: float) -> str:
    """One line per ensemble: labels to reach the target and accuracy at fixed label counts."""
    lines = [
        f"| ensemble | members | classes | strategy | hand labels to reach {target:.2f} "
        "(per seed) | accuracy at 20 | at 50 | at 100 | at max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for strategy in STRATEGIES:
            curves = result["curves"][strategy]
            reach = [labels_to_reach(c, target) for c in curves]
            cells = [
                result["ensemble"],
                str(result["members"]),
                str(result["classes"]),
                strategy,
                ", ".join("never" if r is None else str(r) for r in reach),
            ]
            for count in (20, 50, 100, None):
                values = [
                    next((p["accuracy"] for p in c if p["hand_labels"] >= count), None)
                    if count is not None
                    else c[-1]["accuracy"]
                    for c in curves
                ]
                values = [v for v in values if v is not None]
                cells.append(
                    f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
                    if len(values) > 1
                    else (f"{values[0]:.3f}" if values else "–")
                )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], target: float, path: Path) -> None:
    """Accuracy against hand labels, suggested vs random, mean and range over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.2), squeeze=False)
    for axis, result in zip(axes[0], results):
        for strategy, colour in zip(STRATEGIES, ("tab:blue", "tab:grey")):
            curves = result["curves"][strategy]
            xs = [p["hand_labels"] for p in curves[0]]
            ys = np.array([[p["accuracy"] for p in c] for c in curves])
            axis.plot(xs, ys.mean(axis=0), color=colour, label=strategy)
            axis.fill_between(xs, ys.min(axis=0), ys.max(axis=0), color=colour, alpha=0.2)
        axis.axhline(target, color="black", linewidth=0.8, linestyle="--")
        axis.set_title(f"{result['ensemble']} ({result['members']} members)")
        axis.set_xlabel("hand labels")
        axis.set_ylim(0, 1)
    axes[0][0].set_ylabel("pseudo-label accuracy (unlabeled members)")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ensembles", default="ising,grayscott,drops", help="comma-separated ensembles"
    )
    parser.add_argument("--n", type=int, default=2000, help="members per generated ensemble")
    parser.add_argument("--size", type=int, default=48, help="field size of generated ensembles")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the user")
    parser.add_argument("--per-round", type=int, default=10, help="members answered per round")
    parser.add_argument("--max-labels", type=int, default=200, help="stop after this many")
    parser.add_argument("--target", type=float, default=0.90, help="pseudo-label accuracy goal")
    parser.add_argument("--profile", default="quick", help="profile of the label-free fit")
    parser.add_argument("--out", type=Path, default=Path("out/labeling_loop"))
    parser.add_argument("--json", type=Path, help="write the curves and the machine here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--plot", type=Path, help="write the curves' plot (PNG) here")
    parser.add_argument(
        "--refit-at",
        default="",
        help="comma-separated label counts at which each user's answers so far also train a "
        "full fit (what Train Full Fit does; minutes each), scored like the head",
    )
    parser.add_argument(
        "--refit-method",
        default="ssl",
        help="labeler method of the full refits (ssl, with the ensemble's views: what Train Full "
        "Fit runs with Field Symmetries named; latent: without)",
    )
    args = parser.parse_args(argv)

    from bench_label_efficiency import make_ensemble

    seeds = [int(s) for s in args.seeds.split(",") if s]
    load_before = os.getloadavg()
    results = []
    for name in [n for n in args.ensembles.split(",") if n]:
        ensemble = make_ensemble(name, args.n, args.size, 0, [])
        truth = np.asarray(ensemble.labels, dtype=np.int64)
        latents, report = label_free_latents(ensemble, name, args.out, args.profile)
        curves: dict[str, list] = {}
        refits: dict[str, list] = {}
        refit_at = [int(n) for n in args.refit_at.split(",") if n]
        for strategy in STRATEGIES:
            started = time.perf_counter()
            curves[strategy], refits[strategy] = [], []
            for seed in seeds:
                snapshots: dict[int, np.ndarray] = dict.fromkeys(refit_at)
                curves[strategy].append(
                    run_loop(
                        latents, truth, strategy, seed, args.per_round, args.max_labels, snapshots
                    )
                )
                refits[strategy].append(
                    [
                        refit(ensemble, answers, truth, f"{name}_{strategy}{count}_s{seed}",
                              args.out, args)
                        for count, answers in snapshots.items()
                        if answers is not None
                    ]
                )  # fmt: skip
                if refits[strategy][-1]:
                    print(f"{name} {strategy} seed {seed}: {refits[strategy][-1]}", flush=True)
            reach = [labels_to_reach(c, args.target) for c in curves[strategy]]
            print(
                f"{name} {strategy}: labels to reach {args.target}: {reach}; final accuracy "
                f"{[round(c[-1]['accuracy'], 3) for c in curves[strategy]]} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        results.append(
            {
                "ensemble": name,
                "members": len(truth),
                "classes": len(ensemble.class_names),
                "label_free_fit_seconds": report.get("seconds", {}).get("total"),
                "curves": curves,
                **({"refits": refits} if refit_at else {}),
            }
        )
    table = markdown_table(results, args.target)
    if any("refits" in result for result in results):
        table += "\n" + refit_table(results)
    print(table)
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
    }
    command = "python benchmarks/bench_labeling_loop.py " + " ".join(argv or sys.argv[1:])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"command": command, "machine": machine, "target": args.target, "results": results}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    if args.plot:
        plot(results, args.target, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
