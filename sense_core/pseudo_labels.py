"""Pseudo-labels: the bundle's labeler run over every member, and the ensemble relabelled.

:func:`pseudo_label` runs the bundle's ONNX labeler through :class:`sense_core.inference.Labeler`
(onnxruntime, CUDA when asked/available with the same diagnosis as ``sense embed``, no torch)
and keeps, per member, the hand label where there is one, else the predicted class when its
softmax confidence reaches the threshold, else -1. :func:`pseudo_labeled_store` applies the
result to the ensemble with the metadata downstream training reads; docs/labeler.md describes
the output contract.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from sense_core.bundle import Bundle
from sense_core.ensemble import (
    LABEL_SOURCE_KEY,
    PRESET_SPLIT_KEY,
    UNLABELED,
    MemberStore,
    manual_mask,
    split_labeled,
)
from sense_core.errors import EnsembleError, SenseError
from sense_core.inference import DEVICES

LABELER_ROLE = "labeler"
# Metadata written by pseudo-labelling (see pseudo_labeled_store), next to LABEL_SOURCE_KEY.
CONFIDENCE_KEY = "confidence"
PSEUDO_LABEL_KEY = "pseudo_label"
PSEUDO_CONFIDENCE_KEY = "pseudo_confidence"
NO_SPLIT = "none"
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


@dataclass
class PseudoLabelOptions:
    """How :func:`pseudo_label` runs (the options of ``sense pseudo-label``)."""

    threshold: float = field(
        default=0.0,
        metadata={
            "help": "keep pseudo-labels with a softmax confidence of at least this (0..1; 0 "
            "keeps all)"
        },
    )
    batch_size: int = field(default=256, metadata={"help": "members per batch"})
    device: str = field(
        default="auto",
        metadata={
            "choices": DEVICES,
            "help": "onnxruntime provider: CUDA when available (auto), or forced (the provider "
            "really used is reported)",
        },
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise SenseError(f"confidence threshold must be in [0, 1], got {self.threshold}")
        if self.batch_size < 1:
            raise SenseError(f"batch size must be >= 1, got {self.batch_size}")

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`pseudo_label`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_DEFAULTS = PseudoLabelOptions()


@dataclass
class PseudoLabels:
    """The labeler's verdict on every member, and the labels to use downstream.

    ``predicted``/``probability`` are the model's class and softmax confidence for every
    member. ``labels`` are the hand label where there is one, else the prediction when its
    confidence reaches ``threshold``, else -1; ``source`` says which (manual / pseudo / none).
    """

    predicted: np.ndarray
    probability: np.ndarray
    labels: np.ndarray
    source: np.ndarray
    manual: np.ndarray  # bool: hand-labeled
    threshold: float
    provider: str
    seconds: float

    @property
    def confidence(self) -> np.ndarray:
        """1.0 for hand labels, the softmax confidence otherwise."""
        return np.where(self.manual, 1.0, self.probability).astype(np.float32)

    def summary(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Counts per class and source, confidence quantiles, agreement with the hand labels."""
        pseudo = self.source == "pseudo"
        unlabeled = ~self.manual
        agreement = (
            float(np.mean(self.predicted[self.manual] == self.labels[self.manual]))
            if self.manual.any()
            else None
        )
        return {
            "members": int(len(self.labels)),
            "manual": int(self.manual.sum()),
            "pseudo": int(pseudo.sum()),
            "none": int((self.source == "none").sum()),
            "threshold": self.threshold,
            "pseudo_per_class": {
                name: int(np.sum(self.labels[pseudo] == i)) for i, name in enumerate(class_names)
            },
            "confidence_of_unlabeled": {
                q: float(np.quantile(self.probability[unlabeled], float(q)))
                for q in ("0.05", "0.25", "0.5", "0.75")
            }
            if unlabeled.any()
            else {},
            "agreement_with_manual_labels": agreement,
            "provider": self.provider,
            "seconds": round(self.seconds, 3),
        }


def _load(bundle: Bundle | str | os.PathLike) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)


