"""Label efficiency: how good are the pseudo-labels and the map when a scientist hand-labels only
a few members? For each ensemble, hand-labeled fraction and seed, the benchmark hides the labels of
all other members (their true labels stay with the benchmark, ``sense fit`` never sees them), runs
``sense fit``'s pipeline (library :func:`sense_training.pipeline.fit`) on what is left and scores:

- ``sense_<method>``: accuracy of the bundle's labeler on the members whose labels were hidden
  (what the pseudo-labels that shape the encoder's clustering loss are drawn from), for each
  ``--labeler-method`` of ``sense fit`` (``cnn``: EfficientNetV2 on the hand labels; ``latent``:
  heads on an encoder's latent space; ``ssl``: a self-supervised encoder with the views of
  :data:`VIEWS` for the ensemble, self-training, a cross-validated choice of the labeler;
  ``fixmatch``: ``cnn`` with FixMatch's consistency term on the members without a hand label,
  strong views from :data:`VIEWS`);
- ``pseudo_accuracy_<method>``: accuracy of the first labeler, whose pseudo-labels the final
  encoder trained with, on the hidden members; ``pseudo_given_share_<method>`` /
  ``pseudo_given_accuracy_<method>``: the share of them over the confidence threshold (the
  others get no pseudo-label) and the accuracy of those;
- ``labeler_test_accuracy_<method>``: the labeler on the hand-labeled test members (``fit``'s
  own split);
- ``silhouette_2d_test_<method>``: SENSE's 2D test silhouette (mean over the evaluation's UMAP
  seeds), with UMAP on raw fields beside it.

Beside it, on the same members, the baselines anyone can run in five lines, fitted on all
hand-labeled members and scored on the hidden ones: logistic regression and 5-NN on the raw fields
(standardised), and logistic regression on the latent vectors of the ``cnn`` fit's encoder
(``latent_logreg_cnn``).

Ensembles: ``digits`` (scikit-learn's 1,797 handwritten digits, 8x8 upscaled x4 to 32x32), the
built-in generators ``channels`` and ``drops``, ``crops`` (of the images in --crops-images, when
given), and the held-out ensembles of ``benchmarks/heldout_ensembles.py`` (``ising``,
``grayscott``, ``textures``) that no SENSE default was tuned on. Fractions: a number in (0, 1] or
``10pc`` (10 members per class). With a fraction so small that ``fit`` refuses (too few members per
split), the row records ``fit``'s message instead of figures: that is what a user would meet.

Run (full table, hours on 2 cores):
``.venv/bin/python benchmarks/bench_label_efficiency.py --out out/label_efficiency``; a subset:
``--ensembles ising,textures --fractions 0.05,0.15 --seeds 0``. Cells already done (their JSON in
``--out``/cells) are read back, so an interrupted run continues. The table is printed and written
as Markdown (``--markdown``) and JSON (``--json``), the plot to ``--plot``.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

BUILTIN = ("digits", "channels", "drops", "crops")
HELDOUT = ("ising", "grayscott", "textures")
FRACTIONS = ("0.01", "0.05", "0.15", "0.5", "10pc")
METHODS = (
    "raw_logreg", "raw_knn5", "sense_cnn", "latent_logreg_cnn", "sense_latent", "sense_ssl",
    "sense_fixmatch",
)  # fmt: skip
# The views of the instance-contrastive term (--labeler-method ssl) each ensemble's physics
# allows (presets of sense_training.config.VIEW_PRESETS; docs/label_efficiency.md says why).
VIEWS = {
    "ising": "lattice",
    "grayscott": "periodic",
    "textures": "image",
    "crops": "image",
    "drops": "gravity",
    "channels": "oriented",
    "digits": "handwriting",
}


def make_ensemble(name: str, count: int, size: int, seed: int, crops_images: Sequence[Path]):
    """The fully labeled ensemble ``name`` (every member's true class kept)."""
    from sense_core.ensemble import Ensemble

    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        fields = np.kron(digits.images.astype(np.float32) / 16.0, np.ones((4, 4), np.float32))
        names = [str(d) for d in range(10)]
        return Ensemble(fields=fields, labels=digits.target, class_names=names)
    if name in ("channels", "drops"):
        from sense_core.generators import generate

        return generate(name, n=count, size=size, labeled_fraction=1.0, seed=seed)
    if name == "crops":
        if not crops_images:
            raise ValueError("crops needs --crops-images")
        from sense_core.generators import generate

        return generate(
            name, n=count, size=size, labeled_fraction=1.0, seed=seed, images=list(crops_images)
        )
    import heldout_ensembles

    return heldout_ensembles.HELDOUT[name](count=count, size=size, seed=seed)


def hand_labeled(truth: np.ndarray, fraction: str, seed: int) -> np.ndarray:
    """Which members the 'scientist' labels: a random ``fraction`` of them, or 10 per class."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(truth), dtype=bool)
    if fraction.endswith("pc"):
        per_class = int(fraction[:-2])
        for label in np.unique(truth):
            members = np.flatnonzero(truth == label)
            chosen[rng.choice(members, min(per_class, len(members)), replace=False)] = True
        return chosen
    count = max(1, int(round(float(fraction) * len(truth))))
    chosen[rng.choice(len(truth), count, replace=False)] = True
    return chosen


def kept_cells(run: Path, n: int, size: int, prefixes: Sequence[str] = ()):
    """The bundles a run of this benchmark kept (``run/bundles``, optionally only names starting
    with one of ``prefixes``) with their cells remade: yields (bundle folder, ensemble name,
    fraction, seed, the fully labeled ensemble, the hand-labeled mask). For the scripts that
    re-score kept bundles (bench_head_blend.py, bench_labeler_choice.py)."""
    ensembles = {}
    for folder in sorted((run / "bundles").iterdir()):
        if prefixes and not folder.name.startswith(tuple(prefixes)):
            continue
        name, fraction, seed, _ = folder.name.split("_")
        if name not in ensembles:
            ensembles[name] = make_ensemble(name, n, size, 0, [])
        ensemble, seed = ensembles[name], int(seed[1:])
        labeled = hand_labeled(np.asarray(ensemble.labels), fraction, seed)
        yield folder, name, fraction, seed, ensemble, labeled


def raw_baselines(fields: np.ndarray, truth: np.ndarray, labeled: np.ndarray) -> dict[str, Any]:
    """Logistic regression and 5-NN on standardised raw fields: hidden members' accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    flat = fields.reshape(len(fields), -1)
    return {
        "raw_logreg": _score(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), flat, truth, labeled
        ),
        "raw_knn5": _score(
            make_pipeline(StandardScaler(), KNeighborsClassifier(5)), flat, truth, labeled
        ),
    }


