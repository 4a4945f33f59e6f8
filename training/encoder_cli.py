"""``sense train-encoder``, ``sense evaluate``, ``sense fit`` and ``sense experiment``.

Registered by :mod:`sense_core.cli` (``add_parser``). Nothing heavy is imported at module
level (torch, umap, onnx load inside the handlers): every ``sense`` call builds this parser.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sense_core.cli_options import add_reader_options, open_from_args
from sense_core.errors import SenseError

# Named settings of `sense fit`: `quick` fits ~2,000 members of 32-64 px in minutes on 2 cores;
# `paper` follows the paper (latent 256, 100 epochs, dropout 0.3-0.4).
PROFILES: dict[str, dict[str, dict]] = {
    "quick": {
        "labeler": {"epochs": 8, "patience": 3},
        "encoder": {
            "arch": "ae",
            "latent_dim": 32,
            "losses": ("recon", "cluster"),
            "dropout": 0.3,
            "epochs": 12,
            "warmup_epochs": 2,
            "min_confidence": 0.5,
            "confidence_weights": True,
        },
    },
    "paper": {
        "labeler": {"epochs": 30, "patience": 6},
        "encoder": {
            "arch": "vae",
            "latent_dim": 256,
            "beta": 1.0,
            "losses": ("recon", "cluster"),
            "dropout": 0.35,
            "epochs": 100,
            "warmup_epochs": 5,
            "patience": 15,
            "min_confidence": 0.5,
            "confidence_weights": True,
        },
    },
}

TRAIN_DESCRIPTION = """\
Train a convolutional autoencoder (ae) or beta-VAE (vae) on an ensemble and export its encoder
(normalised fields -> latent; the VAE exports mu) to ONNX into a model bundle (encoder.onnx +
sense.json), next to a labeler if the bundle has one. The latent space is shaped by the chosen
loss terms: recon (MSE on normalised fields, + beta_norm*KL for the VAE), cluster (soft
silhouette on the latent vectors with memberships from the labels) and contrastive (margin or
SupCon). Labels: the hand labels of the training split, plus pseudo-labels when the ensemble
was pseudo-labelled (metadata label_source/confidence). Train and validation losses are
monitored every epoch (curves in <bundle>/encoder_run/loss_curves.png); a checkpoint after every
epoch allows --resume. See docs/encoder.md for the formulas.
"""

EVALUATE_DESCRIPTION = """\
Score encoders as in the paper: the latent vectors of the hand-labeled test members are mapped to
2D with UMAP (seeded) and the silhouette of the 2D points against the hand labels is reported
(mean +- sd over --seeds), with latent-space silhouette, k-NN accuracy, k-means ARI,
trustworthiness and reconstruction error, next to raw-field baselines (PCA(2), UMAP). Writes
evaluation.json/.csv/.md and maps.png into --out.
"""

FIT_DESCRIPTION = """\
Everything in one go: train the labeler on the hand-labeled members, pseudo-label the others,
train the encoder with the pseudo-labels, export both into the bundle folder --out, and evaluate
(report in <out>/evaluation). Profiles: quick (minutes on 2 cores for ~2,000 members of 32-64 px)
and paper (the paper's settings: beta-VAE, latent 256, 100 epochs).
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="ensemble (.npz file or member folder)")
    add_reader_options(parser)


def _add_encoder_options(parser: argparse.ArgumentParser, defaults_note: str = "") -> None:
    group = parser.add_argument_group(f"encoder{defaults_note}")
    group.add_argument("--arch", choices=("ae", "vae"), help="autoencoder or beta-VAE (ae)")
    group.add_argument("--latent", type=int, help="latent size (32; paper: 32 and 256)")
    group.add_argument(
        "--loss", help="comma-separated loss terms: recon, cluster, contrastive (recon)"
    )
    group.add_argument("--beta", type=float, help="beta of the beta-VAE (1.0)")
    group.add_argument("--cluster-weight", type=float, help="lambda of the soft silhouette (1.0)")
    group.add_argument("--contrastive-weight", type=float, help="lambda of contrastive (1.0)")
    group.add_argument("--contrastive", choices=("margin", "supcon"), help="kind (margin)")
    group.add_argument("--margin", type=float, help="margin of the pairwise loss (1.0)")
    group.add_argument("--temperature", type=float, help="SupCon temperature (0.1)")
    group.add_argument("--dropout", type=float, help="dropout after each conv block (0)")
    group.add_argument("--no-batch-norm", action="store_true", help="no batch normalisation")
    group.add_argument(
        "--soft-memberships",
        action="store_true",
        help="silhouette memberships from label confidences",
    )
    group.add_argument(
        "--confidence-weights",
        action="store_true",
        help="weight members' latent losses by label confidence",
    )
    group.add_argument("--min-confidence", type=float, help="ignore weaker pseudo-labels (0)")
    group.add_argument("--label-noise", type=float, help="flip this fraction of pseudo-labels")
    group.add_argument("--epochs", type=int, help="epochs (30)")
    group.add_argument("--batch-size", type=int, help="batch size (64)")
    group.add_argument("--lr", type=float, help="Adam learning rate (1e-3)")
    group.add_argument("--weight-decay", type=float, help="Adam weight decay (0)")
    group.add_argument("--warmup-epochs", type=int, help="epochs over which lambdas ramp up (0)")
    group.add_argument("--patience", type=int, help="early stopping patience, 0 = off (0)")
    group.add_argument(
        "--select",
        choices=("best", "last"),
        help="export the best validation epoch or the last (best)",
    )
    group.add_argument("--augment", help="hflip,vflip,rot90 or none (none)")
    group.add_argument("--fractions", type=_floats, help="train,val,test split (0.7,0.15,0.15)")
    group.add_argument("--split-seed", type=int, help="split seed (0)")
    group.add_argument("--seed", type=int, help="training seed (0)")
    group.add_argument("--threads", type=int, help="torch CPU threads (2)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device (auto)")


