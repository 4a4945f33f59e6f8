"""Unusual members: do members of another generator, planted in an ensemble, rank at the top?

For each seed: ``--base`` members of ``drops`` (20 % hand-labeled) and ``--planted`` members of
``channels`` (unlabeled) at random places, a tiny encoder trained on all of them (latent 6, base
channels 8, ``--epochs``, one thread; the settings of tests/test_unusual.py), then
:func:`sense_core.embedding.embed_ensemble` with the bundle's decoder. Recorded per seed: the
planted members' ranks by unusualness (Fisher's combination, SENSE's order), by the mean of the
two percentile ranks (the alternative), by reconstruction error alone and by prototype distance
alone, and the worst of each (a planted member ranks "in the top 1 %" when the worst is at most
1 % of the members).

Writes ``--json`` (default docs/benchmarks/unusual_planted.json) and, for the first seed, the
figure ``--figure`` (default docs/images/unusual_planted.png): the map (PCA of the latents)
coloured by unusualness, the two scores against each other, and the most unusual members;
with ``--paraview PNG``, also a screenshot of SENSE's linked layout in ParaView (pvbatch) with the
map coloured by unusualness and the ``--planted`` most unusual members selected.

Run: ``.venv/bin/python benchmarks/bench_unusual.py --seeds 8`` (~20 s a seed on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def planted_ensemble(base_count: int, planted: int, size: int, seed: int):
    """(ensemble, planted member ids): drops members with channels members planted in them."""
    from sense_core.ensemble import Ensemble
    from sense_core.generators import generate

    base = generate("drops", base_count, size=size, labeled_fraction=0.2, seed=seed)
    odd = generate(
        "channels", planted, size=size, labeled_fraction=0.0, seed=seed + 100,
        problems=planted, chains_per_problem=1, tempering_levels=1, burn_in=0, thin=1,
    )  # fmt: skip
    fields = np.concatenate([base.fields, odd.fields])
    labels = np.concatenate([base.labels, np.full(planted, -1)])
    order = np.random.default_rng(0).permutation(len(fields))
    ensemble = Ensemble(
        fields=fields[order],
        labels=labels[order],
        class_names=list(base.class_names),
        member_ids=[f"m{i:04d}" for i in range(len(fields))],
    )
    return ensemble, {ensemble.member_ids[i] for i in np.flatnonzero(order >= base_count)}


def run_seed(seed: int, args: argparse.Namespace, folder: Path):
    """One seed: the embedding, the planted ids and the ranks by each ordering."""
    import torch

    from sense_core.embedding import embed_ensemble
    from sense_core.projection import ProjectionOptions
    from sense_core.unusual import percentile_ranks, unusual_order
    from sense_training.encoder import EncoderConfig, train_encoder

    torch.set_num_threads(1)
    ensemble, planted = planted_ensemble(args.base, args.planted, args.size, seed)
    config = EncoderConfig.from_dict(
        dict(latent_dim=6, base_channels=8, epochs=args.epochs, batch_size=32, seed=3, threads=1,
             losses="recon,cluster")
    )  # fmt: skip
    started = time.perf_counter()
    train_encoder(
        ensemble, folder / f"bundle{seed}", config, log=lambda *_: None, command=["bench"]
    )
    trained = time.perf_counter() - started
    embedding = embed_ensemble(
        ensemble,
        folder / f"bundle{seed}",
        projection=ProjectionOptions(method="pca"),
        metrics=False,
    )
    recon, distance = embedding.reconstruction_error, embedding.prototype_distance
    mean_rank = (percentile_ranks(recon) + percentile_ranks(distance)) / 2
    orders = {
        "fisher": unusual_order(recon, distance),
        "mean_rank": np.lexsort((np.arange(len(mean_rank)), -mean_rank)),
        "reconstruction_error": unusual_order(recon),
        "prototype_distance": unusual_order(distance),
    }
    mask = np.isin(embedding.member_ids, sorted(planted))
    ranks = {}
    for name, order in orders.items():
        place = np.empty(len(order), dtype=np.int64)
        place[order] = np.arange(1, len(order) + 1)
        ranks[name] = sorted(int(r) for r in place[mask])
    record = {
        "seed": seed,
        "members": len(embedding),
        "planted_ranks": ranks,
        "worst": {name: max(values) for name, values in ranks.items()},
        "train_seconds": round(trained, 1),
        "unusual_seconds": embedding.provenance["seconds"].get("unusual"),
    }
    return embedding, ensemble, mask, record


def figure(embedding, ensemble, mask, path: Path, shown: int = 8) -> None:
    """Map coloured by unusualness, the two scores, and the most unusual members."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sense_core.unusual import most_unusual

    fig = Figure(figsize=(12, 6.6), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, shown, height_ratios=[3.2, 1.0])
    half = shown // 2
    axes = fig.add_subplot(grid[0, :half])
    order = np.argsort(embedding.unusualness)
    dots = axes.scatter(
        *embedding.xy[order].T, c=embedding.unusualness[order], cmap="viridis", s=9, vmin=0, vmax=1
    )
    axes.scatter(*embedding.xy[mask].T, s=80, facecolors="none", edgecolors="red", linewidths=1.2,
                 label="planted (channels)")  # fmt: skip
    axes.set_title("map (PCA of the latents) coloured by unusualness")
    axes.legend(loc="lower right", fontsize="small")
    fig.colorbar(dots, ax=axes, shrink=0.8, label="unusualness")
    scores = fig.add_subplot(grid[0, half:])
    scores.scatter(embedding.prototype_distance[~mask], embedding.reconstruction_error[~mask], s=8,
                   c="#888888", label="drops members")  # fmt: skip
    scores.scatter(embedding.prototype_distance[mask], embedding.reconstruction_error[mask], s=40,
                   c="red", label="planted (channels)")  # fmt: skip
    scores.set_xscale("log")
    scores.set_yscale("log")
    scores.set_xlabel("prototype distance (Mahalanobis / sqrt(D))")
    scores.set_ylabel("reconstruction error (normalised MSE)")
    scores.set_title("the two scores")
    scores.legend(loc="lower right", fontsize="small")
    top = most_unusual(shown, embedding.reconstruction_error, embedding.prototype_distance)
    for column, index in enumerate(top):
        tile = fig.add_subplot(grid[1, column])
        tile.imshow(ensemble.fields[index, 0], cmap="gray", vmin=0, vmax=1)
        tile.set_xticks([])
        tile.set_yticks([])
        colour = "red" if mask[index] else "black"
        tile.set_title(
            f"#{column + 1} {embedding.unusualness[index]:.4f}", fontsize=8, color=colour
        )
    fig.suptitle(
        f"{int(mask.sum())} channels members planted among {len(mask) - int(mask.sum())} drops "
        "members: the most unusual (bottom row, red = planted)"
    )
    fig.tight_layout()
    fig.savefig(path)


