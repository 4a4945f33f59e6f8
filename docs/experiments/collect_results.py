"""Update ``docs/results.json`` from finished ``sense experiment`` runs (run from the repo root).

Usage::

    python docs/experiments/collect_results.py --dataset channels32 --dataset drops32 \
        --remedy channels32=out/enc/exp_channels32_remedy/seed0,...

``--dataset NAME`` reads ``out/enc/exp_NAME/summary.json`` and ``evaluation.json`` (written by
``sense experiment --config docs/experiments/grid_NAME.toml``) and replaces that dataset's entry,
keeping the keys other scripts check (``best_sense``, ``plain_ae``, ``umap_raw``, ``pca_raw``)
and adding ``plain_vae``, every row's mean and sd, the clustering-loss gaps and the times.
``--remedy NAME=DIR,DIR,...`` writes ``remedies.NAME``: per variant the mean and sd over the
runs (one per training seed: ``<out>/seed<k>`` of a grid with ``train_seeds``) of the 2D test
silhouette and of the selected epoch's gap. Other entries are kept. ``--note NAME=TEXT``
(``remedies.NAME=TEXT``) records the machine load of a run. ``--choose
KEY=REMEDY:VARIANT:BASELINE`` records under ``cluster_gap_target.KEY`` the remedy variant chosen
for that ensemble and its baseline, both read from ``remedies.REMEDY`` (mean 2D test silhouette
and mean gap over the training seeds), with ``met`` = every seed's gap ≤ 0.10. Written
atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

RESULTS = Path("docs/results.json")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path}: missing (did the experiment finish?)")
    return json.loads(path.read_text())


def dataset_entry(name: str, note: str | None) -> dict:
    """The results.json entry of ``out/enc/exp_NAME``."""
    folder = Path(f"out/enc/exp_{name}")
    summary = _read(folder / "summary.json")
    evaluation = _read(folder / "evaluation.json")
    entry = {
        "command": f"nice -n 15 sense experiment --config docs/experiments/grid_{name}.toml",
        "config": f"docs/experiments/grid_{name}.toml",
        "best_sense": summary["best_sense"],
        "best_sense_name": summary["best_sense_name"],
        "plain_ae": summary["plain_ae"],
        "plain_vae": summary.get("plain_vae"),
        "umap_raw": summary["umap_raw"],
        "pca_raw": summary["pca_raw"],
        "all": summary["silhouette_2d_test"],
        "sd": {r["name"]: r["silhouette_2d_test_sd"] for r in evaluation["rows"]},
        "cluster_gap": summary["cluster_gap"],
        "training_seconds": summary.get("training_seconds", {}),
        "seconds": summary["seconds"],
    }
    if note:
        entry["machine_load"] = note
    return entry


def remedy_entry(folders: list[Path], note: str | None) -> dict:
    """Mean and sd over training seeds (one experiment folder each) per variant."""
    scores: dict[str, list[float]] = {}
    gaps: dict[str, list[float]] = {}
    for folder in folders:
        summary = _read(folder / "summary.json")
        for variant, value in summary["silhouette_2d_test"].items():
            scores.setdefault(variant, []).append(value)
            gap = summary["cluster_gap"].get(variant, {}).get("selected")
            if gap is not None:
                gaps.setdefault(variant, []).append(gap)

    def stats(values: list[float]) -> dict:
        return {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values,
        }

    entry = {
        "runs": [str(f) for f in folders],
        "silhouette_2d_test": {k: stats(v) for k, v in scores.items()},
        "cluster_gap_selected": {k: stats(v) for k, v in gaps.items()},
    }
    if note:
        entry["machine_load"] = note
    return entry


GAP_TARGET = 0.10


def chosen_remedy(results: dict, spec: str) -> tuple[str, dict]:
    """``KEY=REMEDY:VARIANT:BASELINE`` → (KEY, the summary of VARIANT against BASELINE)."""
    key, sep, rest = spec.partition("=")
    parts = rest.split(":")
    if not sep or len(parts) != 3:
        raise SystemExit(f"--choose {spec!r}: expected KEY=REMEDY:VARIANT:BASELINE")
    remedy, variant, baseline = parts
    entry = results.get("remedies", {}).get(remedy)
    if entry is None:
        raise SystemExit(f"--choose {spec!r}: no remedies.{remedy} in {RESULTS}")

    def figures(name: str) -> dict:
        if name not in entry["cluster_gap_selected"]:
            raise SystemExit(f"--choose {spec!r}: remedies.{remedy} has no variant {name!r}")
        gap = entry["cluster_gap_selected"][name]
        score = entry["silhouette_2d_test"][name]
        return {"variant": name, "gap_mean": gap["mean"], "gap_per_seed": gap["per_seed"],
                "silhouette_2d_mean": score["mean"], "silhouette_2d_sd": score["sd"]}  # fmt: skip

    chosen = figures(variant)
    chosen["met"] = all(g <= GAP_TARGET for g in chosen["gap_per_seed"])
    return key, {"remedies": remedy, "target": GAP_TARGET, "chosen": chosen,
                 "baseline": figures(baseline)}  # fmt: skip


def remedy_table(entry: dict) -> str:
    """Markdown rows: variant, 2D test silhouette per seed and mean ± sd, gap likewise."""
    lines = [
        "| variant | 2D test silhouette per training seed | mean ± sd | gap per seed | mean gap |",
        "|---|---|---|---|---|",
    ]
    for variant, score in entry["silhouette_2d_test"].items():
        gap = entry["cluster_gap_selected"].get(variant)
        per_gap = " / ".join(f"{g:.3f}" for g in gap["per_seed"]) if gap else "–"
        mean_gap = f"{gap['mean']:.3f}" if gap else "–"
        lines.append(
            f"| {variant} | {' / '.join(f'{v:.3f}' for v in score['per_seed'])} | "
            f"{score['mean']:.3f} ± {score['sd']:.3f} | {per_gap} | {mean_gap} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", default=[], help="exp_NAME to collect")
    parser.add_argument("--remedy", action="append", default=[], metavar="NAME=DIR,DIR")
    parser.add_argument("--note", action="append", default=[], metavar="NAME=TEXT")
    parser.add_argument("--choose", action="append", default=[], metavar="KEY=REMEDY:VAR:BASE")
    args = parser.parse_args(argv)
    notes = dict(item.partition("=")[::2] for item in args.note)
    results = _read(RESULTS)
    for name in args.dataset:
        results.setdefault("datasets", {})[name] = dataset_entry(name, notes.get(name))
    for item in args.remedy:
        name, sep, folders = item.partition("=")
        if not sep or not folders:
            raise SystemExit(f"--remedy {item!r}: expected NAME=DIR,DIR,...")
        paths = [Path(f) for f in folders.split(",")]
        results.setdefault("remedies", {})[name] = remedy_entry(
            paths, notes.get(f"remedies.{name}")
        )
    for name, entry in results.get("remedies", {}).items():
        if any(item.startswith(f"{name}=") for item in args.remedy):
            print(remedy_table(entry))
    for spec in args.choose:
        key, summary = chosen_remedy(results, spec)
        results.setdefault("cluster_gap_target", {})[key] = summary
        chosen = summary["chosen"]
        print(f"{key}: {chosen['variant']} gap {chosen['gap_mean']:.3f} (met: {chosen['met']}), "
              f"2D {chosen['silhouette_2d_mean']:.3f}")  # fmt: skip
    handle, temporary = tempfile.mkstemp(suffix=".json", dir=RESULTS.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(json.dumps(results, indent=2) + "\n")
    os.replace(temporary, RESULTS)
    print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
