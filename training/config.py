"""Training configurations: nested, torch-free dataclasses written once.

Each field carries its default and, in ``metadata``, what the command line needs: ``help`` (one
line, the default is appended by the generator), optionally ``flag`` (the option name when it is
not ``--`` + the field name with ``-`` for ``_``), ``choices``, ``metavar`` and ``cli: False``
for fields not offered as options. :mod:`sense_core.options` builds the argparse options from
them, so a new option is one new field here. Lists and tuples are written comma-separated on the
command line.

A configuration is saved resolved (``to_dict``: nested dicts) in checkpoints and bundles.
``from_dict`` reads that nested form and the flat form of older checkpoints, shipped bundles and
experiment files (``{"epochs": 2, "losses": "recon,cluster", "latent_dim": 8}``): each flat key
goes to the section that has that field. ``updated`` returns a copy with flat or nested values
replaced (profiles, experiment grids, tests). Invalid values raise a
:class:`~sense_core.errors.SenseError` naming the field.
"""

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

from sense_core.errors import SenseError

LOSS_TERMS = ("recon", "cluster", "contrastive", "instance")
CONTRASTIVE_KINDS = ("margin", "supcon")
ARCHITECTURES = ("ae", "vae")
DEVICES = ("auto", "cpu", "cuda")
SELECT_CHOICES = ("best", "last")
BALANCE_CHOICES = ("loss", "sampler", "none")
AUGMENTATION_OPS = ("hflip", "vflip", "rot90", "shift", "hshift")
DEFAULT_LABELER_ARCHITECTURE = "tf_efficientnetv2_b0"
AUGMENT_HELP = (
    "random symmetries the physics allows, comma-separated: hflip (left/right), vflip "
    "(top/bottom), rot90 (square members), shift (translation by up to 1/8 of the size, "
    "mirrored border), hshift (left/right only), or none; only symmetries that keep the class"
)


