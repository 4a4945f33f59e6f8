"""The SENSE pipeline as a library: :func:`fit` (labeler → pseudo-labels → encoder → projector →
evaluation into one bundle, with a :class:`FitReport`) and :func:`run_experiment` (a grid of
encoder trainings, optionally repeated over training seeds, compared with the baselines).

The ``sense fit`` / ``sense experiment`` / ``sense evaluate`` commands only parse their options
into the configurations of :mod:`sense_training.config` and call these functions. torch, umap and
onnx are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.ensemble import UNLABELED, MemberStore, manual_mask
from sense_core.errors import SenseError
from sense_core.io.atomic import atomic_write_text
from sense_training.config import (
    GENERIC_VIEWS,
    EncoderConfig,
    LabelerConfig,
    ProjectorConfig,
    view_ops,
)
from sense_training.evaluation import EvaluationConfig, TooFewTestLabels

Log = Callable[[str], Any]

# Named settings of `sense fit` (overrides of the configurations' defaults): `quick` fits ~2,000
# members of 32-64 px in minutes on 2 cores; `paper` follows the paper (latent 256, 100 epochs,
# dropout 0.3-0.4). quick trains the encoder with base_channels 16 (2.3-2.6x cheaper per step than
# 32) on one torch thread: on these shared 2-core machines a 2-thread AE step took 2.7-3.5 s under
# load against 1.1-1.2 s with one thread (benchmarks/bench_fit.py; docs/encoder.md).
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
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
FIT_REPORT = "fit_report.json"
# `latent` labels better than `cnn` with few hand labels on every ensemble measured (and `ssl`
# better still when its views are right, at 1.2x the time: over 5 minutes for 2,000 members at
# 64 px on 2 cores); docs/label_efficiency.md
DEFAULT_LABELER_METHOD = "latent"
# ... unless the views of the ensemble's kind are named (--instance-views): then `ssl`, which
# labels better than `latent` when its views are right and worse with the generic ones
SUMMARY = "summary.json"


@dataclass
class FitConfigs:
    """The configurations of one ``fit``: a profile's, before the user's overrides."""

    labeler: LabelerConfig
    encoder: EncoderConfig
    projector: ProjectorConfig


def views_named(instance_views: str | None) -> bool:
    """Whether ``instance_views`` names views of the ensemble's kind (not the generic ones)."""
    return bool(instance_views) and view_ops(instance_views) != view_ops(GENERIC_VIEWS)


def labeler_method_for(method: str | None, instance_views: str | None) -> str:
    """The labeler method of a fit: ``method`` when given; else ``ssl`` when ``instance_views``
    names views other than the generic ones (the user said which transformations keep a
    member's class: ``ssl`` is then the better labeler with few hand labels,
    docs/label_efficiency.md), else :data:`DEFAULT_LABELER_METHOD`."""
    if method:
        return method
    return "ssl" if views_named(instance_views) else DEFAULT_LABELER_METHOD


def profile_configs(profile: str = "quick") -> FitConfigs:
    """The labeler, encoder and projector configurations of a named profile (:data:`PROFILES`)."""
    if profile not in PROFILES:
        raise SenseError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    settings = PROFILES[profile]
    return FitConfigs(
        LabelerConfig().updated(settings["labeler"]),
        EncoderConfig().updated(settings["encoder"]),
        ProjectorConfig().updated(settings["projector"]),
    )


def store_path(store: MemberStore) -> str:
    """The path the ensemble was read from, or 'ensemble'."""
    return str(getattr(store, "path", "") or "ensemble")


# --------------------------------------------------------------------------- evaluation
def evaluate_and_report(
    store: MemberStore,
    bundles: Mapping[str, str | os.PathLike],
    out: str | os.PathLike,
    evaluation: EvaluationConfig | None = None,
    *,
    title: str | None = None,
    log: Log = print,
) -> dict[str, str]:
    """Evaluate ``bundles`` (name → folder) on ``store`` and write the report into ``out``;
    return the report's paths (json, csv, md, png)."""
    from sense_training.evaluation import evaluate, write_report

    settings = evaluation or EvaluationConfig()
    result = evaluate(store, bundles, **settings.arguments(), log=log)
    paths = write_report(result, out, title=title or Path(store_path(store)).name)
    log(f"evaluation written to {paths['md']} and {paths['png']}")
    return paths


# --------------------------------------------------------------------------- fit
@dataclass
class FitReport:
    """What ``fit`` did and how well: written to ``<out>/fit_report.json`` (:meth:`to_dict`)."""

    command: str
    profile: str
    data: str
    members: int
    member_shape: list[int]
    seconds: dict[str, Any]
    machine: dict[str, Any]
    labeler: dict[str, Any]
    pseudo_labels: dict[str, Any]
    encoder: dict[str, Any]
    silhouette_2d_test: dict[str, Any]
    projector: dict[str, Any] | None = None
    groups: dict[str, Any] | None = None  # a fit without hand labels: the suggested groups

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out: str | os.PathLike) -> Path:
        path = Path(out) / FIT_REPORT
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path


@dataclass
class _StageClock:
    """Seconds per stage, in the order the stages ran."""

    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        tick = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - tick

    def total(self) -> float:
        return time.perf_counter() - self.started


