"""How the cost grows with the ensemble: embed and projection time vs N, streaming from disk.

Two parts, one command each (both print a table with the machine described, and can write JSON):

- ``--curves``: time vs N (default 1k, 3k, 10k, 30k, 100k) for
  * embed: the product path (``sense_core.inference.run_over_store`` with an ``Encoder``) over
    synthetic 64x64 members made on demand, with the project's conv AE encoder exported to ONNX;
  * UMAP: ``sense_core.projection.umap_project`` with a seed (SENSE's default: reproducible,
    exact k-NN up to 60k points, umap-learn's nn-descent above), on clustered 32-D latents, in a
    process whose numba code is already compiled (``warmup``), so the curve is the fit itself;
  * PCA: ``pca_project`` on the same latents.
  A log-log plot goes to ``--plot`` (docs/images/scaling.png).
- ``--folder N``: P4 of the scale issue. Writes N members of ``--size`` (128) px as .npy files into
  a member folder on disk, then runs ``sense embed FOLDER BUNDLE --projection pca --no-labeler`` in
  a fresh process and reports its wall time, members/s and peak RSS (the child's own maximum
  resident set, from ``wait4``). Target: 100k members of 128x128 with peak RSS < 2 GB.

Run: ``.venv/bin/python benchmarks/bench_scaling.py --curves --plot docs/images/scaling.png``
and ``.venv/bin/python benchmarks/bench_scaling.py --folder 100000``. Shared machine: compare
numbers within one run; the load average is printed with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_inference import (  # noqa: E402  (benchmarks are scripts, not a package)
    SyntheticStore,
    build_encoder,
    describe_machine,
    make_bundle,
)


def clustered_latents(count: int, dim: int = 32, clusters: int = 8, seed: int = 0) -> np.ndarray:
    """Latent-like points: ``clusters`` Gaussian blobs in ``dim`` dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(clusters, dim))
    return (centres[np.arange(count) % clusters] + rng.normal(size=(count, dim))).astype(np.float32)


