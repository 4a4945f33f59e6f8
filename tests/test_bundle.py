"""Model bundles: writing, validated loading, and every way a bundle can be unusable."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_ensemble, make_linear_onnx

from sense_core.bundle import (
    Bundle,
    BundleError,
    add_model,
    new_manifest,
    read_manifest,
)
from sense_core.ensemble import NormalizationStats

SHAPE = (1, 12, 10)


@pytest.fixture
def bundle_dir(tmp_path):
    stats = NormalizationStats(mean=(0.5,), std=(2.0,), count=100)
    manifest = new_manifest(SHAPE, stats, ["straight", "meander", "braided"])
    make_linear_onnx(tmp_path / "lab.onnx", SHAPE, 3, output_name="logits")
    add_model(
        tmp_path / "bundle",
        "labeler",
        tmp_path / "lab.onnx",
        manifest,
        input_name="fields",
        output_name="logits",
        opset=17,
        details={"architecture": "linear"},
        training={"command": "test", "metrics": {"accuracy": 1.0}},
    )
    make_linear_onnx(tmp_path / "enc.onnx", SHAPE, 4, output_name="latent")
    add_model(
        tmp_path / "bundle",
        "encoder",
        tmp_path / "enc.onnx",
        read_manifest(tmp_path / "bundle"),
        input_name="fields",
        output_name="latent",
        opset=17,
        details={"latent_dim": 4},
    )
    return tmp_path / "bundle"


def test_bundle_round_trip(bundle_dir):
    bundle = Bundle.load(bundle_dir)
    assert bundle.input_shape == SHAPE
    assert bundle.class_names == ("straight", "meander", "braided")
    assert bundle.normalization.std == (2.0,)
    assert set(bundle.models) == {"labeler", "encoder"}
    assert bundle.model("encoder").details == {"latent_dim": 4}
    assert bundle.model("labeler").path == (bundle_dir / "labeler.onnx").resolve()
    manifest = read_manifest(bundle_dir)
    assert manifest["training"]["labeler"]["metrics"] == {"accuracy": 1.0}
    assert "sense" in manifest["software"]
    with pytest.raises(BundleError, match="no projector model"):
        bundle.model("projector")


def test_ensemble_shape_must_match(bundle_dir):
    bundle = Bundle.load(bundle_dir)
    bundle.check_compatible(make_ensemble(height=12, width=10))
    with pytest.raises(BundleError, match=r"\(C, H, W\) = \(2, 12, 10\).*expects \(1, 12, 10\)"):
        bundle.check_compatible(make_ensemble(channels=2))


def edit_manifest(bundle_dir, change):
    manifest = json.loads((bundle_dir / "sense.json").read_text())
    change(manifest)
    (bundle_dir / "sense.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(format_version=99), "newer than this SENSE"),
        (lambda m: m.update(format="other"), "not a SENSE bundle"),
        (lambda m: m["models"]["encoder"].update(file="../evil.onnx"), "inside the bundle"),
        (lambda m: m["models"]["encoder"].update(file="/etc/passwd"), "inside the bundle"),
        (lambda m: m["models"]["encoder"].update(file="gone.onnx"), "gone.onnx is missing"),
        (lambda m: m["models"]["encoder"].update(sha256="0" * 64), "does not match its checksum"),
        (lambda m: m["models"].update(painter={}), "unknown model role 'painter'"),
        (lambda m: m["models"]["encoder"].pop("opset"), "'encoder' is malformed"),
        (lambda m: m.pop("normalization"), "malformed"),
        (lambda m: m["input"].update(shape=[2, 12, 10]), "normalisation has 1 channel"),
    ],
)
def test_unusable_bundles_are_refused_with_the_reason(bundle_dir, change, message):
    edit_manifest(bundle_dir, change)
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle_dir)


def test_tampered_model_file_and_broken_json(bundle_dir):
    with open(bundle_dir / "encoder.onnx", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(BundleError, match="encoder.onnx does not match"):
        Bundle.load(bundle_dir)
    assert Bundle.load(bundle_dir, verify_checksums=False).input_shape == SHAPE
    (bundle_dir / "sense.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(bundle_dir)
    with pytest.raises(BundleError, match="no sense.json"):
        Bundle.load(bundle_dir / "nowhere")


def test_linear_test_model_runs_in_onnxruntime(tmp_path):
    import onnxruntime

    weights = make_linear_onnx(tmp_path / "m.onnx", SHAPE, 4)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    fields = np.random.default_rng(0).normal(size=(3, *SHAPE)).astype(np.float32)
    (out,) = session.run(None, {"fields": fields})
    np.testing.assert_allclose(out, fields.reshape(3, -1) @ weights, rtol=1e-4, atol=1e-4)


def test_a_model_file_linked_outside_the_bundle_is_refused(bundle_dir, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    (bundle_dir / "encoder.onnx").rename(outside)
    (bundle_dir / "encoder.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="must stay inside the bundle folder"):
        Bundle.load(bundle_dir)


def test_shipped_bundle_is_chosen_by_shape_then_by_class_names(tmp_path, monkeypatch):
    """Two shipped bundles of one shape (as channels64 and drops64): the class names decide."""
    from helpers import make_runtime_bundle

    from sense_core.bundle import BundleError, find_shipped_bundle

    make_runtime_bundle(tmp_path / "a_channels", class_names=("straight", "meander"))
    make_runtime_bundle(tmp_path / "b_drops", class_names=("splash", "bounce", "crown"))
    make_runtime_bundle(tmp_path / "c_small", shape=(1, 4, 4))
    monkeypatch.setenv("SENSE_MODELS_DIR", str(tmp_path))
    shape = (1, 12, 10)
    assert find_shipped_bundle(shape, ["splash", "bounce", "crown"]).name == "b_drops"
    assert find_shipped_bundle(shape, ["straight", "meander"]).name == "a_channels"
    assert find_shipped_bundle(shape, ["crown", "other"]).name == "b_drops"  # most shared
    assert find_shipped_bundle(shape).name == "a_channels"  # no names: the first by name
    assert find_shipped_bundle((1, 4, 4), ["x"]).name == "c_small"
    with pytest.raises(BundleError, match=r"shape \(C, H, W\) = \(2, 12, 10\)"):
        find_shipped_bundle((2, 12, 10))
