"""Unusual members (sense_core.unusual): the score functions on constructed latents, the
decoder exported with the encoder, and planted members of another generator ranking at the top
(through embed_ensemble, embedding.csv/.npz, the ParaView map's point arrays, `sense unusual`)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from helpers import make_ensemble, make_runtime_bundle

from sense_core.bundle import MANIFEST, Bundle, manifest_text, read_manifest
from sense_core.embedding import embed_ensemble, read_embedding, reproject, write_outputs
from sense_core.ensemble import Ensemble
from sense_core.errors import SenseError
from sense_core.projection import ProjectionOptions
from sense_core.unusual import (
    class_prototypes,
    combined_unusualness,
    empirical_p_values,
    most_unusual,
    percentile_ranks,
    prototype_distances,
    score_members,
    unusual_order,
    unusual_ranks,
)

PCA = ProjectionOptions(method="pca")


# --------------------------------------------------------------------------- score functions
def test_percentile_ranks_and_p_values_handle_ties_nan_and_one_value():
    ranks = percentile_ranks(np.array([3.0, 1.0, 2.0, 2.0, np.nan]))
    np.testing.assert_allclose(ranks[:4], [1.0, 0.0, 0.5, 0.5])
    assert np.isnan(ranks[4])
    assert percentile_ranks(np.array([7.0]))[0] == 0.5
    p = empirical_p_values(np.array([10.0, 0.0, 5.0, 1.0]))
    np.testing.assert_allclose(p, [0.25, 1.0, 0.5, 0.75])  # top 1/N, bottom 1


def test_unusualness_is_fishers_combination_of_the_p_values():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    u = combined_unusualness(a, b).astype(np.float64)
    t = -np.log(empirical_p_values(a)) - np.log(empirical_p_values(b))
    np.testing.assert_allclose(u, 1 - np.exp(-t) * (1 + t), atol=1e-6)  # chi2(4) tail at 2T
    np.testing.assert_allclose(combined_unusualness(a), 1 - empirical_p_values(a), atol=1e-6)
    np.testing.assert_allclose(combined_unusualness(a, None), combined_unusualness(a), atol=1e-7)
    assert np.all((u >= 0) & (u <= 1))
    with pytest.raises(SenseError, match="at least one score"):
        combined_unusualness(None)


def test_a_member_at_the_top_of_one_score_outranks_one_a_little_high_in_both():
    # member 0 tops score a and is median in b; member 1 is at the 80th percentile in both:
    # the mean of the percentile ranks would put member 1 first (0.8 > 0.75), Fisher's method
    # puts member 0 first
    a, b = np.arange(100.0), np.arange(100.0)
    a[0], b[0] = 1000.0, 50.5
    a[1], b[1] = 80.5, 80.5
    order = list(unusual_order(a, b))
    assert order.index(0) < order.index(1)
    mean_rank = (percentile_ranks(a) + percentile_ranks(b)) / 2
    assert mean_rank[1] > mean_rank[0]


def test_order_ranks_and_most_unusual_with_missing_scores():
    a = np.array([0.1, 5.0, np.nan, 0.3, 5.0])
    b = np.array([0.2, 1.0, np.nan, 0.25, 0.5])
    order = unusual_order(a, b)
    assert list(order) == [1, 4, 3, 0, 2]  # ties in a split by b; no score: last
    ranks = unusual_ranks(a, b)
    assert list(ranks) == [4, 1, 5, 3, 2]
    assert list(most_unusual(2, a, b)) == [1, 4]
    assert list(most_unusual(10, a, None)) == list(unusual_order(a))
    assert np.isnan(combined_unusualness(a, b)[2])
    with pytest.raises(SenseError, match=">= 0"):
        most_unusual(-1, a)


def _clusters(rng, per_class=60, dim=4):
    """Three classes of latents, each stretched along dimension 0 (variance 9) and tight in the
    others (variance 0.01)."""
    centres = np.array(
        [[0.0] * dim, [0.0, 5.0] + [0.0] * (dim - 2), [0.0, -5.0] + [0.0] * (dim - 2)]
    )
    scale = np.array([3.0] + [0.1] * (dim - 1))
    latents = np.concatenate([c + scale * rng.normal(size=(per_class, dim)) for c in centres])
    labels = np.repeat(np.arange(3), per_class)
    return latents, labels, centres


def test_prototype_distance_is_mahalanobis_to_the_own_class_and_typical_members_score_about_1():
    rng = np.random.default_rng(1)
    latents, labels, centres = _clusters(rng)
    # an odd member of class 0: only 1.0 away from its centre, across the tight direction;
    # inliers lie up to ~9 away along the stretched one
    odd = centres[0] + np.array([0.0, 0.0, 1.0, 0.0])
    latents = np.concatenate([latents, odd[None]])
    labels = np.append(labels, 0)
    distance, prototypes = prototype_distances(latents, labels, None, 3)
    assert int(np.argmax(distance)) == len(latents) - 1
    assert np.linalg.norm(latents[:-1] - centres[labels[:-1]], axis=1).max() > 5.0
    rms = np.sqrt(np.mean(np.square(distance[:-1], dtype=np.float64)))
    assert 0.9 < rms < 1.1  # divided by sqrt(D): typical members ~1
    assert prototypes.sources == ("manual", "manual", "manual")
    np.testing.assert_allclose(prototypes.centres, centres, atol=0.8)
    assert prototypes.describe(["a", "b", "c"])["classes"]["b"] == {"members": 60, "from": "manual"}


def test_prototypes_from_hand_labels_or_predictions_and_members_without_a_class():
    rng = np.random.default_rng(2)
    latents, labels, centres = _clusters(rng)
    source = np.full(len(labels), "predicted")
    source[[0, 1, 2, 60, 61]] = "manual"  # class 0: 3 hand labels; class 1: 2; class 2: none
    latents[[0, 1, 2]] += np.array([6.0, 0, 0, 0])  # the hand-labeled ones of class 0 sit apart
    prototypes = class_prototypes(latents, labels, source, 3)
    assert prototypes.sources == ("manual", "labeled", "labeled")
    assert list(prototypes.members) == [3, 60, 60]
    np.testing.assert_allclose(prototypes.centres[0], latents[[0, 1, 2]].mean(axis=0))
    np.testing.assert_allclose(prototypes.centres[1], latents[labels == 1].mean(axis=0))
    # unlabeled members and a class the prototypes do not know: distance to the nearest one;
    # class 3 of 4 has no member, so no prototype
    unlabeled = np.where(np.arange(len(labels)) % 7 == 0, -1, labels)
    unlabeled[5] = 9
    distance, found = prototype_distances(latents, unlabeled, None, 4)
    every = found.distances(latents)
    assert np.isnan(every[:, 3]).all()
    for member in (0, 7, 5):
        assert distance[member] == pytest.approx(np.nanmin(every[member]), rel=1e-5)
    assert distance[8] == pytest.approx(every[8, unlabeled[8]], rel=1e-5)


def test_without_any_class_one_prototype_of_all_members():
    rng = np.random.default_rng(3)
    latents = rng.normal(size=(200, 3)) * np.array([1.0, 10.0, 0.1])
    latents[0] = [0.0, 0.0, 1.0]  # 10 standard deviations out in the tight direction
    distance, prototypes = prototype_distances(latents, np.full(200, -1), None, 2)
    assert prototypes.sources[0] == "all" and int(np.argmax(distance)) == 0
    assert prototypes.describe(["a", "b"])["classes"] == {
        "(all members)": {"members": 200, "from": "all"}
    }
    # identical latents: plain (zero) distances, no division by a zero covariance
    same, _ = prototype_distances(np.ones((5, 2)), np.array([0, 0, 1, 1, -1]), None, 2)
    np.testing.assert_array_equal(same, 0.0)


def test_score_members_and_its_errors():
    rng = np.random.default_rng(4)
    latents, labels, _ = _clusters(rng, per_class=20)
    recon = rng.uniform(size=len(labels))
    recon[7] = 50.0
    scores = score_members(latents, labels, None, 3, reconstruction_error=recon)
    assert scores.most_unusual(1)[0] == 7 or scores.rank[7] <= 3
    assert scores.describe()["scores"] == ["reconstruction_error", "prototype_distance"]
    only = score_members(latents, labels, None, 3)
    assert only.reconstruction_error is None
    np.testing.assert_allclose(only.unusualness, combined_unusualness(only.prototype_distance))
    with pytest.raises(SenseError, match="3 reconstruction errors for 60 members"):
        score_members(latents, labels, None, 3, reconstruction_error=recon[:3])
    with pytest.raises(SenseError, match="latents"):
        class_prototypes(latents[:, 0], labels)
    with pytest.raises(SenseError, match="finite"):
        class_prototypes(np.full((2, 2), np.nan), np.array([0, 1]))


# --------------------------------------------------------------------------- without a decoder
def test_bundle_without_decoder_embeds_with_a_note_and_sense_unusual_ranks_by_prototype(
    tmp_path, capsys
):
    from sense_core.cli import main
    from sense_core.inference import Decoder
    from sense_core.io import write_ensemble

    ensemble = make_ensemble(count=30)
    make_runtime_bundle(tmp_path / "old", labeler=True)
    embedding = embed_ensemble(ensemble, tmp_path / "old", projection=PCA, metrics=False)
    assert embedding.unusualness is None and embedding.unusual_rank is None
    assert any("no decoder" in note for note in embedding.provenance["notes"])
    with pytest.raises(SenseError, match="the bundle has no decoder"):
        Decoder(Bundle.load(tmp_path / "old"))
    write_ensemble(ensemble, tmp_path / "ens.npz")
    code = main(["unusual", str(tmp_path / "ens.npz"), str(tmp_path / "old"), "--count", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "no decoder" in out and "ranked by prototype distance only" in out
    assert "the 3 most unusual of 30 members" in out


# --------------------------------------------------------------------------- planted outliers
BASE_MEMBERS, PLANTED = 596, 4


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """596 drops members (20 % hand-labeled) with 4 channels members planted at random
    places, and a tiny encoder (latent 6, 6 epochs, one thread) trained on all 600: ~15-25 s."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from sense_core.generators import generate
    from sense_training.encoder import EncoderConfig, train_encoder

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("unusual")
    base = generate("drops", BASE_MEMBERS, size=32, labeled_fraction=0.2, seed=3)
    odd = generate(
        "channels", PLANTED, size=32, labeled_fraction=0.0, seed=103,
        problems=PLANTED, chains_per_problem=1, tempering_levels=1, burn_in=0, thin=1,
    )  # fmt: skip
    fields = np.concatenate([base.fields, odd.fields])
    labels = np.concatenate([base.labels, np.full(PLANTED, -1)])
    order = np.random.default_rng(0).permutation(len(fields))
    ensemble = Ensemble(
        fields=fields[order],
        labels=labels[order],
        class_names=list(base.class_names),
        member_ids=[f"m{i:04d}" for i in range(len(fields))],
    )
    planted_ids = {ensemble.member_ids[i] for i in np.flatnonzero(order >= BASE_MEMBERS)}
    config = EncoderConfig.from_dict(
        dict(latent_dim=6, base_channels=8, epochs=6, batch_size=32, seed=3, threads=1,
             losses="recon,cluster")
    )  # fmt: skip
    result = train_encoder(
        ensemble, root / "bundle", config, log=lambda *_: None, command=["pytest"]
    )
    return root, ensemble, planted_ids, result


