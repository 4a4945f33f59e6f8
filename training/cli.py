"""``sense`` subcommands of the training package: ``train-labeler``, ``pseudo-label``,
``train-encoder``, ``evaluate``, ``fit`` and ``experiment``.

:func:`add_parser` is called for every ``sense`` invocation, so this module imports nothing
heavy: torch, timm, umap and onnx load inside the handlers. The training options are generated
from the configuration dataclasses (:mod:`sense_training.config`, :mod:`sense_core.options`):
defaults and help are written once, there. Handlers only parse, build the configurations, call
the library (:mod:`sense_training.pipeline`, the trainers, :mod:`sense_core.pseudo_labels`) and
print. User errors are raised as :class:`sense_core.errors.SenseError` and printed by ``sense``
as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sense_core.cli_options import add_reader_options, guard_output, open_from_args
from sense_core.errors import SenseError
from sense_core.options import add_options, config_from_args, option_dest
from sense_core.pseudo_labels import PseudoLabelOptions
from sense_training.config import EncoderConfig, LabelerConfig
from sense_training.evaluation import EvaluationConfig

TRAIN_LABELER_DESCRIPTION = """\
Train a timm EfficientNetV2 classifier (random init, no download) on the hand-labeled members:
stratified train/validation/test split by member id, class-balanced loss, AdamW with a cosine
learning rate, early stopping on the validation loss, the test split evaluated once at the end.
Writes labeler.onnx and sense.json into the bundle folder OUT and metrics.json,
confusion_matrix.png, training_curves.png and checkpoint.pt into the run folder
(OUT/labeler_run). A checkpoint is saved after every epoch: --resume continues an interrupted run.
"""

PSEUDO_LABEL_DESCRIPTION = """\
Run the bundle's ONNX labeler over every member and write the ensemble again with labels = the
hand label where there is one, else the predicted class (or -1 when its softmax confidence is
below --threshold), and metadata label_source (manual/pseudo/none), confidence (1 for manual),
pseudo_label and pseudo_confidence (the model's verdict on every member) and split (the labeler's
train/validation/test split of the hand labels; pseudo-labeled members are 'train').
"""

TRAIN_ENCODER_DESCRIPTION = """\
Train a convolutional autoencoder (ae) or beta-VAE (vae) on an ensemble and export its encoder
(normalised fields -> latent; the VAE exports mu) to ONNX into a model bundle (encoder.onnx +
sense.json), next to a labeler if the bundle has one. The latent space is shaped by the chosen
loss terms: recon (MSE on normalised fields, + beta_norm*KL for the VAE), cluster (soft
silhouette on the latent vectors with memberships from the labels) and contrastive (margin or
SupCon). Labels: the hand labels of the training split, plus pseudo-labels when the ensemble
was pseudo-labelled (metadata label_source/confidence). Train and validation losses are
monitored every epoch (curves in <bundle>/encoder_run/loss_curves.png); a checkpoint after every
epoch allows --resume. See docs/encoder.md for the formulas.