def option(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A dataclass field with its command-line ``metadata`` (``help``, ``flag``, ``choices``,
    ``metavar``, ``cli``); mutable defaults are copied per instance."""
    if isinstance(default, list | dict):
        value = default
        return field(
            default_factory=lambda: type(value)(value), metadata={"help": help, **metadata}
        )
    return field(default=default, metadata={"help": help, **metadata})


def section(factory: Any, help: str = "") -> Any:
    """A nested configuration section (a dataclass built by ``factory``)."""
    return field(default_factory=factory, metadata={"help": help, "section": True})


def parse_terms(terms: str | Sequence[str]) -> tuple[str, ...]:
    """``"recon,cluster"`` or a sequence → the terms in canonical order; unknown ones are an
    error."""
    if isinstance(terms, str):
        terms = terms.split(",")
    chosen = {str(t).strip().lower() for t in terms if str(t).strip()}
    aliases = {"reconstruction": "recon", "clustering": "cluster", "silhouette": "cluster"}
    chosen = {aliases.get(t, t) for t in chosen}
    unknown = chosen - set(LOSS_TERMS)
    if unknown or not chosen:
        raise SenseError(
            f"loss terms {sorted(unknown) or 'none'} not understood; choose a non-empty "
            f"comma-separated subset of {', '.join(LOSS_TERMS)}"
        )
    return tuple(t for t in LOSS_TERMS if t in chosen)


# Views of the instance-contrastive term (sense_training.data.InstanceViews): the symmetries and
# perturbations that keep what a member is; presets name the ensemble kinds they are valid for
# (docs/label_efficiency.md says why each op is or is not valid for each kind).
VIEW_OPS = ("roll", "hflip", "vflip", "rot90", "shift", "hshift", "negate", "noise", "contrast")
VIEW_PRESETS = {
    "lattice": "roll,hflip,vflip,rot90,negate",  # periodic spin lattices (Ising): + spin flip
    "periodic": "roll,hflip,vflip,rot90",  # fields on a periodic domain (reaction-diffusion)
    "image": "shift,hflip,vflip,rot90,noise,contrast",  # photographs, micrographs, textures
    "gravity": "hflip,hshift,noise",  # a vertical direction that means something (drops)
    "oriented": "shift,hflip,vflip,noise",  # orientation is the class (channels ew / ns)
    "handwriting": "shift,noise,contrast",  # no mirror: a mirrored 2 is no 2
    "generic": "noise",  # valid for any field: small noise only
}
GENERIC_VIEWS = "generic"  # the default views: they teach little (docs/label_efficiency.md)


def view_ops(text: str | None) -> tuple[str, ...]:
    """The operations of an instance-view spec (``"roll,hflip"`` or a preset name of
    :data:`VIEW_PRESETS`) in canonical order; unknown ones are an error."""
    text = VIEW_PRESETS.get((text or "").strip().lower(), text)
    ops = {op.strip().lower() for op in (text or "").split(",") if op.strip()}
    unknown = ops - set(VIEW_OPS)
    if unknown or not ops:
        raise SenseError(
            f"instance views {sorted(unknown) or 'none'} not understood; choose a preset "
            f"({', '.join(VIEW_PRESETS)}) or a comma-separated subset of {', '.join(VIEW_OPS)}"
        )
    return tuple(op for op in VIEW_OPS if op in ops)


def augmentation_ops(text: str | None) -> tuple[str, ...]:
    """The operations of ``"hflip,shift"`` (or ``"none"``) in canonical order; unknown ones are
    an error."""
    ops = {op.strip().lower() for op in (text or "none").split(",") if op.strip()}
    ops.discard("none")
    unknown = ops - set(AUGMENTATION_OPS)
    if unknown:
        raise SenseError(
            f"unknown augmentation {sorted(unknown)}; choose from "
            f"{', '.join(AUGMENTATION_OPS)} (comma-separated) or none"
        )
    return tuple(op for op in AUGMENTATION_OPS if op in ops)


def _floats(values: str | Iterable[Any]) -> tuple[float, ...]:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    return tuple(float(v) for v in values)


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise SenseError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_at_least(config: Any, names: Iterable[str], minimum: float) -> None:
    for name in names:
        if getattr(config, name) < minimum:
            raise SenseError(f"{name} must be >= {minimum}, got {getattr(config, name)}")


class ConfigSection:
    """What every configuration dataclass shares: nested ``to_dict``, ``from_dict`` that also
    reads the flat form, ``updated``."""

    # flat keys of older files that name a field under another name: {old: (section, field)}
    ALIASES: ClassVar[dict[str, tuple[str, str]]] = {}
    # keys of older files that no longer mean anything (ignored when read)
    OBSOLETE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def sections(cls) -> dict[str, type]:
        """The nested sections: ``{field name: section class}``."""
        return {
            f.name: type(f.default_factory())  # type: ignore[misc]
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.metadata.get("section")
        }

    @classmethod
    def own_fields(cls) -> tuple[str, ...]:
        """The names of the fields that are not sections."""
        return tuple(
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if not f.metadata.get("section")
        )

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (lists for tuples), ready for JSON."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, ConfigSection):
                data[f.name] = value.to_dict()
            elif isinstance(value, tuple | list):
                data[f.name] = [list(v) if isinstance(v, tuple | list) else v for v in value]
            else:
                data[f.name] = value
        return data

    @classmethod
    def _route(cls, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Split nested or flat ``data`` into this level's values and each section's values."""
        sections = cls.sections()
        own = set(cls.own_fields())
        mine: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {name: {} for name in sections}
        unknown = []
        for key, value in data.items():
            if key in sections and isinstance(value, Mapping):
                nested[key].update(value)
            elif key in own:
                mine[key] = value
            elif key in cls.ALIASES and cls.ALIASES[key][0] in sections:
                where, name = cls.ALIASES[key]
                nested[where][name] = value
            elif holder := next((s for s, kind in sections.items() if kind.knows(key)), None):
                nested[holder][key] = value
            elif key not in cls.OBSOLETE:
                unknown.append(key)
        if unknown:
            raise SenseError(
                f"unknown {cls.__name__} option(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(cls.flat_keys()))}"
            )
        return mine, nested

    @classmethod
    def knows(cls, key: str) -> bool:
        """Whether ``key`` is a field of this section or of a section below it (flat form)."""
        return key in cls.flat_keys() or key in cls.OBSOLETE

    @classmethod
    def flat_keys(cls) -> set[str]:
        """Every key the flat form accepts."""
        keys = set(cls.own_fields()) | set(cls.ALIASES)
        for kind in cls.sections().values():
            keys |= kind.flat_keys()  # type: ignore[attr-defined]
        return keys

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, base: Any = None) -> Any:
        """A configuration from nested or flat ``data`` over ``base`` (default: the defaults)."""
        base = cls() if base is None else base
        mine, nested = cls._route(dict(data or {}))
        values: dict[str, Any] = {name: getattr(base, name) for name in cls.own_fields()}
        values.update(mine)
        for name, kind in cls.sections().items():
            values[name] = kind.from_dict(nested[name], getattr(base, name))  # type: ignore[attr-defined]
        return cls(**values)

    def updated(self, values: Mapping[str, Any] | None = None, **more: Any) -> Any:
        """A copy with ``values`` (nested or flat keys, e.g. ``{"epochs": 2}``) replaced."""
        return type(self).from_dict({**(values or {}), **more}, base=self)

    def flat(self) -> dict[str, Any]:
        """Every field by its own name, sections flattened (for logs and short records)."""
        data: dict[str, Any] = {}
        for name, value in self.to_dict().items():
            if isinstance(value, dict):
                data.update(getattr(self, name).flat())
            else:
                data[name] = value
        return data