def _score(model, features: np.ndarray, truth: np.ndarray, labeled: np.ndarray) -> float | None:
    if len(np.unique(truth[labeled])) < 2:
        return None
    if hasattr(model, "n_neighbors") or hasattr(model[-1], "n_neighbors"):
        model[-1].n_neighbors = min(model[-1].n_neighbors, int(labeled.sum()))
    model.fit(features[labeled], truth[labeled])
    return float(np.mean(model.predict(features[~labeled]) == truth[~labeled]))


def run_cell(
    ensemble,
    name: str,
    fraction: str,
    seed: int,
    out: Path,
    profile: str,
    labeler_methods: Sequence[str] = ("cnn", "latent"),
    views: str | None = None,
) -> dict:
    """One (ensemble, fraction, seed): fit on the hand-labeled part and score every method."""

    from sense_core.ensemble import UNLABELED, Ensemble

    truth = np.asarray(ensemble.labels)
    labeled = hand_labeled(truth, fraction, seed)
    hidden = Ensemble(
        fields=ensemble.fields,
        labels=np.where(labeled, truth, UNLABELED),
        class_names=ensemble.class_names,
        member_ids=ensemble.member_ids,
        metadata=ensemble.metadata,
    )
    row: dict[str, Any] = {
        "ensemble": name,
        "fraction": fraction,
        "seed": seed,
        "members": len(truth),
        "hand_labeled": int(labeled.sum()),
        "classes": len(ensemble.class_names),
        "classes_hand_labeled": int(len(np.unique(truth[labeled]))),
        **raw_baselines(np.asarray(ensemble.fields), truth, labeled),
    }
    for method in labeler_methods:
        row.update(
            fit_and_score(hidden, truth, labeled, name, fraction, seed, out, profile, method, views)
        )
    return row


