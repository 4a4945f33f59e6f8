"""The pseudo-label noise ablation: 2D test silhouette against the fraction of flipped labels.

Usage (repo root, after ``sense experiment --config docs/experiments/grid_NAME_noise.toml``)::

    python docs/experiments/plot_label_noise.py --out docs/images/label_noise.png \
        channels32=out/enc/exp_channels32_noise drops32=out/enc/exp_drops32_noise

Reads each folder's ``evaluation.json`` (variants ``pseudo_noiseNN``, NN = percent flipped,
plus ``plain_ae``, ``umap_raw``, ``pca_raw`` as reference lines), plots mean ± sd over the
UMAP seeds per dataset and writes the numbers to ``docs/results.json`` → ``label_noise``.
Both files are written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path

RESULTS = Path("docs/results.json")
NOISE_ROW = re.compile(r"pseudo_noise(\d+)$")


def read_ablation(folder: Path) -> dict:
    """``{"fraction": [...], "mean": [...], "sd": [...], "gap": [...], "reference": {...}}``."""
    evaluation = json.loads((folder / "evaluation.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    points = []
    reference = {}
    for row in evaluation["rows"]:
        match = NOISE_ROW.match(row["name"])
        if match:
            gap = summary["cluster_gap"].get(row["name"], {}).get("selected")
            points.append(
                (
                    int(match.group(1)) / 100,
                    row["silhouette_2d_test_mean"],
                    row["silhouette_2d_test_sd"],
                    gap,
                )  # fmt: skip
            )
        elif row["name"] in ("plain_ae", "umap_raw", "pca_raw"):
            reference[row["name"]] = row["silhouette_2d_test_mean"]
    if not points:
        raise SystemExit(f"{folder}: no pseudo_noiseNN rows in evaluation.json")
    points.sort()
    fraction, mean, sd, gap = (list(column) for column in zip(*points))
    return {"fraction": fraction, "mean": mean, "sd": sd, "gap": gap, "reference": reference,
            "run": str(folder)}  # fmt: skip


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
    parser.add_argument("runs", nargs="+", metavar="NAME=FOLDER")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    ablations = {}
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"{spec!r}: expected NAME=FOLDER")
        ablations[name] = read_ablation(Path(folder))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ablations), figsize=(4.6 * len(ablations), 3.6), squeeze=False)
    for ax, (name, data) in zip(axes[0], ablations.items()):
        percent = [100 * f for f in data["fraction"]]
        ax.errorbar(percent, data["mean"], yerr=data["sd"], marker="o", capsize=3,
                    label="SENSE (recon + silhouette)")  # fmt: skip
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