# --------------------------------------------------------------------------- shared sections
@dataclass
class SplitConfig(ConfigSection):
    """How the hand-labeled members are split into train / validation / test."""

    fractions: tuple[float, float, float] = option(
        (0.7, 0.15, 0.15),
        "train,validation,test shares of the hand-labeled members (a preset 'split' metadata "
        "column wins)",
        metavar="TRAIN,VAL,TEST",
    )
    split_seed: int = option(0, "seed of the split")

    def __post_init__(self) -> None:
        self.fractions = _floats(self.fractions)  # type: ignore[assignment]
        if len(self.fractions) != 3 or min(self.fractions) < 0 or sum(self.fractions) <= 0:
            raise SenseError(
                f"fractions must be three non-negative shares (train,val,test), got "
                f"{list(self.fractions)}"
            )
        self.split_seed = int(self.split_seed)


@dataclass
class RunConfig(ConfigSection):
    """How long and where a run trains, and when it stops early (the same rules for every
    trainer: see :mod:`sense_training.loop`)."""

    # the defaults of every trainer; a trainer's ``run`` section overrides some of them
    epochs: int = option(30, "epochs at most")
    batch_size: int = option(32, "members per training batch")
    learning_rate: float = option(1e-3, "(peak) learning rate", flag="--lr")
    weight_decay: float = option(0.0, "weight decay of the optimiser")
    patience: int = option(
        0, "stop after this many epochs without a better validation value; 0 = never"
    )
    min_delta: float = option(
        1e-4, "an epoch is better only when it lowers the validation value by more than this"
    )
    seed: int = option(0, "training seed")
    threads: int | None = option(None, "torch CPU threads")
    device: str = option("auto", "torch device", choices=DEVICES)
    eval_batch_size: int = option(256, "members per evaluation batch", cli=False)

    def __post_init__(self) -> None:
        _check_at_least(self, ("epochs", "batch_size", "eval_batch_size"), 1)
        _check_at_least(self, ("patience", "min_delta"), 0)
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise SenseError("learning rate must be > 0 and weight decay >= 0")
        if self.threads is not None and int(self.threads) < 1:
            raise SenseError(f"threads must be >= 1, got {self.threads}")
        _check_choice("device", self.device, DEVICES)


