"""Command-line options shared by every ``sense`` subcommand that reads an ensemble, and the
guard of every subcommand that writes an output (:func:`guard_output`)."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Handler = Callable[[argparse.Namespace], Any]
# an option's name on the parsed arguments, or a function of them giving paths
PathOption = str | Callable[[argparse.Namespace], Iterable[Any]]


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
    parser.add_argument(
        "--no-sidecar",
        action="store_true",
        help="ignore the hand labels of the ensemble's label sidecar (<ensemble>.sense/labels.csv, "
        "written by sense label); see docs/labeling.md",
    )


def add_inference_options(parser: argparse.ArgumentParser, labeler: bool = True) -> None:
    """``--device``, ``--threads``, ``--batch-size`` (and ``--no-labeler``) of the commands that
    run a bundle's models over an ensemble (``sense embed``, ``unusual``, ``suggest``)."""
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="onnxruntime device: auto (CUDA when it really works, else CPU), cpu, or cuda "
        "(an error saying why when CUDA cannot be used)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="onnxruntime CPU threads (default: all cores)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="members per inference batch (default 64)"
    )
    if labeler:
        parser.add_argument(
            "--no-labeler", action="store_true", help="do not predict labels with the labeler"
        )


def open_from_args(path, args: argparse.Namespace):
    """The ensemble at ``path``, read with the options of :func:`add_reader_options`."""
    from sense_core.io import open_ensemble

    return open_ensemble(
        path,
        nan_policy=args.nan_policy,
        fill_value=args.fill_value,
        array_name=args.array,
        sidecar=not getattr(args, "no_sidecar", False),
    )


def _paths(args: argparse.Namespace, options: Sequence[PathOption]) -> list:
    paths: list = []
    for option in options:
        value = list(option(args)) if callable(option) else getattr(args, option, None)
        if isinstance(value, list | tuple):
            paths += [v for v in value if v]
        elif value:
            paths.append(value)
    return paths


def _other_rank() -> bool:
    """Whether this process is a rank other than 0 of a ``torchrun`` run (those write nothing;
    rank 0 holds the lock)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1 and int(os.environ.get("RANK") or 0) != 0
    except ValueError:
        return False


def guard_output(
    handler: Handler,
    *,
    out: PathOption = "out",
    inputs: Sequence[PathOption] = (),
    bundles: Sequence[PathOption] = (),
    replaces: bool = False,
    writes: Callable[[argparse.Namespace], Iterable[Any]] | None = None,
) -> Handler:
    """``handler`` (a subcommand that writes the output ``args.<out>``, or ``out(args)``) made
    safe to run: first the output is checked against the inputs (options ``inputs`` and
    ``bundles``; see :func:`sense_core.io.atomic.check_output_outside_inputs` for ``replaces``
    and ``writes``), then the handler runs holding the output's lock, so that its "already
    exists" checks and its writes cannot interleave with another SENSE process writing the same
    output (that one stops at once with "another SENSE process is writing ...")."""

    @functools.wraps(handler)
    def guarded(args: argparse.Namespace) -> Any:
        from sense_core.io.atomic import check_output_outside_inputs, output_lock

        target = out(args) if callable(out) else getattr(args, out)
        check_output_outside_inputs(
            target,
            _paths(args, inputs),
            bundles=_paths(args, bundles),
            replaces=replaces,
            writes=writes(args) if writes is not None else (),
        )
        if _other_rank():
            return handler(args)
        with output_lock(target):
            return handler(args)

    return guarded
