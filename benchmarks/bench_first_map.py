"""Which first map, before any hand label, for an ensemble no shipped bundle fits?

For each ensemble (generated with every member's true class, which only this benchmark sees),
the 2D maps a user can get before labeling anything, scored by the true classes:

- ``raw_pca``: PCA(2) of the normalised raw fields (instant);
- ``raw_umap``: UMAP(2) of PCA(50) of the raw fields (seconds);
- ``shipped_<name>``: each shipped bundle's encoder on the members resampled to its shape, then
  UMAP (seconds; the "generic encoder" option);
- ``label_free``: ``sense train-version ENSEMBLE --kind full`` on the ensemble without labels
  (a label-free ``sense fit --profile quick``: encoder + projector, in the background), its map;
- ``label_free_views`` (with ``--views``): the same with ``--instance-views`` set to the views
  of the ensemble's kind (``VIEWS`` of bench_label_efficiency.py): the encoder also learns
  that two views of a member are one member.

Ensembles: ``channels`` and ``drops`` (``sense generate``) and the held-out ones of
bench_label_efficiency.py (``ising``, ``grayscott``, ``textures``).

Scores: leave-one-out 5-NN accuracy of the true classes in 2D, and the 2D silhouette. Also the
seconds each took. ``python benchmarks/bench_first_map.py --out DIR [--n 480 --size 48]`` writes
``DIR/first_map.json`` and ``DIR/first_map.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sense_core.bundle import Bundle, shipped_bundles_dir
from sense_core.ensemble import Ensemble
from sense_core.io import open_ensemble, write_ensemble
from sense_core.metrics import knn_accuracy, silhouette


def _scores(xy: np.ndarray, truth: np.ndarray, seconds: float) -> dict:
    return {
        "knn5": round(knn_accuracy(xy, truth, k=5), 3),
        "silhouette": round(silhouette(xy, truth), 3),
        "seconds": round(seconds, 1),
    }


def _raw(fields: np.ndarray) -> np.ndarray:
    flat = fields.reshape(len(fields), -1).astype(np.float64)
    return (flat - flat.mean(0)) / (flat.std() + 1e-12)


def _umap(points: np.ndarray, seed: int = 0) -> np.ndarray:
    from sense_core.projection import ProjectionOptions, project

    return project(points, ProjectionOptions(method="umap", seed=seed)).xy


def _resampled(fields: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    from scipy.ndimage import zoom

    _, c, h, w = fields.shape
    if c != shape[0]:
        raise ValueError(f"{c} channel(s), the bundle takes {shape[0]}")
    factors = (1, 1, shape[1] / h, shape[2] / w)
    return zoom(fields, factors, order=1).astype(np.float32)


def _label_free(path: Path, seed: int, truth: np.ndarray, views: str | None) -> dict:
    """A label-free ``sense train-version --kind full`` of ``path`` and its map's scores."""
    from sense_core.bundle_versions import latest_version
    from sense_core.embedding import embed_ensemble

    tick = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sense_core.cli", "train-version", str(path), "--kind", "full",
         "--seed", str(seed), *(["--instance-views", views] if views else [])],
        check=True, capture_output=True,
    )  # fmt: skip
    trained = time.perf_counter() - tick
    version = latest_version(path)
    embedding = embed_ensemble(open_ensemble(path), version.path, device="cpu")
    scores = _scores(embedding.xy, truth, trained)
    scores["kind"] = version.kind
    scores["projection"] = embedding.provenance.get("projection", {}).get("method")
    return scores


def run(name: str, n: int, size: int, out: Path, seed: int, views: bool = False) -> dict:
    from bench_label_efficiency import HELDOUT, VIEWS, make_ensemble
    from sklearn.decomposition import PCA

    from sense_core.inference import Encoder

    truth_path = out / f"{name}_truth.npz"
    if name in HELDOUT:
        write_ensemble(make_ensemble(name, n, size, seed, []), truth_path, overwrite=True)
    else:
        subprocess.run(
            [sys.executable, "-m", "sense_core.cli", "generate", name, "--n", str(n), "--size",
             str(size), "--labeled-fraction", "1.0", "--seed", str(seed), "--out",
             str(truth_path), "--overwrite", "--no-progress"],
            check=True, capture_output=True,
        )  # fmt: skip
    store = open_ensemble(truth_path)
    truth = np.asarray(store.labels)
    fields = store.read_members(np.arange(len(store)))
    unlabeled = Ensemble(
        fields=fields, class_names=store.class_names, member_ids=list(store.member_ids)
    )
    path = write_ensemble(unlabeled, out / f"{name}.npz", overwrite=True)
    result: dict = {"members": len(store), "shape": list(store.member_shape), "maps": {}}
    maps = result["maps"]

    tick = time.perf_counter()
    maps["raw_pca"] = _scores(PCA(2, random_state=0).fit_transform(_raw(fields)), truth, 0)
    maps["raw_pca"]["seconds"] = round(time.perf_counter() - tick, 1)
    tick = time.perf_counter()
    reduced = PCA(min(50, len(fields) - 1), random_state=0).fit_transform(_raw(fields))
    xy = _umap(reduced)
    maps["raw_umap"] = _scores(xy, truth, time.perf_counter() - tick)

    for manifest in sorted(shipped_bundles_dir().glob("*/sense.json")):
        bundle = Bundle.load(manifest.parent)
        tick = time.perf_counter()
        moved = Ensemble(fields=_resampled(fields, bundle.input_shape))
        latents = Encoder(bundle).encode_store(moved)
        maps[f"shipped_{manifest.parent.name}"] = _scores(
            _umap(latents), truth, time.perf_counter() - tick
        )

    maps["label_free"] = _label_free(path, seed, truth, None)
    if views:
        maps["label_free_views"] = _label_free(path, seed, truth, VIEWS[name])
        maps["label_free_views"]["views"] = VIEWS[name]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=480)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ensembles", nargs="+", default=["channels", "drops"])
    parser.add_argument(
        "--views", action="store_true", help="also a label-free fit with the ensemble's views"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {"cpus": os.cpu_count(), "load_before": list(os.getloadavg())},
        "ensembles": {},
    }
    for name in args.ensembles:
        results["ensembles"][name] = run(name, args.n, args.size, args.out, args.seed, args.views)
        print(name, json.dumps(results["ensembles"][name]["maps"]), flush=True)
    results["machine"]["load_after"] = list(os.getloadavg())
    (args.out / "first_map.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| ensemble | map | 5-NN accuracy | 2D silhouette | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, result in results["ensembles"].items():
        for key, score in result["maps"].items():
            lines.append(
                f"| {name} {tuple(result['shape'])} ×{result['members']} | {key} | "
                f"{score['knn5']} | {score['silhouette']} | {score['seconds']} |"
            )
    (args.out / "first_map.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