# --------------------------------------------------------------------------- encoder
@dataclass
class ModelConfig(ConfigSection):
    """The encoder network (:mod:`sense_training.models.autoencoder`)."""

    arch: str = option("ae", "autoencoder or beta-VAE", choices=ARCHITECTURES)
    latent_dim: int = option(32, "latent size (paper: 32 and 256)", flag="--latent")
    dropout: float = option(0.0, "dropout after each conv block")
    batch_norm: bool = option(True, "batch normalisation after each conv block")
    base_channels: int = option(32, "channels of the first conv block (doubling, at most 256)")

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise SenseError(f"unknown architecture {self.arch!r}; choose {ARCHITECTURES}")
        _check_at_least(self, ("latent_dim", "base_channels"), 1)
        if not 0.0 <= self.dropout < 1.0:
            raise SenseError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class LossConfig(ConfigSection):
    """Which terms the joint objective uses and their weights (:mod:`sense_training.losses`).

    ``terms``: any non-empty subset of ``recon``, ``cluster``, ``contrastive``. ``beta``: the
    β of a β-VAE (used only when the model returns a log-variance). ``soft_memberships``: the
    silhouette uses confidence memberships instead of one-hot ones. ``confidence_weights``:
    members' terms are weighted by their label confidence (manual labels: 1).
    ``silhouette_target``: ``s*`` of the silhouette hinge (1 = ``1 − s̄``). ``memory_size``:
    codes in the memory bank of the silhouette (0 = in-batch). ``trim_fraction``: the share of
    each batch's labelled members with the lowest silhouette left out of the clustering loss.
    ``instance_*``: the self-supervised term ``instance`` (NT-Xent between two views of every
    member, labelled or not; the views from ``instance_views``, see :data:`VIEW_PRESETS`).
    """

    terms: tuple[str, ...] = option(
        ("recon",),
        "loss terms: recon, cluster, contrastive, instance",
        flag="--loss",
        metavar="TERMS",
    )
    recon_weight: float = option(1.0, "weight of the reconstruction term")
    beta: float = option(1.0, "beta of the beta-VAE")
    cluster_weight: float = option(1.0, "lambda of the soft silhouette")
    contrastive_weight: float = option(1.0, "lambda of the contrastive term")
    contrastive: str = option("margin", "contrastive loss kind", choices=CONTRASTIVE_KINDS)
    margin: float = option(1.0, "margin of the pairwise contrastive loss")
    temperature: float = option(0.1, "SupCon temperature")
    soft_memberships: bool = option(False, "silhouette memberships from label confidences")
    confidence_weights: bool = option(False, "weight members' latent losses by label confidence")
    silhouette_target: float = option(
        1.0, "members with silhouette >= this give no clustering loss (1 = plain 1 - s)"
    )
    memory_size: int = option(
        0, "latent codes of earlier batches the silhouette also runs over (0 = in-batch)"
    )
    trim_fraction: float = option(
        0.0,
        "share of each batch's worst-placed labelled members left out of the clustering loss "
        "(remedy against its overfitting)",
    )
    instance_weight: float = option(
        1.0, "weight of the instance-contrastive term (loss term 'instance', NT-Xent)"
    )
    instance_temperature: float = option(0.2, "temperature of the instance-contrastive term")
    instance_views: str = option(
        GENERIC_VIEWS,
        "what keeps a member's class, as views of the instance-contrastive term: a preset ("
        + ", ".join(VIEW_PRESETS)
        + ") or ops among "
        + ", ".join(VIEW_OPS)
        + "; named (not generic), sense fit uses the ssl labeler and a fit without labels "
        "learns from them too",
    )

    def __post_init__(self) -> None:
        self.terms = parse_terms(self.terms)
        if not 0.0 <= self.trim_fraction < 1.0:
            raise SenseError(f"trim_fraction must be in [0, 1), got {self.trim_fraction}")
        if not -1.0 <= self.silhouette_target <= 1.0:
            raise SenseError(
                f"silhouette_target must be in [-1, 1] (1 = plain 1 - mean silhouette), got "
                f"{self.silhouette_target}"
            )
        if self.memory_size < 0:
            raise SenseError(f"memory_size must be >= 0 (0 = off), got {self.memory_size}")
        if self.contrastive not in CONTRASTIVE_KINDS:
            raise SenseError(
                f"unknown contrastive loss {self.contrastive!r}; choose {CONTRASTIVE_KINDS}"
            )
        _check_at_least(
            self, ("recon_weight", "beta", "cluster_weight", "contrastive_weight", "margin"), 0
        )
        if self.temperature <= 0:
            raise SenseError(f"temperature must be > 0, got {self.temperature}")
        if self.instance_weight < 0 or self.instance_temperature <= 0:
            raise SenseError("instance_weight must be >= 0 and instance_temperature > 0")
        view_ops(self.instance_views)

    @property
    def uses_labels(self) -> bool:
        return "cluster" in self.terms or "contrastive" in self.terms