If cluster_gap (validation minus training clustering loss, hand-labeled members on both sides)
grows past ~0.10, the clustering loss memorises the training members. What helped in
docs/encoder.md: pseudo-labels for the unlabelled members (sense fit), --augment shift where a
structure's position is not part of its class (24-36 epochs), and with hand labels only
--augment shift --trim-fraction 0.3 --epochs 36.
"""

EVALUATE_DESCRIPTION = """\
Score encoders as in the paper: the latent vectors of the hand-labeled test members are mapped to
2D with UMAP (seeded) and the silhouette of the 2D points against the hand labels is reported
(mean +- sd over --seeds), with latent-space silhouette, k-NN accuracy, k-means ARI,
trustworthiness and reconstruction error, next to raw-field baselines (PCA(2), UMAP). Writes
evaluation.json/.csv/.md and maps.png into --out.
"""

FIT_DESCRIPTION = """\
Everything in one go: label the members (by default an encoder trained on all members with the
hand labels, and the best head on its latent space: --labeler-method), pseudo-label the others,
train the encoder with the pseudo-labels, export both into the bundle folder --out, map the
encoder's training latents with UMAP and train the parametric projector that reproduces that map
(projector.onnx, its fidelity in sense.json), and evaluate (report in <out>/evaluation). Stage
times, the machine's load, labeler accuracy, 2D test silhouettes and the projector's fidelity go
to <out>/fit_report.json. Profiles: quick (minutes on 2 cores for ~2,000 members of 32-64 px)
and paper (the paper's settings: beta-VAE, latent 256, 100 epochs). Encoder and labeler options
override the profile's settings (the defaults shown are the quick profile's); --seed, --threads
and --device also apply to the labeler unless --labeler-... is given, and the labeler uses the
encoder's split. A fit stopped at any stage (SIGTERM, Ctrl-C, SIGKILL, power cut) continues
with the same command and --resume: finished stages are kept (<out>/fit_run records them), the
interrupted one continues from its checkpoint, and the bundle is the one an uninterrupted fit
gives; other options or data are refused. --overwrite starts over.
"""

EXPERIMENT_DESCRIPTION = """\
Run a grid of encoder trainings on one ensemble and compare them with the baselines. The TOML
file names the data and output folder, fixed encoder settings ([base], EncoderConfig fields such
as epochs, latent_dim, dropout) and the values to combine ([grid], lists: e.g. losses =
["recon", "recon,cluster"], arch = ["ae", "vae"]). Each combination is trained into
<out>/<name>/ (a bundle); then all are evaluated together (evaluation.md/.csv/.json, maps.png,
summary.json with the best SENSE variant, the plain AE and the baselines). Instead of (or besides)
a grid, [[variant]] tables list named variants (name = "plain_ae", losses = "recon", ...).
Training seeds: train_seeds = [0, 1, 2] trains every variant once per seed into
<out>/<name>/seed<k>/, evaluates each seed's bundles into <out>/seed<k>/ (baselines with the
first seed) and reports every variant's mean +- sd over the seeds in <out>/summary.json; a
[[variant]] may set its own train_seeds. seeds = [...] are the UMAP seeds of the evaluation.
"""

# Options of `fit` that set the labeler too, unless given as --labeler-...
SHARED_RUN_OPTIONS = ("seed", "threads", "device")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the training package's subcommands on ``sense``'s subparsers."""
    _add_train_labeler(commands)
    _add_pseudo_label(commands)
    _add_train_encoder(commands)
    _add_evaluate(commands)
    _add_fit(commands)
    _add_experiment(commands)
    _add_train_version(commands)


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


def _command(args: argparse.Namespace) -> list[str]:
    """The command line being run: the argv that main() parsed, when it keeps it."""
    return ["sense", *getattr(args, "argv", sys.argv[1:])]


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    add_options(parser, EvaluationConfig(), group_title="evaluation")


# --------------------------------------------------------------------------- train-labeler
def _add_train_labeler(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-labeler",
        help="train the EfficientNetV2 labeler on the hand-labeled members (stage 1)",
        description=TRAIN_LABELER_DESCRIPTION,
    )
    _add_data_options(parser)
    parser.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="bundle folder")
    parser.add_argument(
        "--run-dir", default=None, help="checkpoint, metrics and plots (default OUT/labeler_run)"
    )
    add_options(parser, LabelerConfig(), group_title="labeler")
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
    parser.set_defaults(handler=guard_output(_run_train_labeler, inputs=("data",)))


def _run_train_labeler(args: argparse.Namespace) -> int:
    from sense_training.labeler import train_labeler

    store = _open_data(args)
    config = config_from_args(LabelerConfig(), args)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = train_labeler(
            store,
            args.out,
            config,
            run_dir=args.run_dir,
            resume=args.resume,
            overwrite=args.overwrite,
            command=_command(args),
            progress=_progress(args),
            log=log,
        )
    except KeyboardInterrupt:
        log("interrupted: the last completed epoch is checkpointed; continue with --resume")
        raise
    if not result.is_main:
        return 0  # another rank of a torchrun run: rank 0 reports
    _print_labeler_result(result.metrics)
    print(f"bundle: {Path(args.out) / 'sense.json'} + labeler.onnx")
    print(f"metrics and plots: {result.run_dir}")
    return 0