_OPTION_TO_FIELD = {
    "arch": "arch",
    "latent": "latent_dim",
    "loss": "losses",
    "beta": "beta",
    "cluster_weight": "cluster_weight",
    "contrastive_weight": "contrastive_weight",
    "contrastive": "contrastive",
    "margin": "margin",
    "temperature": "temperature",
    "dropout": "dropout",
    "min_confidence": "min_confidence",
    "label_noise": "label_noise",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "weight_decay": "weight_decay",
    "warmup_epochs": "warmup_epochs",
    "patience": "patience",
    "select": "select",
    "augment": "augment",
    "fractions": "fractions",
    "split_seed": "split_seed",
    "seed": "seed",
    "threads": "threads",
    "device": "device",
}


def encoder_config_from_args(args: argparse.Namespace, base: dict | None = None):
    """An :class:`~sense_training.encoder.EncoderConfig` from ``base`` overridden by the options
    given on the command line."""
    from sense_training.encoder import EncoderConfig

    values = dict(base or {})
    for option, name in _OPTION_TO_FIELD.items():
        value = getattr(args, option, None)
        if value is not None:
            values[name] = value
    if getattr(args, "no_batch_norm", False):
        values["batch_norm"] = False
    for flag in ("soft_memberships", "confidence_weights"):
        if getattr(args, flag, False):
            values[flag] = True
    return EncoderConfig(**values)


def _open(args: argparse.Namespace):
    return open_from_args(args.data, args)


def _run_train_encoder(args: argparse.Namespace) -> int:
    from sense_training.encoder import train_encoder

    config = encoder_config_from_args(args)
    store = _open(args)
    result = train_encoder(
        store,
        args.bundle,
        config,
        run_dir=args.run_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        command=["sense", *sys.argv[1:]],
    )
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
        _evaluate_and_report(store, {"sense": args.bundle}, Path(args.bundle) / "evaluation", args)
    return 0


def _evaluate_and_report(store, bundles: dict, out: Path, args: argparse.Namespace) -> dict:
    from sense_training.evaluation import evaluate, write_report

    baselines = () if args.baselines in ("", "none") else tuple(args.baselines.split(","))
    evaluation = evaluate(
        store,
        bundles,
        baselines=baselines,
        seeds=args.seeds,
        fit=args.fit,
        max_fit=args.max_fit,
        projection=args.projection,
        device=args.eval_device,
    )
    paths = write_report(evaluation, out, title=Path(str(store_path(store))).name)
    print(f"evaluation written to {paths['md']} and {paths['png']}")
    return paths


