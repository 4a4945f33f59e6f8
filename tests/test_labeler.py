"""The labeler: training beats chance, resume equals an uninterrupted run, ONNX export and
bundle round trip, and the ``sense train-labeler`` / ``pseudo-label`` commands (pseudo-labelling
itself: test_pseudo_labels.py).

Tiny data: three classes of 32x32 patterns (horizontal stripes, vertical stripes, a blob),
4 epochs of the real default architecture on 1 thread.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import run_sense

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
ort = pytest.importorskip("onnxruntime")

from sense_core.bundle import Bundle, BundleError  # noqa: E402
from sense_core.cli import build_parser  # noqa: E402
from sense_core.ensemble import Ensemble, split_labeled  # noqa: E402
from sense_core.errors import SenseError  # noqa: E402
from sense_core.io import read_ensemble, write_ensemble  # noqa: E402
from sense_core.options import config_from_args  # noqa: E402
from sense_training.common import load_checkpoint  # noqa: E402
from sense_training.labeler import (  # noqa: E402
    LabelerConfig,
    classification_metrics,
    learning_rate_at,
    train_labeler,
)

torch.set_num_threads(1)  # 2 threads collapse when the machine is shared
CLASSES = ("horizontal", "vertical", "blob")
CONFIG = {"epochs": 4, "batch_size": 8, "learning_rate": 1e-3, "patience": 0, "threads": 1}


def patterns(count: int = 120, size: int = 32, labeled: float = 0.75, seed: int = 0) -> Ensemble:
    """Stripes along rows / columns with random frequency and phase, or a Gaussian blob, plus
    noise; ``labeled`` of the members keep their class, the true class is metadata 'truth'."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size] / size
    truth = np.arange(count) % 3
    fields = []
    for cls in truth:
        frequency, phase = rng.uniform(2, 4), rng.uniform(0, 2 * np.pi)
        if cls == 0:
            image = np.sin(2 * np.pi * frequency * rows + phase)
        elif cls == 1:
            image = np.sin(2 * np.pi * frequency * cols + phase)
        else:
            cy, cx = rng.uniform(0.3, 0.7, 2)
            image = 2 * np.exp(-((cols - cx) ** 2 + (rows - cy) ** 2) / 0.02) - 0.5
        fields.append(image + rng.normal(0, 0.3, image.shape))
    labels = np.where(rng.random(count) < labeled, truth, -1)
    return Ensemble(
        np.asarray(fields, np.float32)[:, None], labels, CLASSES, metadata={"truth": truth}
    )


@pytest.fixture(scope="module")
def ensemble() -> Ensemble:
    return patterns()


@pytest.fixture(scope="module")
def trained(ensemble, tmp_path_factory):
    out = tmp_path_factory.mktemp("labeler") / "bundle"
    result = train_labeler(
        ensemble,
        out,
        LabelerConfig.from_dict(CONFIG),
        command=["sense", "test"],
        log=lambda line: None,
    )
    return out, result


def test_training_beats_chance_and_writes_everything(trained, ensemble):
    out, result = trained
    metrics = result.metrics
    assert result.completed and metrics["epochs_run"] == 4 and len(result.history) == 4
    losses = result.history.series("train_loss")
    assert losses[-1] < 0.6 * losses[0]  # starts at ln 3 (zero head), falls
    assert metrics["train"]["accuracy"] >= 0.8
    held_out = [metrics[part] for part in ("validation", "test")]
    correct = sum(m["members"] - m["errors"] for m in held_out)
    assert correct / sum(m["members"] for m in held_out) > 0.5  # chance is 1/3
    test = metrics["test"]
    assert np.sum(test["confusion_matrix"]) == test["members"] == len(split_labeled(ensemble).test)
    assert set(test["per_class"]) == set(CLASSES)
    assert metrics["seeding"]["seed"] == 0 and "torch" in metrics["versions"]
    run = result.run_dir
    assert json.loads((run / "metrics.json").read_text())["test"] == test
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["labeler.onnx", "labeler_run", "sense.json"]