def fit(
    store: MemberStore,
    out: str | os.PathLike,
    *,
    profile: str = "quick",
    labeler: LabelerConfig | None = None,
    encoder: EncoderConfig | None = None,
    evaluation: EvaluationConfig | None = None,
    threshold: float = 0.0,
    labeler_method: str = DEFAULT_LABELER_METHOD,
    warm_start: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    compress_labeler: bool = False,
    projector: bool = True,
    projector_points: int | None = None,
    projector_config: ProjectorConfig | None = None,
    command: Sequence[str] | None = None,
    log: Log = print,
) -> FitReport:
    """Train the labeler on the hand labels, pseudo-label the other members, train the encoder
    with them, map its training latents with UMAP and train the projector that reproduces the map,
    evaluate; everything into the bundle folder ``out``. ``labeler``/``encoder`` default to the
    ``profile``'s configurations (``projector_config`` to its projector's, ``projector_points``
    replacing its ``max_points``); the report is also written to ``<out>/fit_report.json``.

    ``<out>/fit_run/state.json`` records the fit's options, a fingerprint of its data and each
    finished stage (with the pseudo-labels in ``fit_run/pseudo_labels.npz``). ``resume``
    continues a fit stopped at any stage (SIGTERM, SIGKILL, power cut): finished stages are
    kept, the interrupted one continues from its last checkpoint (labeler and encoder) or runs
    again (pseudo-labels, projector, evaluation; all seeded), and the bundle is the one an
    uninterrupted fit gives. Resuming with other options or data is refused; without
    ``resume`` an interrupted fit in ``out`` is refused unless ``overwrite`` starts over.

    ``labeler_method``: ``cnn`` trains the image labeler (``labeler``) on the hand labels;
    ``latent`` (the default) trains an encoder on all members with the hand labels first and
    labels with the best head on its latent space (:mod:`sense_training.heads`), then gives the
    final encoder its own head as the bundle's labeler (no CNN: one encoder pass labels a
    member); ``ssl`` makes the first encoder self-supervised and chooses among more labelers.
    With ``warm_start`` (latent and ssl methods) the final encoder starts from the first
    encoder's weights instead of random ones, unless ``encoder.init_from`` names others."""
    from sense_core.bundle import Bundle
    from sense_core.pseudo_labels import pseudo_labeled_store
    from sense_training.export import remove_stale_scratch

    configs = profile_configs(profile)
    labeler, encoder = labeler or configs.labeler, encoder or configs.encoder
    if projector_config is not None:
        configs.projector = projector_config
    if projector_points is not None:
        configs.projector = configs.projector.updated(max_points=projector_points)
    evaluation = evaluation or EvaluationConfig()
    out, command = Path(out), list(command or ["sense", "fit"])
    if labeler_method not in LABELER_METHODS:
        raise SenseError(
            f"unknown labeler method {labeler_method!r}; choose from {', '.join(LABELER_METHODS)}"
        )
    views_unused = "instance" not in encoder.loss.terms and labeler_method != "ssl"
    if views_unused and views_named(encoder.loss.instance_views) and manual_mask(store).any():
        log(
            f"note: the views {encoder.loss.instance_views!r} are used by the ssl labeler and the "
            f"instance loss term only, not by --labeler-method {labeler_method}"
        )
    if labeler_method == "ssl":  # members under the self-training threshold stay unlabelled
        from sense_training.heads import SELF_TRAINING_THRESHOLD

        threshold = threshold or SELF_TRAINING_THRESHOLD
    options = {
        "profile": profile,
        "labeler_method": labeler_method,
        "warm_start": bool(warm_start),
        "labeler": labeler.to_dict(),
        "encoder": encoder.to_dict(),
        "threshold": float(threshold),
        "compress_labeler": bool(compress_labeler),
        "projector": configs.projector.to_dict() if projector else None,
        "evaluation": evaluation.to_dict(),
    }
    state = FitState.open(
        out, options, data_fingerprint(store), command, resume=resume, overwrite=overwrite, log=log
    )
    remove_stale_scratch(out)  # a SIGKILL during an export leaves its scratch folder
    command = state.command  # the first run's: one command recorded however often resumed
    clock, load_before, steps = _StageClock(), _load_average(), 5 if projector else 4
    hand_classes = np.unique(np.asarray(store.labels)[manual_mask(store)])
    if len(hand_classes) == 0:
        return _fit_without_labels(
            store, out, encoder, configs, state, clock, load_before, profile, command, projector,
            log,
        )  # fmt: skip
    if len(hand_classes) == 1:
        raise SenseError(
            f"{store_path(store)}: every hand label is class {store.class_names[hand_classes[0]]!r}"
            ": learning from labels needs at least two classes. Label members of another class, "
            "or remove the labels: a fit without labels gives a map and suggested groups to name"
        )

    latent = labeler_method in ("latent", "ssl")
    log(f"[1/{steps}] labeler ({profile} profile, {labeler_method})")
    labeled = state.kept("labeler", clock, log)
    if labeled is None and labeler_method == "ssl":
        labeled = _ssl_labeler_stage(store, out, encoder, state, clock, command, threshold, log)
    elif labeled is None and latent:
        labeled = _latent_labeler_stage(store, out, encoder, state, clock, command, log)
    elif labeled is None:
        labeled = _labeler_stage(store, out, labeler, state, clock, command, compress_labeler, log)
    bundle = Bundle.load(out / FIT_RUN / HAND_BUNDLE if latent else out)

    log(f"[2/{steps}] pseudo-labels (confidence >= {threshold})")
    result = state.pseudo_labels() if state.kept("pseudo_labels", clock, log) else None
    if result is None:
        result = _pseudo_label_stage(store, bundle, threshold, state, clock)
    pseudo = result.summary(bundle.class_names)
    log(
        f"  {pseudo['pseudo']} pseudo-labelled, {pseudo['none']} left unlabelled, agreement "
        f"with hand labels {pseudo['agreement_with_manual_labels']}"
    )
    if encoder.min_confidence > threshold:
        used = int(
            np.count_nonzero(
                (result.source == "pseudo") & (result.confidence >= encoder.min_confidence)
            )
        )
        log(
            f"  the encoder trains with the {used} of them whose confidence is >= "
            f"{encoder.min_confidence} (--min-confidence, {profile} profile); the others give it "
            "reconstruction only"
        )
    relabeled = pseudo_labeled_store(store, result, bundle)

    log(f"[3/{steps}] encoder")
    trained = state.kept("encoder", clock, log)
    if trained is None:
        heads = SSL_FINAL_HEADS if labeler_method == "ssl" else LATENT_HEADS if latent else ()
        final = encoder
        if latent and warm_start and not encoder.init_from:
            final = encoder.updated(init_from=str(_first_encoder_checkpoint(out).resolve()))
            log(f"  starts from the first encoder's weights ({final.init_from})")
        trained = _encoder_stage(relabeled, out, final, state, clock, command, log, heads)
    parts = _training_parts(relabeled, encoder)
    if latent:
        labeled = {**labeled, "metrics": trained["head"], "first_head": labeled["metrics"]}

    fitted = None
    if projector:
        kept = state.kept("projector", clock, log)
        fitted = kept.get("record") if kept is not None else None
        if kept is None:
            fitted = _projector_stage(relabeled, out, parts, encoder, configs, command, clock, log)
            fitted = None if fitted is None else fitted.record()
            state.finish("projector", clock, record=fitted)
    else:
        _drop_projector(out)  # an earlier run's projector imitates another encoder's map
    log(f"[{steps}/{steps}] evaluation")
    if state.kept("evaluation", clock, log) is None:
        with clock("evaluation"):
            _evaluate_if_possible(relabeled, out, evaluation, log)
        state.finish("evaluation", clock)
    report = _fit_report(
        relabeled, out, profile, command, clock, load_before, labeled, pseudo, trained
    )
    if fitted is not None:
        report.seconds["projector_parts"] = fitted["seconds"]
        report.projector = {
            **fitted,
            "silhouette_2d_test": _projector_test_silhouette(relabeled, out, parts.split.test),
        }
    report.write(out)
    state.finish_fit()
    _log_fit_summary(report, clock, load_before, out, log)
    return report


