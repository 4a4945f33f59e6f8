"""``sense`` subcommands of the training package: ``train-labeler`` and ``pseudo-label``.

:func:`add_parser` is called by :func:`sense_core.cli.build_parser` for every ``sense``
invocation, so this module imports nothing heavy: torch, timm and onnx load inside the handlers.
Each subcommand has one ``_add_<name>`` function that registers it (``parser.set_defaults(
handler=fn)``, ``fn(args) -> int``); add new subcommands the same way. User errors are raised as
:class:`sense_core.errors.SenseError` and printed by ``sense`` as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sense_core.cli_options import add_reader_options, open_from_args
from sense_core.errors import SenseError

# Defaults of the labeler's training options; tests check them against LabelerConfig.
LABELER_DEFAULTS = {
    "architecture": "tf_efficientnetv2_b0",
    "epochs": 30,
    "batch_size": 32,
    "learning_rate": 2e-3,
    "weight_decay": 0.05,
    "patience": 6,
    "balance": "loss",
    "augment": "none",
    "fractions": (0.7, 0.15, 0.15),
    "split_seed": 0,
    "seed": 0,
    "threads": 1,
    "device": "auto",
    "drop_rate": 0.2,
    "label_smoothing": 0.0,
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the training package's subcommands on ``sense``'s subparsers."""
    _add_train_labeler(commands)
    _add_pseudo_label(commands)


# --------------------------------------------------------------------------- shared options
def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, metavar="PATH", help="ensemble .npz file or folder of members"
    )
    add_reader_options(parser)


def _open_data(args: argparse.Namespace):
    return open_from_args(args.data, args)


def _progress(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if args.progress is None else args.progress


def _add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )


def _vector_pair(text: str) -> list[int]:
    try:
        x, y = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two channel indices X,Y, got {text!r}"
        ) from None
    return [x, y]


# --------------------------------------------------------------------------- train-labeler
def _add_train_labeler(commands: argparse._SubParsersAction) -> None:
    d = LABELER_DEFAULTS
    parser = commands.add_parser(
        "train-labeler",
        help="train the EfficientNetV2 labeler on the hand-labeled members (stage 1)",
        description="Train a timm EfficientNetV2 classifier (random init, no download) on the "
        "hand-labeled members: stratified train/validation/test split by member id, class-"
        "balanced loss, AdamW with a cosine learning rate, early stopping on the validation "
        "loss, the test split evaluated once at the end. Writes labeler.onnx and sense.json "
        "into the bundle folder OUT and metrics.json, confusion_matrix.png, "
        "training_curves.png and checkpoint.pt into the run folder (OUT/labeler_run). "
        "A checkpoint is saved after every epoch: --resume continues an interrupted run.",
    )
    _add_data_options(parser)
    parser.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="bundle folder")
    parser.add_argument(
        "--run-dir", default=None, help="checkpoint, metrics and plots (default OUT/labeler_run)"
    )
    parser.add_argument(
        "--architecture",
        default=d["architecture"],
        help=f"timm model name (default {d['architecture']}; EfficientNetV2 variants: "
        "tf_efficientnetv2_b0..b3, efficientnetv2_rw_t, ...)",
    )
    parser.add_argument("--epochs", type=int, default=d["epochs"], help="at most (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"], help="(%(default)s)")
    parser.add_argument(
        "--lr",
        dest="learning_rate",
        type=float,
        default=d["learning_rate"],
        help="peak learning rate of AdamW (%(default)s)",
    )
    parser.add_argument(
        "--weight-decay", type=float, default=d["weight_decay"], help="AdamW (%(default)s)"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=d["patience"],
        help="stop after this many epochs without a better validation loss; 0 = never "
        "(%(default)s)",
    )
    parser.add_argument(
        "--balance",
        choices=("loss", "sampler", "none"),
        default=d["balance"],
        help="class balance: class-weighted loss, balanced sampling, or none (%(default)s)",
    )
    parser.add_argument(
        "--augment",
        default=d["augment"],
        help="random symmetries the physics allows, comma-separated: hflip (left/right), "
        "vflip (top/bottom), rot90 (square members), shift (translation by up to 1/8 of the "
        "size, mirrored border), hshift (left/right only); none (default). E.g. a flow from left "
        "to right must not be flipped left/right; gravity pointing down forbids vflip",
    )
    parser.add_argument(
        "--vector-channels",
        dest="vector_pairs",
        type=_vector_pair,
        action="append",
        default=[],
        metavar="X,Y",
        help="channels X,Y hold a vector's components (+x right, +y up); augmentation "
        "transforms them as a vector (repeatable)",
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=d["fractions"],
        metavar=("TRAIN", "VAL", "TEST"),
        help="split of the labeled members (default 0.7 0.15 0.15; a preset 'split' metadata "
        "column wins)",
    )
    parser.add_argument("--split-seed", type=int, default=d["split_seed"], help="(%(default)s)")
    parser.add_argument("--seed", type=int, default=d["seed"], help="training seed (%(default)s)")
    parser.add_argument(
        "--threads", type=int, default=d["threads"], help="torch CPU threads (%(default)s)"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=d["device"], help="(%(default)s)"
    )
    parser.add_argument(
        "--drop-rate", type=float, default=d["drop_rate"], help="dropout before the classifier"
    )
    parser.add_argument(
        "--label-smoothing", type=float, default=d["label_smoothing"], help="(%(default)s)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run folder with its saved configuration",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the bundle's labeler and start the run folder over",
    )
    _add_progress_option(parser)
    parser.set_defaults(handler=_run_train_labeler)