def test_bundle_round_trip_and_onnx_matches_torch(trained, ensemble):
    out, result = trained
    bundle = Bundle.load(out)
    entry = bundle.model("labeler")
    assert bundle.input_shape == (1, 32, 32) and bundle.class_names == CLASSES
    assert entry.input_name == "fields" and entry.output_name == "logits"
    assert entry.opset == result.metrics["export"]["opset"] >= 17
    assert entry.details["architecture"] == "tf_efficientnetv2_b0"
    assert entry.details["exporter"] == "dynamo"
    assert entry.details["parity"]["max_abs_diff_real"] <= 1e-4
    training = bundle.manifest["training"]["labeler"]
    assert training["command"] == "sense test" and training["config"]["run"]["epochs"] == 4
    assert training["metrics"]["test"]["accuracy"] == result.metrics["test"]["accuracy"]
    assert {"torch", "timm", "onnx", "onnxruntime"} <= set(bundle.manifest["software"])
    split = split_labeled(ensemble)
    assert bundle.normalization.mean[0] == pytest.approx(
        float(ensemble.fields[split.train].mean()), abs=1e-5
    )

    # the ONNX labeler reproduces the best checkpoint's weights on real members
    from sense_training.labeler import build_labeler

    model = build_labeler("tf_efficientnetv2_b0", 1, 3)
    model.load_state_dict(load_checkpoint(result.run_dir / "checkpoint.pt")["best"]["weights"])
    model.eval()
    inputs = bundle.normalization.apply(ensemble.fields[:20])
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    session = ort.InferenceSession(str(entry.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"fields": inputs})[0]
    assert np.max(np.abs(got - expected)) <= 1e-4

    # a mismatching ensemble is refused clearly
    with pytest.raises(BundleError, match="expects"):
        bundle.check_compatible(patterns(count=6, size=24))


def test_resume_gives_the_uninterrupted_result(trained, ensemble, tmp_path):
    _, full = trained
    out = tmp_path / "bundle"
    partial = train_labeler(
        ensemble, out, LabelerConfig.from_dict(CONFIG), stop_after=2, log=lambda line: None
    )
    assert not partial.completed and len(partial.history) == 2
    assert not (out / "labeler.onnx").exists()
    with pytest.raises(SenseError, match="resume it or pass overwrite"):
        train_labeler(ensemble, out, LabelerConfig.from_dict(CONFIG), log=lambda line: None)
    lines = []
    resumed = train_labeler(ensemble, out, None, resume=True, log=lines.append)
    assert "resuming" in lines[0] and resumed.completed
    for name in ("train_loss", "val_loss", "val_accuracy", "lr"):
        assert resumed.history.series(name) == pytest.approx(full.history.series(name), rel=1e-5)
    assert resumed.metrics["test"]["confusion_matrix"] == full.metrics["test"]["confusion_matrix"]
    a = load_checkpoint(resumed.run_dir / "checkpoint.pt")["best"]["weights"]
    b = load_checkpoint(full.run_dir / "checkpoint.pt")["best"]["weights"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)

    # resuming with other labels is refused
    changed = Ensemble(
        ensemble.fields, np.where(ensemble.labels == 0, -1, ensemble.labels), CLASSES
    )
    with pytest.raises(SenseError, match="other members or labels"):
        train_labeler(changed, out, None, resume=True, log=lambda line: None)