def store_path(store) -> str:
    return str(getattr(store, "path", "") or "ensemble")


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="UMAP seeds (0,1,2)")
    group.add_argument(
        "--baselines", default="pca_raw,umap_raw", help="pca_raw,umap_raw or none (both)"
    )
    group.add_argument(
        "--fit",
        choices=("all", "test"),
        default="all",
        help="fit the map on test + training + other members (all, default) or on "
        "the test members only",
    )
    group.add_argument("--max-fit", type=int, default=2000, help="fit-set size limit (2000)")
    group.add_argument(
        "--projection",
        choices=("umap", "pca"),
        default="umap",
        help="2D projection of the latents (umap)",
    )
    group.add_argument(
        "--eval-device",
        default="cpu",
        choices=("auto", "cpu", "cuda"),
        help="onnxruntime device for the encoder (cpu)",
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
    store = _open(args)
    _evaluate_and_report(store, _parse_bundles(args.bundle), Path(args.out), args)
    return 0


def _run_fit(args: argparse.Namespace) -> int:
    from sense_training.encoder import train_encoder
    from sense_training.labeler import (
        LabelerConfig,
        pseudo_label,
        pseudo_labeled_store,
        train_labeler,
    )

    profile = PROFILES[args.profile]
    out = Path(args.out)
    started = time.perf_counter()
    store = _open(args)
    command = ["sense", *sys.argv[1:]]
    labeler_values = dict(profile["labeler"])
    if args.seed is not None:
        labeler_values["seed"] = args.seed
    if args.threads is not None:
        labeler_values["threads"] = args.threads
    if args.device is not None:
        labeler_values["device"] = args.device
    if args.labeler_epochs is not None:
        labeler_values["epochs"] = args.labeler_epochs
    if args.labeler_arch is not None:
        labeler_values["architecture"] = args.labeler_arch
    for name in ("fractions", "split_seed"):
        if getattr(args, name, None) is not None:
            labeler_values[name] = getattr(args, name)
    print(f"[1/4] labeler ({args.profile} profile)")
    labeler = train_labeler(
        store, out, LabelerConfig(**labeler_values), overwrite=args.overwrite, command=command
    )
    print(f"[2/4] pseudo-labels (confidence >= {args.threshold})")
    result = pseudo_label(store, labeler.bundle, args.threshold)
    summary = result.summary(labeler.bundle.class_names)
    print(
        f"  {summary['pseudo']} pseudo-labelled, {summary['none']} left unlabelled, agreement "
        f"with hand labels {summary['agreement_with_manual_labels']}"
    )
    relabeled = pseudo_labeled_store(store, result, labeler.bundle)
    print("[3/4] encoder")
    config = encoder_config_from_args(args, profile["encoder"])
    train_encoder(relabeled, out, config, overwrite=True, command=command)
    print("[4/4] evaluation")
    _evaluate_and_report(relabeled, {"sense": out}, out / "evaluation", args)
    print(f"bundle {out} ready in {time.perf_counter() - started:.0f} s")
    return 0


EXPERIMENT_DESCRIPTION = """\
Run a grid of encoder trainings on one ensemble and compare them with the baselines. The TOML
file names the data and output folder, fixed encoder settings ([base], EncoderConfig fields such
as epochs, latent_dim, dropout) and the values to combine ([grid], lists: e.g. losses =
["recon", "recon,cluster"], arch = ["ae", "vae"]). Each combination is trained into
<out>/<name>/ (a bundle); then all are evaluated together (evaluation.md/.csv/.json, maps.png,
summary.json with the best SENSE variant, the plain AE and the baselines). Instead of (or besides)
a grid, [[variant]] tables list named variants (name = "plain_ae", losses = "recon", ...).
"""


def _variant_name(values: dict) -> str:
    parts = []
    for key, value in values.items():
        text = "+".join(value) if isinstance(value, list | tuple) else str(value)
        parts.append(f"{key}={text.replace(',', '+')}")
    return "__".join(parts) or "default"


def _training_metric(bundle_dir: str, record: str, key: str) -> float | None:
    """A value of the encoder's selected / final epoch record, as stored in sense.json."""
    from sense_core.bundle import read_manifest

    manifest = read_manifest(bundle_dir) or {}
    metrics = manifest.get("training", {}).get("encoder", {}).get("metrics", {})
    value = metrics.get(record, {}).get(key)
    return None if value is None else round(float(value), 4)


def _cluster_gap(bundle_dir: str, record: str) -> float | None:
    """val − train silhouette loss of an epoch (the monitored one when no clustering loss)."""
    gap = _training_metric(bundle_dir, record, "cluster_gap")
    return gap if gap is not None else _training_metric(bundle_dir, record, "cluster_monitor_gap")


def _run_experiment(args: argparse.Namespace) -> int:
    import itertools
    import json

    try:
        import tomllib
    except ImportError as exc:  # Python 3.10
        raise SenseError("sense experiment needs Python >= 3.11 (tomllib)") from exc

    from sense_core.io import open_ensemble
    from sense_core.io.atomic import atomic_write_text
    from sense_training.encoder import EncoderConfig, train_encoder
    from sense_training.evaluation import evaluate, write_report

    path = Path(args.config)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SenseError(f"{path}: cannot read the grid ({exc})") from exc
    for key in ("data", "out"):
        if key not in spec:
            raise SenseError(f"{path}: missing '{key}'")
    base = dict(spec.get("base", {}))
    grid = {k: v if isinstance(v, list) else [v] for k, v in spec.get("grid", {}).items()}
    out = Path(spec["out"])
    store = open_ensemble(spec["data"])
    started = time.perf_counter()
    bundles: dict[str, str] = {}
    timings: dict[str, float] = {}
    variants: list[tuple[str, dict]] = []
    for table in spec.get("variant", []):  # explicit [[variant]] tables with a name
        values = dict(table)
        variants.append((str(values.pop("name", "")) or _variant_name(values), values))
    if grid or not variants:
        for combination in itertools.product(*grid.values()):
            values = dict(zip(grid, combination))
            variants.append((_variant_name(values), values))
    for name, values in variants:
        folder = out / name
        config = EncoderConfig(**{**base, **values})
        if (folder / "sense.json").exists() and not args.overwrite:
            print(f"{name}: kept (bundle exists; --overwrite retrains)")
        else:
            print(f"{name}: training")
            tick = time.perf_counter()
            train_encoder(
                store,
                folder,
                config,
                overwrite=True,
                command=["sense", *sys.argv[1:]],
                log=lambda *_: None,
            )
            timings[name] = round(time.perf_counter() - tick, 1)
        bundles[name] = str(folder)
    evaluation = evaluate(
        store,
        bundles,
        baselines=tuple(spec.get("baselines", ["pca_raw", "umap_raw"])),
        seeds=tuple(spec.get("seeds", [0, 1, 2])),
        fit=spec.get("fit", "all"),
        max_fit=int(spec.get("max_fit", 2000)),
        projection=spec.get("projection", "umap"),
    )
    paths = write_report(evaluation, out, title=spec.get("title", Path(spec["data"]).stem))
    rows = {row.name: row.scores["silhouette_2d_test_mean"] for row in evaluation.rows}
    plain = [
        r.name
        for r in evaluation.rows
        if r.kind == "encoder" and r.details.get("losses") == ["recon"]
    ]
    sense = [r.name for r in evaluation.rows if r.kind == "encoder" and r.name not in plain]
    summary = {
        "data": spec["data"],
        "silhouette_2d_test": rows,
        "best_sense": max((rows[n] for n in sense), default=None),
        "best_sense_name": max(sense, key=lambda n: rows[n]) if sense else None,
        "plain_ae": max((rows[n] for n in plain), default=None),
        "umap_raw": rows.get("umap_raw"),
        "pca_raw": rows.get("pca_raw"),
        "cluster_gap": {
            row.name: {
                part: _cluster_gap(bundles[row.name], part) for part in ("selected", "final")
            }
            for row in evaluation.rows
            if row.kind == "encoder"
        },
        "training_seconds": timings,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"experiment written to {paths['md']} ({summary['seconds']:.0f} s)")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``train-encoder``, ``evaluate``, ``fit`` and ``experiment``."""
    train = commands.add_parser(
        "train-encoder",
        help="train an AE / beta-VAE with latent-space losses and export it into a bundle",
        description=TRAIN_DESCRIPTION,
    )
    _add_data_options(train)
    train.add_argument("--bundle", required=True, help="bundle folder (created if missing)")
    train.add_argument("--run-dir", help="checkpoints, curves, metrics (<bundle>/encoder_run)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace the bundle's encoder")
    train.add_argument(
        "--evaluate",
        action="store_true",
        help="evaluate afterwards (report in <bundle>/evaluation)",
    )
    _add_encoder_options(train)
    _add_evaluation_options(train)
    train.set_defaults(handler=_run_train_encoder)

    evaluate = commands.add_parser(
        "evaluate",
        help="score encoders: 2D test silhouette (paper's metric) and more, with baselines",
        description=EVALUATE_DESCRIPTION,
    )
    _add_data_options(evaluate)
    evaluate.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="[NAME=]FOLDER",
        help="a bundle with an encoder (repeat to compare)",
    )
    evaluate.add_argument("--out", required=True, help="report folder")
    _add_evaluation_options(evaluate)
    evaluate.set_defaults(handler=_run_evaluate)

    fit = commands.add_parser(
        "fit",
        help="labeler -> pseudo-labels -> encoder -> evaluation into one bundle",
        description=FIT_DESCRIPTION,
    )
    _add_data_options(fit)
    fit.add_argument("--out", required=True, help="bundle folder")
    fit.add_argument(
        "--profile", choices=tuple(PROFILES), default="quick", help="named settings (quick)"
    )
    fit.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="minimum labeler confidence of a pseudo-label (0)",
    )
    fit.add_argument("--overwrite", action="store_true", help="replace models in --out")
    fit.add_argument("--labeler-epochs", type=int, help="labeler epochs (profile's)")
    fit.add_argument("--labeler-arch", help="timm architecture of the labeler (profile's)")
    _add_encoder_options(fit, " (overrides the profile)")
    _add_evaluation_options(fit)
    fit.set_defaults(handler=_run_fit)

    experiment = commands.add_parser(
        "experiment",
        help="train a grid of encoders and compare them with the baselines",
        description=EXPERIMENT_DESCRIPTION,
    )
    experiment.add_argument("--config", required=True, help="grid TOML file")
    experiment.add_argument("--overwrite", action="store_true", help="retrain existing variants")
    experiment.set_defaults(handler=_run_experiment)