def labeler_config_options(args: argparse.Namespace) -> dict:
    """The LabelerConfig fields given by parsed ``train-labeler`` arguments."""
    return {name: getattr(args, name) for name in (*LABELER_DEFAULTS, "vector_pairs")}


def _run_train_labeler(args: argparse.Namespace) -> int:
    from sense_training.labeler import LabelerConfig, train_labeler

    store = _open_data(args)
    config = LabelerConfig(**labeler_config_options(args))
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = train_labeler(
            store,
            args.out,
            config,
            run_dir=args.run_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            command=["sense", *sys.argv[1:]],
            progress=_progress(args),
            log=log,
        )
    except KeyboardInterrupt:
        log("interrupted: the last completed epoch is checkpointed; continue with --resume")
        raise
    if not result.is_main:
        return 0  # another rank of a torchrun run: rank 0 reports
    metrics = result.metrics
    parts = []
    for part in ("test", "validation"):
        scores = metrics[part]
        if scores["members"]:
            parts.append(
                f"{part} accuracy {scores['accuracy']:.4f} ({scores['members']} members, "
                f"{scores['errors']} wrong)"
            )
        else:
            parts.append(f"no {part} members")
    print(
        f"labeler {metrics['architecture']}: {', '.join(parts)}; best epoch "
        f"{metrics['best_epoch']} of {metrics['epochs_run']}, {metrics['train_seconds']:.0f} s "
        "training"
    )
    print(f"bundle: {Path(args.out) / 'sense.json'} + labeler.onnx")
    print(f"metrics and plots: {result.run_dir}")
    return 0


# --------------------------------------------------------------------------- pseudo-label
def _add_pseudo_label(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "pseudo-label",
        help="label every unlabeled member with the bundle's labeler (class + confidence)",
        description="Run the bundle's ONNX labeler over every member and write the ensemble "
        "again with labels = the hand label where there is one, else the predicted class "
        "(or -1 when its softmax confidence is below --threshold), and metadata label_source "
        "(manual/pseudo/none), confidence (1 for manual), pseudo_label and pseudo_confidence "
        "(the model's verdict on every member) and split (the labeler's train/validation/test "
        "split of the hand labels; pseudo-labeled members are 'train').",
    )
    _add_data_options(parser)
    parser.add_argument("--bundle", required=True, help="bundle folder with labeler.onnx")
    parser.add_argument("--out", required=True, help="output ensemble (.npz or folder)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="keep pseudo-labels with a softmax confidence of at least this (0..1; default 0: "
        "keep all)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="members per batch (256)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="onnxruntime provider: CUDA when available (auto), or forced (the provider really "
        "used is reported)",
    )
    parser.add_argument(
        "--member-format",
        choices=("vti", "npy"),
        default="vti",
        help="file type of members when OUT is a folder (vti)",
    )
    parser.add_argument("--summary-json", default=None, help="also write the summary here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _add_progress_option(parser)
    parser.set_defaults(handler=_run_pseudo_label)


def _run_pseudo_label(args: argparse.Namespace) -> int:
    from sense_core.bundle import Bundle
    from sense_core.io import write_ensemble
    from sense_core.io.atomic import atomic_write_text
    from sense_training.labeler import pseudo_label, pseudo_labeled_store

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SenseError(f"{out} already exists (pass --overwrite to replace it)")
    store = _open_data(args)
    bundle = Bundle.load(args.bundle)
    result = pseudo_label(
        store,
        bundle,
        args.threshold,
        batch_size=args.batch_size,
        device=args.device,
        progress=_progress(args),
    )
    labeled = pseudo_labeled_store(store, result, bundle)
    write_ensemble(
        labeled,
        out,
        overwrite=args.overwrite,
        member_format=args.member_format,
        progress=_progress(args),
    )
    summary = {
        "data": str(args.data),
        "bundle": str(args.bundle),
        "out": str(out),
        **result.summary(bundle.class_names),
    }
    if args.summary_json:
        atomic_write_text(args.summary_json, json.dumps(summary, indent=2) + "\n")
    print(
        f"{summary['members']} members: {summary['manual']} manual, {summary['pseudo']} "
        f"pseudo-labeled, {summary['none']} below the threshold {args.threshold:g}; "
        f"onnxruntime provider {summary['provider']}"
    )
    print("pseudo-labels per class: " + ", ".join(
        f"{name} {count}" for name, count in summary["pseudo_per_class"].items()
    ))  # fmt: skip
    if summary["agreement_with_manual_labels"] is not None:
        print(f"agreement with the hand labels: {summary['agreement_with_manual_labels']:.4f}")
    print(f"wrote {out}")
    return 0