def test_metrics_and_schedule_helpers():
    metrics = classification_metrics(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), CLASSES)
    assert metrics["accuracy"] == 0.5 and metrics["errors"] == 2
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert metrics["per_class"]["vertical"] == {"precision": 1 / 3, "recall": 1.0, "support": 1}
    assert metrics["per_class"]["blob"]["precision"] is None
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    config = LabelerConfig.from_dict({"learning_rate": 1.0, "min_lr_ratio": 0.1})
    rates = [learning_rate_at(s, 100, 10, config) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(0.1, abs=1e-3) and all(np.diff(rates[10:]) <= 0)
    with pytest.raises(SenseError):
        LabelerConfig.from_dict({"balance": "magic"})
    with pytest.raises(SenseError):
        LabelerConfig.from_dict({"augment": "shear"})


def test_cli_defaults_match_the_config_and_parser_stays_light():
    args = build_parser().parse_args(["train-labeler", "--data", "d.npz", "--out", "b"])
    assert config_from_args(LabelerConfig(), args) == LabelerConfig()
    code = (
        "import sys; from sense_core.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'timm', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_cli_help_and_round_trip(tmp_path):
    for command in ("train-labeler", "pseudo-label"):
        assert "--data" in run_sense(command, "--help").stdout
    data = write_ensemble(patterns(count=60, labeled=0.8, seed=1), tmp_path / "tiny.npz")
    bundle = tmp_path / "bundle"
    trained = run_sense(
        "train-labeler", "--data", str(data), "--out", str(bundle), "--epochs", "1",
        "--batch-size", "8", "--augment", "hflip,vflip", "--threads", "1",
    )  # fmt: skip
    assert "test accuracy" in trained.stdout
    manifest = json.loads((bundle / "sense.json").read_text())
    assert manifest["training"]["labeler"]["argv"][:2] == ["sense", "train-labeler"]
    assert manifest["training"]["labeler"]["config"]["augment"] == "hflip,vflip"
    again = run_sense("train-labeler", "--data", str(data), "--out", str(bundle), check=False)
    assert again.returncode == 2 and "already" in again.stderr
    out = tmp_path / "labeled.npz"
    labeled = run_sense(
        "pseudo-label", "--data", str(data), "--bundle", str(bundle), "--out", str(out),
        "--threshold", "0.5", "--summary-json", str(tmp_path / "summary.json"),
    )  # fmt: skip
    assert "CPUExecutionProvider" in labeled.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    back = read_ensemble(out)
    assert (
        summary["members"] == 60
        and summary["manual"] == int((back.labels >= 0).sum()) - (summary["pseudo"])
    )
    assert set(back.metadata["label_source"]) <= {"manual", "pseudo", "none"}
    missing = run_sense(
        "pseudo-label", "--data", str(data), "--bundle", str(tmp_path), "--out", str(out),
        "--overwrite", check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "not a SENSE bundle" in missing.stderr


def test_three_hand_labels_per_class_leave_an_empty_part_and_training_still_finishes(tmp_path):
    # `sense generate drops --n 400` labels 5 %: 2-3 members per class, so fit's split leaves
    # the labeler's test part empty; scoring the empty part crashed (argmax of an empty array)
    rng = np.random.default_rng(1)
    few = patterns(count=60, labeled=0.0)
    truth = few.metadata["truth"]
    labels = np.full(len(truth), -1)
    for cls in range(3):
        labels[rng.choice(np.flatnonzero(truth == cls), 3 - (cls == 2), replace=False)] = cls
    few = Ensemble(few.fields, labels, CLASSES)
    config = LabelerConfig.from_dict({**CONFIG, "epochs": 1})
    result = train_labeler(few, tmp_path / "bundle", config, log=lambda line: None)
    parts = {name: result.metrics[name] for name in ("validation", "test")}
    assert any(part["members"] == 0 for part in parts.values()), parts
    empty = next(part for part in parts.values() if part["members"] == 0)
    assert empty["accuracy"] is None and empty["loss"] is None
    assert (tmp_path / "bundle" / "labeler.onnx").is_file()


def test_fixmatch_consistency_trains_on_the_unlabeled_members_and_beats_chance(ensemble, tmp_path):
    """With --consistency the labeler also learns from the members without a hand label
    (FixMatch): the share of them confident enough to be targets is recorded each epoch, the
    weights differ from a run without the term, and the labeler beats chance on those members."""
    from sense_core.inference import Labeler

    config = LabelerConfig.from_dict(
        {**CONFIG, "consistency": 1.0, "consistency_threshold": 0.5, "strong_views": "noise"}
    )
    logged = []
    result = train_labeler(ensemble, tmp_path / "semi", config, log=logged.append)
    shares = result.history.series("train_confident_share")
    assert len(shares) == 4 and all(0.0 <= share <= 1.0 for share in shares)
    assert max(shares) > 0.0  # some unlabeled members became targets
    assert any("confident unlabeled" in line for line in logged)
    hidden = ensemble.labels < 0
    predicted = Labeler(Bundle.load(tmp_path / "semi")).predict(ensemble.fields[hidden]).labels
    assert np.mean(predicted == ensemble.metadata["truth"][hidden]) > 0.5  # chance is 1/3
    plain = train_labeler(ensemble, tmp_path / "plain", LabelerConfig.from_dict(CONFIG),
                          log=lambda line: None)  # fmt: skip
    assert "train_confident_share" not in plain.history.records[0]
    semi_weights = load_checkpoint(result.run_dir / "checkpoint.pt")["trainer"]["model"]
    plain_weights = load_checkpoint(plain.run_dir / "checkpoint.pt")["trainer"]["model"]
    assert any(not torch.equal(semi_weights[k], plain_weights[k]) for k in semi_weights)


def test_fixmatch_needs_unlabeled_members_and_a_sane_threshold(tmp_path):
    every = patterns(count=30, labeled=1.0)
    config = LabelerConfig.from_dict({**CONFIG, "epochs": 1, "consistency": 1.0})
    with pytest.raises(SenseError, match="needs members without a hand label"):
        train_labeler(every, tmp_path / "bundle", config, log=lambda line: None)
    with pytest.raises(SenseError, match="consistency_threshold must be in"):
        LabelerConfig.from_dict({"consistency_threshold": 1.5})
    with pytest.raises(SenseError, match=r"strong_views: instance views \['sideways'\]"):
        LabelerConfig.from_dict({"strong_views": "sideways"})
