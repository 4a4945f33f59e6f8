"""Command-line options shared by every ``sense`` subcommand that reads an ensemble."""

from __future__ import annotations

import argparse


def add_reader_options(parser: argparse.ArgumentParser) -> None:
    """--nan-policy, --fill-value and --array (see :func:`open_from_args`)."""
    parser.add_argument(
        "--nan-policy",
        choices=("raise", "fill"),
        default="raise",
        help="members with NaN/Inf values: reject them with an error (raise, default) or "
        "replace the values by --fill-value (fill), e.g. cells outside a domain",
    )
    parser.add_argument(
        "--fill-value", type=float, default=0.0, help="value for NaN/Inf with --nan-policy fill"
    )
    parser.add_argument(
        "--array", default=None, help=".vti members: point array to read (default: active scalars)"
    )


def open_from_args(path, args: argparse.Namespace):
    """The ensemble at ``path``, read with the options of :func:`add_reader_options`."""
    from sense_core.io import open_ensemble

    return open_ensemble(
        path, nan_policy=args.nan_policy, fill_value=args.fill_value, array_name=args.array
    )
