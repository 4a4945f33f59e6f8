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
# `paper` follows the paper (latent 256, 100 epochs, dropout 0.3-0.4). quick trains the encoder
# with base_channels 16 (2.3-2.6x cheaper per step than 32) on one torch thread: on these shared
# 2-core machines a 2-thread AE step took 2.7-3.5 s under load against 1.1-1.2 s with one thread
# (benchmarks/bench_fit.py; docs/encoder.md).
PROFILES: dict[str, dict[str, dict]] = {
    "quick": {
        "labeler": {"epochs": 8, "patience": 3},
        "encoder": {
            "arch": "ae",
            "latent_dim": 32,
            "losses": ("recon", "cluster"),
            "dropout": 0.3,
            "base_channels": 16,
            "epochs": 12,
            "warmup_epochs": 2,
            "min_confidence": 0.5,
            "confidence_weights": True,
            "threads": 1,
        },
        "projector": {"max_points": 5000},
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
        "projector": {"max_points": 20000},
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
Everything in one go: train the labeler on the hand-labeled members, pseudo-label the others,
train the encoder with the pseudo-labels, export both into the bundle folder --out, map the
encoder's training latents with UMAP and train the parametric projector that reproduces that map
(projector.onnx, its fidelity in sense.json), and evaluate (report in <out>/evaluation). Stage
times, the machine's load, labeler accuracy, 2D test silhouettes and the projector's fidelity go
to <out>/fit_report.json. Profiles: quick (minutes on 2 cores for ~2,000 members of 32-64 px)
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
    group.add_argument(
        "--trim-fraction",
        type=float,
        help="share of each batch's worst-placed labelled members left out of the "
        "clustering loss (0; remedy against its overfitting)",
    )
    group.add_argument(
        "--trim-warmup-epochs",
        type=int,
        help="the trimmed share ramps from 0 to --trim-fraction over these epochs (0)",
    )
    group.add_argument(
        "--silhouette-target",
        type=float,
        help="members with silhouette >= this give no clustering loss (1 = plain 1 - s)",
    )
    group.add_argument(
        "--memory-size",
        type=int,
        help="latent codes of earlier batches the silhouette also runs over (0 = in-batch)",
    )
    group.add_argument("--min-confidence", type=float, help="ignore weaker pseudo-labels (0)")
    group.add_argument("--label-noise", type=float, help="flip this fraction of pseudo-labels")
    group.add_argument("--epochs", type=int, help="epochs (30)")
    group.add_argument("--batch-size", type=int, help="batch size (64)")
    group.add_argument("--lr", type=float, help="Adam learning rate (1e-3)")
    group.add_argument("--weight-decay", type=float, help="Adam weight decay (0)")
    group.add_argument(
        "--ema-decay",
        type=float,
        help="score, select and export an exponential moving average of the weights with this "
        "decay per step, e.g. 0.99 (0 = off)",
    )
    group.add_argument("--warmup-epochs", type=int, help="epochs over which lambdas ramp up (0)")
    group.add_argument("--patience", type=int, help="early stopping patience, 0 = off (0)")
    group.add_argument(
        "--select",
        choices=("best", "last"),
        help="export the best validation epoch or the last (best)",
    )
    group.add_argument(
        "--augment",
        help="comma-separated hflip, vflip, rot90, shift (random translation, mirrored border), "
        "hshift (left/right translation only) or none (none); only symmetries that keep the class",
    )
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
    "trim_fraction": "trim_fraction",
    "trim_warmup_epochs": "trim_warmup_epochs",
    "silhouette_target": "silhouette_target",
    "memory_size": "memory_size",
    "label_noise": "label_noise",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "weight_decay": "weight_decay",
    "ema_decay": "ema_decay",
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
    import shlex

    from sense_training.encoder import train_encoder
    from sense_training.labeler import (
        LabelerConfig,
        pseudo_label,
        pseudo_labeled_store,
        train_labeler,
    )
    from sense_training.projector import MIN_POINTS as PROJECTOR_MIN_POINTS
    from sense_training.projector import fit_bundle_projector

    profile = PROFILES[args.profile]
    out = Path(args.out)
    started = time.perf_counter()
    load_before = _load_average()
    stages: dict[str, float] = {}
    store = _open(args)
    # the argv that main() parsed, when it keeps it; else the process's own
    command = ["sense", *getattr(args, "argv", sys.argv[1:])]
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
    steps = 4 if args.no_projector else 5
    print(f"[1/{steps}] labeler ({args.profile} profile)")
    tick = time.perf_counter()
    labeler = train_labeler(
        store, out, LabelerConfig(**labeler_values), overwrite=args.overwrite, command=command
    )
    compression = None
    if args.compress_labeler:
        compression = _compress_labeler(store, out, LabelerConfig(**labeler_values))
    stages["labeler"] = time.perf_counter() - tick
    print(f"[2/{steps}] pseudo-labels (confidence >= {args.threshold})")
    tick = time.perf_counter()
    result = pseudo_label(store, out, args.threshold)
    summary = result.summary(labeler.bundle.class_names)
    print(
        f"  {summary['pseudo']} pseudo-labelled, {summary['none']} left unlabelled, agreement "
        f"with hand labels {summary['agreement_with_manual_labels']}"
    )
    relabeled = pseudo_labeled_store(store, result, labeler.bundle)
    stages["pseudo_labels"] = time.perf_counter() - tick
    print(f"[3/{steps}] encoder")
    tick = time.perf_counter()
    config = encoder_config_from_args(args, profile["encoder"])
    encoder = train_encoder(relabeled, out, config, overwrite=True, command=command)
    stages["encoder"] = time.perf_counter() - tick
    projector = None
    _drop_projector(out)  # an earlier run's projector imitates another encoder's map
    if not args.no_projector and len(encoder.parts.train) < PROJECTOR_MIN_POINTS:
        print(
            f"[4/{steps}] projector skipped: {len(encoder.parts.train)} training members, "
            f"at least {PROJECTOR_MIN_POINTS} are needed (sense embed will fit UMAP instead)"
        )
    elif not args.no_projector:
        print(f"[4/{steps}] projector (UMAP of the training latents, reproduced by an MLP)")
        tick = time.perf_counter()
        settings = dict(profile["projector"])
        if args.projector_points is not None:
            settings["max_points"] = args.projector_points
        projector = fit_bundle_projector(
            relabeled,
            out,
            encoder.parts.train,
            seed=config.seed,
            command=shlex.join(command),
            **settings,
        )
        stages["projector"] = time.perf_counter() - tick
    print(f"[{steps}/{steps}] evaluation")
    tick = time.perf_counter()
    _evaluate_and_report(relabeled, {"sense": out}, out / "evaluation", args)
    stages["evaluation"] = time.perf_counter() - tick
    report = _fit_report(
        args,
        out,
        command,
        stages,
        time.perf_counter() - started,
        load_before,
        labeler.metrics,
        compression,
        summary,
        encoder.metrics,
        projector,
        relabeled,
        encoder.parts.split.test,
    )
    print(f"bundle {out} ready in {report['seconds']['total']:.0f} s; report {out / FIT_REPORT}")
    return 0


FIT_REPORT = "fit_report.json"


def _compress_labeler(store, out: Path, config) -> dict:
    """Store the bundle's labeler weights as int8 (see sense_training.export.compress_weights_int8)
    and measure the change on the hand-labeled validation and test members."""
    import numpy as np

    from sense_core.bundle import Bundle
    from sense_core.ensemble import split_labeled
    from sense_training.export import compress_bundle_model

    split = split_labeled(store, config.fractions, config.split_seed)
    indices = np.sort(np.concatenate([split.validation, split.test]))
    if not len(indices):
        indices = np.sort(split.train)
    bundle = Bundle.load(out)
    inputs = bundle.normalization.apply(store.read_members(indices))
    record = compress_bundle_model(out, "labeler", inputs, np.asarray(store.labels)[indices])
    print(
        f"  labeler weights int8: {record['bytes_before'] / 1e6:.1f} -> "
        f"{record['bytes_after'] / 1e6:.1f} MB; on {record['members']} validation+test members "
        f"argmax agreement {record['argmax_agreement']:.4f}, accuracy "
        f"{record['accuracy_float']:.4f} -> {record['accuracy_compressed']:.4f}, largest logit "
        f"change {record['max_abs_diff']:.3g}"
    )
    return record


def _drop_projector(out: Path) -> None:
    """Remove the bundle's projector (entry in sense.json, then the file), if it has one."""
    import json

    from sense_core.bundle import MANIFEST, read_manifest
    from sense_core.io.atomic import atomic_write_text

    manifest = read_manifest(out)
    if manifest is None or "projector" not in manifest.get("models", {}):
        return
    entry = manifest["models"].pop("projector")
    manifest.get("training", {}).pop("projector", None)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    (out / entry.get("file", "projector.onnx")).unlink(missing_ok=True)


def _load_average() -> list[float] | None:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _projector_test_silhouette(store, bundle_dir: Path, test_indices) -> float | None:
    """2D silhouette of the hand-labeled test members placed by the bundle's projector (no UMAP
    fit on them: the map of the training latents, as at use time)."""
    import numpy as np

    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder
    from sense_core.metrics import silhouette
    from sense_core.projection import ParametricProjector

    test_indices = np.asarray(test_indices, dtype=np.int64)
    labels = np.asarray(store.labels)[test_indices]
    if len(test_indices) < 4 or np.unique(labels).size < 2:
        return None
    bundle = Bundle.load(bundle_dir)
    latents = Encoder(bundle, device="cpu").encode_store(store, indices=test_indices)
    xy = ParametricProjector.from_bundle(bundle).transform(latents)
    value = silhouette(xy, labels, sample_size=None)
    return round(value, 4) if value == value else None


def _fit_report(
    args: argparse.Namespace,
    out: Path,
    command: list[str],
    stages: dict[str, float],
    total: float,
    load_before: list[float] | None,
    labeler_metrics: dict,
    compression: dict | None,
    pseudo: dict,
    encoder_metrics: dict,
    projector,
    store,
    test_indices,
) -> dict:
    """Write ``<out>/fit_report.json`` (stage times, machine and load, quality figures) and print
    a summary; return the report."""
    import json
    import os
    import platform
    import shlex

    import torch

    from sense_core.io.atomic import atomic_write_text

    rows = {}
    evaluation_path = out / "evaluation" / "evaluation.json"
    if evaluation_path.is_file():
        rows = {r["name"]: r for r in json.loads(evaluation_path.read_text())["rows"]}

    def silhouette(name: str) -> dict | None:
        row = rows.get(name)
        if row is None:
            return None
        return {
            "mean": row.get("silhouette_2d_test_mean"),
            "sd": row.get("silhouette_2d_test_sd"),
        }

    labeler_train = labeler_metrics.get("train_seconds")
    encoder_epochs = encoder_metrics.get("epochs_run")
    report = {
        "command": shlex.join(command),
        "profile": args.profile,
        "data": str(args.data),
        "members": len(store),
        "member_shape": list(store.member_shape),
        "seconds": {
            **{k: round(v, 1) for k, v in stages.items()},
            "labeler_training": labeler_train,
            "projector_parts": projector.seconds if projector is not None else None,
            "total": round(total, 1),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": _load_average(),
        },
        "labeler": {
            "architecture": labeler_metrics.get("architecture"),
            "epochs_run": labeler_metrics.get("epochs_run"),
            "best_epoch": labeler_metrics.get("best_epoch"),
            "validation_accuracy": labeler_metrics.get("validation", {}).get("accuracy"),
            "test_accuracy": labeler_metrics.get("test", {}).get("accuracy"),
            "compression": compression,
        },
        "pseudo_labels": {
            k: pseudo.get(k) for k in ("pseudo", "none", "agreement_with_manual_labels")
        },
        "encoder": {
            "epochs_run": encoder_epochs,
            "selected_epoch": encoder_metrics.get("selected_epoch", -1) + 1,
            "cluster_gap_selected": encoder_metrics.get("selected", {}).get("cluster_gap"),
        },
        "silhouette_2d_test": {name: silhouette(name) for name in rows},
        "projector": None,
    }
    if projector is not None:
        report["projector"] = {
            **projector.record(),
            "silhouette_2d_test": _projector_test_silhouette(store, out, test_indices),
        }
    atomic_write_text(out / FIT_REPORT, json.dumps(report, indent=2) + "\n")
    seconds = report["seconds"]
    print(
        "stage seconds: "
        + ", ".join(f"{k} {seconds[k]:.1f}" for k in stages)
        + f"; total {seconds['total']:.1f} (load {load_before} -> "
        f"{report['machine']['load_average_after']})"
    )
    if projector is not None:
        print(
            f"projector: 2D test silhouette {report['projector']['silhouette_2d_test']} "
            f"(UMAP of the latents: {(silhouette('sense') or {}).get('mean')})"
        )
    return report


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
    reconstruction_only = [
        r for r in evaluation.rows if r.kind == "encoder" and r.details.get("losses") == ["recon"]
    ]
    plain = [r.name for r in reconstruction_only if r.details.get("architecture") != "conv-vae"]
    plain_vae = [r.name for r in reconstruction_only if r.name not in plain]
    sense = [
        r.name
        for r in evaluation.rows
        if r.kind == "encoder" and r.name not in plain and r.name not in plain_vae
    ]
    summary = {
        "data": spec["data"],
        "silhouette_2d_test": rows,
        "best_sense": max((rows[n] for n in sense), default=None),
        "best_sense_name": max(sense, key=lambda n: rows[n]) if sense else None,
        "plain_ae": max((rows[n] for n in plain), default=None),
        "plain_vae": max((rows[n] for n in plain_vae), default=None),
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
        help="labeler -> pseudo-labels -> encoder -> projector -> evaluation into one bundle",
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
    fit.add_argument(
        "--compress-labeler",
        action="store_true",
        help="store the labeler's weights as int8 (about 4x smaller file, float compute; "
        "the change is measured and recorded in sense.json)",
    )
    fit.add_argument(
        "--no-projector",
        action="store_true",
        help="do not train the parametric projector (projector.onnx)",
    )
    fit.add_argument(
        "--projector-points",
        type=int,
        help="training members mapped with UMAP for the projector (profile's)",
    )
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
