"""`sense fit` end to end (labeler -> pseudo-labels -> encoder -> projector -> evaluation) on a
tiny ensemble, and the projector step on its own (fit_bundle_projector)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_runtime_bundle, write_plain_npz

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("umap")

from sense_core.bundle import Bundle  # noqa: E402
from sense_core.ensemble import Ensemble  # noqa: E402
from sense_core.errors import SenseError  # noqa: E402
from sense_core.inference import Encoder  # noqa: E402
from sense_core.projection import ParametricProjector  # noqa: E402
from sense_training.projector import fit_bundle_projector  # noqa: E402


def blob_ensemble(count: int, shape=(1, 12, 10), classes: int = 3, seed: int = 0) -> Ensemble:
    """Members whose mean level and a gradient differ by class, half of them labelled."""
    rng = np.random.default_rng(seed)
    truth = np.arange(count) % classes
    yy = np.linspace(-1, 1, shape[1])[:, None] * np.ones(shape[2])
    fields = np.stack([(k - 1) * 2.0 + k * yy for k in truth])[:, None]
    fields = fields + 0.4 * rng.normal(size=(count, *shape))
    labels = np.where(np.arange(count) % 2 == 0, truth, -1)
    return Ensemble(
        fields=fields.astype(np.float32),
        labels=labels,
        class_names=[f"c{i}" for i in range(classes)],
    )


def test_fit_bundle_projector_samples_trains_and_exports(tmp_path):
    ensemble = blob_ensemble(300)
    folder = tmp_path / "bundle"
    make_runtime_bundle(folder, shape=(1, 12, 10), latent_dim=6, class_names=("c0", "c1", "c2"))
    indices = np.arange(0, 300, 2)  # 150 "training" members
    logged: list[str] = []
    result = fit_bundle_projector(
        ensemble,
        folder,
        indices,
        max_points=130,
        seed=4,
        hidden=(32, 32),
        epochs=60,
        command="sense fit --test",
        log=logged.append,
    )
    assert len(result.indices) == 130 and np.all(np.diff(result.indices) > 0)
    assert set(result.indices) <= set(indices.tolist())
    assert set(result.seconds) == {"encode", "umap", "train", "export"}
    assert any("k-NN overlap" in line for line in logged)
    record = result.record()
    assert record["points"] == 130 and record["epochs"] == 60
    assert record["umap"]["seed"] == 4 and record["umap"]["knn"] == "exact"

    bundle = Bundle.load(folder)
    entry = bundle.model("projector")
    assert entry.details["latent_dim"] == 6 and entry.details["imitates"] == "umap"
    fidelity = entry.details["fidelity"]
    assert 0.0 <= fidelity["validation"]["knn_overlap"] <= 1.0
    assert fidelity["all"]["trustworthiness_projector"] > 0.5, fidelity
    assert bundle.manifest["training"]["projector"]["command"] == "sense fit --test"
    # the runtime projector over the ONNX encoder reproduces the torch projector
    latents = Encoder(bundle, device="cpu").encode_store(ensemble, indices=result.indices)
    np.testing.assert_allclose(
        ParametricProjector.from_bundle(bundle).transform(latents),
        result.fit.predict(latents),
        atol=1e-4,
    )
    # same seed, same sample
    again = fit_bundle_projector(
        ensemble, folder, indices, max_points=130, seed=4, hidden=(8,), epochs=1, log=str
    )
    np.testing.assert_array_equal(again.indices, result.indices)
    with pytest.raises(SenseError, match="at least 10 training members"):
        fit_bundle_projector(ensemble, folder, indices[:9], log=str)


def test_sense_fit_writes_a_bundle_with_projector_and_a_fit_report(tmp_path, monkeypatch):
    import sys

    from sense_core.cli import main

    ensemble = blob_ensemble(150, shape=(1, 16, 16))
    data = tmp_path / "blobs.npz"
    write_plain_npz(data, ensemble)
    out = tmp_path / "bundle"
    argv = [
        "fit", "--data", str(data), "--out", str(out), "--labeler-method", "cnn",
        "--labeler-epochs", "1",
        "--epochs", "1", "--latent", "4", "--batch-size", "24", "--threads", "1",
        "--seeds", "0", "--projection", "pca", "--baselines", "pca_raw",
        "--projector-points", "120", "--min-confidence", "0",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["sense", *argv])  # the recorded command
    assert main(argv) == 0
    bundle = Bundle.load(out)
    assert set(bundle.models) == {"labeler", "encoder", "decoder", "projector"}
    projector = bundle.model("projector")
    assert projector.details["latent_dim"] == 4
    assert set(projector.details["fidelity"]) >= {"all", "validation"}
    training = bundle.manifest["training"]["projector"]
    assert training["command"].startswith("sense fit --data")
    assert training["config"]["points"] == 120

    report = json.loads((out / "fit_report.json").read_text())
    seconds = report["seconds"]
    for stage in ("labeler", "pseudo_labels", "encoder", "projector", "evaluation", "total"):
        assert seconds[stage] >= 0, stage
    assert seconds["total"] >= sum(seconds[s] for s in ("labeler", "encoder", "projector"))
    assert report["members"] == 150 and report["profile"] == "quick"
    assert report["labeler"]["epochs_run"] == 1
    assert 0.0 <= report["labeler"]["validation_accuracy"] <= 1.0
    assert report["projector"]["points"] == 120
    assert report["projector"]["fidelity"] == projector.details["fidelity"]
    silhouette = report["projector"]["silhouette_2d_test"]
    assert silhouette is None or -1.0 <= silhouette <= 1.0
    assert set(report["silhouette_2d_test"]) == {"sense", "pca_raw"}
    assert report["machine"]["cpus"] >= 1 and len(report["machine"]["load_average_before"]) == 3


def test_sense_fit_skips_the_projector_when_too_few_members_train(tmp_path, monkeypatch, capsys):
    """With fewer than MIN_POINTS training members the bundle gets no projector (and says so),
    and an earlier run's projector is removed; the labeler is replaced by a linear ONNX model
    to keep this fast."""
    from helpers import make_linear_onnx

    from sense_core.bundle import add_model, new_manifest, read_manifest
    from sense_core.cli import main
    from sense_core.ensemble import NormalizationStats
    from sense_training import labeler

    def fake_train_labeler(store, out, config, **_):
        onnx_file = tmp_path / "linear.onnx"
        make_linear_onnx(onnx_file, store.member_shape, len(store.class_names))
        manifest = read_manifest(out) or new_manifest(
            store.member_shape, NormalizationStats.from_store(store), store.class_names
        )
        bundle = add_model(
            out, "labeler", onnx_file, manifest, input_name="fields", output_name="output",
            opset=17, training={"config": {"split": config.split.to_dict()}},
        )  # fmt: skip
        return labeler.LabelerResult(bundle, {}, tmp_path, None, True)

    monkeypatch.setattr(labeler, "train_labeler", fake_train_labeler)
    ensemble = blob_ensemble(16, shape=(1, 12, 12), classes=2)
    data = tmp_path / "few.npz"
    write_plain_npz(data, ensemble, labels=np.arange(16) % 2)  # all hand-labelled
    out = tmp_path / "bundle"
    make_runtime_bundle(out, (1, 12, 12), 3, ("c0", "c1"), labeler=False, projector=True)
    assert (out / "projector.onnx").exists()
    argv = [
        "fit", "--data", str(data), "--out", str(out), "--labeler-method", "cnn",
        "--epochs", "1", "--latent", "3",
        "--batch-size", "8", "--fractions", "0.4,0.2,0.4", "--seeds", "0", "--projection",
        "pca", "--baselines", "none",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "projector skipped: 6 training members" in capsys.readouterr().out
    assert set(Bundle.load(out).models) == {"labeler", "encoder", "decoder"}
    assert not (out / "projector.onnx").exists()
    assert "projector" not in read_manifest(out).get("training", {})
    report = json.loads((out / "fit_report.json").read_text())
    assert report["projector"] is None and "projector" not in report["seconds"]


def test_fit_library_returns_the_report_it_writes(tmp_path):
    """pipeline.fit called directly (no CLI): stages logged, report returned and written."""
    from sense_training.config import EncoderConfig, LabelerConfig
    from sense_training.evaluation import EvaluationConfig
    from sense_training.pipeline import FIT_REPORT, fit

    ensemble = blob_ensemble(120, shape=(1, 16, 16))  # 42 training members: no batch of 1
    logged: list[str] = []
    labeler = LabelerConfig().updated(epochs=1, threads=1)
    encoder = EncoderConfig().updated(
        epochs=1,
        latent_dim=4,
        base_channels=8,
        batch_size=24,
        threads=1,
        losses="recon,cluster",
        min_confidence=0.9,
    )
    report = fit(
        ensemble,
        tmp_path / "bundle",
        labeler=labeler,
        labeler_method="cnn",
        encoder=encoder,
        evaluation=EvaluationConfig(seeds=(0,), projection="pca", baselines=()),
        threshold=0.4,
        projector=False,
        command=["sense", "fit", "--test"],
        log=logged.append,
    )
    assert logged[0] == "[1/4] labeler (quick profile, cnn)"
    assert "[2/4] pseudo-labels (confidence >= 0.4)" in logged
    # the encoder's own, higher threshold is said, with how many pseudo-labels it keeps
    assert any(
        line.startswith("  the encoder trains with the ") and ">= 0.9 (--min-confidence" in line
        for line in logged
    )
    assert any(line.startswith("bundle ") and "ready in" in line for line in logged)
    written = json.loads((tmp_path / "bundle" / FIT_REPORT).read_text())
    assert written == report.to_dict()
    assert list(written) == [
        "command", "profile", "data", "members", "member_shape", "seconds", "machine",
        "labeler", "pseudo_labels", "encoder", "silhouette_2d_test", "projector", "groups",
    ]  # fmt: skip
    assert report.command == "sense fit --test" and report.members == 120
    assert report.projector is None and "projector" not in report.seconds
    assert report.labeler["epochs_run"] == 1 and report.encoder["epochs_run"] == 1
    assert set(report.silhouette_2d_test) == {"sense"}
    manual = int((ensemble.labels >= 0).sum())
    assert report.pseudo_labels["pseudo"] + report.pseudo_labels["none"] == 120 - manual
    assert Bundle.load(tmp_path / "bundle").manifest["training"]["encoder"]["config"]


def test_fit_with_the_latent_labeler_labels_from_the_encoders_latent_space(tmp_path):
    """labeler_method=latent: no CNN; a first encoder on the hand labels and its head give the
    pseudo-labels, the bundle's labeler is a head on the final encoder's latents (input=latent)
    that labels the hidden members well above chance, and the choice is recorded."""
    import onnxruntime

    from sense_core.embedding import embed_ensemble
    from sense_core.projection import ProjectionOptions
    from sense_training.common import load_checkpoint
    from sense_training.config import EncoderConfig
    from sense_training.encoder import training_parts
    from sense_training.evaluation import EvaluationConfig
    from sense_training.heads import LinearHead, fit_candidate
    from sense_training.pipeline import FIT_RUN, HAND_BUNDLE, fit

    ensemble = blob_ensemble(120, shape=(1, 16, 16))
    logged: list[str] = []
    encoder = EncoderConfig().updated(
        epochs=2, latent_dim=4, base_channels=8, batch_size=24, threads=1, losses="recon,cluster",
        instance_views="periodic",
    )  # fmt: skip
    report = fit(
        ensemble,
        tmp_path / "bundle",
        encoder=encoder,
        labeler_method="latent",
        evaluation=EvaluationConfig(seeds=(0,), projection="pca", baselines=()),
        projector=False,
        log=logged.append,
    )
    # views named for a labeler that does not use them: said, not silently ignored
    assert logged[0].startswith("note: the views 'periodic' are used by the ssl labeler")
    assert logged[1] == "[1/4] labeler (quick profile, latent)"
    assert sum(line.startswith("  labeler: ") for line in logged) == 2  # first and final
    # the final encoder fine-tunes the first one (warm start, recorded in its checkpoint)
    first = tmp_path / "bundle" / FIT_RUN / HAND_BUNDLE / "encoder_run" / "checkpoint.pt"
    final = load_checkpoint(tmp_path / "bundle" / "encoder_run" / "checkpoint.pt")
    assert final["config"]["init_from"] == str(first.resolve())
    assert sum("starts from the first encoder's weights" in line for line in logged) == 1
    for folder in (tmp_path / "bundle" / FIT_RUN / HAND_BUNDLE, tmp_path / "bundle"):
        entry = Bundle.load(folder).model("labeler")
        choice = entry.details["choice"]
        assert choice["chosen"] in ("linear", "propagation", "raw_linear")
        # the raw-field classifier only where it beat the latent head on validation labels
        scores = choice["validation_accuracy"]
        on_fields = choice["chosen"] == "raw_linear"
        assert entry.details["input"] == ("fields" if on_fields else "latent")
        assert on_fields == (scores["raw_linear"] > scores["latent"])
        validation = training_parts(ensemble, encoder).split.validation
        margin = round(abs(scores["raw_linear"] - scores["latent"]) * len(validation))
        assert choice["validation_margin_members"] == margin
        assert ("more hand labels may change the choice" in choice["reason"]) == (margin <= 1)
    close = [c for c in (Bundle.load(f).model("labeler").details["choice"] for f in (
        tmp_path / "bundle" / FIT_RUN / HAND_BUNDLE, tmp_path / "bundle"))
        if c["validation_margin_members"] <= 1]  # fmt: skip
    assert sum(line.startswith("  note: the choice of labeler input") for line in logged) == len(
        close
    )
    assert report.labeler["architecture"] in (
        "linear on the raw fields",
        f"latent head ({choice['chosen']})",
    )
    assert report.labeler["validation_accuracy"] > 0.6  # chance is 1/3
    embedding = embed_ensemble(ensemble, tmp_path / "bundle", projection=ProjectionOptions("pca"))
    truth = np.arange(120) % 3
    hidden = ensemble.labels < 0
    assert np.mean(embedding.predicted_labels[hidden] == truth[hidden]) > 0.6
    # the bundle's head is the chosen kind trained again on the training + validation hand
    # labels: refitted here from them, it gives the stored labeler.onnx's logits
    split = training_parts(ensemble, encoder).split
    pool = np.sort(np.concatenate([split.train, split.validation]))
    assert choice["trained_on_hand_labels"] == len(pool) < np.count_nonzero(ensemble.labels >= 0)
    bundle = Bundle.load(tmp_path / "bundle")
    if on_fields:
        inputs = bundle.normalization.apply(ensemble.read_members(np.arange(120))).reshape(120, -1)
        head = LinearHead.fit(inputs[pool], ensemble.labels[pool], 3)
    else:
        inputs = embedding.latents
        labels = np.full(120, -1)
        labels[pool] = ensemble.labels[pool]
        head = fit_candidate(choice["chosen"], inputs, labels, 3)
    session = onnxruntime.InferenceSession(str(bundle.model("labeler").path))
    stored = session.run(None, {session.get_inputs()[0].name: inputs.astype(np.float32)})[0]
    np.testing.assert_allclose(head.logits(inputs), stored, rtol=0, atol=1e-4)


@pytest.mark.parametrize("views", [None, "hflip,noise"])
def test_fit_without_hand_labels_gives_a_bundle_a_map_and_suggested_groups(tmp_path, views):
    """No hand label: an encoder on reconstruction (and the instance term when the ensemble's
    views are named), its projector, a map, and groups (k by the silhouette) that find the
    blobs, with each group's most typical members written out."""
    import csv

    from sklearn.metrics import adjusted_rand_score

    from sense_core.embedding import embed_ensemble
    from sense_training.config import EncoderConfig
    from sense_training.pipeline import fit

    labeled = blob_ensemble(240, shape=(1, 16, 16))
    ensemble = Ensemble(fields=labeled.fields, labels=np.full(240, -1), class_names=())
    logged: list[str] = []
    encoder = EncoderConfig().updated(
        epochs=3, latent_dim=4, base_channels=8, batch_size=24, threads=1, losses="recon,cluster"
    )
    if views:
        encoder = encoder.updated(instance_views=views)
    report = fit(ensemble, tmp_path / "bundle", encoder=encoder, log=logged.append)
    what = f"reconstruction and views ({views})" if views else "reconstruction only"
    assert logged[0] == f"no hand labels: the encoder trains on {what}, not recon,cluster"
    assert "[3/3] suggested groups (k-means of the latents, best silhouette)" in logged
    terms = ["recon", "instance"] if views else ["recon"]
    assert report.labeler == {} and report.encoder["losses"] == terms
    assert report.projector is not None  # 240 members: the bundle maps new members itself
    rows = list(csv.DictReader((tmp_path / "bundle" / "groups.csv").open()))
    assert len(rows) == 240 and {r["member_id"] for r in rows} == set(ensemble.member_ids)
    groups = {r["member_id"]: int(r["group"]) for r in rows}
    found = [groups[m] for m in ensemble.member_ids]
    assert report.groups["k"] == len(set(found)) >= 2
    assert adjusted_rand_score(np.arange(240) % 3, found) > 0.5
    assert [r["rank"] for r in rows if r["group"] == "0"][:2] == ["0", "1"]
    assert (tmp_path / "bundle" / "groups.png").stat().st_size > 1000
    embedding = embed_ensemble(ensemble, tmp_path / "bundle")
    assert embedding.xy.shape == (240, 2) and np.isfinite(embedding.xy).all()


