"""The pseudo-label noise ablation: 2D test silhouette against the fraction of flipped labels.

Usage (repo root, after ``sense experiment --config docs/experiments/grid_NAME_noise.toml``,
which trains training seeds 0, 1, 2 and reports each in ``<out>/seed<k>``)::

    python docs/experiments/plot_label_noise.py --out docs/images/label_noise.png \
        channels32=out/enc/exp_channels32_noise/seed0,out/enc/exp_channels32_noise/seed1,... \
        drops32=out/enc/exp_drops32_noise/seed0,...

Reads each folder's ``evaluation.json`` (variants ``pseudo_noiseNN``, NN = percent flipped,
plus ``plain_ae``, ``umap_raw``, ``pca_raw`` as reference lines). Several folders per dataset
(``NAME=DIR,DIR,...``: runs with different training seeds) give mean ± sd over the runs; one
folder gives its mean ± sd over UMAP seeds. Writes the numbers to ``docs/results.json`` →
``label_noise``.
Both files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
from pathlib import Path

RESULTS = Path("docs/results.json")
NOISE_ROW = re.compile(r"pseudo_noise(\d+)$")


def read_run(folder: Path) -> tuple[dict[float, tuple[float, float | None]], dict[str, float]]:
    """One experiment folder: {fraction: (2D test silhouette mean over UMAP seeds, gap)} and
    the reference rows (``plain_ae``, ``umap_raw``, ``pca_raw``) it has."""
    evaluation = json.loads((folder / "evaluation.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    points, reference = {}, {}
    for row in evaluation["rows"]:
        match = NOISE_ROW.match(row["name"])
        if match:
            gap = summary["cluster_gap"].get(row["name"], {}).get("selected")
            points[int(match.group(1)) / 100] = (row["silhouette_2d_test_mean"], gap)
        elif row["name"] in ("plain_ae", "umap_raw", "pca_raw"):
            reference[row["name"]] = row["silhouette_2d_test_mean"]
    if not points:
        raise SystemExit(f"{folder}: no pseudo_noiseNN rows in evaluation.json")
    return points, reference


def read_ablation(folders: list[Path]) -> dict:
    """Runs of the same ablation with different training seeds (one folder each): per fraction
    the mean and sd over the runs (sd over UMAP seeds when there is one run) and the per-run
    values. ``{"fraction", "mean", "sd", "per_seed", "gap", "reference", "runs"}``."""
    runs = [read_run(folder) for folder in folders]
    fractions = sorted(runs[0][0])
    if any(sorted(points) != fractions for points, _ in runs):
        raise SystemExit(f"{folders}: the runs flip different fractions")
    per_seed = [[points[f][0] for points, _ in runs] for f in fractions]
    gaps = [[points[f][1] for points, _ in runs if points[f][1] is not None] for f in fractions]
    if len(runs) == 1:  # one training seed: the spread over UMAP seeds
        evaluation = json.loads((folders[0] / "evaluation.json").read_text())
        spread = {r["name"]: r["silhouette_2d_test_sd"] for r in evaluation["rows"]}
        sd = [spread[f"pseudo_noise{round(100 * f):02d}"] for f in fractions]
    else:
        sd = [statistics.stdev(values) for values in per_seed]
    reference = {k: v for _, ref in runs for k, v in ref.items()}
    return {
        "fraction": fractions,
        "mean": [statistics.fmean(values) for values in per_seed],
        "sd": sd,
        "per_seed": per_seed,
        "gap": [statistics.fmean(values) if values else None for values in gaps],
        "reference": reference,
        "runs": [str(folder) for folder in folders],
    }


def _atomic(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=FOLDER[,FOLDER...]")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    ablations = {}
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"{spec!r}: expected NAME=FOLDER")
        ablations[name] = read_ablation([Path(f) for f in folder.split(",")])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ablations), figsize=(4.6 * len(ablations), 3.6), squeeze=False)
    for ax, (name, data) in zip(axes[0], ablations.items()):
        percent = [100 * f for f in data["fraction"]]
        seeds = len(data["runs"])
        ax.errorbar(percent, data["mean"], yerr=data["sd"], marker="o", capsize=3,
                    label=f"SENSE (recon + silhouette), {seeds} training seed(s)")  # fmt: skip
        for (ref, value), style in zip(sorted(data["reference"].items()), (":", "--", "-.")):
            ax.axhline(value, color="grey", linestyle=style, label=ref)
        ax.set_xlabel("pseudo-labels flipped (%)")
        ax.set_ylabel("2D test silhouette")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _atomic(args.out, lambda path: fig.savefig(path, dpi=110))
    plt.close(fig)
    results = json.loads(RESULTS.read_text())
    results["label_noise"] = ablations
    _atomic(RESULTS, lambda path: Path(path).write_text(json.dumps(results, indent=2) + "\n"))
    print(f"wrote {args.out}, {RESULTS} → label_noise")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