def _print_labeler_result(metrics: dict) -> None:
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


# --------------------------------------------------------------------------- pseudo-label
def _add_pseudo_label(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "pseudo-label",
        help="label every unlabeled member with the bundle's labeler (class + confidence)",
        description=PSEUDO_LABEL_DESCRIPTION,
    )
    _add_data_options(parser)
    parser.add_argument("--bundle", required=True, help="bundle folder with labeler.onnx")
    parser.add_argument("--out", required=True, help="output ensemble (.npz or folder)")
    add_options(parser, PseudoLabelOptions(), group_title="pseudo-labels")
    parser.add_argument(
        "--member-format",
        choices=("vti", "npy"),
        default="vti",
        help="file type of members when OUT is a folder (vti)",
    )
    parser.add_argument("--summary-json", default=None, help="also write the summary here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _add_progress_option(parser)
    parser.set_defaults(
        handler=guard_output(
            _run_pseudo_label, inputs=("data",), bundles=("bundle",), replaces=True
        )
    )


def _run_pseudo_label(args: argparse.Namespace) -> int:
    from sense_core.bundle import Bundle
    from sense_core.io import write_ensemble
    from sense_core.io.atomic import atomic_write_text
    from sense_core.pseudo_labels import pseudo_label, pseudo_labeled_store

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SenseError(f"{out} already exists (pass --overwrite to replace it)")
    options = config_from_args(PseudoLabelOptions(), args)
    store = _open_data(args)
    bundle = Bundle.load(args.bundle)
    result = pseudo_label(store, bundle, **options.arguments(), progress=_progress(args))
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
        f"pseudo-labeled, {summary['none']} below the threshold {options.threshold:g}; "
        f"onnxruntime provider {summary['provider']}"
    )
    print("pseudo-labels per class: " + ", ".join(
        f"{name} {count}" for name, count in summary["pseudo_per_class"].items()
    ))  # fmt: skip
    if summary["agreement_with_manual_labels"] is not None:
        print(f"agreement with the hand labels: {summary['agreement_with_manual_labels']:.4f}")
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- train-encoder
def _add_train_encoder(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-encoder",
        help="train an AE / beta-VAE with latent-space losses and export it into a bundle",
        description=TRAIN_ENCODER_DESCRIPTION,
    )
    _add_data_options(parser)
    parser.add_argument("--bundle", required=True, help="bundle folder (created if missing)")
    parser.add_argument("--run-dir", help="checkpoints, curves, metrics (<bundle>/encoder_run)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the bundle's encoder")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="evaluate afterwards (report in <bundle>/evaluation)",
    )
    add_options(parser, EncoderConfig(), group_title="encoder")
    _add_evaluation_options(parser)
    parser.set_defaults(handler=guard_output(_run_train_encoder, out="bundle", inputs=("data",)))


def _run_train_encoder(args: argparse.Namespace) -> int:
    from sense_training.encoder import train_encoder
    from sense_training.pipeline import evaluate_and_report

    config = config_from_args(EncoderConfig(), args)
    store = _open_data(args)
    result = train_encoder(
        store,
        args.bundle,
        config,
        run_dir=args.run_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        command=_command(args),
    )
    if not result.is_main:
        return 0  # another rank of a torchrun run: rank 0 reports
    metrics = result.metrics
    selected = metrics.get("selected", {})
    print(
        f"encoder written to {Path(args.bundle) / 'encoder.onnx'} (epoch "
        f"{metrics['selected_epoch'] + 1}, validation objective "
        f"{selected.get('val_total', float('nan')):.4f}, ONNX parity "
        f"{metrics['export']['max_abs_diff_real'] or 0:.1e}); curves in "
        f"{result.run_dir / 'loss_curves.png'}"
    )
    if args.evaluate:
        evaluation = config_from_args(EvaluationConfig(), args)
        evaluate_and_report(
            store, {"sense": args.bundle}, Path(args.bundle) / "evaluation", evaluation
        )
    return 0