def _fit_without_labels(
    store, out: Path, encoder, configs, state, clock, load_before, profile, command, projector, log
) -> FitReport:
    """A fit with no hand label: an encoder trained on reconstruction alone (and the
    instance-contrastive term when the ensemble's views are named), its projector, and
    suggested groups (``groups.csv``, ``groups.png``: the clustering of the latents and each
    group's most typical members), the starting point for naming classes."""
    from sense_core.bundle import Bundle
    from sense_core.groups import GROUPS_CSV, suggest_groups, write_groups_csv, write_groups_png
    from sense_core.inference import Encoder

    steps = 3 if projector else 2
    named = views_named(encoder.loss.instance_views)
    terms = ("recon", "instance") if named else ("recon",)
    if encoder.loss.terms != terms:
        views = encoder.loss.instance_views
        what = f"reconstruction and views ({views})" if named else "reconstruction only"
        log(f"no hand labels: the encoder trains on {what}, not {','.join(encoder.loss.terms)}")
        encoder = encoder.updated(losses=terms)
    log(f"[1/{steps}] encoder ({profile} profile, no hand labels)")
    trained = state.kept("encoder", clock, log)
    if trained is None:
        trained = _encoder_stage(store, out, encoder, state, clock, command, log)
    parts = _training_parts(store, encoder)
    fitted = None
    if projector:
        fitted = _projector_stage(
            store, out, parts, encoder, configs, command, clock, log, step=f"[2/{steps}]"
        )
        fitted = None if fitted is None else fitted.record()
    log(f"[{steps}/{steps}] suggested groups (k-means of the latents, best silhouette)")
    with clock("groups"):
        latents = Encoder(Bundle.load(out)).encode_store(store)
        groups = suggest_groups(latents, seed=encoder.run.seed)
        write_groups_csv(groups, store.member_ids, out / GROUPS_CSV)
        write_groups_png(groups, store, out / "groups.png")
    log(
        f"  {groups.k} groups (silhouette {groups.silhouettes[groups.k]:.3f}), sizes "
        f"{groups.record()['sizes']}: their most typical members are in {out / 'groups.png'}, "
        f"every member's group in {out / GROUPS_CSV}; name them in labels.csv and fit again"
    )
    report = FitReport(
        command=shlex.join(state.command),
        profile=profile,
        data=store_path(store),
        members=len(store),
        member_shape=list(store.member_shape),
        seconds={
            **{k: round(v, 1) for k, v in clock.seconds.items()},
            "total": round(clock.total(), 1),
        },
        machine=_machine(load_before),
        labeler={},
        pseudo_labels={},
        encoder={
            "epochs_run": trained["metrics"].get("epochs_run"),
            "selected_epoch": trained["metrics"].get("selected_epoch", -1) + 1,
            "losses": list(encoder.loss.terms),
        },
        silhouette_2d_test={},
        projector=fitted,
        groups=groups.record(),
    )
    report.write(out)
    state.finish_fit()
    _log_fit_summary(report, clock, load_before, out, log)
    return report


def _labeler_stage(
    store, out: Path, config: LabelerConfig, state: FitState, clock, command, compress, log
) -> dict[str, Any]:
    """Train (or continue training) the labeler, compress it if asked; its stage record."""
    from sense_training.labeler import RUN_FOLDER, train_labeler

    resumes = state.start("labeler", out / RUN_FOLDER)
    with clock("labeler"):
        labeled = train_labeler(
            store, out, config, resume=resumes, overwrite=not resumes, command=command, log=log
        )
        compression = _compress_labeler(store, out, config, log) if compress else None
    return state.finish("labeler", clock, metrics=labeled.metrics, compression=compression)


def _pseudo_label_stage(store, bundle, threshold: float, state: FitState, clock):
    """The bundle's labeler over every member; the result is kept for a resumed fit."""
    from sense_core.pseudo_labels import pseudo_label

    state.start("pseudo_labels")
    with clock("pseudo_labels"):
        result = pseudo_label(store, bundle, threshold)
        state.save_pseudo_labels(result)
    state.finish("pseudo_labels", clock)
    return result


def _encoder_stage(
    store, out: Path, config: EncoderConfig, state: FitState, clock, command, log, heads=()
) -> dict[str, Any]:
    """Train (or continue training) the encoder on the pseudo-labelled ensemble; with ``heads``
    (candidates of :func:`sense_training.heads.choose_head`), give it the best latent-space head
    as the bundle's labeler."""
    from sense_training.encoder import RUN_FOLDER, train_encoder

    resumes = state.start("encoder", out / RUN_FOLDER)
    with clock("encoder"):
        trained = train_encoder(
            store, out, config, resume=resumes, overwrite=not resumes, command=command, log=log
        )
        record = _add_latent_head(store, out, config, command, log, heads) if heads else None
    return state.finish("encoder", clock, metrics=trained.metrics, head=record)


def _latent_labeler_stage(
    store, out: Path, config: EncoderConfig, state: FitState, clock, command, log
) -> dict[str, Any]:
    """The ``latent`` labeler: an encoder trained on all members with the hand labels, and the
    best head on its latents, as a bundle in ``fit_run/hand_bundle`` that pseudo-labels."""
    from sense_training.encoder import RUN_FOLDER, train_encoder

    folder = out / FIT_RUN / HAND_BUNDLE
    resumes = state.start("labeler", folder / RUN_FOLDER)
    with clock("labeler"):
        train_encoder(
            store, folder, config, resume=resumes, overwrite=not resumes, command=command, log=log
        )
        record = _add_latent_head(store, folder, config, command, log)
    return state.finish("labeler", clock, metrics=record)


def _ssl_labeler_stage(
    store, out: Path, config: EncoderConfig, state: FitState, clock, command, threshold, log
) -> dict[str, Any]:
    """The ``ssl`` labeler: a self-supervised encoder (reconstruction + instance-contrastive
    term, no label) trained on all members, then the best of the heads on its latents and a
    linear classifier of the raw fields, chosen by cross-validation on the hand labels of the
    training and validation splits (the encoder saw none of them, so the scores are fair to all
    candidates); a bundle in ``fit_run/hand_bundle`` that pseudo-labels."""
    from sense_training.encoder import RUN_FOLDER, train_encoder

    terms = tuple(t for t in config.loss.terms if t == "recon") + ("instance",)
    ssl = config.updated(losses=terms)
    folder = out / FIT_RUN / HAND_BUNDLE
    resumes = state.start("labeler", folder / RUN_FOLDER)
    with clock("labeler"):
        log(f"  self-supervised encoder ({', '.join(terms)}; views {config.loss.instance_views})")
        train_encoder(
            store, folder, ssl, resume=resumes, overwrite=not resumes, command=command, log=log
        )
        record = _add_ssl_head(store, folder, ssl, command, threshold, log)
    return state.finish("labeler", clock, metrics=record)