def fit_and_score(
    hidden, truth, labeled, name, fraction, seed, out: Path, profile, method, views=None
):
    """``fit`` with one labeler method; its figures, keyed ``<figure>_<method>``. ``views``
    replaces the ensemble's :data:`VIEWS` preset (``ssl``, ``fixmatch``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sense_core.embedding import embed_ensemble
    from sense_core.errors import SenseError
    from sense_training.pipeline import fit, profile_configs

    bundle = out / "bundles" / f"{name}_{fraction}_s{seed}_{method}"
    started = time.perf_counter()
    row: dict[str, Any] = {}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            configs = profile_configs(profile)
            encoder, labeler, labeler_method = configs.encoder, configs.labeler, method
            chosen_views = views or VIEWS.get(name, "generic")
            if method == "ssl":
                encoder = encoder.updated(instance_views=chosen_views)
            if method == "fixmatch":  # the cnn labeler with FixMatch's consistency term
                labeler_method = "cnn"
                labeler = labeler.updated(consistency=1.0, strong_views=chosen_views)
            report = fit(
                hidden, bundle, profile=profile, encoder=encoder, labeler=labeler, overwrite=True,
                labeler_method=labeler_method,
            )  # fmt: skip
    except SenseError as error:
        row[f"fit_error_{method}"] = str(error)
        return row
    row[f"fit_seconds_{method}"] = round(time.perf_counter() - started, 1)
    embedding = embed_ensemble(hidden, bundle)
    predicted = embedding.predicted_labels
    row[f"sense_{method}"] = float(np.mean(predicted[~labeled] == truth[~labeled]))
    row[f"labeler_test_accuracy_{method}"] = report.labeler.get("test_accuracy")
    row[f"labeler_{method}"] = report.labeler.get("architecture")
    first = report.labeler.get("first_choice") or {}
    row[f"first_labeler_{method}"] = first.get("chosen")
    row[f"pseudo_none_{method}"] = report.pseudo_labels.get("none")
    row.update({f"{k}_{method}": v for k, v in pseudo_label_scores(bundle, truth, labeled).items()})
    silhouettes = report.silhouette_2d_test
    row[f"silhouette_2d_test_{method}"] = (silhouettes.get("sense") or {}).get("mean")
    row["silhouette_2d_test_umap_raw"] = (silhouettes.get("umap_raw") or {}).get("mean")
    latent_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    row[f"latent_logreg_{method}"] = _score(latent_model, embedding.latents, truth, labeled)
    return row


def pseudo_label_scores(bundle: Path, truth: np.ndarray, labeled: np.ndarray) -> dict[str, Any]:
    """The pseudo-labels the final encoder trained with (``fit_run/pseudo_labels.npz``): the
    accuracy of the first labeler on the hidden members, and of the labels it gave (those over
    the confidence threshold) with their share."""
    from sense_training.pipeline import FIT_RUN, PSEUDO_LABELS

    path = bundle / FIT_RUN / PSEUDO_LABELS
    if not path.is_file():
        return {}
    with np.load(path) as data:
        predicted, given = data["predicted"], data["source"] == "pseudo"
    hidden = ~labeled
    scores: dict[str, Any] = {"pseudo_accuracy": float(np.mean(predicted[hidden] == truth[hidden]))}
    scores["pseudo_given_share"] = float(np.mean(given[hidden]))
    if given.any():
        scores["pseudo_given_accuracy"] = float(np.mean(predicted[given] == truth[given]))
    return scores


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def markdown_table(rows: list[dict]) -> str:
    """One line per (ensemble, fraction): mean ± sd over seeds of every figure."""
    columns = (
        *METHODS,
        "pseudo_accuracy_latent",
        "pseudo_accuracy_ssl",
        "pseudo_given_share_ssl",
        "pseudo_given_accuracy_ssl",
        "labeler_test_accuracy_cnn",
        "labeler_test_accuracy_latent",
        "labeler_test_accuracy_ssl",
        "silhouette_2d_test_cnn",
        "silhouette_2d_test_latent",
        "silhouette_2d_test_ssl",
        "silhouette_2d_test_umap_raw",
    )
    header = ["ensemble", "hand-labeled", "seeds", *columns, "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["ensemble"], row["fraction"]), []).append(row)
    for (name, fraction), group in groups.items():
        labeled = int(np.mean([r["hand_labeled"] for r in group]))
        cells = [name, f"{fraction} ({labeled})", str(len(group))]
        for column in columns:
            cells.append(_mean_sd([r.get(column) for r in group]))
        errors = sorted({v for r in group for k, v in r.items() if k.startswith("fit_error")})
        cells.append("; ".join(f"fit refused: {e}" for e in errors))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Pseudo-label accuracy against hand-labeled members, one panel per ensemble."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["ensemble"] for r in rows))
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    for axis, name in zip(axes[0], names):
        mine = [r for r in rows if r["ensemble"] == name]
        for method in METHODS:
            points: dict[int, list[float]] = {}
            for r in mine:
                if r.get(method) is not None:
                    points.setdefault(r["hand_labeled"], []).append(r[method])
            if points:
                xs = sorted(points)
                axis.plot(xs, [np.mean(points[x]) for x in xs], marker="o", label=method)
        axis.set_xscale("log")
        axis.set_title(name)
        axis.set_xlabel("hand-labeled members")
        axis.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy on the hidden members")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ensembles",
        default=",".join(BUILTIN + HELDOUT),
        help="comma-separated ensembles (default: all)",
    )
    parser.add_argument(
        "--fractions",
        default=",".join(FRACTIONS),
        help="comma-separated hand-labeled fractions, or Npc = N per class",
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--n", type=int, default=1200, help="members per generated ensemble")
    parser.add_argument("--size", type=int, default=32, help="field size of generated ensembles")
    parser.add_argument("--profile", default="quick", help="sense fit profile (default quick)")
    parser.add_argument(
        "--crops-images",
        type=Path,
        nargs="*",
        default=[],
        help="source images of the crops ensemble (skipped without)",
    )
    parser.add_argument("--out", type=Path, default=Path("out/label_efficiency"))
    parser.add_argument(
        "--labeler-methods", default="cnn,latent", help="sense fit --labeler-method values"
    )
    parser.add_argument(
        "--views",
        help="views of ssl / fixmatch for every ensemble instead of its preset (e.g. generic)",
    )
    parser.add_argument("--json", type=Path, help="write the rows and the machine to this file")
    parser.add_argument("--markdown", type=Path, help="write the table to this file")
    parser.add_argument("--plot", type=Path, help="write the accuracy plot to this PNG")
    args = parser.parse_args(argv)

    names = [n for n in args.ensembles.split(",") if n]
    if "crops" in names and not args.crops_images:
        print("crops skipped: no --crops-images given")
        names.remove("crops")
    fractions = [f for f in args.fractions.split(",") if f]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    methods = [m for m in args.labeler_methods.split(",") if m]
    cells = args.out / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    rows = []
    for name in names:
        ensemble = None
        for fraction in fractions:
            for seed in seeds:
                path = cells / f"{name}_{fraction}_s{seed}.json"
                if path.is_file():
                    row = json.loads(path.read_text())
                    missing = [m for m in methods if f"sense_{m}" in row]
                    missing = [m for m in missing if f"pseudo_accuracy_{m}" not in row]
                    if missing:  # a cell of an older run: score its kept pseudo-labels
                        if ensemble is None:
                            ensemble = make_ensemble(name, args.n, args.size, 0, args.crops_images)
                        truth = np.asarray(ensemble.labels)
                        labeled = hand_labeled(truth, fraction, seed)
                        for method in missing:
                            bundle = args.out / "bundles" / f"{name}_{fraction}_s{seed}_{method}"
                            scores = pseudo_label_scores(bundle, truth, labeled)
                            row.update({f"{k}_{method}": v for k, v in scores.items()})
                        path.write_text(json.dumps(row, indent=1) + "\n")
                    rows.append(row)
                    continue
                if ensemble is None:
                    ensemble = make_ensemble(name, args.n, args.size, 0, args.crops_images)
                started = time.perf_counter()
                row = run_cell(
                    ensemble, name, fraction, seed, args.out, args.profile, methods, args.views
                )
                row["load_after"] = round(os.getloadavg()[0], 2)
                path.write_text(json.dumps(row, indent=1) + "\n")
                rows.append(row)
                print(
                    f"{name} {fraction} seed {seed}: "
                    + ", ".join(f"{m} {row[m]:.3f}" for m in METHODS if row.get(m) is not None)
                    + f" ({time.perf_counter() - started:.0f} s)"
                    + "".join(f" {k}: {v}" for k, v in row.items() if k.startswith("fit_error")),
                    flush=True,
                )
    table = markdown_table(rows)
    print(table)
    machine = {
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
