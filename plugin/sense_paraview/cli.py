"""The ``sense`` subcommands of the ParaView package (entry point ``sense.commands``): ``sense
demo`` and the launchers ``sense paraview|pvpython|pvbatch|pvserver``. Nothing heavy (and no
ParaView) is imported here: the handlers import what they need."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial

LAUNCHER_HELP = {
    "paraview": "the ParaView GUI",
    "pvpython": "ParaView's Python shell / script runner",
    "pvbatch": "ParaView's batch script runner (MPI-capable)",
    "pvserver": "ParaView's server (MPI-capable)",
}


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sense_paraview.demo import run_demo

    run_demo(
        Path(args.out),
        args.members,
        args.size,
        args.seed,
        paraview=not args.no_paraview,
        quick=args.quick,
    )
    return 0


def _run_launcher(program: str, argv: Sequence[str]) -> int:
    from sense_paraview.launcher import run_launcher

    return run_launcher(program, argv)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``demo`` and the ParaView launchers. A launcher takes its arguments untouched
    (``raw_arguments``: ``sense pvpython -c ...`` must not be parsed by argparse)."""
    demo = commands.add_parser(
        "demo",
        help="run SENSE on the built-in default ensemble (what `make demo` runs)",
        description="Generate the default ensemble (MCMC channel structures, 5 regimes), write "
        "it as .npz and as a ParaView-ready member folder, describe it (classes, labels, split, "
        "normalisation), draw a gallery, embed it with the shipped bundle, and render the linked "
        "layout and members through SENSE's ParaView plugin (pvbatch, under Xvfb when no display "
        "is set). Prints where everything is.",
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--members", type=int, default=600, help="ensemble size (default 600)")
    demo.add_argument("--size", type=int, default=64, help="field size in pixels (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    demo.add_argument("--no-paraview", action="store_true", help="skip the ParaView rendering")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="the generator's default MCMC (seconds) instead of the demo's mixing chains (~1 min)",
    )
    demo.set_defaults(handler=_run_demo)

    for program, what in LAUNCHER_HELP.items():
        launcher = commands.add_parser(
            program,
            help=f"start {what} with SENSE's plugin and environment",
            description=f"Start {what} with the SENSE plugin on PV_PLUGIN_PATH, this "
            "environment's packages importable, and ParaView 5.11's Python-plugin fix "
            "(inspect.getargspec). Without a DISPLAY it runs on a private Xvfb. Every argument "
            f"after `sense {program}` goes to {program} (`sense {program} -- --help` for its own "
            "help).",
        )
        launcher.add_argument(
            "--no-xvfb",
            action="store_true",
            help="never start a private Xvfb: for runs that do not render, or with DISPLAY set "
            "(this ParaView cannot render offscreen; without a display it says so and stops)",
        )
        launcher.add_argument("args", nargs="*", help=f"arguments for {program}")
        launcher.set_defaults(handler=partial(_run_launcher, program), raw_arguments=True)