# --------------------------------------------------------------------------- evaluate
def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="score encoders: 2D test silhouette (paper's metric) and more, with baselines",
        description=EVALUATE_DESCRIPTION,
    )
    _add_data_options(parser)
    parser.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="[NAME=]FOLDER",
        help="a bundle with an encoder (repeat to compare)",
    )
    parser.add_argument("--out", required=True, help="report folder")
    _add_evaluation_options(parser)
    parser.set_defaults(
        handler=guard_output(
            _run_evaluate,
            inputs=("data",),
            bundles=(lambda args: _parse_bundles(args.bundle).values(),),
        )
    )


def _parse_bundles(values: list[str]) -> dict[str, str]:
    bundles: dict[str, str] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            name, folder = Path(value).name or value, value
        if name in bundles:
            raise SenseError(f"two bundles are named {name!r}; use NAME=FOLDER")
        bundles[name] = folder
    return bundles


def _run_evaluate(args: argparse.Namespace) -> int:
    from sense_training.pipeline import evaluate_and_report

    evaluation = config_from_args(EvaluationConfig(), args)
    store = _open_data(args)
    evaluate_and_report(store, _parse_bundles(args.bundle), Path(args.out), evaluation)
    return 0


# --------------------------------------------------------------------------- fit
LABELER_PREFIX = "labeler-"


def _add_fit(commands: argparse._SubParsersAction) -> None:
    from sense_training.pipeline import (
        DEFAULT_LABELER_METHOD,
        LABELER_METHODS,
        PROFILES,
        profile_configs,
    )

    parser = commands.add_parser(
        "fit",
        help="labeler -> pseudo-labels -> encoder -> projector -> evaluation into one bundle",
        description=FIT_DESCRIPTION,
    )
    _add_data_options(parser)
    parser.add_argument("--out", required=True, help="bundle folder")
    parser.add_argument(
        "--profile", choices=tuple(PROFILES), default="quick", help="named settings (quick)"
    )
    restart = parser.add_mutually_exclusive_group()
    restart.add_argument("--overwrite", action="store_true", help="replace models in --out")
    restart.add_argument(
        "--resume",
        action="store_true",
        help="continue a fit that was stopped (SIGTERM, SIGKILL, power cut) at any stage: give "
        "the same options and data; finished stages are kept, the interrupted one continues "
        "from its checkpoint, and the bundle is the one an uninterrupted fit gives",
    )
    parser.add_argument(
        "--labeler-method",
        choices=LABELER_METHODS,
        help=f"({DEFAULT_LABELER_METHOD}, or ssl when --instance-views names your ensemble's "
        "views) latent: train an encoder on all members with the hand "
        "labels first and label with the best head on its latent space (linear or label "
        "propagation, chosen by cross-validation; a linear classifier of the raw fields "
        "competes), then give the final encoder its own head as the bundle's labeler; cnn: "
        "train the image labeler (EfficientNetV2) on the hand labels (weaker with few labels, "
        "see docs/label_efficiency.md; the --labeler-* options are its settings); ssl: the "
        "first encoder is self-supervised (recon + instance-contrastive term with "
        "--instance-views, no label), the labeler is chosen among latent heads, self-training "
        "and a raw-field classifier by cross-validation, and members under --threshold "
        "(default 0.9 here) stay unlabelled (better with few labels when the views are "
        "right for the ensemble, worse with the generic ones)",
    )
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="latent and ssl methods: train the final encoder from random weights (default: it "
        "starts from the first encoder's, which it fine-tunes with the pseudo-labels)",
    )
    parser.add_argument(
        "--compress-labeler",
        action="store_true",
        help="store the labeler's weights as int8 (about 4x smaller file, float compute; "
        "the change is measured and recorded in sense.json)",
    )
    parser.add_argument(
        "--no-projector",
        action="store_true",
        help="do not train the parametric projector (projector.onnx)",
    )
    quick = profile_configs("quick")
    add_options(
        parser, PseudoLabelOptions(), group_title="pseudo-labels", skip=("batch_size", "device")
    )
    add_options(parser, quick.projector, group_title="projector")
    add_options(parser, quick.encoder, group_title="encoder")
    add_options(
        parser,
        quick.labeler,
        prefix=LABELER_PREFIX,
        group_title="labeler",
        skip=("split",),
        aliases={"architecture": ("--labeler-arch",)},
    )
    _add_evaluation_options(parser)
    parser.set_defaults(handler=guard_output(_run_fit, inputs=("data",)))