@dataclass
class EncoderConfig(ConfigSection):
    """Everything that decides an encoder training run (stored in checkpoints and bundles)."""

    ALIASES: ClassVar[dict[str, tuple[str, str]]] = {"losses": ("loss", "terms")}

    model: ModelConfig = section(ModelConfig, "encoder network")
    loss: LossConfig = section(LossConfig, "loss terms and weights")
    run: RunConfig = section(partial(RunConfig, batch_size=64, threads=2), "training run")
    split: SplitConfig = section(SplitConfig, "split of the hand-labeled members")
    warmup_epochs: int = option(0, "epochs over which the latent-term lambdas ramp up from 0")
    trim_warmup_epochs: int = option(
        0, "the trimmed share ramps from 0 to --trim-fraction over these epochs"
    )
    min_confidence: float = option(0.0, "ignore pseudo-labels below this confidence")
    label_noise: float = option(0.0, "flip this fraction of pseudo-labels (ablation)")
    ema_decay: float = option(
        0.0,
        "score, select and export an exponential moving average of the weights with this decay "
        "per step, e.g. 0.99 (0 = off)",
    )
    select: str = option(
        "best", "export the best validation epoch or the last", choices=SELECT_CHOICES
    )
    augment: str = option("none", AUGMENT_HELP)
    monitor_members: int = option(
        512, "hand-labeled training members the training-side scores are computed on"
    )
    init_from: str = option(
        "",
        "start from the weights (--select epoch) of this encoder run's checkpoint.pt, whose "
        "network must be the same; empty: random weights",
    )

    def __post_init__(self) -> None:
        _check_choice("select", self.select, SELECT_CHOICES)
        _check_at_least(self, ("warmup_epochs", "trim_warmup_epochs"), 0)
        _check_at_least(self, ("monitor_members",), 1)
        if not 0 <= self.ema_decay < 1:
            raise SenseError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.label_noise <= 1 or not 0 <= self.min_confidence <= 1:
            raise SenseError("label_noise and min_confidence must be in [0, 1]")
        augmentation_ops(self.augment)