def bench_curves(sizes: list[int], member_size: int, threads: int | None) -> list[dict]:
    """Embed, UMAP and PCA seconds for each N in ``sizes``."""
    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder, run_over_store
    from sense_core.projection import pca_project, umap_project, warmup

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        bundle = make_bundle(Path(scratch), build_encoder(member_size, 32), member_size)
        encoder = Encoder(Bundle.load(bundle), threads=threads, batch_size=64)
        encoder.encode(np.zeros((2, 1, member_size, member_size), np.float32))
        warmup()
        for count in sizes:
            tick = time.perf_counter()
            run_over_store(SyntheticStore.make(count, member_size), encoder, progress=False)
            embed_seconds = time.perf_counter() - tick
            latents = clustered_latents(count)
            tick = time.perf_counter()
            umap_map = umap_project(latents, seed=0)
            umap_seconds = time.perf_counter() - tick
            tick = time.perf_counter()
            pca_project(latents)
            pca_seconds = time.perf_counter() - tick
            row = {
                "members": count,
                "embed_s": round(embed_seconds, 2),
                "embed_members_per_s": round(count / embed_seconds, 1),
                "umap_s": round(umap_seconds, 2),
                "umap_knn": umap_map.params.get("knn"),
                "pca_s": round(pca_seconds, 3),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def plot_curves(rows: list[dict], path: Path, machine: dict) -> None:
    """Log-log seconds vs members for embed / UMAP / PCA, with a linear-growth guide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array([row["members"] for row in rows], float)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for key, name in (
        ("embed_s", "embed 64×64 (ONNX, CPU)"),
        ("umap_s", "UMAP (seeded)"),
        ("pca_s", "PCA"),
    ):
        ax.loglog(counts, [row[key] for row in rows], "o-", label=name)
    guide = rows[0]["embed_s"] * counts / counts[0]
    ax.loglog(counts, guide, ":", color="grey", label="linear growth")
    ax.set_xlabel("members N")
    ax.set_ylabel("seconds")
    ax.set_title(f"SENSE cost vs ensemble size ({machine.get('cores')} cores, no GPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part.png")
    fig.savefig(partial)
    os.replace(partial, path)


def write_member_folder(folder: Path, count: int, size: int) -> float:
    """``count`` float32 members (1, size, size) as .npy files; returns the seconds it took."""
    folder.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    rng = np.random.default_rng(0)
    for index in range(count):
        np.save(folder / f"m{index:06d}.npy", rng.normal(size=(size, size)).astype(np.float32))
    return time.perf_counter() - tick


def bench_folder(count: int, size: int, threads: int | None, keep: Path | None) -> dict:
    """Embed a member folder of ``count`` members from disk in a fresh ``sense embed`` process."""
    scratch = Path(tempfile.mkdtemp(prefix="sense_bench_folder_"))
    try:
        folder = keep if keep is not None else scratch / "members"
        existing = len(list(folder.glob("*.npy"))) if folder.is_dir() else 0
        write_seconds = 0.0 if existing == count else write_member_folder(folder, count, size)
        # The bundle is exported in another process: a child's peak RSS (ru_maxrss) includes the
        # memory of the process it was forked from, so this one must stay small (no torch).
        subprocess.run(
            [sys.executable, __file__, "--make-bundle", str(scratch), str(size)], check=True
        )
        bundle = scratch / f"bundle{size}"
        sense = Path(sys.executable).with_name("sense")
        command = [
            str(sense),
            "embed",
            str(folder),
            str(bundle),
            "--out",
            str(scratch / "out"),
            "--projection",
            "pca",
            "--no-labeler",
            "--no-plot",
        ]
        if threads:
            command += ["--threads", str(threads)]
        tick = time.perf_counter()
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - tick
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"sense embed failed:\n{output}")
        embedded = np.load(scratch / "out" / "embedding.npz", allow_pickle=False)
        return {
            "members": count,
            "size": size,
            "fields_on_disk_gb": round(count * size * size * 4 / 1e9, 2),
            "write_seconds": round(write_seconds, 1),
            "embed_seconds": round(seconds, 1),
            "members_per_second": round(count / seconds, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "rows_written": int(len(embedded["member_ids"])),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", action="store_true", help="time vs N for embed, UMAP, PCA")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--member-size", type=int, default=64, help="pixels of the embed curve")
    parser.add_argument("--plot", type=Path, default=None, help="write the log-log plot here")
    parser.add_argument("--folder", type=int, default=0, help="P4: embed N members from disk")
    parser.add_argument("--size", type=int, default=128, help="pixels of the --folder members")
    parser.add_argument(
        "--keep-folder",
        type=Path,
        default=None,
        help="write/reuse the member folder here instead of a temporary one",
    )
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--make-bundle", nargs=2, metavar=("DIR", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_bundle:
        size = int(args.make_bundle[1])
        make_bundle(Path(args.make_bundle[0]), build_encoder(size, 32), size)
        return 0
    if not args.curves and not args.folder:
        parser.error("choose --curves and/or --folder N")

    machine = describe_machine(args.threads)
    print("machine:", json.dumps(machine))
    results: dict = {"machine": machine}
    # Streaming first: the curves import torch, which a forked child's peak RSS would include.
    if args.folder:
        folder = bench_folder(args.folder, args.size, args.threads, args.keep_folder)
        results["folder"] = folder
        target = "met" if folder["peak_rss_mb"] < 2048 else "MISSED"
        print(f"\nP4 folder streaming: {json.dumps(folder)}\npeak RSS < 2 GB: {target}")
    if args.curves:
        rows = bench_curves(args.sizes, args.member_size, args.threads)
        results["curves"] = rows
        print("\n| N | embed s | embed members/s | UMAP s (k-NN) | PCA s |\n|---|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['members']:,} | {row['embed_s']} | {row['embed_members_per_s']:,} | "
                f"{row['umap_s']} ({row['umap_knn']}) | {row['pca_s']} |"
            )
        if len(rows) > 1:
            first, last = rows[0], rows[-1]
            growth = last["members"] / first["members"]
            print(
                f"\nN grows {growth:.0f}x: embed time x{last['embed_s'] / first['embed_s']:.1f}, "
                f"UMAP time x{last['umap_s'] / first['umap_s']:.1f}, "
                f"PCA time x{last['pca_s'] / max(first['pca_s'], 1e-3):.1f}"
            )
        if args.plot:
            plot_curves(rows, args.plot, machine)
            print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
