"""The ``sense`` command: one entry point, a subcommand per job.

Errors meant for the user (:class:`SenseError`, and the system's own: disk full, no permission,
out of memory) are printed as one line, without a traceback, and exit with status 2. SIGTERM and
SIGHUP stop a command like Ctrl-C does: partial outputs are removed, and the exit status is
128 + the signal number (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

import numpy as np

from sense_core import __version__
from sense_core.cli_options import add_reader_options, guard_output, open_from_args
from sense_core.errors import Interrupted, SenseError, describe_exception, stop_on_signals
from sense_core.labeling_cli import add_parser as add_labeling_commands

# Packages add their subcommands through this entry-point group (see pyproject.toml): each entry
# names an ``add_parser(commands)`` function whose module imports nothing heavy at module level
# (torch, umap, onnxruntime load inside the handlers). The core never names them; an entry whose
# module is not installed (e.g. the training package in a runtime-only environment) is skipped.
COMMANDS_GROUP = "sense.commands"


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values


def _run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    if Path(args.path, "sense.json").is_file():
        from sense_core.bundle import describe_bundle, print_bundle_summary

        summary = describe_bundle(args.path)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print_bundle_summary(summary)
        return 0
    from sense_core.ensemble import describe_ensemble
    from sense_core.label_store import describe_label_origin

    store = open_from_args(args.path, args)
    summary = describe_ensemble(store, tuple(args.fractions), args.seed, args.stats)
    summary["label_origin"] = getattr(store, "label_origin", None)
    from sense_core.generators.convergence import convergence_from_metadata

    summary["convergence"] = convergence_from_metadata(store.metadata)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    c, h, w = summary["member_shape"]
    print(f"{summary['path']}: {summary['members']} members, {c} channel(s) of {h}x{w}")
    print(f"  labeled {summary['labeled']}, unlabeled {summary['unlabeled']}")
    if summary["label_origin"]:
        print(f"  {describe_label_origin(summary['label_origin'])}")
    for name, count in summary["class_counts"].items():
        print(f"  class {name!r}: {count} labeled")
    if summary["metadata"]:
        print(f"  metadata: {', '.join(summary['metadata'])}")
    if summary["convergence"]:
        from sense_core.generators.cli import convergence_line

        convergence = summary["convergence"]
        print(f"  MCMC {convergence_line(convergence['r_hat'], convergence['ess'])}")
    split = summary["split"]
    if "error" in split:
        print(f"  split: not possible ({split['error']})")
    else:
        print(
            f"  split (seed {split['seed']}): train {split['train']}, "
            f"validation {split['validation']}, test {split['test']}"
        )
    if "normalization" in summary:
        norm = summary["normalization"]
        print(f"  train mean {np.round(norm['mean'], 6)}, std {np.round(norm['std'], 6)}")
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from sense_core.io import write_ensemble

    store = open_from_args(args.path, args)
    out = write_ensemble(
        store,
        args.out,
        overwrite=args.overwrite,
        member_format=args.member_format,
        progress=sys.stderr.isatty(),
    )
    print(f"wrote {len(store)} members to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sense",
        description="SENSE: self-supervised neural embeddings of 2D scientific ensembles. "
        "Each subcommand has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"sense {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser(
        "info",
        help="describe an ensemble (members, classes, labels, split) or a model bundle",
        description="Describe an ensemble (.npz file or member folder): members, member shape, "
        "labeled members per class, metadata, and the deterministic train/validation/test split "
        "of the labeled members. --stats also computes the training normalisation statistics "
        "(reads every training member). Given a bundle folder (with sense.json), describe the "
        "models it holds, their input shape, classes, training metrics and checksums.",
    )
    info.add_argument("path", help="ensemble .npz file, folder of members, or bundle folder")
    add_reader_options(info)
    info.add_argument(
        "--fractions",
        type=_fractions,
        default=(0.7, 0.15, 0.15),
        metavar="TRAIN,VAL,TEST",
        help="split fractions of the labeled members, comma-separated like every list option "
        "of sense (default 0.7,0.15,0.15)",
    )
    info.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    info.add_argument("--stats", action="store_true", help="compute normalisation statistics")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_run_info)

    convert = commands.add_parser(
        "convert",
        help="convert an ensemble between .npz and member folders",
        description="Read an ensemble and write it as an .npz (OUT ends in .npz) or as a folder "
        "of members with labels.csv and ParaView index files (ensemble.vtm, ensemble.pvd). "
        "Members are streamed in batches, so ensembles larger than memory convert. The output "
        "appears only when complete.",
    )
    convert.add_argument("path", help="ensemble .npz file or folder of members")
    convert.add_argument("out", help="output .npz file or folder")
    convert.add_argument(
        "--member-format",
        choices=("vti", "npy"),
        default="vti",
        help="file type of members in an output folder (default vti, which ParaView opens)",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_reader_options(convert)
    convert.set_defaults(handler=guard_output(_run_convert, inputs=("path",), replaces=True))
    add_labeling_commands(commands)  # sense label, sense suggest

    for entry in entry_points(group=COMMANDS_GROUP):
        try:
            add_parser = entry.load()
        except ModuleNotFoundError as exc:
            if exc.name is not None and entry.module.startswith(exc.name):
                continue  # that part of SENSE is not installed
            raise
        add_parser(commands)
    return parser


def _raw_command(parser: argparse.ArgumentParser, argv: Sequence[str]):
    """The handler of a subcommand that takes its arguments untouched (``raw_arguments``, e.g.
    the ParaView launchers: argparse would eat pvpython's ``-c``), or None. Its own ``--help``
    still goes through argparse."""
    if not argv or argv[1:2] in (["-h"], ["--help"]):
        return None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and argv[0] in action.choices:
            command = action.choices[argv[0]]
            return command.get_default("handler") if command.get_default("raw_arguments") else None
    return None


INTERRUPTED_NOTE = (
    "outputs being written were discarded, finished ones are kept; a training run continues "
    "from its last completed epoch with --resume"
)


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the file, then the system's reason."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``sense`` command; user errors print one line (exit status 2), SIGTERM/SIGHUP
    and Ctrl-C stop cleanly (exit status 128 + the signal number)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        raw = _raw_command(parser, argv)
        if raw is not None:
            return int(raw(argv[1:]) or 0)
        args = parser.parse_args(argv)
        args.argv = argv  # what was asked for, for commands that record it (sense fit)
        if args.command is None:
            parser.print_help()
            return 2
        with stop_on_signals():
            return int(args.handler(args) or 0)
    except SenseError as exc:
        print(f"sense: error: {describe_exception(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, no permission, ... outside SENSE's own checks
        print(f"sense: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            "sense: error: out of memory; use smaller batches (--batch-size), fewer or smaller "
            "members, or a machine with more memory",
            file=sys.stderr,
        )
        return 2
    except Interrupted as exc:
        print(f"sense: {exc}: {INTERRUPTED_NOTE}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"sense: interrupted: {INTERRUPTED_NOTE}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