def test_planted_members_of_another_generator_rank_in_the_top_percent(planted):
    root, ensemble, planted_ids, result = planted
    bundle = Bundle.load(root / "bundle")
    decoder = bundle.model("decoder")
    assert decoder.details["encoder_sha256"] == bundle.model("encoder").sha256
    assert decoder.details["parity_max_abs_diff"] <= 1e-4
    assert (decoder.input_name, decoder.output_name) == ("latent", "fields")
    assert result.metrics["decoder_export"]["max_abs_diff_real"] <= 1e-4

    embedding = embed_ensemble(ensemble, root / "bundle", projection=PCA, metrics=False)
    count = len(embedding)
    top = {embedding.member_ids[i] for i in np.flatnonzero(embedding.unusual_rank <= count // 100)}
    assert planted_ids <= top, (  # every planted member in the top 1 % (6 of 600)
        sorted(int(embedding.unusual_rank[embedding.member_ids.index(m)]) for m in planted_ids)
    )
    planted_mask = np.isin(embedding.member_ids, sorted(planted_ids))
    # each score on its own also puts them far above the ensemble's median
    for score in (embedding.reconstruction_error, embedding.prototype_distance):
        assert np.all(percentile_ranks(score)[planted_mask] > 0.9)
    assert np.all(embedding.unusualness[planted_mask] > 0.99)
    prov = embedding.provenance
    assert prov["unusual"]["scores"] == ["reconstruction_error", "prototype_distance"]
    assert "decoder" in prov["inference"]["models"] and prov["seconds"]["unusual"] > 0


def test_onnx_decoder_matches_torch_and_gives_the_training_reconstruction_error(planted):
    import torch

    from sense_core.inference import Decoder, Encoder

    root, ensemble, _, result = planted
    bundle = Bundle.load(root / "bundle")
    decoder = Decoder(bundle, device="cpu", batch_size=7)
    latents = Encoder(bundle, device="cpu").encode(ensemble.fields[:20])
    normalised = torch.from_numpy(bundle.normalization.apply(ensemble.fields[:20]))
    with torch.no_grad():
        expected = result.model(normalised)["reconstruction"].numpy()
    for size in (1, 20):  # a batch axis fixed at export would refuse one of them
        np.testing.assert_allclose(decoder.decode(latents[:size]), expected[:size], atol=1e-4)
    errors = decoder.reconstruction_errors(ensemble, latents, indices=np.arange(20))
    np.testing.assert_allclose(
        errors, ((expected - normalised.numpy()) ** 2).reshape(20, -1).mean(1), rtol=1e-4
    )
    stats = bundle.normalization
    np.testing.assert_allclose(
        decoder.decode_raw(latents[:3]),
        decoder.decode(latents[:3]) * stats.std[0] + stats.mean[0],
        rtol=1e-6,
    )
    with pytest.raises(SenseError, match=r"expects \(6,\)"):
        decoder.decode(np.zeros((2, 5), np.float32))
    with pytest.raises(SenseError, match="3 latent vectors for 20 members"):
        decoder.reconstruction_errors(ensemble, latents[:3], indices=np.arange(20))


def test_a_decoder_left_from_another_encoder_is_refused(planted, tmp_path):
    import shutil

    from sense_core.inference import Decoder

    root = planted[0]
    folder = shutil.copytree(root / "bundle", tmp_path / "bundle")
    manifest = read_manifest(folder)
    manifest["models"]["decoder"]["encoder_sha256"] = "0" * 64
    (folder / MANIFEST).write_text(manifest_text(manifest))
    with pytest.raises(SenseError, match="belongs to another encoder"):
        Decoder(Bundle.load(folder))


def test_scores_in_csv_npz_report_map_arrays_and_sense_unusual(planted, tmp_path, capsys):
    from sense_core.cli import main
    from sense_core.io import write_ensemble
    from sense_paraview.vtk_views import embedding_to_polydata

    root, ensemble, planted_ids, _ = planted
    embedding = embed_ensemble(ensemble, root / "bundle", projection=PCA, metrics=False)
    paths = write_outputs(embedding, tmp_path / "out", plot=False)
    with open(paths["csv"], newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    columns = ("reconstruction_error", "prototype_distance", "unusualness", "unusual_rank")
    assert set(columns) <= set(rows[0])
    ranks = [int(row["unusual_rank"]) for row in rows]
    assert sorted(ranks) == list(range(1, len(ensemble) + 1))
    first = rows[ranks.index(1)]
    assert float(first["unusualness"]) == pytest.approx(float(embedding.unusualness.max()), 1e-6)
    back = read_embedding(paths["npz"])
    np.testing.assert_array_equal(back.unusual_rank, embedding.unusual_rank)
    np.testing.assert_array_equal(back.reconstruction_error, embedding.reconstruction_error)
    report = paths["report"].read_text()
    assert "## Most unusual members" in report
    assert all(member in report for member in planted_ids)
    again = reproject(embedding, ProjectionOptions(method="pca", seed=1), metrics=False)
    np.testing.assert_array_equal(again.unusualness, embedding.unusualness)

    points = embedding_to_polydata(embedding).GetPointData()
    for name in columns:
        array = points.GetArray(name)
        assert array is not None and array.GetNumberOfTuples() == len(ensemble), name
    rank = points.GetArray("unusual_rank")
    chosen = [points.GetAbstractArray("member_id").GetValue(i) for i in range(len(ensemble))
              if rank.GetValue(i) <= PLANTED]  # fmt: skip
    assert set(chosen) == planted_ids  # "unusual_rank <= 4" selects them in ParaView

    skipped = embed_ensemble(
        ensemble, root / "bundle", projection=PCA, metrics=False, unusual=False
    )
    assert skipped.unusualness is None and "unusual" not in skipped.provenance

    write_ensemble(ensemble, tmp_path / "ens.npz")
    embed = ["embed", str(tmp_path / "ens.npz"), str(root / "bundle"), "--projection", "pca"]
    assert main([*embed, "--out", str(tmp_path / "plain"), "--no-plot", "--no-unusual"]) == 0
    assert "unusualness" not in (tmp_path / "plain" / "embedding.csv").read_text().split("\n")[0]
    assert "unusual " not in capsys.readouterr().out  # no "unusual" timing either
    out = tmp_path / "unusual.csv"
    argv = ["unusual", str(tmp_path / "ens.npz"), str(root / "bundle"), "--count", "4"]
    assert main([*argv, "--out", str(out), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {row["member_id"] for row in listed["unusual"]} == planted_ids
    assert [row["rank"] for row in listed["unusual"]] == [1, 2, 3, 4]
    assert listed["notes"] == [] and listed["members"] == len(ensemble)
    with open(out, newline="", encoding="utf-8") as stream:
        written = list(csv.DictReader(stream))
    assert [row["member_id"] for row in written] == [r["member_id"] for r in listed["unusual"]]
    assert not math.isnan(float(written[0]["reconstruction_error"]))
    assert main([*argv, "--out", str(out)]) == 2  # exists: needs --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--count", "0"]) == 2


def test_a_failed_decoder_export_keeps_the_encoder_and_drops_a_stale_decoder(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import sense_training.encoder as encoder_module
    from sense_training.encoder import EncoderConfig, train_encoder
    from sense_training.export import ExportError

    ensemble = make_ensemble(count=48, height=16, width=16)
    config = EncoderConfig.from_dict(
        dict(latent_dim=3, base_channels=4, epochs=1, batch_size=16, threads=1, losses="recon")
    )
    quiet = {"log": lambda *_: None, "command": ["pytest"]}
    train_encoder(ensemble, tmp_path / "b", config, **quiet)
    assert "decoder" in Bundle.load(tmp_path / "b").models

    def broken(*_args, **_options):
        raise ExportError("decoder.onnx: ONNX model differs from torch")

    monkeypatch.setattr(encoder_module, "export_decoder", broken)
    notes = []
    result = train_encoder(
        ensemble, tmp_path / "b", config, overwrite=True, log=notes.append, command=["pytest"]
    )
    bundle = Bundle.load(tmp_path / "b")
    assert set(bundle.models) == {"encoder"} and not (tmp_path / "b" / "decoder.onnx").exists()
    assert result.metrics["decoder_export"] == {
        "error": "decoder.onnx: ONNX model differs from torch"
    }
    assert any("no decoder in the bundle" in str(note) for note in notes)
    embedding = embed_ensemble(ensemble, tmp_path / "b", projection=PCA, metrics=False)
    assert embedding.unusualness is None


# --------------------------------------------------------------------------- ParaView
PARAVIEW_UNUSUAL = """
from paraview.simple import *
from sense_paraview import show_linked_layout

ensemble = SENSEEnsembleReader(FileName={npz!r})
linked = show_linked_layout(ensemble, bundle={bundle!r}, Projection="PCA")
display = GetDisplayProperties(linked.embedding, linked.scatter_view)
ColorBy(display, ("POINTS", "unusualness"))
colors = GetColorTransferFunction("unusualness")
colors.ApplyPreset("Viridis (matplotlib)", True)
colors.RescaleTransferFunction(0.0, 1.0)
display.SetScalarBarVisibility(linked.scatter_view, True)
HideScalarBarIfNotNeeded(GetColorTransferFunction("label"), linked.scatter_view)
chosen = linked.select_where("unusual_rank <= {count}")
SaveScreenshot({png!r}, linked.layout, ImageResolution=[1600, 800])
data = linked.embedding.PointData
RESULT = {{
    "chosen": chosen,
    "shown": list(linked.member_view.MemberIds),
    "arrays": [name for name in ("reconstruction_error", "prototype_distance", "unusualness",
                                 "unusual_rank") if data.GetArray(name) is not None],
    "range": list(data["unusualness"].GetRange()),
}}
"""


@pytest.mark.paraview
def test_paraview_map_is_coloured_by_unusualness_and_selects_the_most_unusual(planted, tmp_path):
    """pvbatch: the linked layout's map coloured by unusualness; ``unusual_rank <= 4`` selects
    the planted members and the member view shows them. About 20 s."""
    from helpers import run_paraview_script

    from sense_core.io import write_ensemble

    root, ensemble, planted_ids, _ = planted
    npz = write_ensemble(ensemble, tmp_path / "planted.npz")
    png = tmp_path / "unusual.png"
    script = PARAVIEW_UNUSUAL.format(
        npz=str(npz), bundle=str(root / "bundle"), count=PLANTED, png=str(png)
    )
    result = run_paraview_script(script, tmp_path, program="pvbatch")["result"]
    assert set(result["chosen"]) == planted_ids
    assert set(result["shown"]) == planted_ids
    assert result["arrays"] == [
        "reconstruction_error", "prototype_distance", "unusualness", "unusual_rank"
    ]  # fmt: skip
    assert 0.0 <= result["range"][0] < 0.5 < 0.99 < result["range"][1] <= 1.0
    assert png.stat().st_size > 10_000