def _add_ssl_head(
    store, folder: Path, config: EncoderConfig, command, threshold: float, log
) -> dict[str, Any]:
    """The bundle's labeler chosen among :data:`sense_training.heads.SSL_CANDIDATES`
    (cross-validated on the training + validation hand labels; test hand labels kept aside)."""
    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder
    from sense_training.heads import SSL_CANDIDATES, add_head_to_bundle, choose_head

    split = _training_parts(store, config).split
    hand = np.where(manual_mask(store), store.labels, UNLABELED)
    pool = np.concatenate([split.train, split.validation]).astype(np.int64)
    labels = np.full(len(store), UNLABELED, dtype=np.int64)
    labels[pool] = hand[pool]
    bundle = Bundle.load(folder)
    latents = Encoder(bundle).encode_store(store)
    fields = bundle.normalization.apply(store.read_members(np.arange(len(store))))
    fields = fields.reshape(len(store), -1)
    choice = choose_head(
        latents, labels, len(store.class_names), SSL_CANDIDATES, threshold,
        config.run.seed, fields,
    )  # fmt: skip
    on_fields = choice.name == "raw_linear"
    test = np.sort(np.asarray(split.test, dtype=np.int64))
    inputs = fields if on_fields else latents
    test_accuracy = (
        float(np.mean(choice.head.predict(inputs[test]) == hand[test])) if len(test) else None
    )
    chosen = choice.scores[choice.name]
    record = {
        **choice.record(),
        "hand_labels": int(np.count_nonzero(labels != UNLABELED)),
        "validation": {"accuracy": chosen["cv_accuracy"]},
        "test": {"accuracy": test_accuracy},
    }
    training = {"command": shlex.join(command), "config": {"split": config.split.to_dict()}}
    add_head_to_bundle(folder, choice.head, record=record, training=training, on_fields=on_fields)
    log(f"  labeler: {choice.name} ({choice.reason})")
    architecture = "linear on the raw fields" if on_fields else f"latent head ({choice.name})"
    return {
        "architecture": f"{architecture} on a self-supervised encoder",
        "validation": record["validation"],
        "test": record["test"],
        "choice": record,
    }


# The latent-vs-raw choice counts as close (said in the reason and the log) when the two
# validation scores differ by this many members or fewer.
CLOSE_CHOICE_MEMBERS = 1


def _add_latent_head(
    store, folder: Path, config: EncoderConfig, command, log, heads: Sequence[str] = ()
) -> dict[str, Any]:
    """Give the bundle in ``folder`` its labeler: the best head on its encoder's latents
    (:func:`sense_training.heads.choose_head`, cross-validated on the hand labels of the
    encoder's training split), or a linear classifier of the raw fields where that is more
    accurate on the validation hand labels. The encoder did not train on those nor on the test
    hand labels (it picks its best epoch by the validation ones, so only the test accuracy is
    quite unbiased); the cross-validation inside the choice uses labels the encoder trained on:
    it is optimistic, and ranks the latent heads only. The chosen kind is then trained again
    on the training and validation hand labels together (more labels; the test ones stay
    aside for its test accuracy)."""
    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder
    from sense_training.heads import LinearHead, add_head_to_bundle, choose_head, fit_candidate

    parts = _training_parts(store, config)
    split = parts.split
    hand = np.where(manual_mask(store), store.labels, UNLABELED)
    labels = np.full(len(store), UNLABELED, dtype=np.int64)
    labels[split.train] = hand[split.train]
    bundle = Bundle.load(folder)
    latents = Encoder(bundle).encode_store(store)
    classes = len(store.class_names)
    choice = choose_head(latents, labels, classes, heads or LATENT_HEADS, seed=config.run.seed)

    def raw(members) -> np.ndarray:  # normalised fields, flattened: what labeler.onnx reads
        members = np.sort(np.asarray(members, dtype=np.int64))
        return bundle.normalization.apply(store.read_members(members)).reshape(len(members), -1)

    train, validation, test = (
        np.sort(np.asarray(p, np.int64)) for p in (split.train, split.validation, split.test)
    )
    raw_head = LinearHead.fit(raw(train), hand[train], classes, seed=config.run.seed)
    candidates = {
        "latent": (lambda m: choice.head.predict(latents[m])),
        "fields": (lambda m: raw_head.predict(raw(m))),
    }

    def accuracy(name: str, members: np.ndarray) -> float | None:
        if len(members) == 0:
            return None
        return float(np.mean(candidates[name](members) == hand[members]))

    scores = {name: accuracy(name, validation) for name in candidates}
    on_fields = scores["latent"] is not None and scores["fields"] > scores["latent"]
    chosen = "fields" if on_fields else "latent"
    pool = np.sort(np.concatenate([train, validation]))
    if len(validation):  # the chosen kind, trained again on every label but the test ones
        if on_fields:
            raw_head = LinearHead.fit(raw(pool), hand[pool], classes, seed=config.run.seed)
        else:
            labels[validation] = hand[validation]
            choice.head = fit_candidate(choice.name, latents, labels, classes, seed=config.run.seed)
    reason = (
        f"validation accuracy {scores['fields']:.3f} (linear on the raw fields) vs "
        f"{scores['latent']:.3f} (latent {choice.name} head) on {len(validation)} hand labels "
        "the encoder did not train on"
        if scores["latent"] is not None
        else "no validation hand labels: the latent head is kept"
    )
    # how many validation members the two scores differ by: with a member or none the choice
    # is a coin toss (docs/label_efficiency.md: ties in 9 of 28 cells with 8-20 such labels)
    margin = (
        round(abs(scores["fields"] - scores["latent"]) * len(validation))
        if scores["latent"] is not None
        else None
    )
    if margin is not None and margin <= CLOSE_CHOICE_MEMBERS:
        reason += (
            f"; the two differ by {margin} member(s) of {len(validation)}: more hand labels may "
            "change the choice"
        )
        log(
            f"  note: the choice of labeler input rests on {len(validation)} validation hand "
            f"labels and the candidates differ by {margin}; label more members for a firmer one"
        )
    metrics = {
        "architecture": "linear on the raw fields" if on_fields else f"latent head ({choice.name})",
        "validation": {"accuracy": scores[chosen]},
        "test": {"accuracy": accuracy(chosen, test)},
        "choice": {
            **choice.record(),
            "chosen": "raw_linear" if on_fields else choice.name,
            "trained_on_hand_labels": int(len(pool)),
            "validation_accuracy": {"latent": scores["latent"], "raw_linear": scores["fields"]},
            "validation_margin_members": margin,
            "reason": reason if on_fields else f"{choice.reason}; {reason}",
        },
    }
    training = {"command": shlex.join(command), "config": {"split": config.split.to_dict()}}
    record = {**metrics["choice"], "validation": metrics["validation"], "test": metrics["test"]}
    add_head_to_bundle(
        folder,
        raw_head if on_fields else choice.head,
        record=record,
        training=training,
        on_fields=on_fields,
    )
    log(f"  labeler: {metrics['architecture']} ({metrics['choice']['reason']})")
    return metrics