# --------------------------------------------------------------------------- labeler
@dataclass
class LabelerConfig(ConfigSection):
    """Everything that decides a labeler training run (stored in checkpoints and bundles)."""

    architecture: str = option(
        DEFAULT_LABELER_ARCHITECTURE,
        "timm model name (EfficientNetV2 variants: tf_efficientnetv2_b0..b3, "
        "efficientnetv2_rw_t, ...)",
    )
    drop_rate: float = option(0.2, "dropout before the classifier")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    balance: str = option(
        "loss",
        "class balance: class-weighted loss, balanced sampling, or none",
        choices=BALANCE_CHOICES,
    )
    augment: str = option("none", AUGMENT_HELP)
    vector_pairs: list[list[int]] = option(
        [],
        "channels X,Y hold a vector's components (+x right, +y up); augmentation transforms "
        "them as a vector",
        flag="--vector-channels",
        metavar="X,Y",
    )
    warmup_epochs: int = option(1, "epochs of linear learning-rate warm-up before the cosine")
    consistency: float = option(
        0.0,
        "weight of a FixMatch consistency term on the members without a hand label (0: off): "
        "the class the labeler gives a weakly augmented view with a confidence of at least "
        "the consistency threshold is the target of a strongly augmented view",
    )
    consistency_threshold: float = option(
        0.95, "confidence a weak view's prediction needs to become a target (FixMatch: 0.95)"
    )
    strong_views: str = option(
        GENERIC_VIEWS,
        "strong views of the consistency term: a preset (" + ", ".join(VIEW_PRESETS) + ") or "
        "ops among " + ", ".join(VIEW_OPS) + " that keep a member's class",
    )
    min_lr_ratio: float = option(0.01, "the cosine ends at the learning rate times this", cli=False)
    bn_recalibration_members: int = option(
        1024,
        "training members batch-norm statistics are recomputed on after every epoch (0 = off)",
        cli=False,
    )
    # One thread: on these shared 2-core machines a 2-thread train step took 8-22 s under load
    # against 0.8-1.1 s with one thread (OpenMP threads wait for each other); docs/labeler.md.
    run: RunConfig = section(
        partial(
            RunConfig, learning_rate=2e-3, weight_decay=0.05, patience=6, threads=1,
            eval_batch_size=128,
        ),
        "training run",
    )  # fmt: skip
    split: SplitConfig = section(SplitConfig, "split of the hand-labeled members")

    def __post_init__(self) -> None:
        self.vector_pairs = [[int(a), int(b)] for a, b in self.vector_pairs]
        _check_choice("balance", self.balance, BALANCE_CHOICES)
        if not 0 <= self.drop_rate < 1:
            raise SenseError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        _check_at_least(
            self, ("warmup_epochs", "bn_recalibration_members", "min_lr_ratio", "consistency"), 0
        )
        if not 0 < self.consistency_threshold <= 1:
            raise SenseError(
                f"consistency_threshold must be in (0, 1], got {self.consistency_threshold}"
            )
        augmentation_ops(self.augment)
        try:
            view_ops(self.strong_views)
        except SenseError as error:
            raise SenseError(f"strong_views: {error}") from None


# --------------------------------------------------------------------------- projector
@dataclass
class ProjectorConfig(ConfigSection):
    """The parametric projector that reproduces the UMAP map of the training latents
    (:mod:`sense_training.projector`)."""

    max_points: int = option(
        5000,
        "training members encoded and mapped for the projector (seeded sample)",
        flag="--projector-points",
    )
    hidden: tuple[int, ...] = option((256, 256), "hidden layer widths of the MLP", cli=False)
    epochs: int | None = option(None, "epochs (None: about 3000 optimiser steps)", cli=False)
    batch_size: int = option(512, "points per batch", cli=False)
    learning_rate: float = option(2e-3, "AdamW learning rate", cli=False)
    weight_decay: float = option(1e-5, "AdamW weight decay", cli=False)
    validation_fraction: float = option(
        0.1, "share of the points held out to measure fidelity", cli=False
    )
    seed: int = option(0, "seed of the sample, the initial weights and the batch order", cli=False)
    threads: int | None = option(
        1, "torch CPU threads (the network is tiny: 1 is fastest)", cli=False
    )

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)  # type: ignore[assignment]
        if not self.hidden or min(self.hidden) < 1:
            raise SenseError(f"hidden widths must be >= 1, got {list(self.hidden)}")
        _check_at_least(self, ("batch_size",), 1)
        if self.epochs is not None and self.epochs < 1:
            raise SenseError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.validation_fraction < 1:
            raise SenseError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise SenseError("learning rate must be > 0 and weight decay >= 0")
