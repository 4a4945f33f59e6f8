"""Plot the clustering loss (1 − mean silhouette) on training and validation members per epoch.

Usage::

    python docs/experiments/plot_cluster_gap.py --out docs/images/PLOT.png \
        --title "channels 32 px" NAME=RUN_OR_BUNDLE_DIR [NAME=RUN_OR_BUNDLE_DIR ...]

Each run folder holds ``history.json`` (written by ``sense train-encoder``; a bundle folder's
``encoder_run/`` is used). Left: ``train_cluster`` (dashed) and ``val_cluster`` (solid) per
epoch, one colour per NAME (repeat a NAME for several runs of it, e.g. training seeds); right:
the gap ``val − train`` with the 0.10 target. The selected epoch (``metrics.json``) is marked.
Written atomically (temporary file + rename).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def load_run(folder: Path) -> tuple[list[dict], int | None]:
    """The epoch records and the selected epoch of a run folder (or a bundle's encoder_run)."""
    if not (folder / "history.json").is_file() and (folder / "encoder_run").is_dir():
        folder = folder / "encoder_run"
    history = folder / "history.json"
    if not history.is_file():
        raise SystemExit(f"{folder}: no history.json (is this an encoder run folder?)")
    records = json.loads(history.read_text())["records"]
    missing = [r["epoch"] for r in records if "train_cluster" not in r or "val_cluster" not in r]
    if missing:
        raise SystemExit(f"{history}: epochs {missing} lack train_cluster/val_cluster")
    metrics = folder / "metrics.json"
    selected = None
    if metrics.is_file():
        selected = json.loads(metrics.read_text()).get("selected_epoch")
    return records, selected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=FOLDER")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument("--target", type=float, default=0.10, help="gap target line (0.10)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names: list[str] = []
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"{spec!r}: expected NAME=FOLDER")
        records, selected = load_run(Path(folder))
        epochs = [r["epoch"] + 1 for r in records]
        train = [r["train_cluster"] for r in records]
        val = [r["val_cluster"] for r in records]
        first = name not in names
        if first:
            names.append(name)
        colour = colours[names.index(name) % len(colours)]
        label = name if first else None
        left.plot(epochs, train, "--", color=colour, marker="o", markersize=3)
        left.plot(epochs, val, "-", color=colour, marker="o", markersize=3, label=label)
        right.plot(
            epochs,
            [v - t for v, t in zip(val, train)],
            color=colour,
            marker="o",
            markersize=3,
            label=label,
        )
        if selected is not None:
            at = next(i for i, r in enumerate(records) if r["epoch"] == selected)
            right.plot(
                epochs[at], val[at] - train[at], "s", color=colour, markersize=8, fillstyle="none"
            )
    left.set_xlabel("epoch")
    left.set_ylabel("1 − mean silhouette (latent)")
    left.set_title("clustering loss: train (dashed), validation (solid)")
    left.legend(fontsize=8)
    right.axhline(args.target, color="grey", linestyle=":", label=f"target {args.target:.2f}")
    right.set_xlabel("epoch")
    right.set_ylabel("validation − train")
    right.set_title("gap (square: selected epoch)")
    right.legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=args.out.parent)
    os.close(handle)
    try:
        fig.savefig(temporary, dpi=110)
        os.replace(temporary, args.out)
    finally:
        plt.close(fig)
        if os.path.exists(temporary):
            os.remove(temporary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
