"""``sense embed``, ``sense project``, ``sense warmup`` and bundle descriptions (``sense info
BUNDLE`` dispatches to :func:`describe_bundle` / :func:`print_bundle_summary`).

Every ``sense`` call builds the whole parser, so this module imports nothing heavy at module
level: onnxruntime, umap, scikit-learn and matplotlib load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from sense_core.cli_options import add_reader_options, open_from_args
from sense_core.errors import SenseError

EMBED_DESCRIPTION = """\
Embed an ensemble with a model bundle: every member is read (streamed in batches, so ensembles
larger than memory work), normalised with the bundle's statistics, encoded to a latent vector
by the bundle's encoder (ONNX, onnxruntime), labeled, and mapped to 2D.

Labels: hand labels are kept (label_source 'manual'); the others get the bundle's labeler
prediction with its probability as confidence ('predicted'), or stay unlabeled ('none') when the
bundle has no labeler.

Projection (--projection): 'auto' uses the bundle's parametric projector when it has one (new
members land in the training map, deterministically, in well under a second), else UMAP; 'umap'
fits UMAP on these members (exact k-NN up to 60k members, so the first fit in a process takes
seconds, not half a minute; `sense warmup` compiles it ahead); 'pca' is the dependency-light
fallback.

Writes into --out: embedding.npz and embedding.csv (member_id, x, y, label, class_name,
label_source, confidence, latent_*), scatter.png (coloured by class) and report.md (provider
used, projection, counts, metrics on hand-labeled members, timings). Each file appears only when
complete. The execution provider really used (CPU or CUDA) is printed and recorded.
"""

PROJECT_DESCRIPTION = """\
Map the latent vectors of an embedding (an embedding.npz written by `sense embed`) to 2D again
with another projection or other parameters, without running the encoder. Writes the same files
as `sense embed` into --out.
"""

WARMUP_DESCRIPTION = """\
Compile UMAP's numba code and fill its on-disk cache (NUMBA_CACHE_DIR, by default
~/.cache/sense/numba), so that later imports of umap take ~1-2 s instead of ~20 s. Run it once
after installing. Compilation that numba cannot cache is redone in each new process; SENSE keeps
that short by passing exact nearest neighbours to UMAP. Prints the timings.
"""


def _add_projection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="UMAP seed (default 0, reproducible, one thread); -1 = unseeded, multi-threaded",
    )
    parser.add_argument(
        "--n-neighbors", type=int, default=15, help="UMAP neighbourhood size (default 15)"
    )
    parser.add_argument(
        "--min-dist", type=float, default=0.1, help="UMAP minimum distance (default 0.1)"
    )
    parser.add_argument(
        "--knn",
        choices=("auto", "exact", "approximate"),
        default="auto",
        help="UMAP nearest neighbours: exact (scikit-learn; no per-process compile), approximate "
        "(umap-learn's nn-descent), auto = exact up to 60k members (default)",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-plot", action="store_true", help="do not write scatter.png")


def _seed(value: int) -> int | None:
    return None if value < 0 else value


def _print_result(embedding, paths: dict[str, Path], encoded: bool = True) -> None:
    prov = embedding.provenance
    projection = prov.get("projection", {})
    seconds = prov.get("seconds", {})
    inference = prov.get("inference", {})
    if inference and encoded:
        rate = inference.get("members_per_second")
        print(f"encoded {len(embedding)} members on {inference.get('provider')} ({rate} members/s)")
    print(f"projection: {projection.get('method')} {projection.get('params', {})}")
    metrics = prov.get("metrics", {})
    shown = {k: v for k, v in metrics.items() if k.startswith(("silhouette", "labeler"))}
    if shown:
        print("metrics: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    for note in [*prov.get("notes", []), *([metrics["note"]] if "note" in metrics else [])]:
        print(f"note: {note}")
    print("timings: " + ", ".join(f"{k} {v} s" for k, v in seconds.items()))
    for what, path in paths.items():
        print(f"  {what:7s} {path}")


def _run_embed(args: argparse.Namespace) -> int:
    from sense_core.embedding import check_outputs, embed_ensemble, write_outputs

    check_outputs(args.out, args.overwrite, not args.no_plot)
    store = open_from_args(args.ensemble, args)
    embedding = embed_ensemble(
        store,
        args.bundle,
        device=args.device,
        threads=args.threads,
        batch_size=args.batch_size,
        projection=args.projection,
        seed=_seed(args.seed),
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        knn=args.knn,
        use_labeler=not args.no_labeler,
        progress=sys.stderr.isatty(),
    )
    paths = write_outputs(embedding, args.out, overwrite=args.overwrite, plot=not args.no_plot)
    _print_result(embedding, paths)
    return 0


def _run_project(args: argparse.Namespace) -> int:
    from sense_core.embedding import check_outputs, read_embedding, reproject, write_outputs

    check_outputs(args.out, args.overwrite, not args.no_plot)
    if Path(args.out).resolve() == Path(args.embedding).resolve().parent and not args.overwrite:
        raise SenseError(f"{args.out}: is the embedding's own folder (use --overwrite)")
    embedding = reproject(
        read_embedding(args.embedding),
        args.method,
        bundle_folder=args.bundle,
        seed=_seed(args.seed),
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        knn=args.knn,
        device=args.device,
    )
    paths = write_outputs(embedding, args.out, overwrite=args.overwrite, plot=not args.no_plot)
    _print_result(embedding, paths, encoded=False)
    return 0


def _run_warmup(args: argparse.Namespace) -> int:
    from sense_core.projection import warmup

    print("compiling UMAP (the first time on a machine takes about half a minute)...")
    timings = warmup(points=args.points)
    for key, value in timings.items():
        print(f"  {key}: {value}" + (" s" if isinstance(value, float) else ""))
    return 0


def describe_bundle(path: str | Path) -> dict[str, Any]:
    """JSON-ready description of a bundle folder: input, normalisation, classes, each model
    (file, size, checksum, opset, input/output names and shapes, details), training commands and
    metrics, software versions, and the bundle checksum. Validates the bundle (checksums too)."""
    from sense_core.bundle import Bundle
    from sense_core.embedding import bundle_checksum

    bundle = Bundle.load(path)
    manifest = bundle.manifest
    models: dict[str, Any] = {}
    for role, entry in bundle.models.items():
        models[role] = {
            "file": entry.path.name,
            "bytes": entry.path.stat().st_size,
            "sha256": entry.sha256,
            "opset": entry.opset,
            "input": entry.input_name,
            "output": entry.output_name,
            **_onnx_shapes(entry.path),
            "details": dict(entry.details),
        }
    training = manifest.get("training", {}) or {}
    return {
        "path": str(Path(path)),
        "checksum": bundle_checksum(path),
        "created": manifest.get("created"),
        "input_shape": list(bundle.input_shape),
        "normalization": bundle.normalization.to_dict(),
        "class_names": list(bundle.class_names),
        "models": models,
        "training": {
            role: {k: v for k, v in info.items() if k in ("command", "metrics", "seconds")}
            for role, info in training.items()
            if isinstance(info, dict)
        },
        "software": manifest.get("software", {}),
    }


def _onnx_shapes(path: Path) -> dict[str, Any]:
    """Declared input/output shapes read by onnxruntime (empty when it is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return {}
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {
        "input_shape": [s if isinstance(s, int) else str(s) for s in session.get_inputs()[0].shape],
        "output_shape": [
            s if isinstance(s, int) else str(s) for s in session.get_outputs()[0].shape
        ],
    }


def print_bundle_summary(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print :func:`describe_bundle`'s result for people."""
    out = stream or sys.stdout
    c, h, w = summary["input_shape"]
    print(f"{summary['path']}: SENSE model bundle, members {c} channel(s) of {h}x{w}", file=out)
    print(f"  checksum (sense.json SHA-256) {summary['checksum']}", file=out)
    if summary.get("created"):
        print(f"  created {summary['created']}", file=out)
    norm = summary["normalization"]
    print(f"  normalisation mean {norm['mean']}, std {norm['std']}", file=out)
    names = summary["class_names"]
    print(f"  classes ({len(names)}): {', '.join(names)}", file=out)
    for role, model in summary["models"].items():
        shapes = ""
        if "input_shape" in model:
            shapes = f" {model['input_shape']} -> {model['output_shape']}"
        print(
            f"  {role}: {model['file']} ({model['bytes'] / 1e6:.2f} MB, opset {model['opset']}, "
            f"{model['input']} -> {model['output']}{shapes})",
            file=out,
        )
        if model["details"]:
            details = ", ".join(f"{k}={v}" for k, v in model["details"].items())
            print(f"    {details}", file=out)
        training = summary["training"].get(role, {})
        if training.get("command"):
            print(f"    trained by: {training['command']}", file=out)
        if training.get("metrics"):
            metrics = training["metrics"]
            text = (
                json.dumps(metrics)
                if not isinstance(metrics, dict)
                else ", ".join(
                    f"{k}={v}" for k, v in metrics.items() if not isinstance(v, dict | list)
                )
            )
            print(f"    metrics: {text}", file=out)
    missing = [r for r in ("labeler", "encoder", "projector") if r not in summary["models"]]
    if missing:
        print(f"  no {', '.join(missing)} model", file=out)
    if summary.get("software"):
        versions = ", ".join(f"{k} {v}" for k, v in summary["software"].items())
        print(f"  software: {versions}", file=out)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``embed``, ``project`` and ``warmup`` on the ``sense`` subcommands."""
    embed = commands.add_parser(
        "embed",
        help="embed an ensemble with a model bundle: latent vectors, labels, 2D map, report",
        description=EMBED_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embed.add_argument("ensemble", help="ensemble .npz file or folder of members")
    embed.add_argument("bundle", help="model bundle folder (with sense.json)")
    _add_output_options(embed)
    embed.add_argument(
        "--projection",
        choices=("auto", "projector", "umap", "pca"),
        default="auto",
        help="how to map latents to 2D (default auto: the bundle's projector, else UMAP)",
    )
    embed.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="onnxruntime device: auto (CUDA when it really works, else CPU), cpu, or cuda "
        "(an error saying why when CUDA cannot be used)",
    )
    embed.add_argument(
        "--threads", type=int, default=None, help="onnxruntime CPU threads (default: all cores)"
    )
    embed.add_argument(
        "--batch-size", type=int, default=64, help="members per inference batch (default 64)"
    )
    embed.add_argument(
        "--no-labeler", action="store_true", help="do not predict labels with the labeler"
    )
    _add_projection_options(embed)
    add_reader_options(embed)
    embed.set_defaults(handler=_run_embed)

    project = commands.add_parser(
        "project",
        help="map a saved embedding to 2D again (UMAP, PCA or a bundle's projector)",
        description=PROJECT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    project.add_argument("embedding", help="embedding.npz written by `sense embed`")
    _add_output_options(project)
    project.add_argument(
        "--method", choices=("umap", "pca", "projector"), default="umap", help="projection"
    )
    project.add_argument("--bundle", default=None, help="bundle folder (for --method projector)")
    project.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="cpu", help="projector device (cpu)"
    )
    _add_projection_options(project)
    project.set_defaults(handler=_run_project)

    warm = commands.add_parser(
        "warmup",
        help="pre-compile UMAP so that maps do not wait for compilation",
        description=WARMUP_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    warm.add_argument(
        "--points", type=int, default=300, help="size of the compile-only fit (default 300)"
    )
    warm.set_defaults(handler=_run_warmup)