PARAVIEW_SCRIPT = """
from paraview.simple import *
from sense_paraview import show_linked_layout

linked = show_linked_layout(SENSEEnsembleReader(FileName={npz!r}), bundle={bundle!r},
                            Projection="PCA")
display = GetDisplayProperties(linked.embedding, linked.scatter_view)
ColorBy(display, ("POINTS", "unusualness"))
colors = GetColorTransferFunction("unusualness")
colors.ApplyPreset("Viridis (matplotlib)", True)
colors.RescaleTransferFunction(0.0, 1.0)
display.SetScalarBarVisibility(linked.scatter_view, True)
HideScalarBarIfNotNeeded(GetColorTransferFunction("label"), linked.scatter_view)
bar = GetScalarBar(colors, linked.scatter_view)
bar.WindowLocation, bar.TitleFontSize, bar.LabelFontSize = "Upper Right Corner", 14, 12
bar.RangeLabelFormat = "%.1f"
print(linked.select_where("unusual_rank <= {count}"))
SaveScreenshot({png!r}, linked.layout, ImageResolution=[1600, 800])
"""


def paraview_screenshot(ensemble, bundle: Path, count: int, png: Path, folder: Path) -> None:
    """The linked layout coloured by unusualness, the ``count`` most unusual selected."""
    import os
    import subprocess

    from sense_core.io import write_ensemble

    npz = write_ensemble(ensemble, folder / "planted.npz")
    script = folder / "unusual_layout.py"
    script.write_text(
        PARAVIEW_SCRIPT.format(npz=str(npz), bundle=str(bundle), count=count, png=str(png))
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}  # the launcher's own Xvfb
    sense = Path(sys.executable).parent / "sense"
    subprocess.run([str(sense), "pvbatch", str(script)], check=True, env=env, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeds 1..N (default 8)")
    parser.add_argument("--base", type=int, default=596, help="drops members (default 596)")
    parser.add_argument("--planted", type=int, default=4, help="channels members (default 4)")
    parser.add_argument("--size", type=int, default=32, help="member size (default 32)")
    parser.add_argument("--epochs", type=int, default=6, help="encoder epochs (default 6)")

    def path(text: str) -> Path | None:  # "" writes nothing
        return Path(text) if text else None

    parser.add_argument("--json", type=path, default=REPO / "docs/benchmarks/unusual_planted.json")
    parser.add_argument("--figure", type=path, default=REPO / "docs/images/unusual_planted.png")
    parser.add_argument("--paraview", type=path, default=None, help="ParaView screenshot (PNG)")
    args = parser.parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(1, args.seeds + 1):
            embedding, ensemble, mask, record = run_seed(seed, args, Path(scratch))
            records.append(record)
            print(json.dumps(record["worst"]), f"seed {seed}", flush=True)
            if seed == 1 and args.figure:
                figure(embedding, ensemble, mask, args.figure)
            if seed == 1 and args.paraview:
                bundle = Path(scratch) / f"bundle{seed}"
                paraview_screenshot(ensemble, bundle, args.planted, args.paraview, Path(scratch))
    members = records[0]["members"]
    summary = {
        name: {
            "worst_rank_per_seed": [r["worst"][name] for r in records],
            "seeds_all_in_top_1pc": sum(r["worst"][name] <= members // 100 for r in records),
            "seeds_all_in_top_2pc": sum(r["worst"][name] <= members // 50 for r in records),
        }
        for name in records[0]["worst"]
    }
    result = {
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("json", "figure", "paraview")
        },
        "members": members,
        "summary": summary,
        "seeds": records,
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in summary.items():
        print(f"{name:22s} worst ranks {row['worst_rank_per_seed']}  "
              f"top 1 %: {row['seeds_all_in_top_1pc']}/{len(records)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
