"""``sense fit`` end to end (issue #5 interface target, #8 P5): generate an ensemble with
``sense generate``, fit it with a profile (``quick`` by default), and print the time of each
stage (labeler, pseudo-labels, encoder, projector, evaluation; export is inside the labeler and
encoder stages), the total, the quality figures (labeler validation/test accuracy, 2D test
silhouette of SENSE and the raw-field baselines, projector fidelity) and the machine with its
load average before and after.

Targets: ~2,000 members at 32-64 px in <= 5 minutes with ``--profile quick`` on 2 cores (#5);
the default ensemble (``sense generate channels``: 1,000 members at 64 px) in <= 10 minutes (#8).

Run: ``.venv/bin/python benchmarks/bench_fit.py [--generator channels] [--n 2000] [--size 64]
[--labeled-fraction 0.2] [--profile quick] [--fit-args "--labeler-epochs 4"] [--json F]``.
Run it at normal priority on a quiet machine and keep the printed load with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SENSE = str(Path(sys.executable).with_name("sense"))
STAGES = ("labeler", "pseudo_labels", "encoder", "projector", "evaluation")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _run(command: list[str], log: Path) -> float:
    """Run ``command`` with its output appended to ``log``; return its wall seconds."""
    tick = time.perf_counter()
    with log.open("a") as stream:
        stream.write(f"$ {shlex.join(command)}\n")
        stream.flush()
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {shlex.join(command)}; see {log}")
    return time.perf_counter() - tick


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default="channels", choices=("channels", "drops"))
    parser.add_argument("--n", type=int, default=2000, help="members (2000)")
    parser.add_argument("--size", type=int, default=64, help="member size in px (64)")
    parser.add_argument("--labeled-fraction", type=float, default=0.2, help="(0.2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--fit-args", default="", help="extra `sense fit` options (quoted)")
    parser.add_argument("--work", default="out/bench_fit", help="data and bundle folder")
    parser.add_argument("--reuse-data", action="store_true", help="keep an existing ensemble")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench_fit.log"
    log.write_text("")
    name = f"{args.generator}{args.size}_n{args.n}"
    data = work / f"{name}.npz"
    bundle = work / f"{name}_{args.profile}"
    generate = [
        SENSE, "generate", args.generator, "--n", str(args.n), "--size", str(args.size),
        "--labeled-fraction", str(args.labeled_fraction), "--seed", str(args.seed),
        "--out", str(data), "--overwrite", "--no-progress",
    ]  # fmt: skip
    generate_seconds = None
    if not (args.reuse_data and data.is_file()):
        generate_seconds = _run(generate, log)
    fit = [
        SENSE, "fit", "--data", str(data), "--out", str(bundle), "--profile", args.profile,
        "--seed", str(args.seed), "--overwrite", *shlex.split(args.fit_args),
    ]  # fmt: skip
    load_before = _load()
    fit_seconds = _run(fit, log)
    load_after = _load()
    report = json.loads((bundle / "fit_report.json").read_text())

    seconds = report["seconds"]
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    print(f"ensemble: {args.generator} n={args.n} {args.size}x{args.size} labeled fraction "
          f"{args.labeled_fraction} (generated in {_fmt(generate_seconds)} s)")  # fmt: skip
    print(f"fit: {shlex.join(fit[1:])}")
    print("stage seconds:")
    for stage in STAGES:
        if stage in seconds:
            print(f"  {stage:<14} {seconds[stage]:8.1f}")
    print(f"  {'total':<14} {seconds['total']:8.1f}  (process wall {fit_seconds:.1f} s)")
    if seconds.get("projector_parts"):
        print(f"  projector parts: {seconds['projector_parts']}")
    labeler = report["labeler"]
    print(
        f"labeler {labeler['architecture']}: {labeler['epochs_run']} epochs (best "
        f"{labeler['best_epoch']}), validation accuracy {_fmt(labeler['validation_accuracy'])}, "
        f"test accuracy {_fmt(labeler['test_accuracy'])}"
    )
    print("2D test silhouette (mean +- sd over seeds):")
    for row, value in report["silhouette_2d_test"].items():
        if value:
            print(f"  {row:<10} {_fmt(value['mean'])} +- {_fmt(value['sd'])}")
    projector = report.get("projector")
    if projector:
        held_out = projector["fidelity"].get("validation", projector["fidelity"]["all"])
        print(
            f"projector: {projector['points']} points; held-out k-NN overlap "
            f"{held_out['knn_overlap']}, trustworthiness {held_out['trustworthiness_projector']} "
            f"(UMAP {held_out['trustworthiness_umap']}); test members placed by the projector: "
            f"2D silhouette {_fmt(projector['silhouette_2d_test'])}"
        )
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": load_after,
        },
        "ensemble": {k: getattr(args, k) for k in ("generator", "n", "size", "labeled_fraction")},
        "generate_command": shlex.join(generate[1:]),
        "fit_command": shlex.join(fit[1:]),
        "fit_wall_seconds": round(fit_seconds, 1),
        "report": report,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