def test_fit_with_too_few_hand_labels_to_evaluate_still_makes_the_bundle(tmp_path):
    """A first full fit of the labeling loop (8 hand labels: one or two test members): the
    evaluation is skipped with a line saying why, and the bundle is complete and labels."""
    from sense_core.embedding import embed_ensemble
    from sense_core.projection import ProjectionOptions
    from sense_training.common import load_checkpoint
    from sense_training.config import EncoderConfig
    from sense_training.pipeline import fit

    blobs = blob_ensemble(90, shape=(1, 16, 16))
    few = np.where(np.arange(90) < 8, np.arange(90) % 3, -1)
    ensemble = Ensemble(fields=blobs.fields, labels=few, class_names=blobs.class_names)
    logged: list[str] = []
    encoder = EncoderConfig().updated(
        epochs=2, latent_dim=4, base_channels=8, batch_size=24, threads=1, losses="recon,cluster"
    )
    report = fit(
        ensemble, tmp_path / "bundle", encoder=encoder, labeler_method="latent",
        warm_start=False, projector=False, log=logged.append,
    )  # fmt: skip
    final = load_checkpoint(tmp_path / "bundle" / "encoder_run" / "checkpoint.pt")
    assert final["config"]["init_from"] == ""  # cold start: random weights
    skipped = [line for line in logged if "evaluation skipped" in line]
    assert len(skipped) == 1 and "hand-labeled test member" in skipped[0]
    assert report.silhouette_2d_test == {}
    assert not (tmp_path / "bundle" / "evaluation").exists()
    embedding = embed_ensemble(ensemble, tmp_path / "bundle", projection=ProjectionOptions("pca"))
    assert embedding.predicted_labels.shape == (90,)