def _first_encoder_checkpoint(out: Path) -> Path:
    """The checkpoint of the latent and ssl methods' first encoder (``fit_run/hand_bundle``)."""
    from sense_training.encoder import RUN_FOLDER
    from sense_training.loop import CHECKPOINT

    return out / FIT_RUN / HAND_BUNDLE / RUN_FOLDER / CHECKPOINT


def _training_parts(store, config: EncoderConfig):
    """The encoder's training / validation / test members (deterministic: recomputed when the
    encoder stage of a resumed fit was finished before)."""
    from sense_training.encoder import training_parts

    return training_parts(store, config)


def _projector_stage(
    store, out: Path, parts, encoder: EncoderConfig, configs, command, clock, log, step="[4/5]"
):
    """Fit the bundle's projector on the encoder's training members, or say why not."""
    from sense_training.projector import MIN_POINTS, fit_bundle_projector

    _drop_projector(out)  # an earlier run's projector imitates another encoder's map
    members = len(parts.train)
    if members < MIN_POINTS:
        log(
            f"{step} projector skipped: {members} training members, at least {MIN_POINTS} are "
            "needed (sense embed will fit UMAP instead)"
        )
        return None
    log(f"{step} projector (UMAP of the training latents, reproduced by an MLP)")
    with clock("projector"):
        return fit_bundle_projector(
            store,
            out,
            parts.train,
            configs.projector,
            seed=encoder.run.seed,
            command=shlex.join(command),
            log=log,
        )


# --------------------------------------------------------------------------- fit state (resume)
FIT_RUN = "fit_run"
FIT_STATE = "state.json"
PSEUDO_LABELS = "pseudo_labels.npz"
FIT_STATE_FORMAT = 1
STAGES = ("labeler", "pseudo_labels", "encoder", "projector", "evaluation")
HAND_BUNDLE = "hand_bundle"  # the latent labeler's first encoder and head
LABELER_METHODS = ("cnn", "latent", "ssl")
LATENT_HEADS = ("linear", "propagation")  # the heads of the final encoder (latent method)
SSL_FINAL_HEADS = ("linear", "propagation", "selftrain")  # ... and of the ssl method
# options a resumed fit may change: they do not change what is computed (as in the loop)
RESUMABLE_OPTIONS = frozenset({"labeler.run.threads", "encoder.run.threads"})


def resume_command(command: Sequence[str]) -> list[str]:
    """``command`` (a ``sense fit`` command line) as it continues that fit: ``--overwrite``
    (also abbreviated) dropped, ``--resume`` added."""
    kept = [a for a in command if not (len(a) >= 4 and "--overwrite".startswith(a))]
    if not any(len(a) >= 5 and "--resume".startswith(a) for a in kept):
        kept.append("--resume")
    return kept


