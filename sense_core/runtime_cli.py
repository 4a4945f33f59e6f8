"""``sense embed``, ``sense project`` and ``sense warmup``: they parse, call the library and print.
The projection options are generated from :class:`~sense_core.projection.ProjectionOptions`.

Every ``sense`` call builds the whole parser, so this module imports nothing heavy at module
level: onnxruntime, umap, scikit-learn and matplotlib load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sense_core.cli_options import (
    add_inference_options,
    add_reader_options,
    guard_output,
    open_from_args,
)
from sense_core.errors import SenseError
from sense_core.options import add_options, config_from_args
from sense_core.projection import ProjectionOptions

# `sense embed` uses the bundle's projector when it has one; `sense project` re-maps with UMAP.
EMBED_PROJECTION = ProjectionOptions()
PROJECT_PROJECTION = ProjectionOptions(method="umap")

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


def _add_projection_options(
    parser: argparse.ArgumentParser, defaults: ProjectionOptions, *aliases: str
) -> None:
    """The options of :class:`ProjectionOptions` (``--projection``, ``--seed``, ``--n-neighbors``,
    ``--min-dist``, ``--metric``, ``--knn``), generated from its fields with ``defaults``;
    ``aliases``: other spellings of ``--projection``."""
    add_options(parser, defaults, group_title="projection", aliases={"method": aliases})


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-plot", action="store_true", help="do not write scatter.png")


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
    for warning in prov.get("warnings", []):
        print(f"sense: warning: {warning}", file=sys.stderr)
    print("timings: " + ", ".join(f"{k} {v} s" for k, v in seconds.items()))
    for what, path in paths.items():
        print(f"  {what:7s} {path}")


def _written(args: argparse.Namespace) -> list[Path]:
    """The files ``sense embed``/``project`` write into --out (none may be an input)."""
    from sense_core.embedding import output_paths

    return list(output_paths(args.out, not args.no_plot).values())


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
        projection=config_from_args(EMBED_PROJECTION, args),
        use_labeler=not args.no_labeler,
        progress=sys.stderr.isatty(),
        unusual=not args.no_unusual,
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
        config_from_args(PROJECT_PROJECTION, args),
        bundle_folder=args.bundle,
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``embed``, ``project``, ``warmup``, ``unusual``, ``stats`` and ``paths`` on
    ``sense``."""
    embed = commands.add_parser(
        "embed",
        help="embed an ensemble with a model bundle: latent vectors, labels, 2D map, report",
        description=EMBED_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embed.add_argument("ensemble", help="ensemble .npz file or folder of members")
    embed.add_argument("bundle", help="model bundle folder (with sense.json)")
    _add_output_options(embed)
    add_inference_options(embed)
    embed.add_argument(
        "--no-unusual",
        action="store_true",
        help="skip the unusual-member scores (reconstruction error, prototype distance, "
        "unusualness; computed when the bundle has a decoder, reading each member once more)",
    )
    _add_projection_options(embed, EMBED_PROJECTION)
    add_reader_options(embed)
    # --out may not be (or be inside) the ensemble, nor be the bundle; the run holds its lock
    embed.set_defaults(
        handler=guard_output(_run_embed, inputs=("ensemble",), bundles=("bundle",), writes=_written)
    )

    project = commands.add_parser(
        "project",
        help="map a saved embedding to 2D again (UMAP, PCA or a bundle's projector)",
        description=PROJECT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    project.add_argument("embedding", help="embedding.npz written by `sense embed`")
    _add_output_options(project)
    project.add_argument(
        "--bundle", default=None, help="bundle folder (for --projection projector or auto)"
    )
    project.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="cpu", help="projector device (cpu)"
    )
    _add_projection_options(project, PROJECT_PROJECTION, "--method")
    project.set_defaults(handler=guard_output(_run_project, bundles=("bundle",)))

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

    from sense_core.categorical import add_parser as add_stats
    from sense_core.paths import add_parser as add_paths
    from sense_core.unusual import add_parser as add_unusual

    add_unusual(commands)
    add_stats(commands)
    add_paths(commands)
