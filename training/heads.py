"""Labelers on the encoder's latent space, for few hand labels.

A labeler that trains a CNN from scratch on a few dozen images per class is weak; the encoder,
trained on *all* members, already separates them (a logistic regression on its latent vectors
beat the CNN labeler on every held-out ensemble of the label-efficiency benchmark). Candidates:

- ``linear``: a logistic regression on the standardised latents of the hand-labeled members;
- ``propagation``: label spreading over the k-NN graph of all members' latents (hand labels
  spread along the data's own neighbourhoods), then a logistic regression on the hand labels
  plus the propagated labels whose confidence reaches ``threshold`` (self-training), so that the
  result is again a linear head that labels new members.

- ``selftrain``: self-training rounds over the latent k-NN graph: in each round labels spread
  from the hand labels and the members accepted so far, a logistic regression is fitted on them,
  and the unlabeled members on which graph and head agree with a head confidence of at least
  ``threshold`` are accepted for the next round; members under the threshold never become
  training labels (:class:`SelfTraining` counts them).
- ``raw_linear`` (when :func:`choose_head` is given the fields): a logistic regression on the
  raw (normalised, flattened) fields, the baseline any labeler has to beat.

All end as a :class:`LinearHead`: logits = latent @ weights.T + bias, exported to ONNX with
the latent vector as input, so labeling costs one matrix product after the encoder.
:func:`choose_head` scores the candidates by stratified cross-validation on the hand labels
(the held-out fold's labels are hidden from propagation too) and keeps the best, with the reason.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.ensemble import UNLABELED
from sense_core.errors import SenseError
from sense_core.inference import softmax

CANDIDATES = ("linear", "propagation")  # the latent heads of `sense fit --labeler-method latent`
# the candidates of `--labeler-method ssl`, simplest first (ties go to the earlier one)
SSL_CANDIDATES = ("linear", "raw_linear", "propagation", "selftrain")
# Self-training: rounds of accepting confident members, and the head confidence they need. Two
# rounds: the third accepted few more members on the label-efficiency ensembles.
SELF_TRAINING_ROUNDS = 2
SELF_TRAINING_THRESHOLD = 0.9
# Label spreading (Zhou et al. 2004) as scikit-learn implements it; 10 neighbours and alpha 0.2
# (the share of a member's label taken from its neighbours per iteration) are scikit-learn's
# defaults for alpha and a common k for graphs of a few thousand points.
NEIGHBOURS = 10
ALPHA = 0.2
MAX_FOLDS = 5


@dataclass
class LinearHead:
    """A linear classifier on latent vectors: ``logits = latents @ weights.T + bias``."""

    weights: np.ndarray  # float32 (K, D)
    bias: np.ndarray  # float32 (K,)

    @classmethod
    def fit(
        cls, latents: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0
    ) -> LinearHead:
        """Logistic regression (L2, C = 1) on standardised latents, folded into one linear map.

        Classes absent from ``labels`` get a bias of -30 (never predicted, finite logits)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        latents = np.asarray(latents, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        present = np.unique(labels)
        weights = np.zeros((classes, latents.shape[1]))
        bias = np.full(classes, -30.0)
        if len(present) == 1:
            bias[present[0]] = 0.0
            return cls(weights.astype(np.float32), bias.astype(np.float32))
        scaler = StandardScaler().fit(latents)
        model = LogisticRegression(max_iter=5000, random_state=seed)
        model.fit(scaler.transform(latents), labels)
        coef, intercept = model.coef_, model.intercept_
        if len(present) == 2:  # scikit-learn keeps one row for two classes: logit of the second
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        scaled = coef / scaler.scale_
        weights[present] = scaled
        bias[present] = intercept - scaled @ scaler.mean_
        return cls(weights.astype(np.float32), bias.astype(np.float32))

    def logits(self, latents: np.ndarray) -> np.ndarray:
        return np.asarray(latents, dtype=np.float32) @ self.weights.T + self.bias

    def predict(self, latents: np.ndarray) -> np.ndarray:
        return self.logits(latents).argmax(axis=1)

    def export_onnx(
        self,
        path: str | os.PathLike,
        input_name: str = "latent",
        output_name: str = "logits",
        opset: int = 18,
        input_shape: Sequence[int] | None = None,
    ) -> Path:
        """Write the head as an ONNX graph (Gemm): input (B, D) latents, output (B, K) logits;
        with ``input_shape`` (C, H, W), input (B, C, H, W) fields, flattened first.

        Built with onnx.helper: one Gemm node needs neither torch's exporter nor skl2onnx."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        classes, dim = self.weights.shape
        nodes = [helper.make_node("Gemm", [input_name, "weights", "bias"], [output_name], transB=1)]
        shape: list[Any] = ["batch", dim]
        if input_shape is not None:
            if int(np.prod(input_shape)) != dim:
                raise ValueError(f"input shape {tuple(input_shape)} does not hold {dim} values")
            nodes[0].input[0] = "flat"
            nodes.insert(0, helper.make_node("Flatten", [input_name], ["flat"], axis=1))
            shape = ["batch", *map(int, input_shape)]
        graph = helper.make_graph(
            nodes,
            "sense_linear_head",
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", classes])],
            initializer=[
                numpy_helper.from_array(self.weights.astype(np.float32), "weights"),
                numpy_helper.from_array(self.bias.astype(np.float32), "bias"),
            ],
        )
        model = helper.make_model(
            graph, producer_name="sense", opset_imports=[helper.make_opsetid("", opset)]
        )
        onnx.checker.check_model(model)
        path = Path(path)
        onnx.save(model, path)
        return path


@dataclass
class Propagation:
    """Labels of every member spread from the hand labels over the latent k-NN graph."""

    labels: np.ndarray  # int64 (N,)
    confidence: np.ndarray  # float64 (N,): the spread label's share of the member's label mass


def propagate(latents: np.ndarray, labels: np.ndarray, seed: int = 0) -> Propagation:
    """Label spreading over the k-NN graph of the standardised latents (``labels`` -1 = none)."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.semi_supervised import LabelSpreading

    scaled = StandardScaler().fit_transform(np.asarray(latents, dtype=np.float64))
    neighbours = min(NEIGHBOURS, len(scaled) - 1)
    model = LabelSpreading(kernel="knn", n_neighbors=neighbours, alpha=ALPHA, max_iter=100)
    model.fit(scaled, np.asarray(labels, dtype=np.int64))
    distributions = np.nan_to_num(model.label_distributions_)
    best = distributions.argmax(axis=1)
    return Propagation(model.classes_[best], distributions.max(axis=1))


@dataclass
class SelfTraining:
    """The result of :func:`self_train`: the head, the labels it trained on (-1: none) and how
    many members each round accepted."""

    head: LinearHead
    targets: np.ndarray  # int64 (N,)
    accepted: list[int]

    def record(self, threshold: float) -> dict[str, Any]:
        """JSON-ready counts: labels given, members accepted (per round), members left out."""
        known = int(np.count_nonzero(self.targets != UNLABELED))
        return {
            "threshold": float(threshold),
            "labels_given": known - sum(self.accepted),
            "accepted_per_round": list(self.accepted),
            "accepted": sum(self.accepted),
            "below_threshold": int(len(self.targets)) - known,
        }


def self_train(
    latents: np.ndarray,
    labels: np.ndarray,
    classes: int,
    threshold: float = SELF_TRAINING_THRESHOLD,
    rounds: int = SELF_TRAINING_ROUNDS,
    seed: int = 0,
) -> SelfTraining:
    """Self-training over the latent k-NN graph (see the module docstring); ``labels`` -1 where
    unknown. Accepted members keep their label in later rounds; hand labels are never changed."""
    labels = np.asarray(labels, dtype=np.int64)
    known = labels != UNLABELED
    targets = labels.copy()
    head = LinearHead.fit(latents[known], labels[known], classes, seed)
    accepted: list[int] = []
    for _ in range(rounds):
        spread = propagate(latents, targets, seed)
        chosen = targets != UNLABELED
        head = LinearHead.fit(latents[chosen], targets[chosen], classes, seed)
        probability = softmax(head.logits(latents))
        predicted = probability.argmax(axis=1)
        new = (~chosen) & (predicted == spread.labels) & (probability.max(axis=1) >= threshold)
        targets[new] = predicted[new]
        accepted.append(int(np.count_nonzero(new)))
        if not new.any():
            break
    chosen = targets != UNLABELED
    head = LinearHead.fit(latents[chosen], targets[chosen], classes, seed)
    return SelfTraining(head, targets, accepted)


def fit_candidate(
    name: str,
    latents: np.ndarray,
    labels: np.ndarray,
    classes: int,
    threshold: float = 0.9,
    seed: int = 0,
    fields: np.ndarray | None = None,
) -> LinearHead:
    """Train candidate ``name`` on ``latents`` of all members, ``labels`` -1 where unknown
    (``raw_linear``: on ``fields``, the flattened normalised fields)."""
    labels = np.asarray(labels, dtype=np.int64)
    known = labels != UNLABELED
    if name == "linear":
        return LinearHead.fit(latents[known], labels[known], classes, seed)
    if name == "raw_linear":
        if fields is None:
            raise SenseError("the raw_linear candidate needs the members' fields")
        return LinearHead.fit(fields[known], labels[known], classes, seed)
    if name == "propagation":
        spread = propagate(latents, labels, seed)
        chosen = known | (spread.confidence >= threshold)
        targets = np.where(known, labels, spread.labels)
        return LinearHead.fit(latents[chosen], targets[chosen], classes, seed)
    if name == "selftrain":
        return self_train(latents, labels, classes, threshold, seed=seed).head
    raise SenseError(f"unknown latent labeler {name!r}; choose from {', '.join(SSL_CANDIDATES)}")


def cross_validation_folds(
    labels: np.ndarray, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds over the hand-labeled members (indices into ``labels``): as many as the
    rarest class allows, at most :data:`MAX_FOLDS`; none when a class has a single member."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    counts = counts[counts > 0]
    folds = int(min(MAX_FOLDS, counts.min())) if len(counts) > 1 else 0
    if folds < 2:
        return []
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


@dataclass
class HeadChoice:
    """The chosen latent labeler, every candidate's cross-validated accuracy, and why."""

    name: str
    head: LinearHead
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""

    def record(self) -> dict[str, Any]:
        """JSON-ready: what ``sense.json`` and the fit report keep of the choice."""
        return {"chosen": self.name, "candidates": self.scores, "reason": self.reason}


def choose_head(
    latents: np.ndarray,
    labels: np.ndarray,
    classes: int,
    candidates: Sequence[str] = CANDIDATES,
    threshold: float = 0.9,
    seed: int = 0,
    fields: np.ndarray | None = None,
) -> HeadChoice:
    """Score ``candidates`` by cross-validation on the hand labels and train the best on all.

    In each fold the held-out hand labels are hidden (set to -1) for every candidate, so a
    candidate that uses the unlabeled members (propagation) is scored as it will be used.
    Ties go to the earlier candidate (the simpler one comes first). ``fields`` (N, C·H·W): the
    normalised fields, for the ``raw_linear`` candidate."""
    labels = np.asarray(labels, dtype=np.int64)
    known = np.flatnonzero(labels != UNLABELED)
    if len(known) == 0:
        raise SenseError("no hand-labeled member: a latent labeler needs at least one label")
    folds = cross_validation_folds(labels[known], seed)
    scores: dict[str, dict[str, Any]] = {}
    for name in candidates:
        accuracies = []
        for _, held in folds:
            hidden = labels.copy()
            hidden[known[held]] = UNLABELED
            head = fit_candidate(name, latents, hidden, classes, threshold, seed, fields)
            inputs = fields if name == "raw_linear" else latents
            predicted = head.predict(inputs[known[held]])
            accuracies.append(float(np.mean(predicted == labels[known[held]])))
        scores[name] = {
            "cv_accuracy": float(np.mean(accuracies)) if accuracies else None,
            "cv_sd": float(np.std(accuracies)) if accuracies else None,
            "folds": len(folds),
        }
    if folds:
        name = max(candidates, key=lambda c: (scores[c]["cv_accuracy"], -candidates.index(c)))
        reason = (
            f"highest {len(folds)}-fold cross-validated accuracy on {len(known)} hand labels "
            f"({scores[name]['cv_accuracy']:.3f})"
        )
    else:
        name = candidates[0]
        reason = (
            f"{len(known)} hand labels leave a class with one member: no cross-validation "
            f"possible, the first candidate ({name}) is used"
        )
    if "selftrain" in candidates:  # what self-training accepts and leaves out, for the report
        trained = self_train(latents, labels, classes, threshold, seed=seed)
        scores["selftrain"]["self_training"] = trained.record(threshold)
        if name == "selftrain":
            return HeadChoice(name, trained.head, scores, reason)
    head = fit_candidate(name, latents, labels, classes, threshold, seed, fields)
    return HeadChoice(name, head, scores, reason)


def add_head_to_bundle(
    folder: str | os.PathLike,
    head: LinearHead,
    *,
    record: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    opset: int = 18,
    on_fields: bool = False,
):
    """Make ``head`` the bundle's labeler: ``labeler.onnx`` reads the encoder's latent vectors
    (``"input": "latent"`` in sense.json), so labeling a member costs the encoder pass only;
    ``on_fields``: a linear classifier of the (normalised, flattened) fields instead.
    ``record`` (e.g. :meth:`HeadChoice.record`) goes into the model's details."""
    from sense_core.bundle import add_model, read_manifest
    from sense_core.inference import LATENT_INPUT

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or "encoder" not in manifest.get("models", {}):
        raise SenseError(f"{folder}: a latent labeler needs the bundle's encoder first")
    if on_fields:
        shape = tuple(int(s) for s in manifest["input"]["shape"])
        names = ("fields", {"input": "fields", "architecture": "linear classifier of the fields"})
    else:
        shape = None
        names = (
            "latent",
            {
                "input": LATENT_INPUT,
                "architecture": "linear head on the encoder's latent space",
                "latent_dim": int(head.weights.shape[1]),
            },
        )
    input_name, details = names
    with tempfile.TemporaryDirectory(dir=folder, prefix=".labeler-head.") as scratch:
        path = head.export_onnx(
            Path(scratch) / "head.onnx", input_name, opset=opset, input_shape=shape
        )
        return add_model(
            folder,
            "labeler",
            path,
            manifest,
            input_name=input_name,
            output_name="logits",
            opset=opset,
            details={**details, **({"choice": dict(record)} if record else {})},
            training=training,
        )