def fit_configs(args: argparse.Namespace):
    """The labeler and encoder configurations of parsed ``fit`` options: the profile's, with
    the options given applied (see FIT_DESCRIPTION for the shared ones)."""
    from sense_training.pipeline import profile_configs

    profile = profile_configs(args.profile)
    encoder = config_from_args(profile.encoder, args)
    shared = {
        name: getattr(encoder.run, name)
        for name in SHARED_RUN_OPTIONS
        if getattr(args, option_dest(("run", name)), None) is not None
    }
    labeler = profile.labeler.updated({"run": shared, "split": encoder.split.to_dict()})
    return config_from_args(labeler, args, prefix=LABELER_PREFIX), encoder


def _run_fit(args: argparse.Namespace) -> int:
    from sense_training.pipeline import fit, labeler_method_for

    labeler, encoder = fit_configs(args)
    options = config_from_args(PseudoLabelOptions(), args)
    try:
        fit(
            _open_data(args),
            args.out,
            profile=args.profile,
            labeler=labeler,
            encoder=encoder,
            evaluation=config_from_args(EvaluationConfig(), args),
            threshold=options.threshold,
            labeler_method=labeler_method_for(args.labeler_method, encoder.loss.instance_views),
            warm_start=not args.cold_start,
            overwrite=args.overwrite,
            resume=args.resume,
            compress_labeler=args.compress_labeler,
            projector=not args.no_projector,
            projector_points=getattr(args, option_dest(("max_points",))),
            command=_command(args),
        )
    except KeyboardInterrupt as exc:
        raise _fit_interrupted(exc, _command(args)) from None
    return 0


def _fit_interrupted(exc: KeyboardInterrupt, command: list[str]) -> KeyboardInterrupt:
    """The interruption of a fit (SIGTERM, SIGHUP, Ctrl-C), its message naming the command
    that continues it (``sense`` prints it as ``sense: interrupted by SIGTERM (...): ...``)."""
    import shlex
    import signal

    from sense_core.errors import Interrupted
    from sense_training.pipeline import resume_command

    interrupted = Interrupted(getattr(exc, "signum", signal.SIGINT))
    interrupted.args = (
        f"{interrupted.args[0]} (continue this fit with: {shlex.join(resume_command(command))})",
    )
    return interrupted


# --------------------------------------------------------------------------- experiment
def _add_experiment(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "experiment",
        help="train a grid of encoders and compare them with the baselines",
        description=EXPERIMENT_DESCRIPTION,
    )
    parser.add_argument("--config", required=True, help="grid TOML file")
    parser.add_argument("--overwrite", action="store_true", help="retrain existing variants")
    parser.set_defaults(
        handler=guard_output(
            _run_experiment,
            out=lambda args: _experiment_spec(args)["out"],
            inputs=(lambda args: [_experiment_spec(args)["data"]],),
        )
    )


def _experiment_spec(args: argparse.Namespace) -> dict:
    from sense_training.pipeline import load_experiment

    return load_experiment(args.config)


