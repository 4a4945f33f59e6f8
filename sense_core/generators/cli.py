"""``sense generate``: make a built-in ensemble and write it (npz or a folder of members)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from sense_core.cli_options import guard_output
from sense_core.errors import SenseError
from sense_core.generators import DEFAULT_LABELED_FRACTION, GENERATORS, generate_with_info

DESCRIPTION = """\
Generate a built-in ensemble, deterministic from --seed, and write it to --out
(.npz file, or a folder of .vti members with labels.csv).

channels  MCMC posterior of a channelised subsurface: sinuous sand channels in mud
          (orientation, sinuosity, wavelength, width, 1-4 channels). Hidden true fields
          are observed along a few boreholes plus a noisy sand proportion; parallel-
          tempered Metropolis-Hastings chains sample the channel parameters and their
          thinned states are the members. 5 classes from each member's parameters:
          straight_ew, straight_ns (sinuosity < 0.9, n <= 2, orientation within 45 deg of
          E-W / N-S), meandering_ew, meandering_ns (sinuosity >= 0.9), multi_channel
          (n >= 3). The acceptance rate, and R-hat and effective sample size per
          problem (also metadata problem_r_hat, problem_ess), are printed.
drops     droplet impact on a liquid film, liquid fraction on the axial cross-section;
          each simulated impact is seen at --times-per-simulation increasing times
          (metadata simulation, time); a procedural kinematic model (not Navier-Stokes).
          7 classes from Weber We, Ohnesorge Oh, film ratio delta and K = We Oh^-0.4:
          bouncing (We < 10), coalescence (K < 400), jet_cavity (delta >= 0.8, K <
          K_splash), spreading_lamella (K < 0.35 K_splash), crown (K < K_splash =
          2100 + 5880 delta^1.44, Cossali 1997), crown_splash, prompt_splash (delta < 0.2,
          K >= 3 K_splash). Classes balanced by default.
crops     random --size crops of --images, class = source image; each image is cut
          into train / validation / test regions by width so test crops never overlap
          training crops (metadata 'region' and 'split').
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``generate`` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "generate",
        help="generate a built-in ensemble (channels, drops, crops)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=GENERATORS, help="which generator")
    parser.add_argument("--n", type=int, default=None, help="number of members (default 1000)")
    parser.add_argument("--size", type=int, default=64, help="member size in pixels (64)")
    parser.add_argument(
        "--labeled-fraction",
        type=float,
        default=DEFAULT_LABELED_FRACTION,
        help=f"fraction of members that keep their label ({DEFAULT_LABELED_FRACTION})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--out", required=True, type=Path, help="output .npz or folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--preview", type=Path, help="also write a gallery PNG here")
    parser.add_argument("--noise", type=float, default=0.0, help="additive Gaussian noise std")
    parser.add_argument("--blur", type=float, default=0.0, help="Gaussian blur sigma (pixels)")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    channels = parser.add_argument_group("channels options")
    channels.add_argument("--problems", type=int, help="hidden true fields (5)")
    channels.add_argument("--chains-per-problem", type=int, help="chains per field (4-64)")
    channels.add_argument("--wells", type=int, help="boreholes per field (4)")
    channels.add_argument("--thin", type=int, help="keep every k-th chain state (10)")
    channels.add_argument("--burn-in", type=int, help="steps discarded first (1000)")
    channels.add_argument("--temperature", type=float, help="likelihood temperature (1)")
    channels.add_argument("--tempering-levels", type=int, help="parallel tempering levels (6)")
    channels.add_argument("--hottest-temperature", type=float, help="hottest level (50)")
    channels.add_argument(
        "--swap-scheme",
        choices=("random", "even_odd"),
        help="tempering swaps: one random pair every 2 steps, or all even/odd pairs each step",
    )
    channels.add_argument(
        "--jump-every",
        type=int,
        help="differential-evolution jumps between the chains of a problem every N steps, "
        "which let chains change mode (0: none, the default; needs 4+ chains per problem)",
    )
    drops = parser.add_argument_group("drops options")
    drops.add_argument("--balance", choices=("uniform", "natural"), help="class balance (uniform)")
    drops.add_argument(
        "--times-per-simulation",
        type=int,
        help="snapshots of each simulated impact, at increasing times (8; 1: independent)",
    )
    crops = parser.add_argument_group("crops options")
    crops.add_argument("--images", nargs="+", type=Path, help="source images (PNG, TIFF...)")
    crops.add_argument("--per-image", type=int, help="crops per image")
    crops.add_argument(
        "--split-fractions",
        nargs=3,
        type=float,
        metavar=("TRAIN", "VAL", "TEST"),
        help="region widths (0.7 0.15 0.15)",
    )
    # --out is replaced as a whole: it may not hold the crops' source images; the run holds its lock
    parser.set_defaults(handler=guard_output(run, inputs=("images",), replaces=True))