def test_fit_with_a_single_hand_labeled_class_says_what_to_do(tmp_path):
    from sense_training.pipeline import fit

    labeled = blob_ensemble(60, shape=(1, 16, 16))
    ensemble = Ensemble(
        fields=labeled.fields, labels=np.where(np.arange(60) < 10, 1, -1), class_names=("a", "b")
    )
    with pytest.raises(SenseError, match="every hand label is class 'b'.*two classes"):
        fit(ensemble, tmp_path / "bundle", log=lambda line: None)


def test_profiles_are_overrides_of_the_configurations():
    from sense_training.pipeline import PROFILES, profile_configs

    quick = profile_configs("quick")
    assert quick.labeler.run.epochs == PROFILES["quick"]["labeler"]["epochs"]
    assert quick.encoder.loss.terms == ("recon", "cluster")
    assert quick.encoder.model.base_channels == 16 and quick.encoder.run.threads == 1
    assert quick.projector.max_points == 5000
    paper = profile_configs("paper")
    assert paper.encoder.model.arch == "vae" and paper.encoder.model.latent_dim == 256
    with pytest.raises(SenseError, match="profile"):
        profile_configs("slow")


def test_fit_options_follow_the_profile_and_share_run_options():
    from sense_core.cli import build_parser
    from sense_training.cli import fit_configs

    parse = build_parser().parse_args
    base = ["fit", "--data", "d.npz", "--out", "b"]
    labeler, encoder = fit_configs(parse(base))
    assert (labeler.run.epochs, encoder.run.epochs, encoder.model.latent_dim) == (8, 12, 32)
    assert parse(base).labeler_method is None  # latent, or ssl with views: labeler_method_for
    assert not parse(base).cold_start and parse([*base, "--cold-start"]).cold_start
    assert fit_configs(parse([*base, "--init-from", "run/checkpoint.pt"]))[1].init_from == (
        "run/checkpoint.pt"
    )
    args = parse([
        *base, "--profile", "paper", "--seed", "3", "--labeler-threads", "2", "--threads", "1",
        "--labeler-epochs", "2", "--labeler-arch", "tf_efficientnetv2_b1",
        "--fractions", "0.6,0.2,0.2",
    ])  # fmt: skip
    labeler, encoder = fit_configs(args)
    assert (encoder.model.arch, encoder.run.epochs) == ("vae", 100)
    assert (labeler.run.epochs, labeler.architecture) == (2, "tf_efficientnetv2_b1")
    assert labeler.run.seed == encoder.run.seed == 3
    assert (labeler.run.threads, encoder.run.threads) == (2, 1)
    assert labeler.split == encoder.split and encoder.split.fractions == (0.6, 0.2, 0.2)