def data_fingerprint(store: MemberStore) -> dict[str, Any]:
    """What identifies an ensemble for resuming a fit: its size, member shape and classes, a
    SHA-256 of the member ids, labels and metadata, and one of the values of up to 8 members
    spread over it (cheap, and catches an ensemble rewritten with other values)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for member, label in zip(store.member_ids, np.asarray(store.labels).tolist()):
        digest.update(f"{member}\t{label}\n".encode())
    for key in sorted(store.metadata):
        values = "\x1f".join(map(str, np.asarray(store.metadata[key]).tolist()))
        digest.update(f"{key}={values}\n".encode())
    sample = np.unique(np.linspace(0, len(store) - 1, num=min(8, len(store))).astype(np.int64))
    fields = np.ascontiguousarray(store.read_members(sample), dtype=np.float32)
    return {
        "source": store_path(store),
        "members": len(store),
        "member_shape": list(store.member_shape),
        "class_names": list(store.class_names),
        "ids_labels_metadata_sha256": digest.hexdigest(),
        "sampled_values_sha256": hashlib.sha256(fields.tobytes()).hexdigest(),
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


@dataclass
class FitState:
    """``<out>/fit_run/state.json``: one fit's options, data fingerprint, first command line
    and finished stages, written after every stage (see :func:`fit`)."""

    folder: Path
    record: dict[str, Any]
    resuming: bool = False

    @property
    def path(self) -> Path:
        return self.folder / FIT_STATE

    @property
    def command(self) -> list[str]:
        return list(self.record["command"])

    @classmethod
    def read(cls, out: str | os.PathLike) -> dict[str, Any] | None:
        """The state of the fit in ``out`` (None when there is none)."""
        path = Path(out) / FIT_RUN / FIT_STATE
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SenseError(
                f"{path}: cannot be read ({exc}); start over with --overwrite"
            ) from exc
        if not isinstance(record, dict) or record.get("format") != FIT_STATE_FORMAT:
            raise SenseError(
                f"{path}: not a fit state of this SENSE version; start over with --overwrite"
            )
        return record

    @classmethod
    def open(
        cls,
        out: Path,
        options: dict[str, Any],
        data: dict[str, Any],
        command: list[str],
        *,
        resume: bool,
        overwrite: bool,
        log: Log,
    ) -> FitState:
        """The state to continue (``resume``) or a new one; refuses what cannot be done."""
        options = json.loads(json.dumps(options))  # as it reads back from the file
        if resume and overwrite:
            raise SenseError(
                "--resume continues an interrupted fit and --overwrite starts over: pass one"
            )
        previous = cls.read(out)
        if resume and previous is not None:
            state = cls(out / FIT_RUN, previous, resuming=True)
            state._check_same(options, data)
            done = [stage for stage in STAGES if stage in previous["stages"]]
            log(
                f"resuming the fit in {out} (first run: {shlex.join(state.command)}); finished "
                f"before: {', '.join(done) or 'no stage'}"
            )
            return state
        if resume:
            log(f"resume: no interrupted fit in {out}; starting a new one")
        elif previous is not None and not previous.get("finished") and not overwrite:
            raise SenseError(
                f"{out}: an interrupted sense fit is there; continue it with: "
                f"{shlex.join(resume_command(command))} (or start over with --overwrite)"
            )
        if not overwrite:
            _check_nothing_to_replace(out)
        state = cls(
            out / FIT_RUN,
            {
                "format": FIT_STATE_FORMAT,
                "command": list(command),
                "options": options,
                "data": data,
                "started": [],
                "stages": {},
                "finished": False,
            },
        )
        state.folder.mkdir(parents=True, exist_ok=True)
        (state.folder / PSEUDO_LABELS).unlink(missing_ok=True)
        state.save()
        return state

    def _check_same(self, options: dict[str, Any], data: dict[str, Any]) -> None:
        """Refuse to resume with other options or data than the interrupted fit's."""
        old, new = _flatten(self.record["options"]), _flatten(options)
        changed = sorted(
            key
            for key in old.keys() | new.keys()
            if old.get(key) != new.get(key) and key not in RESUMABLE_OPTIONS
        )
        again = (
            f"resume with the same options and data ({shlex.join(resume_command(self.command))})"
        )
        if changed:
            raise SenseError(
                f"{self.path}: the interrupted fit ran with other options ("
                + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
                + f"); {again} or start over with --overwrite"
            )
        before = self.record["data"]
        differ = sorted(
            k for k in before.keys() | data.keys() if k != "source" and before.get(k) != data.get(k)
        )
        if differ:
            raise SenseError(
                f"{self.path}: the interrupted fit ran on other data ({before.get('source')}; "
                f"{data.get('source')} differs in: {', '.join(differ)}); {again} or start over "
                "with --overwrite"
            )

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.record, indent=1) + "\n")

    def start(self, stage: str, run_folder: Path | None = None) -> bool:
        """Mark ``stage`` as started; return whether it continues a checkpoint in
        ``run_folder`` (only this fit's: an earlier run's is removed when the stage starts)."""
        from sense_training.loop import CHECKPOINT

        checkpoint = None if run_folder is None else run_folder / CHECKPOINT
        if stage in self.record["started"]:
            return checkpoint is not None and checkpoint.is_file()
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        self.record["started"].append(stage)
        self.save()
        return False

    def finish(self, stage: str, clock: _StageClock, **record: Any) -> dict[str, Any]:
        """Record ``stage`` as finished (with ``record``, what later stages and the report
        need of it) and return that record."""
        entry = {"seconds": round(clock.seconds.get(stage, 0.0), 3), **record}
        self.record["stages"][stage] = json.loads(json.dumps(entry))
        self.save()
        return self.record["stages"][stage]

    def kept(self, stage: str, clock: _StageClock, log: Log) -> dict[str, Any] | None:
        """The record of ``stage`` when a resumed fit finished it before (its seconds go to
        ``clock``), else None."""
        entry = self.record["stages"].get(stage) if self.resuming else None
        if entry is not None:
            clock.seconds[stage] = float(entry.get("seconds") or 0.0)
            log(f"  {stage.replace('_', '-')}: finished before, kept")
        return entry

    def save_pseudo_labels(self, result) -> None:
        """Keep the pseudo-labels (a resumed fit trains the encoder on exactly these)."""
        import numpy as np

        from sense_core.io.atomic import atomic_path

        with atomic_path(self.folder / PSEUDO_LABELS) as tmp, open(tmp, "wb") as stream:
            np.savez(
                stream,
                predicted=result.predicted,
                probability=result.probability,
                labels=result.labels,
                source=result.source,
                manual=result.manual,
                threshold=np.float64(result.threshold),
                provider=np.str_(result.provider),
                seconds=np.float64(result.seconds),
            )

    def pseudo_labels(self):
        """The kept pseudo-labels, or None when they cannot be read (the stage then runs again)."""
        import numpy as np

        from sense_core.pseudo_labels import PseudoLabels

        try:
            with np.load(self.folder / PSEUDO_LABELS, allow_pickle=False) as data:
                return PseudoLabels(
                    predicted=data["predicted"],
                    probability=data["probability"],
                    labels=data["labels"],
                    source=data["source"],
                    manual=data["manual"],
                    threshold=float(data["threshold"]),
                    provider=str(data["provider"]),
                    seconds=float(data["seconds"]),
                )
        except (OSError, ValueError, KeyError):
            self.record["stages"].pop("pseudo_labels", None)
            return None

    def finish_fit(self) -> None:
        self.record["finished"] = True
        self.save()


def _check_nothing_to_replace(out: Path) -> None:
    """A new fit without overwrite: refuse a bundle that has a labeler or a labeler run."""
    from sense_core.bundle import read_manifest
    from sense_training.labeler import RUN_FOLDER
    from sense_training.loop import CHECKPOINT

    manifest = read_manifest(out) or {}
    if "labeler" in (manifest.get("models") or {}) or (out / RUN_FOLDER / CHECKPOINT).is_file():
        raise SenseError(
            f"{out}: the bundle already has a labeler or a labeler run (pass --overwrite to "
            "replace it)"
        )


def _fit_report(
    store, out, profile, command, clock, load_before, labeled, pseudo, trained
) -> FitReport:
    """The report of one fit from its stages' records (projector figures added by the
    caller)."""
    labeler_metrics, encoder_metrics = labeled["metrics"], trained["metrics"]
    return FitReport(
        command=shlex.join(command),
        profile=profile,
        data=store_path(store),
        members=len(store),
        member_shape=list(store.member_shape),
        seconds={
            **{k: round(v, 1) for k, v in clock.seconds.items()},
            "labeler_training": labeler_metrics.get("train_seconds"),
            "projector_parts": None,
            "total": round(clock.total(), 1),
        },
        machine=_machine(load_before),
        labeler={
            "architecture": labeler_metrics.get("architecture"),
            "epochs_run": labeler_metrics.get("epochs_run"),
            "best_epoch": labeler_metrics.get("best_epoch"),
            "validation_accuracy": (labeler_metrics.get("validation") or {}).get("accuracy"),
            "test_accuracy": (labeler_metrics.get("test") or {}).get("accuracy"),
            "compression": labeled.get("compression"),
            "choice": labeler_metrics.get("choice"),  # a latent head: candidates, scores, why
            "first_choice": (labeled.get("first_head") or {}).get("choice"),  # its pseudo-labels
        },
        pseudo_labels={
            k: pseudo.get(k) for k in ("pseudo", "none", "agreement_with_manual_labels")
        },
        encoder={
            "epochs_run": encoder_metrics.get("epochs_run"),
            "selected_epoch": encoder_metrics.get("selected_epoch", -1) + 1,
            "cluster_gap_selected": encoder_metrics.get("selected", {}).get("cluster_gap"),
        },
        silhouette_2d_test=_evaluation_silhouettes(out / "evaluation" / "evaluation.json"),
    )


