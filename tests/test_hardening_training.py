"""Hardening of training and bundles (issue 18): `sense fit --resume` after SIGTERM or SIGKILL
at any stage gives the uninterrupted bundle; scratch folders of killed exports are removed;
external-data files of ONNX models are checksummed; NaN/Inf model outputs, non-ONNX models
and hostile sense.json files give one line naming the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_mlp_onnx, make_runtime_bundle, write_plain_npz

from sense_core.bundle import (
    Bundle,
    BundleError,
    add_model,
    manifest_text,
    new_manifest,
    onnx_external_files,
    parse_manifest,
    read_manifest,
)
from sense_core.ensemble import Ensemble, NormalizationStats
from sense_core.errors import Interrupted, SenseError


def _dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / "sense.json").read_text())
    edit(manifest)
    (folder / "sense.json").write_text(json.dumps(manifest))


def _one_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sense: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------- sense.json parser
def test_manifest_parser_bounds_nan_depth_integers_and_size(tmp_path):
    """NaN/Infinity read as null (a required number then fails validation with a BundleError,
    an optional one stays empty), deep nesting and huge integers are refused before they cost
    recursion or memory, and what SENSE writes is strict JSON."""
    folder = tmp_path / "bundle"
    make_runtime_bundle(folder)
    text = (folder / "sense.json").read_text()
    where = str(folder / "sense.json")

    # before: int(Infinity) raised OverflowError, not a BundleError
    (folder / "sense.json").write_text(text.replace('"opset": 17', '"opset": Infinity', 1))
    with pytest.raises(BundleError, match="model 'encoder' is malformed"):
        Bundle.load(folder)
    (folder / "sense.json").write_text(text.replace('"count": 100', '"count": NaN'))
    with pytest.raises(BundleError, match="malformed"):
        Bundle.load(folder)
    # a NaN where nothing needs a number (older versions wrote NaN metrics): loads
    manifest = json.loads(text)
    manifest["training"]["encoder"] = {"metrics": {"silhouette": float("nan"), "x": 1e308}}
    (folder / "sense.json").write_text(json.dumps(manifest).replace("1e+308", "1e999"))
    loaded = Bundle.load(folder).manifest["training"]["encoder"]["metrics"]
    assert loaded == {"silhouette": None, "x": None}

    deep = "[" * 100_000 + "]" * 100_000  # before: RecursionError
    with pytest.raises(BundleError, match="nested deeper than"):
        parse_manifest(deep, where)
    with pytest.raises(BundleError, match="nested 65 levels"):
        parse_manifest('{"a": ' + "[" * 64 + "]" * 64 + "}", where)
    parse_manifest('{"a": "' + "[" * 500 + '"}', where)  # brackets inside strings do not count
    with pytest.raises(BundleError, match="an integer of 5000 digits"):
        parse_manifest('{"opset": ' + "9" * 5000 + "}", where)
    with pytest.raises(BundleError, match="not a JSON object"):
        parse_manifest("[1, 2]", where)
    (folder / "sense.json").write_text("[]")
    with pytest.raises(BundleError, match="not a JSON object"):
        read_manifest(folder)
    with open(folder / "sense.json", "wb") as stream:
        stream.truncate(64 << 20)  # sparse: nothing is allocated until read
    with pytest.raises(BundleError, match="more bytes than a bundle manifest holds"):
        Bundle.load(folder)
    (folder / "sense.json").unlink()
    (folder / "sense.json").symlink_to("/dev/zero")  # endless: must not be read whole
    with pytest.raises(BundleError, match="sense.json: not a regular file"):
        read_manifest(folder)
    (folder / "sense.json").unlink()
    os.mkfifo(folder / "sense.json")  # opening must not wait for a writer
    with pytest.raises(BundleError, match="sense.json: not a regular file"):
        read_manifest(folder)

    written = manifest_text({"metrics": {"a": float("nan"), "b": [float("inf"), 1.5]}})
    assert json.loads(written, parse_constant=lambda c: pytest.fail(c)) == {
        "metrics": {"a": None, "b": [None, 1.5]}
    }


def test_add_model_writes_strict_json(tmp_path):
    folder = tmp_path / "bundle"
    make_runtime_bundle(folder, labeler=False)
    scratch = tmp_path / "p.onnx"
    make_mlp_onnx(scratch, 6)
    add_model(
        folder, "projector", scratch, read_manifest(folder), input_name="latent",
        output_name="xy", opset=17, details={"fidelity": {"relative_rmse": float("nan")}},
    )  # fmt: skip
    text = (folder / "sense.json").read_text()
    assert "NaN" not in text
    assert Bundle.load(folder).model("projector").details["fidelity"] == {"relative_rmse": None}


# --------------------------------------------------------------------------- external data
def _external_model(folder: Path, name: str = "model.onnx", location: str = "weights.bin") -> Path:
    """A linear ONNX model (fields (1, 12, 10) -> 6) whose weights are in ``location``."""
    import onnx
    from helpers import make_linear_onnx

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    make_linear_onnx(path, (1, 12, 10), 6, 0, "fields", "z")
    model = onnx.load(str(path))
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=location, size_threshold=0,
    )  # fmt: skip
    return path


def test_onnx_external_files_finds_every_tensor_reference(tmp_path):
    """Initializers, node attributes (Constant) and subgraphs (If) are all scanned, as
    onnx's own helper sees them; bytes that are not protobuf are a ValueError."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import _get_all_tensors, convert_model_to_external_data

    def constant(name: str, value: float):
        tensor = numpy_helper.from_array(np.full((4, 4), value, np.float32), name)
        return helper.make_node("Constant", [], [name], value=tensor)

    branch = lambda name, value: helper.make_graph(  # noqa: E731
        [constant(f"{name}_c", value)], name, [],
        [helper.make_tensor_value_info(f"{name}_c", TensorProto.FLOAT, [4, 4])],
    )  # fmt: skip
    graph = helper.make_graph(
        [
            constant("top", 1.0),
            helper.make_node(
                "If",
                ["flag"],
                ["chosen"],
                then_branch=branch("a", 2.0),
                else_branch=branch("b", 3.0),
            ),  # fmt: skip
            helper.make_node("Add", ["top", "chosen"], ["out"]),
        ],
        "g",
        [helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 4])],
        initializer=[numpy_helper.from_array(np.ones(16, np.float32), "unused")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    convert_model_to_external_data(model, size_threshold=0, convert_attribute=True)
    for position, tensor in enumerate(_get_all_tensors(model)):  # one file per tensor
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = f"part{position}.bin"
    expected = sorted(
        entry.value for t in _get_all_tensors(model) for entry in t.external_data
        if entry.key == "location"
    )  # fmt: skip
    assert len(expected) == 4
    assert onnx_external_files(model.SerializeToString()) == expected
    assert onnx_external_files(_external_model(tmp_path).read_bytes()) == ["weights.bin"]
    with pytest.raises(ValueError):
        onnx_external_files(b"this is not an ONNX model")


def test_external_data_files_are_checksummed(tmp_path):
    """add_model copies and records the external data; a changed, missing or unlisted file,
    or one outside the bundle, is a BundleError naming it."""
    from sense_core.inference import Encoder

    source = _external_model(tmp_path / "source")
    folder = tmp_path / "bundle"
    stats = NormalizationStats(mean=(0.0,), std=(1.0,), count=1)
    manifest = new_manifest((1, 12, 10), stats, ("a", "b"))
    bundle = add_model(
        folder, "encoder", source, manifest, input_name="fields", output_name="z", opset=17
    )
    recorded = bundle.manifest["models"]["encoder"]["external_data"]
    assert list(recorded) == ["weights.bin"] and (folder / "weights.bin").is_file()
    fields = np.random.default_rng(0).normal(size=(3, 1, 12, 10)).astype(np.float32)
    good = Encoder(bundle, device="cpu").encode(fields)

    data = bytearray((folder / "weights.bin").read_bytes())
    data[0] ^= 0xFF  # before: the map changed with no error
    (folder / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="external data file weights.bin does not match"):
        Bundle.load(folder)
    data[0] ^= 0xFF
    (folder / "weights.bin").write_bytes(bytes(data))
    np.testing.assert_array_equal(Encoder(Bundle.load(folder), device="cpu").encode(fields), good)

    (folder / "weights.bin").unlink()
    with pytest.raises(BundleError, match="external data file weights.bin is missing"):
        Bundle.load(folder)
    (folder / "weights.bin").write_bytes(bytes(data))

    # a bundle that does not list the file (written before SENSE recorded external data)
    _edit_manifest(folder, lambda m: m["models"]["encoder"].pop("external_data"))
    with pytest.raises(BundleError, match="refers to the external data file 'weights.bin'"):
        Bundle.load(folder)
    assert Bundle(folder, read_manifest(folder), verify_checksums=False).models  # unverified

    # a model whose external data lies outside the bundle
    import onnx

    outside = _external_model(tmp_path / "bundle2", "encoder.onnx")
    model = onnx.load(str(outside), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside.bin"
    outside.write_bytes(model.SerializeToString())
    assert onnx_external_files(outside.read_bytes()) == ["../outside.bin"]
    digest = __import__("hashlib").sha256(outside.read_bytes()).hexdigest()
    (tmp_path / "bundle2" / "sense.json").write_text(manifest_text({
        **manifest, "models": {"encoder": {
            "file": "encoder.onnx", "sha256": digest, "input_name": "fields",
            "output_name": "z", "opset": 17, "external_data": {"../outside.bin": digest},
        }},
    }))  # fmt: skip
    with pytest.raises(BundleError, match="must stay inside the bundle folder"):
        Bundle.load(tmp_path / "bundle2")


# --------------------------------------------------------------------------- models
def _nan_weights(path: Path, name: str) -> None:
    """Set the initializer ``name`` of the ONNX model ``path`` to NaN."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            array = np.full_like(numpy_helper.to_array(tensor), np.nan)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(model, str(path))


def test_nan_outputs_of_models_name_the_model_file(tmp_path, capsys):
    """A projector or encoder that outputs NaN: one line naming the model (and the member),
    not scikit-learn's ValueError from the metrics."""
    from sense_core.cli import main
    from sense_core.inference import Encoder
    from sense_core.io import write_ensemble
    from sense_core.metrics import silhouette
    from sense_core.projection import ParametricProjector

    folder = tmp_path / "bundle"
    make_runtime_bundle(folder, projector=True)
    rng = np.random.default_rng(0)
    ensemble = Ensemble(
        rng.normal(size=(12, 1, 12, 10)).astype(np.float32),
        labels=np.arange(12) % 3,
        class_names=("straight", "meander", "braided"),
    )
    data = write_ensemble(ensemble, tmp_path / "data.npz")
    scratch = tmp_path / "p.onnx"
    make_mlp_onnx(scratch, 6, seed=2)
    _nan_weights(scratch, "w1")
    add_model(
        folder, "projector", scratch, read_manifest(folder), input_name="latent",
        output_name="xy", opset=17, details={"latent_dim": 6},
    )  # fmt: skip
    assert main(["embed", str(data), str(folder), "--out", str(tmp_path / "out")]) == 2
    _one_line(capsys.readouterr().err, "projector.onnx: the model gives NaN/Inf for 12 of 12")
    with pytest.raises(SenseError, match="projector.onnx: the model gives NaN/Inf"):
        ParametricProjector.from_bundle(Bundle.load(folder)).transform(np.zeros((3, 6)))

    from helpers import make_linear_onnx

    make_linear_onnx(tmp_path / "e.onnx", (1, 12, 10), 6, 0, "fields", "z")
    _nan_weights(tmp_path / "e.onnx", "weights")
    add_model(
        folder, "encoder", tmp_path / "e.onnx", read_manifest(folder), input_name="fields",
        output_name="z", opset=17, details={"latent_dim": 6},
    )  # fmt: skip
    with pytest.raises(SenseError, match=r"encoder.onnx: .* NaN/Inf .*\(first: member "):
        Encoder(Bundle.load(folder), device="cpu").encode_store(ensemble)
    assert main(["embed", str(data), str(folder), "--out", str(tmp_path / "out")]) == 2
    _one_line(capsys.readouterr().err, "encoder.onnx: the model gives NaN/Inf")
    with pytest.raises(SenseError, match="1 of 4 points hold NaN/Inf"):
        silhouette(np.array([[0.0, 1], [1, 0], [np.nan, 0], [2, 2]]), np.array([0, 0, 1, 1]))


def test_info_on_a_model_that_is_not_onnx_is_one_line(tmp_path, capsys):
    from sense_core.cli import main

    folder = tmp_path / "bundle"
    make_runtime_bundle(folder)
    (folder / "labeler.onnx").write_bytes(b"\x08\x07not an ONNX model, checksum updated")
    digest = __import__("hashlib").sha256((folder / "labeler.onnx").read_bytes()).hexdigest()
    _edit_manifest(folder, lambda m: m["models"]["labeler"].update(sha256=digest))
    assert main(["info", str(folder)]) == 2  # before: a raw InvalidProtobuf traceback
    _one_line(capsys.readouterr().err, "labeler.onnx: onnxruntime cannot load the model")


def test_compressing_a_model_that_is_not_onnx_is_one_line(training, tmp_path):
    from sense_training.export import compress_weights_int8

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07 not ONNX")
    with pytest.raises(SenseError, match="model.onnx: not an ONNX model"):
        compress_weights_int8(bad, tmp_path / "out.onnx")


# --------------------------------------------------------------------------- scratch folders
def test_scratch_folders_of_killed_exports_are_removed(tmp_path):
    """A SIGKILL during an export leaves ``.<role>-export.<pid>.<random>.part``: the next
    export removes it when its process is gone, keeps a live one's, and removes the pid-less
    folders of earlier versions once they are an hour old."""
    from sense_training.export import scratch_folder

    dead = tmp_path / f".encoder-export.{_dead_pid()}.abc123.part"
    live = tmp_path / f".encoder-export.{os.getppid()}.abc123.part"
    legacy_old, legacy_new = tmp_path / ".encoder-export-k2j3", tmp_path / ".encoder-export-x9"
    other = tmp_path / f".labeler-export.{_dead_pid()}.abc.part"
    for folder in (dead, live, legacy_old, legacy_new, other):
        folder.mkdir()
        (folder / "encoder.onnx").write_bytes(b"partial")
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    with scratch_folder(tmp_path, "encoder-export") as scratch:
        assert scratch.name.startswith(f".encoder-export.{os.getpid()}.")
        assert scratch.name.endswith(".part") and scratch.is_dir()
    assert not scratch.exists() and not dead.exists() and not legacy_old.exists()
    assert live.exists() and legacy_new.exists() and other.exists()  # another role's: its own run
    with pytest.raises(Interrupted), scratch_folder(tmp_path, "encoder-export") as scratch:
        raise Interrupted(signal.SIGTERM)
    assert not scratch.exists()


# --------------------------------------------------------------------------- sense fit --resume
FIT_OPTIONS = (
    "--labeler-method", "cnn", "--labeler-epochs", "2", "--labeler-arch", "test_efficientnet",
    "--epochs", "2", "--latent", "4", "--base-channels", "8", "--batch-size", "24",
    "--threads", "1", "--device", "cpu", "--seeds", "0", "--projection", "pca",
    "--baselines", "none", "--projector-points", "60", "--min-confidence", "0",
)  # fmt: skip
# run-specific values: timings, paths (temporaries, --out), the command, the creation time
VOLATILE = ("created", "command", "argv", "path", "bundle", "machine")


def _stable(value):
    if isinstance(value, dict):
        return {
            k: _stable(v)
            for k, v in value.items()
            if k not in VOLATILE and "seconds" not in k and "load_average" not in k
        }
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _blobs(count: int = 150, shape=(1, 16, 16), classes: int = 3, flip: int | None = None):
    """Members whose level and gradient differ by class, half of them hand-labelled."""
    rng = np.random.default_rng(0)
    truth = np.arange(count) % classes
    yy = np.linspace(-1, 1, shape[1])[:, None] * np.ones(shape[2])
    fields = np.stack([(k - 1) * 2.0 + k * yy for k in truth])[:, None]
    fields = (fields + 0.4 * rng.normal(size=(count, *shape))).astype(np.float32)
    labels = np.where(np.arange(count) % 2 == 0, truth, -1)
    if flip is not None:
        labels[flip] = (labels[flip] + 1) % classes
    return Ensemble(fields, labels=labels, class_names=[f"c{i}" for i in range(classes)])


def _fit_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--data", str(data), "--out", str(out), *FIT_OPTIONS, *extra]


@pytest.fixture(scope="module")
def training():
    """Skip where the training extras are not installed."""
    for package in ("torch", "timm", "umap", "onnx"):
        pytest.importorskip(package)


@pytest.fixture(scope="module")
def reference(training, tmp_path_factory):
    """One uninterrupted `sense fit` (in-process) and its data file."""
    from sense_core.cli import main

    root = tmp_path_factory.mktemp("fit")
    data = write_plain_npz(root / "blobs.npz", _blobs())
    assert main(_fit_argv(data, root / "whole")) == 0
    return data, root / "whole"


def _assert_same_bundle(folder: Path, whole: Path) -> None:
    """Same models (bytes), sense.json, histories, metrics, evaluation and report as the
    uninterrupted fit, timings and paths aside; no temporaries left."""
    for name in ("labeler.onnx", "encoder.onnx", "projector.onnx"):
        assert (folder / name).read_bytes() == (whole / name).read_bytes(), name
    for name in (
        "sense.json", "fit_report.json", "evaluation/evaluation.json",
        "labeler_run/history.json", "labeler_run/metrics.json",
        "encoder_run/history.json", "encoder_run/metrics.json",
    ):  # fmt: skip
        texts = [json.loads((root / name).read_text()) for root in (folder, whole)]
        assert _stable(texts[0]) == _stable(texts[1]), name
    left = sorted(
        p.name for p in folder.rglob(".*") if p.name.endswith((".part", ".old")) or "-" in p.name
    )
    assert left == [], left


def test_fit_resumes_after_sigterm_at_every_stage_to_the_uninterrupted_bundle(
    reference, tmp_path, monkeypatch, capsys
):
    """SIGTERM in the labeler's 2nd epoch, its export, pseudo-labelling, the encoder's 2nd
    epoch, its export, the projector, the evaluation and the report: each `sense fit --resume`
    keeps the finished stages (no epoch is trained twice), continues the interrupted one from
    its checkpoint, and the last one ends with the uninterrupted fit's bundle. Before: `sense
    fit --resume` was "unrecognized arguments"."""
    import sense_core.pseudo_labels
    import sense_training.projector
    from sense_core.cli import main
    from sense_training import loop, pipeline
    from sense_training.encoder import EncoderTrainer
    from sense_training.labeler import LabelerTrainer

    data, whole = reference
    traps = [
        "labeler epoch 2", "labeler export", "pseudo-labels", "encoder epoch 2",
        "encoder export", "projector", "evaluation", "report",
    ]  # fmt: skip
    armed, epochs = list(traps), []

    def spring(name: str) -> None:
        if armed and armed[0] == name:
            armed.pop(0)
            raise Interrupted(signal.SIGTERM)

    def trapped(name, original, when=lambda *a, **k: True):
        def call(*args, **kwargs):
            if when(*args, **kwargs):
                spring(name)
            return original(*args, **kwargs)

        return call

    for role, trainer in (("labeler", LabelerTrainer), ("encoder", EncoderTrainer)):
        original = trainer.train_one_epoch

        def counted(self, run, epoch, _original=original, _role=role):
            if epoch == 1:
                spring(f"{_role} epoch 2")
            record = _original(self, run, epoch)
            epochs.append((_role, epoch))
            return record

        monkeypatch.setattr(trainer, "train_one_epoch", counted)

    def export(folder, role, *args, **kwargs):  # the ONNX file is in its scratch folder now
        spring(f"{role} export")
        return add_model(folder, role, *args, **kwargs)

    monkeypatch.setattr(loop, "add_model", export)
    monkeypatch.setattr(
        sense_core.pseudo_labels, "pseudo_label",
        trapped("pseudo-labels", sense_core.pseudo_labels.pseudo_label),
    )  # fmt: skip
    monkeypatch.setattr(
        sense_training.projector, "train_projector",
        trapped("projector", sense_training.projector.train_projector),
    )  # fmt: skip
    monkeypatch.setattr(
        pipeline, "evaluate_and_report", trapped("evaluation", pipeline.evaluate_and_report)
    )
    monkeypatch.setattr(pipeline.FitReport, "write", trapped("report", pipeline.FitReport.write))

    out = tmp_path / "cut"
    codes, logs = [], []
    while len(codes) < len(traps) + 2:
        codes.append(main(_fit_argv(data, out, *(["--resume"] if codes else []))))
        captured = capsys.readouterr()
        logs.append(captured.out)
        if codes[-1] == 0:
            break
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
        assert (
            lines[0].startswith(
                f"sense: interrupted by SIGTERM (continue this fit with: sense fit --data {data} "
            )
            and "--resume)" in lines[0]
        ), lines[0]
        if armed and armed[0] == "encoder export":  # the encoder has a checkpoint
            encoder = ["--data", str(data), "--bundle", str(out), "--resume", "--epochs", "2"]
            assert main(["train-encoder", *encoder]) == 2
            _one_line(
                capsys.readouterr().err,
                "continue it with: sense fit --data",  # the fit's pseudo-labels are not in data
            )
    assert codes == [143] * len(traps) + [0] and armed == []
    assert epochs == [("labeler", 0), ("labeler", 1), ("encoder", 0), ("encoder", 1)]
    assert "labeler_run/checkpoint.pt after epoch 1 of 2" in logs[1]
    assert "encoder_run/checkpoint.pt after epoch 1 of 2" in logs[4]
    assert "labeler: finished before, kept" in logs[-1]
    assert "evaluation: finished before, kept" in logs[-1]
    _assert_same_bundle(out, whole)
    state = json.loads((out / "fit_run" / "state.json").read_text())
    assert state["finished"] and state["command"][-1] != "--resume"
    manifest = read_manifest(out)
    assert "--resume" not in manifest["training"]["encoder"]["command"]  # the first command


def test_fit_resumes_after_sigkill_in_the_encoder_stage(reference, tmp_path, capsys):
    """`sense fit` killed (SIGKILL) while the encoder trains its 2nd epoch: a plain re-run names
    the command that continues it, `--resume` keeps the labeler and pseudo-labels, continues the
    encoder from its checkpoint, removes the scratch folders of killed exports and gives the
    uninterrupted bundle. Before: the re-run was refused ("a labeler run is there already") and
    `train-encoder --resume` too ("checkpoint was made with other members or labels")."""
    from sense_core.cli import main

    data, whole = reference
    out = tmp_path / "killed"
    slow_second_epoch = (
        "import sys, time\n"
        "from sense_training.encoder import EncoderTrainer\n"
        "original = EncoderTrainer.train_one_epoch\n"
        "def slow(self, run, epoch):\n"
        "    if epoch == 1:\n"
        "        time.sleep(120)\n"
        "    return original(self, run, epoch)\n"
        "EncoderTrainer.train_one_epoch = slow\n"
        "from sense_core.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-c", slow_second_epoch, *_fit_argv(data, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    checkpoint = out / "encoder_run" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    run.kill()
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL
    assert not (out / "encoder.onnx").exists()
    stale = [out / f".encoder-export.{_dead_pid()}.x1y2.part", out / ".labeler-export-old"]
    for folder in stale:
        folder.mkdir()
    os.utime(stale[1], (time.time() - 7200, time.time() - 7200))

    assert main(_fit_argv(data, out)) == 2
    _one_line(
        capsys.readouterr().err,
        f"{out}: an interrupted sense fit is there; continue it with: sense fit --data {data}",
        "--resume (or start over with --overwrite)",
    )
    assert main(_fit_argv(data, out, "--resume")) == 0
    log = capsys.readouterr().out
    assert "labeler: finished before, kept" in log and "pseudo-labels: finished before" in log
    assert "encoder_run/checkpoint.pt after epoch 1 of 2" in log
    assert not any(folder.exists() for folder in stale)
    _assert_same_bundle(out, whole)


def test_fit_resume_refuses_other_options_and_data(training, tmp_path, monkeypatch, capsys):
    """Resuming with other options or other data is refused with what differs; threads may
    change; --resume with --overwrite is a usage error."""
    from sense_core.cli import main
    from sense_training import labeler

    def interrupted(*_args, **_kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(labeler, "train_labeler", interrupted)
    data = write_plain_npz(tmp_path / "blobs.npz", _blobs(30))
    out = tmp_path / "bundle"
    assert main(_fit_argv(data, out)) == 143
    capsys.readouterr()

    assert main(_fit_argv(data, out, "--epochs", "3", "--resume")) == 2
    _one_line(
        capsys.readouterr().err,
        "state.json: the interrupted fit ran with other options (encoder.run.epochs 2 -> 3)",
        "or start over with --overwrite",
    )
    other = write_plain_npz(tmp_path / "other.npz", _blobs(30, flip=4))
    assert main(_fit_argv(other, out, "--resume")) == 2
    _one_line(
        capsys.readouterr().err,
        "the interrupted fit ran on other data",
        "differs in: ids_labels_metadata_sha256",
    )
    changed = _blobs(30)
    changed.fields[0] += 1.0
    write_plain_npz(other, changed)
    assert main(_fit_argv(other, out, "--resume")) == 2
    _one_line(capsys.readouterr().err, "differs in: sampled_values_sha256")
    # threads do not change what is computed: accepted (and interrupted again here)
    argv = _fit_argv(data, out, "--resume")
    argv[argv.index("--threads") + 1] = "2"
    assert main(argv) == 143
    assert "resuming the fit in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(_fit_argv(data, out, "--resume", "--overwrite"))
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    # starting over is allowed
    assert main(_fit_argv(data, out, "--overwrite")) == 143


def test_resume_command_drops_overwrite_and_adds_resume(training):
    from sense_training.pipeline import resume_command

    assert resume_command(["sense", "fit", "--data", "d", "--overwrite"]) == [
        "sense", "fit", "--data", "d", "--resume",
    ]  # fmt: skip
    assert resume_command(["sense", "fit", "--over", "--resume"]) == ["sense", "fit", "--resume"]
    assert resume_command(["sense", "fit", "--out", "o"])[-1] == "--resume"
