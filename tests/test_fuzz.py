"""Property-based tests: whatever bytes or JSON a user's files hold, SENSE's readers either
read them or raise their own clear error (EnsembleError / BundleError), never anything else."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from helpers import make_ensemble, make_linear_onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sense_core.bundle import Bundle, BundleError, add_model, new_manifest
from sense_core.ensemble import NormalizationStats
from sense_core.errors import EnsembleError
from sense_core.io import open_ensemble, read_ensemble, read_member_file, write_ensemble

FUZZ = settings(
    max_examples=int(os.environ.get("SENSE_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(text=st.text(max_size=300))
def test_any_labels_csv_is_read_or_rejected_clearly(tmp_path, text):
    folder = tmp_path / "f"
    if not folder.exists():
        write_ensemble(make_ensemble(count=4), folder, member_format="npy")
        (folder / "ensemble.json").unlink()
    (folder / "labels.csv").write_text(text, encoding="utf-8")
    try:
        source = open_ensemble(folder)
    except EnsembleError as error:
        assert "labels.csv" in str(error)
        return
    assert len(source.labels) == 4
    assert ((source.labels >= -1) & (source.labels < max(len(source.class_names), 1))).all()


label_rows = st.lists(
    st.tuples(
        st.sampled_from(["run0", "run1", "run2", "run3", "ghost", "", " run1 "]),
        st.sampled_from(["", "-1", "0", "2", "7", "straight", "braided", "x y", '"q,"'])
        | st.text(max_size=5),
    ),
    max_size=8,
)


@FUZZ
@given(rows=label_rows)
def test_structured_labels_csv_is_read_or_rejected_clearly(tmp_path, rows):
    text = "member_id,label\n" + "".join(f"{member},{label}\n" for member, label in rows)
    test_any_labels_csv_is_read_or_rejected_clearly.hypothesis.inner_test(tmp_path, text)


@FUZZ
@given(data=st.data())
def test_damaged_npz_is_read_or_rejected_clearly(tmp_path, data):
    original = tmp_path / "ok.npz"
    if not original.exists():
        write_ensemble(make_ensemble(count=6), original)
    blob = bytearray(original.read_bytes())
    cut = data.draw(st.integers(min_value=0, max_value=len(blob)))
    flips = data.draw(st.lists(st.integers(0, len(blob) - 1), max_size=8))
    for position in flips:
        blob[position] ^= 0xFF
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(blob[:cut] if cut < len(blob) else blob))
    try:
        ensemble = read_ensemble(damaged)
    except EnsembleError as error:
        assert "damaged.npz" in str(error)
        return
    assert ensemble.fields.shape == (6, 1, 12, 10)


def _member_files(folder) -> dict[str, bytes]:
    """One valid member of each format, as bytes (written once per test folder)."""
    from PIL import Image

    from sense_core.io.vti import member_to_image, write_vti

    folder.mkdir(exist_ok=True)
    field = np.arange(48, dtype=np.float32).reshape(1, 6, 8)
    np.save(folder / "m.npy", field)
    Image.fromarray(field[0].astype(np.uint8)).save(folder / "m.png")
    write_vti(folder / "m.vti", member_to_image(field))
    return {suffix: (folder / f"m{suffix}").read_bytes() for suffix in (".npy", ".png", ".vti")}


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".npy", ".png", ".vti"]))
def test_damaged_member_files_are_read_or_rejected_clearly(tmp_path, data, suffix):
    blob = bytearray(_member_files(tmp_path / "valid")[suffix])
    cut = data.draw(st.integers(min_value=0, max_value=len(blob)))
    for position in data.draw(st.lists(st.integers(0, len(blob) - 1), max_size=6)):
        blob[position] = data.draw(st.integers(0, 255))
    damaged = tmp_path / f"damaged{suffix}"
    damaged.write_bytes(bytes(blob[:cut]))
    try:
        member = read_member_file(damaged, nan_policy="fill")
    except EnsembleError as error:
        assert f"damaged{suffix}" in str(error)
        return
    assert member.dtype == np.float32 and member.ndim == 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    path=st.lists(
        st.sampled_from(
            [
                "input",
                "models",
                "encoder",
                "normalization",
                "shape",
                "file",
                "mean",
                "std",
                "class_names",
            ]
        ),
        min_size=1,
        max_size=3,
    ),
    value=json_values,
)
def test_any_edit_of_sense_json_is_loaded_or_rejected_clearly(tmp_path, path, value):
    bundle = tmp_path / "bundle"
    if not bundle.exists():
        make_linear_onnx(tmp_path / "e.onnx", (1, 4, 4), 2)
        manifest = new_manifest((1, 4, 4), NormalizationStats((0.0,), (1.0,), 1), ["a", "b"])
        add_model(
            bundle,
            "encoder",
            tmp_path / "e.onnx",
            manifest,
            input_name="fields",
            output_name="output",
            opset=17,
        )
        shutil.copy(bundle / "sense.json", tmp_path / "pristine.json")
    manifest = json.loads((tmp_path / "pristine.json").read_text())
    node = manifest
    for key in path[:-1]:
        if not isinstance(node, dict):
            break
        node = node.setdefault(key, {})
    if isinstance(node, dict):
        node[path[-1]] = value
    (bundle / "sense.json").write_text(json.dumps(manifest))
    try:
        loaded = Bundle.load(bundle)
    except BundleError:
        return
    assert len(loaded.input_shape) == 3
    assert all(np.isfinite(loaded.normalization.mean))