def _log_fit_summary(report: FitReport, clock, load_before, out: Path, log: Log) -> None:
    seconds = report.seconds
    log(
        "stage seconds: "
        + ", ".join(f"{k} {seconds[k]:.1f}" for k in clock.seconds)
        + f"; total {seconds['total']:.1f} (load {load_before} -> "
        f"{report.machine['load_average_after']})"
    )
    if report.projector is not None:
        sense = report.silhouette_2d_test.get("sense") or {}
        log(
            f"projector: 2D test silhouette {report.projector.get('silhouette_2d_test')} "
            f"(UMAP of the latents: {sense.get('mean')})"
        )
    log(f"bundle {out} ready in {seconds['total']:.0f} s; report {out / FIT_REPORT}")


def _evaluate_if_possible(store, out: Path, evaluation: EvaluationConfig, log: Log) -> None:
    """Evaluate the bundle into ``out/evaluation``; with too few hand-labeled test members
    (a first fit in the labeling loop) say so and go on: the bundle is complete without it,
    and its report has no test scores."""
    try:
        evaluate_and_report(store, {"sense": out}, out / "evaluation", evaluation, log=log)
    except TooFewTestLabels as exc:
        log(f"  evaluation skipped: {exc}")


def _evaluation_silhouettes(path: Path) -> dict[str, dict[str, Any]]:
    """Mean and sd of the 2D test silhouette per row of an evaluation.json."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {
        row["name"]: {
            "mean": row.get("silhouette_2d_test_mean"),
            "sd": row.get("silhouette_2d_test_sd"),
        }
        for row in rows
    }


def _machine(load_before: list[float] | None) -> dict[str, Any]:
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": _load_average(),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _compress_labeler(store: MemberStore, out: Path, config: LabelerConfig, log: Log) -> dict:
    """Store the bundle's labeler weights as int8 (see sense_training.export.compress_weights_int8)
    and measure the change on the hand-labeled validation and test members."""
    import numpy as np

    from sense_core.bundle import Bundle
    from sense_core.ensemble import split_labeled
    from sense_training.export import compress_bundle_model

    split = split_labeled(store, config.split.fractions, config.split.split_seed)
    indices = np.sort(np.concatenate([split.validation, split.test]))
    if not len(indices):
        indices = np.sort(split.train)
    bundle = Bundle.load(out)
    inputs = bundle.normalization.apply(store.read_members(indices))
    record = compress_bundle_model(out, "labeler", inputs, np.asarray(store.labels)[indices])
    log(
        f"  labeler weights int8: {record['bytes_before'] / 1e6:.1f} -> "
        f"{record['bytes_after'] / 1e6:.1f} MB; on {record['members']} validation+test members "
        f"argmax agreement {record['argmax_agreement']:.4f}, accuracy "
        f"{record['accuracy_float']:.4f} -> {record['accuracy_compressed']:.4f}, largest logit "
        f"change {record['max_abs_diff']:.3g}"
    )
    return record


def _drop_projector(out: Path) -> None:
    """Remove the bundle's projector (entry in sense.json, then the file), if it has one."""
    from sense_core.bundle import MANIFEST, manifest_text, read_manifest

    manifest = read_manifest(out)
    if manifest is None or "projector" not in manifest.get("models", {}):
        return
    entry = manifest["models"].pop("projector")
    manifest.get("training", {}).pop("projector", None)
    atomic_write_text(out / MANIFEST, manifest_text(manifest))
    (out / entry.get("file", "projector.onnx")).unlink(missing_ok=True)


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


# --------------------------------------------------------------------------- experiments
@dataclass
class Variant:
    """One encoder setting of an experiment: its name, its values over the ``[base]`` table and
    the training seeds it runs with (None: once, with the configuration's own seed)."""

    name: str
    values: dict[str, Any]
    train_seeds: tuple[int, ...] | None = None


def load_experiment(path: str | os.PathLike) -> dict[str, Any]:
    """An experiment file (TOML), checked for the keys every experiment needs."""
    import tomllib

    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SenseError(f"{path}: cannot read the grid ({exc})") from exc
    for key in ("data", "out"):
        if key not in spec:
            raise SenseError(f"{path}: missing '{key}'")
    return spec


