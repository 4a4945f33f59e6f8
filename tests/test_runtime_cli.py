"""``sense embed`` / ``project`` / ``warmup`` round trips, bundle descriptions, outputs and their
provenance, clear errors, and the runtime without torch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, make_ensemble, make_runtime_bundle, mlp_reference, run_sense

from sense_core.bundle import describe_bundle, print_bundle_summary
from sense_core.embedding import embed_ensemble, read_embedding, reproject, write_outputs
from sense_core.errors import SenseError
from sense_core.io import write_ensemble
from sense_core.projection import ProjectionOptions


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime_cli")
    ensemble = make_ensemble(count=60)
    write_ensemble(ensemble, root / "ensemble.npz")
    make_runtime_bundle(root / "full", labeler=True, projector=True)
    weights = make_runtime_bundle(root / "encoder_only", labeler=False)
    return root, ensemble, weights


def test_embed_round_trip_with_labeler_and_projector(workspace):
    root, ensemble, _ = workspace
    result = run_sense(
        "embed", str(root / "ensemble.npz"), str(root / "full"), "--out", str(root / "out_full")
    )
    assert "CPUExecutionProvider" in result.stdout
    assert "projection: projector" in result.stdout
    out = root / "out_full"
    assert {p.name for p in out.iterdir()} == {
        "embedding.npz",
        "embedding.csv",
        "scatter.png",
        "report.md",
    }
    embedding = read_embedding(out / "embedding.npz")
    assert embedding.member_ids == ensemble.member_ids
    manual = ensemble.labels >= 0
    np.testing.assert_array_equal(embedding.labels[manual], ensemble.labels[manual])
    assert set(embedding.label_source[manual]) == {"manual"}
    assert set(embedding.label_source[~manual]) == {"predicted"}
    np.testing.assert_array_equal(embedding.labels[~manual], embedding.predicted_labels[~manual])
    assert np.all(embedding.confidence[manual] == 1.0)
    assert np.all((embedding.confidence[~manual] > 0) & (embedding.confidence[~manual] <= 1))
    prov = embedding.provenance
    assert prov["inference"]["provider"] == "CPUExecutionProvider"
    assert len(prov["bundle"]["checksum"]) == 64
    assert prov["projection"]["method"] == "projector"
    assert {"inference", "projection", "total"} <= set(prov["seconds"])
    assert "silhouette_2d" in prov["metrics"]

    rows = list(csv.DictReader((out / "embedding.csv").open()))
    assert len(rows) == 60 and rows[0]["member_id"] == "run0"
    assert float(rows[3]["x"]) == pytest.approx(float(embedding.xy[3, 0]), rel=1e-6)
    assert rows[1]["class_name"] == ensemble.class_names[ensemble.labels[1]]
    assert "latent_5" in rows[0] and "latent_6" not in rows[0]
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "CPUExecutionProvider" in report and "## Metrics" in report


def test_embed_with_encoder_only_bundle(workspace):
    root, ensemble, weights = workspace
    run_sense(
        "embed",
        str(root / "ensemble.npz"),
        str(root / "encoder_only"),
        "--out",
        str(root / "out_enc"),
        "--projection",
        "pca",
        "--no-plot",
        "--threads",
        "1",
    )
    embedding = read_embedding(root / "out_enc" / "embedding.npz")
    unlabeled = ensemble.labels < 0
    assert np.all(embedding.labels[unlabeled] == -1)
    assert set(embedding.label_source[unlabeled]) == {"none"}
    assert np.isnan(embedding.confidence[unlabeled]).all()
    assert embedding.predicted_labels is None
    expected = ((ensemble.fields - 0.5) / 2.0).reshape(60, -1) @ weights["encoder"]
    np.testing.assert_allclose(embedding.latents, expected, atol=1e-4)
    assert not (root / "out_enc" / "scatter.png").exists()
    row = next(csv.DictReader((root / "out_enc" / "embedding.csv").open()))
    assert row["label"] == "-1" and row["confidence"] == "" and row["class_name"] == ""


def test_outputs_are_not_replaced_without_overwrite(workspace):
    root, _, _ = workspace
    out = root / "out_exists"
    out.mkdir()
    (out / "embedding.csv").write_text("keep me")
    args = [
        "embed",
        str(root / "ensemble.npz"),
        str(root / "encoder_only"),
        "--out",
        str(out),
        "--projection",
        "pca",
    ]
    result = run_sense(*args, check=False)
    assert result.returncode == 2
    assert "embedding.csv already exist (use --overwrite)" in result.stderr
    assert (out / "embedding.csv").read_text() == "keep me"
    run_sense(*args, "--overwrite")
    assert (out / "embedding.csv").read_text().startswith("member_id,")


@pytest.mark.without_cuda("onnxruntime")
def test_clear_errors(workspace, tmp_path):
    root, _, _ = workspace
    cuda = run_sense(
        "embed",
        str(root / "ensemble.npz"),
        str(root / "full"),
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cuda",
        check=False,
    )
    assert cuda.returncode == 2
    assert "sense: error: device 'cuda' requested" in cuda.stderr
    assert "Traceback" not in cuda.stderr
    write_ensemble(make_ensemble(count=6, height=8, width=8), tmp_path / "small.npz")
    shape = run_sense(
        "embed",
        str(tmp_path / "small.npz"),
        str(root / "full"),
        "--out",
        str(tmp_path / "o"),
        check=False,
    )
    assert shape.returncode == 2 and "expects (1, 12, 10)" in shape.stderr
    missing = run_sense(
        "embed",
        str(root / "ensemble.npz"),
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        check=False,
    )
    assert missing.returncode == 2 and "not a SENSE bundle" in missing.stderr
    no_projector = run_sense(
        "embed",
        str(root / "ensemble.npz"),
        str(root / "encoder_only"),
        "--out",
        str(tmp_path / "o"),
        "--projection",
        "projector",
        check=False,
    )
    assert no_projector.returncode == 2 and "no projector model" in no_projector.stderr
    assert not (tmp_path / "o").exists()


def test_project_again_from_a_saved_embedding(workspace):
    root, ensemble, _ = workspace
    embedded = embed_ensemble(
        ensemble, root / "full", projection=ProjectionOptions(method="projector"), metrics=False
    )
    source = write_outputs(embedded, root / "out_for_project", plot=False)["npz"]
    result = run_sense("project", str(source), "--out", str(root / "out_pca"), "--method", "pca")
    assert "projection: pca" in result.stdout
    before, after = read_embedding(source), read_embedding(root / "out_pca" / "embedding.npz")
    np.testing.assert_array_equal(before.latents, after.latents)
    np.testing.assert_array_equal(before.labels, after.labels)
    assert after.provenance["projection"]["method"] == "pca"
    assert after.provenance["reprojected_from"]["method"] == "projector"
    failed = run_sense(
        "project", str(source), "--out", str(root / "o2"), "--method", "projector", check=False
    )
    assert failed.returncode == 2 and "needs --bundle" in failed.stderr


def test_embed_in_process_with_umap_and_reproject_with_the_projector(workspace):
    root, ensemble, _ = workspace
    embedding = embed_ensemble(
        ensemble, root / "full", projection=ProjectionOptions(method="umap", seed=1)
    )
    assert embedding.provenance["projection"]["params"]["knn"] == "exact"
    assert embedding.provenance["projection"]["params"]["seed"] == 1
    from sense_core.bundle import Bundle

    projected = reproject(
        embedding, ProjectionOptions(method="projector"), bundle_folder=root / "full"
    )
    assert Bundle.load(root / "full").model("projector").details["latent_dim"] == 6
    assert projected.xy.shape == (60, 2)
    assert (
        projected.provenance["projection"]["bundle_checksum"]
        == (embedding.provenance["bundle"]["checksum"])
    )
    assert not np.allclose(projected.xy, embedding.xy)
    paths = write_outputs(projected, root / "out_reprojected")
    assert paths["report"].read_text().count("projector") >= 1


def test_projector_output_matches_its_reference(workspace, tmp_path):
    root, ensemble, _ = workspace
    weights = make_runtime_bundle(tmp_path / "b", projector=True)
    embedding = embed_ensemble(
        ensemble, tmp_path / "b", projection=ProjectionOptions(), metrics=False
    )
    np.testing.assert_allclose(
        embedding.xy, mlp_reference(embedding.latents, weights["projector"]), atol=1e-4
    )


def test_describe_bundle(workspace):
    root, _, _ = workspace
    summary = describe_bundle(root / "full")
    assert set(summary["models"]) == {"encoder", "labeler", "projector"}
    assert summary["models"]["encoder"]["input_shape"] == ["batch", 1, 12, 10]
    assert summary["models"]["projector"]["output_shape"] == ["batch", 2]
    assert summary["class_names"] == ["straight", "meander", "braided"]
    json.dumps(summary)
    text = io.StringIO()
    print_bundle_summary(summary, text)
    assert "SENSE model bundle, members 1 channel(s) of 12x10" in text.getvalue()
    assert "projector: projector.onnx" in text.getvalue()
    encoder_only = io.StringIO()
    print_bundle_summary(describe_bundle(root / "encoder_only"), encoder_only)
    assert "no labeler, projector model" in encoder_only.getvalue()
    with pytest.raises(SenseError, match="not a SENSE bundle"):
        describe_bundle(root)


def test_help_texts():
    for command, phrase in (
        ("embed", "execution provider"),
        ("project", "without running the encoder"),
        ("warmup", "NUMBA_CACHE_DIR"),
    ):
        result = run_sense(command, "--help")
        assert phrase in " ".join(result.stdout.split()), command


def test_warmup_command():
    result = run_sense("warmup", "--points", "40", timeout=300)
    assert "fit_seeded" in result.stdout and "numba_cache_dir" in result.stdout


def test_parser_imports_nothing_heavy():
    code = (
        "import sys; from sense_core.cli import build_parser; build_parser();"
        "heavy = [m for m in ('onnxruntime', 'umap', 'sklearn', 'matplotlib', 'numba') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_works_without_torch(workspace, tmp_path):
    """sense_core imports and embeds with torch made unimportable."""
    root, _, _ = workspace
    code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from sense_core.cli import main
status = main(["embed", {str(root / "ensemble.npz")!r}, {str(root / "full")!r},
               "--out", {str(tmp_path / "no_torch")!r}, "--projection", "pca"])
assert "torch" not in sys.modules or sys.modules["torch"] is None
sys.exit(status)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "no_torch" / "embedding.npz").exists()
