"""Projection benchmarks: UMAP's first fit in a fresh process, and the parametric projector vs
``umap.transform`` on new points.

1. **First fit** (``--first-fit``): for each N, a new Python process imports umap (warm numba
   cache under ``NUMBA_CACHE_DIR``) and fits a seeded UMAP once, with exact k-NN passed as
   ``precomputed_knn`` (SENSE's default up to 60k points) and with umap-learn's own search
   (nn-descent from 4096 points, compiled in every process). This is the wait a ParaView user
   sees on the first Apply.
2. **Projector vs transform** (``--transform``): UMAP (nn-descent, so that it can ``transform``)
   is fitted on T training latents (clustered, 32-D), a projector is trained on that map
   (sense_training.projector) and exported to ONNX; then 1k / 10k / 100k new latents are mapped
   by ``ParametricProjector.transform`` and by ``umap.transform`` (100k by umap only with
   ``--umap-100k``: it takes minutes here). Reports seconds, points/s, determinism (the same
   points mapped in one batch vs in two halves) and fidelity to UMAP on held-out points.

Run: ``.venv/bin/python benchmarks/bench_projection.py [--first-fit] [--transform] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIRST_FIT_CHILD = r"""
import json, sys, time, warnings
t0 = time.perf_counter()
from sense_core.projection import numba_cache_dir, exact_knn
numba_cache_dir()
import numpy as np
import umap
imported = time.perf_counter() - t0
n, mode = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
centres = rng.normal(scale=4.0, size=(8, 32))
points = (centres[np.arange(n) % 8] + rng.normal(size=(n, 32))).astype(np.float32)
options = {}
knn_seconds = 0.0
if mode == "exact":
    t = time.perf_counter()
    options["precomputed_knn"] = exact_knn(points, 15)
    knn_seconds = time.perf_counter() - t
t = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    umap.UMAP(n_neighbors=15, random_state=0, n_jobs=1, **options).fit_transform(points)
first = time.perf_counter() - t
t = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    umap.UMAP(n_neighbors=15, random_state=0, n_jobs=1, **options).fit_transform(points)
second = time.perf_counter() - t
print(json.dumps({"n": n, "knn": mode, "import_s": round(imported, 2),
                  "knn_s": round(knn_seconds, 2), "first_fit_s": round(first, 2),
                  "second_fit_s": round(second, 2),
                  "first_total_s": round(imported + knn_seconds + first, 2)}))
"""


def first_fit(sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        for mode in ("exact", "umap-learn"):
            result = subprocess.run(
                [sys.executable, "-c", FIRST_FIT_CHILD, str(n), mode],
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=1800,
            )
            if result.returncode != 0:
                raise RuntimeError(result.stderr)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def clustered(count: int, seed: int, dim: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(scale=4.0, size=(8, dim))
    return (centres[rng.integers(0, 8, count)] + rng.normal(size=(count, dim))).astype(np.float32)


def projector_vs_transform(train_count: int, sizes: list[int], umap_100k: bool) -> dict:
    import warnings

    from sense_core.bundle import MANIFEST, Bundle, new_manifest
    from sense_core.ensemble import NormalizationStats
    from sense_core.metrics import knn_overlap, trustworthiness
    from sense_core.projection import ParametricProjector, umap_project
    from sense_training.projector import add_projector_to_bundle, train_projector

    train = clustered(train_count, seed=1)
    tick = time.perf_counter()
    fitted = umap_project(train, seed=0, knn="approximate")
    fit_seconds = time.perf_counter() - tick
    reducer = fitted.model
    # Baseline for k-NN overlap: how much UMAP's own map moves with another seed.
    other_seed = umap_project(train, seed=1, knn="approximate")
    baseline = knn_overlap(fitted.xy, other_seed.xy, k=10)
    tick = time.perf_counter()
    fit = train_projector(train, fitted.xy, seed=0)
    train_seconds = time.perf_counter() - tick
    result: dict = {
        "train_points": train_count,
        "umap_fit_s": round(fit_seconds, 2),
        "projector_train_s": round(train_seconds, 2),
        "projector_config": {k: fit.config[k] for k in ("hidden", "epochs", "batch_size")},
        "projector_fidelity_training_map": fit.fidelity,
        "knn_overlap_umap_seed0_vs_seed1": round(baseline, 4),
        "new_points": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / "bundle"
        bundle.mkdir()
        manifest = new_manifest((1, 8, 8), NormalizationStats((0.0,), (1.0,), 1), ["a", "b"])
        (bundle / MANIFEST).write_text(json.dumps(manifest))
        add_projector_to_bundle(bundle, fit, train, umap_params=fitted.params)
        projector = ParametricProjector.from_bundle(Bundle.load(bundle), threads=None)
        projector.transform(train[:10])  # session warm-up
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reducer.transform(train[:50])  # compile umap.transform once
        for count in sizes:
            new = clustered(count, seed=100 + count)
            row: dict = {"points": count}
            tick = time.perf_counter()
            mapped = projector.transform(new)
            row["projector_s"] = round(time.perf_counter() - tick, 4)
            halves = np.concatenate(
                [projector.transform(new[: count // 2]), projector.transform(new[count // 2 :])]
            )
            row["projector_batch_independent"] = bool(np.array_equal(halves, mapped))
            if count < 100_000 or umap_100k:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tick = time.perf_counter()
                    reference = reducer.transform(new)
                    row["umap_transform_s"] = round(time.perf_counter() - tick, 3)
                    split = np.concatenate(
                        [reducer.transform(new[: count // 2]), reducer.transform(new[count // 2 :])]
                    )
                row["umap_transform_max_shift_when_split"] = round(
                    float(np.max(np.abs(split - reference))), 4
                )
                row["speedup"] = round(row["umap_transform_s"] / max(row["projector_s"], 1e-9), 1)
                sample = min(count, 3000)
                row["knn_overlap_projector_vs_umap_transform"] = round(
                    knn_overlap(reference, mapped, k=10, sample_size=sample), 4
                )
                row["trustworthiness_umap_transform"] = round(
                    trustworthiness(new, reference, sample_size=sample), 4
                )
            row["trustworthiness_projector"] = round(
                trustworthiness(new, mapped, sample_size=min(count, 3000)), 4
            )
            print(json.dumps(row), flush=True)
            result["new_points"].append(row)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-fit", action="store_true")
    parser.add_argument("--transform", action="store_true")
    parser.add_argument("--fit-sizes", type=int, nargs="+", default=[2000, 10000, 50000])
    parser.add_argument("--train", type=int, default=5000, help="UMAP/projector training points")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--umap-100k", action="store_true", help="also umap.transform 100k")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (args.first_fit or args.transform):
        args.first_fit = args.transform = True
    from benchmarks.bench_inference import describe_machine

    results: dict = {"machine": describe_machine(None)}
    results["machine"]["numba_cache_dir"] = os.environ.get("NUMBA_CACHE_DIR", "(default)")
    if args.first_fit:
        results["first_fit"] = first_fit(args.fit_sizes)
    if args.transform:
        results["transform"] = projector_vs_transform(args.train, args.sizes, args.umap_100k)
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