GENERATOR_OPTIONS = {
    "channels": (
        "problems",
        "chains_per_problem",
        "wells",
        "thin",
        "burn_in",
        "temperature",
        "tempering_levels",
        "hottest_temperature",
        "swap_scheme",
        "jump_every",
    ),
    "drops": ("balance", "times_per_simulation"),
    "crops": ("images", "per_image", "split_fractions"),
}


def run(args: argparse.Namespace) -> int:
    """Generate, write, optionally preview, and print a summary; returns the exit status."""
    from sense_core.io import write_ensemble

    options = {"noise": args.noise, "blur": args.blur}
    for key in GENERATOR_OPTIONS[args.name]:
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    for name, keys in GENERATOR_OPTIONS.items():
        given = [k for k in keys if name != args.name and getattr(args, k, None) is not None]
        if given and not any(k in GENERATOR_OPTIONS[args.name] for k in given):
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            print(f"sense generate {args.name}: ignoring {flags} (for {name})", file=sys.stderr)
    if args.no_progress:
        options["progress_bar"] = False
    n = args.n
    if n is None and not (args.name == "crops" and args.per_image):
        n = 1000
    if args.out.exists() and not args.overwrite:
        raise SenseError(f"{args.out}: exists (use --overwrite)")

    started = time.perf_counter()
    ensemble, info = generate_with_info(
        args.name, n, args.size, args.labeled_fraction, args.seed, **options
    )
    generated = time.perf_counter() - started
    written = write_ensemble(ensemble, args.out, overwrite=args.overwrite)
    total = time.perf_counter() - started
    print(summary(ensemble, info, generated, total, written))
    if args.preview:
        from sense_core.generators.preview import write_preview

        path = write_preview(ensemble, args.preview, title=f"{args.name} (seed {args.seed})")
        print(f"preview: {path}")
    return 0


def summary(ensemble, info, generated_s: float, total_s: float, written: Path) -> str:
    """Human-readable report of a generated ensemble."""
    count = len(ensemble)
    labeled = int(np.count_nonzero(ensemble.labeled_mask))
    lines = [
        f"wrote {written}: {count} members of shape {ensemble.member_shape}, "
        f"{len(ensemble.class_names)} classes, {labeled} labeled ({labeled / count:.1%})",
    ]
    width = max([16, *(len(name) + 2 for name in ensemble.class_names)])
    lines.append(f"  {'class':<{width}}{'members':>7}  {'labeled':>7}")
    regime = np.asarray(ensemble.metadata.get("regime", ensemble.labels))
    labeled_counts = ensemble.class_counts()
    for index, name in enumerate(ensemble.class_names):
        lines.append(f"  {name:<{width}}{np.sum(regime == index):>7}  {labeled_counts[name]:>7}")
    stats = info.stats
    if "acceptance_rate" in stats:
        moves = ", ".join(f"{k} {v:.2f}" for k, v in stats["acceptance_by_move"].items())
        jumps = stats.get("jump_acceptance")
        jumps = "" if jumps is None else f"; jumps between chains {jumps:.2f}"
        lines.append(
            f"MCMC: acceptance rate {stats['acceptance_rate']:.3f} ({moves}); tempering swaps "
            f"{stats['swap_acceptance']:.2f}{jumps}; {stats['chains']} chains x "
            f"{stats['samples_per_chain']} samples, {stats['mcmc_steps']} steps"
        )
        lines.append(convergence_line(stats["r_hat"], stats["ess"]))
    if "region_counts" in stats:
        lines.append(f"regions: {stats['region_counts']}")
    lines.append(
        f"time: generate {generated_s:.2f} s ({count / max(generated_s, 1e-9):,.0f} members/s),"
        f" total with writing {total_s:.2f} s"
    )
    lines.append(f"reproduce: {info.command()}")
    return "\n".join(lines)


def convergence_line(r_hat, ess, threshold: float = 1.1) -> str:
    """One line: R-hat and ESS per problem, and whether every problem is below ``threshold``."""
    r_text = ", ".join(f"{v:.2f}" for v in r_hat)
    ess_text = ", ".join("nan" if not np.isfinite(v) else f"{v:.0f}" for v in ess)
    worst = max((v for v in r_hat if np.isfinite(v)), default=float("nan"))
    verdict = (
        "not enough samples to judge"
        if not np.isfinite(worst)
        else f"converged (max R-hat {worst:.2f} <= {threshold})"
        if worst <= threshold
        else f"NOT converged (max R-hat {worst:.2f} > {threshold}: chains have not mixed)"
    )
    return f"convergence per problem: split-R-hat {r_text}; ESS {ess_text}; {verdict}"


def main(argv: list[str] | None = None) -> int:
    """Run ``generate`` on its own (``python -m sense_core.generators.cli NAME ...``)."""
    parser = argparse.ArgumentParser(prog="sense")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(["generate", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except SenseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