def test_experiment_with_a_training_seed_axis(tmp_path):
    """train_seeds: every variant once per seed into <out>/<variant>/seed<k>/, one report per
    seed (baselines with the first), mean +- sd per variant over the seeds."""
    import statistics

    from sense_core.bundle import read_manifest
    from sense_training.pipeline import run_experiment

    data = tmp_path / "blobs.npz"
    write_plain_npz(data, blob_ensemble(90, shape=(1, 16, 16)))
    out = tmp_path / "exp"
    spec = {
        "data": str(data), "out": str(out), "seeds": [0], "projection": "pca",
        "baselines": ["pca_raw"], "train_seeds": [0, 1],
        "base": {"epochs": 1, "latent_dim": 4, "base_channels": 8, "batch_size": 24,
                 "threads": 1, "losses": "recon,cluster"},
        "variant": [
            {"name": "plain_ae", "losses": "recon", "train_seeds": [0]},
            {"name": "sense"},
        ],
    }  # fmt: skip
    logged: list[str] = []
    summary = run_experiment(spec, log=logged.append)
    for variant, seeds in (("plain_ae", [0]), ("sense", [0, 1])):
        for seed in seeds:
            manifest = read_manifest(out / variant / f"seed{seed}")
            assert manifest["training"]["encoder"]["config"]["run"]["seed"] == seed
    assert not (out / "plain_ae" / "seed1").exists()
    first = json.loads((out / "seed0" / "summary.json").read_text())
    second = json.loads((out / "seed1" / "summary.json").read_text())
    assert set(first["silhouette_2d_test"]) == {"plain_ae", "sense", "pca_raw"}
    assert set(second["silhouette_2d_test"]) == {"sense"}  # baselines: first seed only
    assert (out / "seed1" / "evaluation.json").exists()
    runs = [first["silhouette_2d_test"]["sense"], second["silhouette_2d_test"]["sense"]]
    sense = summary["silhouette_2d_test"]["sense"]
    assert sense["runs"] == 2 and sense["per_seed"] == {"0": runs[0], "1": runs[1]}
    assert sense["mean"] == pytest.approx(statistics.fmean(runs), abs=1e-4)
    assert sense["sd"] == pytest.approx(statistics.stdev(runs), abs=1e-4)
    assert summary["silhouette_2d_test"]["plain_ae"]["runs"] == 1
    assert summary["pca_raw"] == first["pca_raw"] and summary["best_sense_name"] == "sense"
    assert json.loads((out / "summary.json").read_text())["train_seeds"] == [0, 1]
    # a second run keeps the trained bundles
    logged.clear()
    run_experiment(spec, log=logged.append)
    assert sum("kept" in line for line in logged) == 3