def _run_experiment(args: argparse.Namespace) -> int:
    from sense_training.pipeline import run_experiment

    run_experiment(args.config, overwrite=args.overwrite, command=_command(args))
    return 0


# --------------------------------------------------------------------------- train-version
TRAIN_VERSION_DESCRIPTION = """\
Train a new bundle for an ensemble and keep it as the next version beside it
(<ensemble>.sense/bundles/NNN/, see docs/labeling.md), from the hand labels it has now (its
own and its label sidecar's). --kind head: a classifier head on the latent space of an existing
bundle (--bundle, default: the newest version, else the shipped bundle for the member shape),
cross-validated on the hand labels; seconds. --kind full: a whole sense fit (--profile,
--labeler-method); with no hand label at all, a label-free fit (a map and suggested groups).
Progress lines are "[k/n] stage" and "epoch e/E"; the last line names the version. A failure
or a SIGTERM leaves no version behind. What sense_paraview.train runs in the background.
"""


def _add_train_version(commands: argparse._SubParsersAction) -> None:
    from sense_core.bundle_versions import TRAINING_KINDS
    from sense_training.config import GENERIC_VIEWS, VIEW_OPS, VIEW_PRESETS
    from sense_training.pipeline import LABELER_METHODS

    parser = commands.add_parser(
        "train-version",
        help="train a head or a whole fit into the ensemble's next bundle version",
        description=TRAIN_VERSION_DESCRIPTION,
    )
    parser.add_argument("ensemble", help="ensemble .npz file or folder of members")
    parser.add_argument(
        "--kind", choices=TRAINING_KINDS, default="head", help="head or full (head)"
    )
    parser.add_argument("--bundle", help="the bundle a head goes on (default: see above)")
    parser.add_argument("--profile", default="quick", help="sense fit profile for --kind full")
    parser.add_argument("--epochs", type=int, help="epochs of the full fit (default: profile's)")
    parser.add_argument(
        "--labeler-method",
        choices=LABELER_METHODS,
        help="labeler of a full fit with hand labels (as sense fit: latent, or ssl when "
        "--instance-views names the ensemble's views; see sense fit --help)",
    )
    parser.add_argument(
        "--instance-views",
        help="the transformations that keep a member's class, for the ssl labeler of a full "
        f"fit: a preset ({', '.join(VIEW_PRESETS)}) or a comma-separated subset of "
        f"{', '.join(VIEW_OPS)} (default: {GENERIC_VIEWS}, and the latent labeler)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.set_defaults(handler=_run_train_version)


def _run_train_version(args: argparse.Namespace) -> int:
    from sense_core.bundle_versions import check_training_labels, latest_version, new_version
    from sense_core.io import open_ensemble

    store = open_ensemble(args.ensemble)
    classes = check_training_labels(store, args.kind, args.ensemble)
    command = _command(args)
    if args.kind == "head":
        base = args.bundle
        if base is None:
            latest = latest_version(args.ensemble)
            base = latest.path if latest is not None else None
        if base is None:
            from sense_core.bundle import find_shipped_bundle

            base = find_shipped_bundle(store.member_shape, store.class_names)
        base = Path(base).resolve()
        with new_version(args.ensemble, "head", base=base, command=command) as draft:
            _train_head(store, base, draft, args.seed)
    else:
        kind = "full" if classes else "label-free"
        with new_version(args.ensemble, kind, command=command) as draft:
            _train_full(store, draft, args)
    print(f"version {draft.number:03d}: {draft.path}", flush=True)
    return 0


def _train_head(store, base: Path, draft, seed: int) -> None:
    """Copy the bundle ``base`` into the draft and make a head on its latents its labeler."""
    import shutil

    import numpy as np

    from sense_core.bundle import MANIFEST, Bundle, manifest_text, read_manifest
    from sense_core.bundle_versions import RECORD
    from sense_core.ensemble import UNLABELED, manual_mask
    from sense_core.inference import Encoder
    from sense_core.io.atomic import atomic_write_text
    from sense_training.heads import add_head_to_bundle, choose_head

    Bundle.load(base).check_compatible(store)
    for item in base.iterdir():  # the models and records, not the training runs
        if item.is_file() and not item.name.startswith(".") and item.name != RECORD:
            shutil.copy2(item, draft.folder / item.name)
    print(f"[1/3] encoding {len(store)} members with {base}", flush=True)
    latents = Encoder(Bundle.load(draft.folder)).encode_store(store)
    labels = np.where(manual_mask(store), store.labels, UNLABELED).astype(np.int64)
    print(f"[2/3] head on the latents ({int(np.sum(labels != UNLABELED))} hand labels)", flush=True)
    choice = choose_head(latents, labels, len(store.class_names), seed=seed)
    manifest = read_manifest(draft.folder)
    manifest["class_names"] = list(store.class_names)  # labeling may have added classes
    atomic_write_text(draft.folder / MANIFEST, manifest_text(manifest))
    add_head_to_bundle(
        draft.folder,
        choice.head,
        record=choice.record(),
        training={"command": " ".join(draft.command), "base": str(base)},
    )
    draft.labels = int(np.sum(labels != UNLABELED))
    draft.classes = list(store.class_names)
    draft.accuracy = choice.scores[choice.name]["cv_accuracy"]
    print(f"[3/3] labeler: {choice.name} head ({choice.reason})", flush=True)


def _train_full(store, draft, args: argparse.Namespace) -> None:
    """A whole ``sense fit`` (label-free without hand labels) into the draft."""
    import numpy as np

    from sense_core.ensemble import manual_mask
    from sense_training.pipeline import fit, labeler_method_for, profile_configs

    configs = profile_configs(args.profile)
    run = {"seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})}
    encoder = configs.encoder.updated({"run": run})
    if args.instance_views:
        encoder = encoder.updated(instance_views=args.instance_views)
    method = labeler_method_for(args.labeler_method, encoder.loss.instance_views)
    report = fit(
        store,
        draft.folder,
        profile=args.profile,
        labeler=configs.labeler.updated({"run": run}),
        encoder=encoder,
        command=draft.command,
        log=lambda line: print(line, flush=True),
        labeler_method=method,
    )
    draft.labels = int(np.sum(manual_mask(store)))
    draft.classes = list(store.class_names)
    test = (report.labeler or {}).get("test") or {}
    draft.accuracy = test.get("accuracy")
    if draft.kind == "label-free":
        draft.classes = _label_groups(store, draft.folder, args.seed)


def _label_groups(store, folder: Path, seed: int) -> list[str]:
    """Give a label-free bundle a labeler that predicts its suggested groups (classes
    ``group 1``..``group k``), so that a map made with it shows them, coloured and in the
    legend, until hand labels name them. The groups are the fit's (``groups.csv``: the same
    latents and seed)."""
    import numpy as np

    from sense_core.bundle import MANIFEST, Bundle, manifest_text, read_manifest
    from sense_core.groups import suggest_groups
    from sense_core.inference import Encoder
    from sense_core.io.atomic import atomic_write_text
    from sense_training.heads import LinearHead, add_head_to_bundle

    latents = Encoder(Bundle.load(folder)).encode_store(store)
    groups = suggest_groups(latents, seed=seed)
    names = [f"group {g + 1}" for g in range(groups.k)]
    manifest = read_manifest(folder)
    manifest["class_names"] = names
    atomic_write_text(folder / MANIFEST, manifest_text(manifest))
    head = LinearHead.fit(latents, groups.labels, groups.k, seed)
    agreement = float(np.mean(head.predict(latents) == groups.labels))
    record = {"groups": groups.record(), "agreement_with_groups": round(agreement, 4)}
    add_head_to_bundle(folder, head, record=record, training={"source": "suggested groups"})
    print(f"  labeler: the {groups.k} suggested groups (agreement {agreement:.3f})", flush=True)
    return names