def _variant_name(values: Mapping[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        text = "+".join(value) if isinstance(value, list | tuple) else str(value)
        parts.append(f"{key}={text.replace(',', '+')}")
    return "__".join(parts) or "default"


def experiment_variants(spec: Mapping[str, Any]) -> list[Variant]:
    """The named ``[[variant]]`` tables, then every combination of the ``[grid]`` lists (the
    grid's single default combination when there are neither)."""
    default_seeds = spec.get("train_seeds")
    variants = []
    for table in spec.get("variant", []):
        values = dict(table)
        seeds = values.pop("train_seeds", default_seeds)
        name = str(values.pop("name", "")) or _variant_name(values)
        variants.append(Variant(name, values, None if seeds is None else tuple(seeds)))
    grid = {k: v if isinstance(v, list) else [v] for k, v in spec.get("grid", {}).items()}
    if grid or not variants:
        for combination in itertools.product(*grid.values()):
            values = dict(zip(grid, combination))
            seeds = None if default_seeds is None else tuple(default_seeds)
            variants.append(Variant(_variant_name(values), values, seeds))
    return variants


def run_experiment(
    spec: Mapping[str, Any] | str | os.PathLike,
    *,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Train every variant of an experiment (a TOML file or its parsed dict) and evaluate them
    together with the baselines; return the summary (also ``<out>/summary.json``).

    Without ``train_seeds`` each variant trains once into ``<out>/<variant>/`` and the report goes
    to ``<out>``. With ``train_seeds = [0, 1, 2]`` (also per ``[[variant]]``) each variant trains
    once per seed into ``<out>/<variant>/seed<k>/``, each seed's bundles are evaluated into
    ``<out>/seed<k>/`` (the baselines, which do not depend on the training seed, with the first
    seed only) and ``<out>/summary.json`` gives every variant's mean ± sd over the seeds.
    """
    from sense_core.io import open_ensemble

    if not isinstance(spec, Mapping):
        spec = load_experiment(spec)
    started = time.perf_counter()
    out, store = Path(spec["out"]), open_ensemble(spec["data"])
    variants = experiment_variants(spec)
    run = _ExperimentRun(spec, store, overwrite, list(command or ["sense", "experiment"]), log)
    if all(v.train_seeds is None for v in variants):
        summary = run.train_and_evaluate({v.name: (v.values, None) for v in variants}, out, out)
    else:
        summary = _run_seed_axis(run, variants, out)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    log(f"experiment written to {out / SUMMARY} ({summary['seconds']:.0f} s)")
    return summary


def _run_seed_axis(run: _ExperimentRun, variants: list[Variant], out: Path) -> dict[str, Any]:
    """Every training seed's variants trained and evaluated; mean ± sd per variant."""
    seeds = sorted({s for v in variants for s in (v.train_seeds or (None,)) if s is not None})
    per_seed: dict[int, dict[str, Any]] = {}
    for position, seed in enumerate(seeds):
        chosen = {
            v.name: ({**v.values, "seed": seed}, seed)
            for v in variants
            if v.train_seeds is None or seed in v.train_seeds
        }
        started = time.perf_counter()
        summary = run.train_and_evaluate(
            chosen, out, out / f"seed{seed}", baselines=position == 0, title_note=f"seed {seed}"
        )
        summary["seconds"] = round(time.perf_counter() - started, 1)
        atomic_write_text(out / f"seed{seed}" / SUMMARY, json.dumps(summary, indent=2) + "\n")
        per_seed[seed] = summary
    return seed_axis_summary(run.spec["data"], per_seed)


def _mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(known) if known else None,
        "sd": statistics.stdev(known) if len(known) > 1 else None,
        "runs": len(known),
    }


def seed_axis_summary(data: str, per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Per variant (and baseline) the mean ± sd over training seeds of the 2D test silhouette
    and of the selected epoch's clustering-loss gap, from each seed's summary."""
    names: dict[str, None] = {}
    for summary in per_seed.values():
        names.update(dict.fromkeys(summary["silhouette_2d_test"]))
    silhouettes, gaps = {}, {}
    for name in names:
        runs = {str(k): s["silhouette_2d_test"].get(name) for k, s in per_seed.items()}
        runs = {k: v for k, v in runs.items() if v is not None}
        silhouettes[name] = {**_mean_sd(list(runs.values())), "per_seed": runs}
        gap_runs = [s["cluster_gap"].get(name, {}).get("selected") for s in per_seed.values()]
        if any(name in s["cluster_gap"] for s in per_seed.values()):
            gaps[name] = _mean_sd(gap_runs)
    means = {name: value["mean"] for name, value in silhouettes.items()}
    first = next(iter(per_seed.values()), {})
    sense = [n for n in first.get("sense_variants", []) if means.get(n) is not None]
    return {
        "data": data,
        "train_seeds": list(per_seed),
        "silhouette_2d_test": silhouettes,
        "cluster_gap_selected": gaps,
        "best_sense": max((means[n] for n in sense), default=None),
        "best_sense_name": max(sense, key=lambda n: means[n]) if sense else None,
        "umap_raw": means.get("umap_raw"),
        "pca_raw": means.get("pca_raw"),
        "runs": {str(k): f"seed{k}" for k in per_seed},
    }


@dataclass
class _ExperimentRun:
    """What the variants of one experiment share: the data, the settings, how to report."""

    spec: Mapping[str, Any]
    store: MemberStore
    overwrite: bool
    command: list[str]
    log: Log

    def evaluation(self, baselines: bool) -> EvaluationConfig:
        spec = self.spec
        return EvaluationConfig(
            seeds=tuple(spec.get("seeds", EvaluationConfig().seeds)),
            baselines=tuple(spec.get("baselines", EvaluationConfig().baselines))
            if baselines
            else (),
            fit=spec.get("fit", "all"),
            max_fit=int(spec.get("max_fit", 2000)),
            projection=spec.get("projection", "umap"),
        )

    def train(self, name: str, values: Mapping[str, Any], folder: Path) -> float | None:
        """Train one variant into ``folder`` (kept when it exists); its seconds, or None."""
        from sense_training.encoder import train_encoder

        config = EncoderConfig.from_dict({**self.spec.get("base", {}), **values})
        if (folder / "sense.json").exists() and not self.overwrite:
            self.log(f"{name}: kept (bundle exists; --overwrite retrains)")
            return None
        self.log(f"{name}: training")
        tick = time.perf_counter()
        train_encoder(
            self.store, folder, config, overwrite=True, command=self.command, log=lambda *_: None
        )
        return round(time.perf_counter() - tick, 1)

    def train_and_evaluate(
        self,
        variants: Mapping[str, tuple[dict[str, Any], int | None]],
        out: Path,
        report: Path,
        *,
        baselines: bool = True,
        title_note: str = "",
    ) -> dict[str, Any]:
        """Train ``variants`` (name → (values, training seed or None)) and evaluate them together
        into ``report``; return that run's summary."""
        from sense_training.evaluation import evaluate, write_report

        bundles, timings = {}, {}
        for name, (values, seed) in variants.items():
            folder = out / name if seed is None else out / name / f"seed{seed}"
            label = name if seed is None else f"{name} (training seed {seed})"
            seconds = self.train(label, values, folder)
            if seconds is not None:
                timings[name] = seconds
            bundles[name] = str(folder)
        settings = self.evaluation(baselines)
        evaluation = evaluate(self.store, bundles, **settings.arguments())
        title = self.spec.get("title", Path(self.spec["data"]).stem)
        title = f"{title}, training {title_note}" if title_note else title
        paths = write_report(evaluation, report, title=title)
        self.log(f"evaluation written to {paths['md']}")
        return experiment_summary(self.spec["data"], evaluation, bundles, timings)


def experiment_summary(
    data: str, evaluation, bundles: Mapping[str, str], timings: Mapping[str, float]
) -> dict[str, Any]:
    """One evaluation's summary: every row's 2D test silhouette, the best SENSE variant, the
    plain AE / VAE (reconstruction only), the baselines and the clustering-loss gaps."""
    rows = {row.name: row.scores["silhouette_2d_test_mean"] for row in evaluation.rows}
    encoders = [r for r in evaluation.rows if r.kind == "encoder"]
    reconstruction_only = [r for r in encoders if r.details.get("losses") == ["recon"]]
    plain = [r.name for r in reconstruction_only if r.details.get("architecture") != "conv-vae"]
    plain_vae = [r.name for r in reconstruction_only if r.name not in plain]
    sense = [r.name for r in encoders if r.name not in plain and r.name not in plain_vae]
    return {
        "data": data,
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
            for row in encoders
        },
        "sense_variants": sense,
        "training_seconds": dict(timings),
    }


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