def test_naming_the_ensembles_views_makes_ssl_the_labeler(monkeypatch, tmp_path):
    """``latent`` is the default; with the views of the ensemble's kind named (not the generic
    ones) ``ssl``, the better labeler then; a method given wins. ``sense fit`` and ``sense
    train-version --kind full`` resolve it alike."""
    from sense_core.cli import main
    from sense_core.io import write_ensemble
    from sense_training import pipeline
    from sense_training.pipeline import labeler_method_for

    assert labeler_method_for(None, None) == labeler_method_for(None, "generic") == "latent"
    assert labeler_method_for(None, "noise") == "latent"  # the generic views, spelled out
    assert labeler_method_for(None, "periodic") == labeler_method_for(None, "roll,hflip") == "ssl"
    assert labeler_method_for("latent", "periodic") == "latent"
    assert labeler_method_for("cnn", None) == "cnn"
    with pytest.raises(SenseError, match="not understood"):
        labeler_method_for(None, "spin")

    calls: list[tuple[str, str]] = []

    def fake_fit(store, out, *, encoder, labeler_method, **_):
        calls.append((labeler_method, encoder.loss.instance_views))
        raise SenseError("stopped by the test")

    monkeypatch.setattr(pipeline, "fit", fake_fit)
    data = write_ensemble(blob_ensemble(30, shape=(1, 16, 16)), tmp_path / "e.npz")
    fit = ["fit", "--data", str(data), "--out", str(tmp_path / "b")]
    assert main(fit) == 2
    assert main([*fit, "--instance-views", "periodic"]) == 2
    assert main([*fit, "--instance-views", "periodic", "--labeler-method", "latent"]) == 2
    version = ["train-version", str(data), "--kind", "full"]
    assert main(version) == 2
    assert main([*version, "--instance-views", "lattice"]) == 2
    assert calls == [
        ("latent", "generic"),
        ("ssl", "periodic"),
        ("latent", "periodic"),
        ("latent", "generic"),
        ("ssl", "lattice"),
    ]