def pseudo_label(
    store: MemberStore,
    bundle: Bundle | str | os.PathLike,
    threshold: float = _DEFAULTS.threshold,
    *,
    batch_size: int = _DEFAULTS.batch_size,
    device: str = _DEFAULTS.device,
    progress: bool = False,
) -> PseudoLabels:
    """Run the bundle's labeler over every member of ``store`` (streamed in batches)."""
    from sense_core.inference import Labeler, run_over_store

    PseudoLabelOptions(threshold, batch_size, device)  # checks the values
    bundle = _load(bundle)
    bundle.model(LABELER_ROLE)
    bundle.check_compatible(store)
    if store.class_names and tuple(store.class_names) != bundle.class_names:
        raise SenseError(
            f"{getattr(store, 'path', 'the ensemble')}: classes {list(store.class_names)} differ "
            f"from the bundle's {list(bundle.class_names)} ({bundle.folder})"
        )
    started = time.perf_counter()
    labeler = Labeler(bundle, device=device, batch_size=batch_size)
    prediction = run_over_store(store, None, labeler, progress=progress).prediction
    assert prediction is not None
    manual = manual_mask(store)
    confident = prediction.confidence >= threshold
    labels = np.where(manual, store.labels, np.where(confident, prediction.labels, UNLABELED))
    source = np.where(manual, "manual", np.where(confident, "pseudo", "none"))
    return PseudoLabels(
        predicted=prediction.labels.astype(np.int64),
        probability=prediction.confidence.astype(np.float32),
        labels=labels.astype(np.int64),
        source=source.astype("<U6"),
        manual=manual,
        threshold=float(threshold),
        provider=labeler.provider,
        seconds=time.perf_counter() - started,
    )


class RelabeledStore(MemberStore):
    """``base``'s members (read from it on demand) with other labels, classes and metadata."""

    def __init__(
        self,
        base: MemberStore,
        labels: np.ndarray,
        class_names: Sequence[str],
        metadata: Mapping[str, np.ndarray],
    ) -> None:
        self.base = base
        self.path = getattr(base, "path", None)
        self.member_ids = tuple(base.member_ids)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = tuple(class_names)
        self.metadata = dict(metadata)

    @property
    def member_shape(self) -> tuple[int, int, int]:
        return self.base.member_shape

    def read_members(self, indices: Sequence[int]) -> np.ndarray:
        return self.base.read_members(indices)


def labeler_split_settings(bundle: Bundle) -> tuple[tuple[float, ...], int]:
    """The fractions and split seed the bundle's labeler was trained with (its configuration is
    saved nested, ``{"split": {...}}``, or flat by older versions)."""
    config = bundle.manifest.get("training", {}).get(LABELER_ROLE, {}).get("config", {})
    split = config.get("split", config)
    return tuple(split.get("fractions", DEFAULT_FRACTIONS)), int(split.get("split_seed", 0))


def pseudo_labeled_store(
    store: MemberStore, result: PseudoLabels, bundle: Bundle | str | os.PathLike
) -> RelabeledStore:
    """``store`` with the pseudo-labels applied, ready for :func:`sense_core.io.write_ensemble`.

    Labels: manual where a hand label exists, else the pseudo-label (or -1 below the threshold).
    Metadata added (replacing earlier values): ``label_source`` (manual / pseudo / none),
    ``confidence`` (1.0 for manual), ``pseudo_label`` and ``pseudo_confidence`` (the model's class
    and softmax confidence for every member), and ``split``: the labeler's train / validation /
    test split of the hand-labeled members (same fractions and seed as its training, or the
    ensemble's preset split), ``train`` for pseudo-labeled members and ``none`` for the rest. A
    later :func:`split_labeled` therefore keeps validation and test purely hand-labeled, as the
    labeler saw them.
    """
    bundle = _load(bundle)
    manual_store = RelabeledStore(
        store,
        np.where(result.manual, store.labels, UNLABELED),
        bundle.class_names,
        store.metadata,
    )
    parts = np.full(len(store), NO_SPLIT, dtype="<U10")
    parts[result.source == "pseudo"] = "train"
    fractions, split_seed = labeler_split_settings(bundle)
    try:
        split = split_labeled(manual_store, fractions, split_seed)
    except EnsembleError:  # fewer than two hand-labeled classes: nothing to hold out
        parts[result.manual] = "train"
    else:
        for name in ("train", "validation", "test"):
            parts[getattr(split, name)] = name
    metadata = dict(store.metadata)
    metadata.update(
        {
            LABEL_SOURCE_KEY: result.source,
            CONFIDENCE_KEY: result.confidence,
            PSEUDO_LABEL_KEY: result.predicted,
            PSEUDO_CONFIDENCE_KEY: result.probability,
            PRESET_SPLIT_KEY: parts,
        }
    )
    return RelabeledStore(store, result.labels, bundle.class_names, metadata)
