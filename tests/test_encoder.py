"""Encoder trainer: labels and splits, training with the joint loss, resume, export into bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from helpers import write_plain_npz  # noqa: E402

from sense_core.bundle import Bundle, add_model, new_manifest  # noqa: E402
from sense_core.ensemble import Ensemble, NormalizationStats  # noqa: E402
from sense_core.errors import SenseError  # noqa: E402
from sense_core.inference import Encoder  # noqa: E402
from sense_training.encoder import (  # noqa: E402
    EncoderConfig,
    flip_labels,
    load_encoder_checkpoint,
    train_encoder,
    training_parts,
)

torch.set_num_threads(2)
QUIET = {"log": lambda *_: None, "command": ["pytest"]}


def wave_ensemble(count=96, size=16, classes=3, labeled=0.6, seed=0) -> Ensemble:
    """Classes differ by the frequency of a wave pattern; some members unlabelled."""
    rng = np.random.default_rng(seed)
    truth = np.arange(count) % classes
    yy, xx = np.mgrid[:size, :size] / size
    fields = np.stack(
        [np.sin(3 * (k + 1) * xx + rng.uniform(0, 6)) * np.cos(2 * (k + 1) * yy) for k in truth]
    ) + 0.3 * rng.normal(size=(count, size, size))
    labels = np.where(rng.random(count) < labeled, truth, -1)
    return Ensemble(
        fields=fields.astype(np.float32),
        labels=labels,
        class_names=[f"c{i}" for i in range(classes)],
        metadata={"truth": truth},
    )


def tiny(**overrides) -> EncoderConfig:
    options = dict(latent_dim=6, base_channels=8, epochs=2, batch_size=24, seed=3)
    return EncoderConfig.from_dict({**options, **overrides})


def test_train_all_three_losses_and_export_into_a_new_bundle(tmp_path):
    ensemble = wave_ensemble()
    config = tiny(arch="vae", losses="recon,cluster,contrastive", dropout=0.3, warmup_epochs=1)
    result = train_encoder(ensemble, tmp_path / "bundle", config, **QUIET)
    assert result.completed
    bundle = Bundle.load(tmp_path / "bundle")
    entry = bundle.model("encoder")
    assert entry.details["latent_dim"] == 6 and entry.details["exports"] == "mu"
    assert entry.output_name == "latent"
    training = bundle.manifest["training"]["encoder"]
    assert training["config"]["loss"]["terms"] == ["recon", "cluster", "contrastive"]
    assert training["command"] == "pytest"
    assert result.metrics["export"]["max_abs_diff_real"] <= 1e-4
    # every epoch is monitored on train and validation, each term separately
    for record in result.history:
        for key in ("recon", "kl", "cluster", "contrastive", "total"):
            assert f"train_{key}" in record and f"val_{key}" in record
        assert record["cluster_gap"] == pytest.approx(
            record["val_cluster"] - record["train_cluster"]
        )
    assert [r["latent_scale"] for r in result.history] == [0.5, 1.0]
    run = tmp_path / "bundle" / "encoder_run"
    assert (run / "loss_curves.png").stat().st_size > 0
    assert json.loads((run / "metrics.json").read_text())["completed"]
    # the bundle's ONNX encoder (run by the runtime) gives the torch model's mu
    members = ensemble.fields[:10]
    onnx_latent = Encoder(bundle, device="cpu").encode(members)
    with torch.no_grad():
        normalised = torch.from_numpy(bundle.normalization.apply(members))
        torch_latent = result.model.cpu().eval().encode(normalised)[0].numpy()
    np.testing.assert_allclose(onnx_latent, torch_latent, atol=1e-4)
    # same bundle again: refused without overwrite
    with pytest.raises(SenseError, match="already has an encoder"):
        train_encoder(ensemble, tmp_path / "bundle", config, **QUIET)


def test_encoder_joins_a_bundle_that_holds_a_labeler(tmp_path):
    from helpers import make_linear_onnx

    ensemble = wave_ensemble()
    folder = tmp_path / "bundle"
    folder.mkdir()
    stats = NormalizationStats(mean=(0.5,), std=(2.0,), count=1)
    make_linear_onnx(tmp_path / "labeler.onnx", (1, 16, 16), 3)
    manifest = new_manifest((1, 16, 16), stats, ensemble.class_names)
    add_model(
        folder,
        "labeler",
        tmp_path / "labeler.onnx",
        manifest,
        input_name="fields",
        output_name="output",
        opset=17,
    )
    result = train_encoder(ensemble, folder, tiny(epochs=1), **QUIET)
    bundle = Bundle.load(folder)
    assert set(bundle.models) == {"labeler", "encoder", "decoder"}
    assert bundle.normalization == stats  # the bundle's statistics are reused
    assert result.normalization == stats
    wrong = Ensemble(
        fields=np.zeros((6, 1, 8, 8), np.float32),
        labels=[0, 1, 2, 0, 1, 2],
        class_names=ensemble.class_names,
    )
    with pytest.raises(SenseError, match="members"):
        train_encoder(wrong, folder, tiny(epochs=1), overwrite=True, **QUIET)


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    ensemble = wave_ensemble(count=60)
    config = tiny(losses="recon,cluster", dropout=0.2, select="last")
    whole = train_encoder(ensemble, tmp_path / "a", config, export=False, **QUIET)
    first = train_encoder(ensemble, tmp_path / "b", config, export=False, stop_after=1, **QUIET)
    assert not first.completed and len(first.history) == 1
    resumed = train_encoder(ensemble, tmp_path / "b", None, export=False, resume=True, **QUIET)
    assert resumed.completed and len(resumed.history) == 2
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6)
    reloaded = load_encoder_checkpoint(tmp_path / "b" / "encoder_run" / "checkpoint.pt", "last")
    torch.testing.assert_close(reloaded.state_dict(), resumed.model.state_dict())


def test_a_warm_start_continues_from_another_runs_weights(tmp_path):
    """``init_from`` copies a run's weights before the first step (with a learning rate too
    small to move them, the trained parameters are the source's; from random weights they are
    not); a checkpoint of another network is refused, naming the file."""
    ensemble = wave_ensemble(count=60)
    still = dict(epochs=1, select="last", learning_rate=1e-12)
    train_encoder(ensemble, tmp_path / "a", tiny(select="last"), export=False, **QUIET)
    checkpoint = tmp_path / "a" / "encoder_run" / "checkpoint.pt"
    source = dict(load_encoder_checkpoint(checkpoint, "last").named_parameters())
    warm = train_encoder(
        ensemble, tmp_path / "b", tiny(init_from=str(checkpoint), **still), export=False, **QUIET
    )
    cold = train_encoder(ensemble, tmp_path / "c", tiny(**still), export=False, **QUIET)
    for name, value in warm.model.named_parameters():
        torch.testing.assert_close(value.detach(), source[name].detach(), rtol=0, atol=1e-6)
    assert any(
        not torch.allclose(value, source[name], atol=1e-3)
        for name, value in cold.model.named_parameters()
    )
    with pytest.raises(SenseError, match="checkpoint.pt: its encoder is another network"):
        train_encoder(
            ensemble, tmp_path / "d", tiny(epochs=1, latent_dim=5, init_from=str(checkpoint)),
            export=False, **QUIET,
        )  # fmt: skip


def test_weight_average_is_scored_exported_and_resumed(tmp_path):
    from sklearn.metrics import silhouette_samples

    from sense_training.data import EnsembleDataset
    from sense_training.encoder import encode_dataset

    ensemble = wave_ensemble(count=60)
    config = tiny(losses="recon,cluster", dropout=0.2, select="last", ema_decay=0.9)
    whole = train_encoder(ensemble, tmp_path / "a", config, **QUIET)
    train_encoder(ensemble, tmp_path / "b", config, export=False, stop_after=1, **QUIET)
    resumed = train_encoder(ensemble, tmp_path / "b", None, export=False, resume=True, **QUIET)
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6)
    # the returned (and exported) model is the averaged one that the history scored
    val = EnsembleDataset(ensemble, whole.parts.split.validation, whole.normalization)
    encoded = encode_dataset(whole.model, val, torch.device("cpu"))
    samples = silhouette_samples(encoded["code"].astype(np.float64), encoded["labels"])
    assert whole.history.records[-1]["val_cluster"] == pytest.approx(1 - samples.mean(), abs=1e-6)
    onnx_latent = Encoder(Bundle.load(tmp_path / "a"), device="cpu").encode(
        ensemble.fields[whole.parts.split.validation]
    )
    np.testing.assert_allclose(onnx_latent, encoded["code"], atol=1e-4)
    plain = train_encoder(ensemble, tmp_path / "c", tiny(losses="recon,cluster", dropout=0.2,
                          select="last"), export=False, **QUIET)  # fmt: skip
    assert not torch.allclose(plain.model.to_latent[1].weight, whole.model.to_latent[1].weight)
    with pytest.raises(SenseError, match="ema_decay"):
        tiny(ema_decay=1.0)


def test_a_wide_clustering_gap_is_reported_with_the_remedies():
    from sense_training.encoder import GAP_LIMIT, gap_advice

    wide = {"cluster_gap": 0.23, "val_cluster": 0.46, "train_cluster": 0.23}
    advice = gap_advice(wide)
    assert "0.230" in advice and "--augment shift" in advice and "--trim-fraction" in advice
    assert gap_advice({**wide, "cluster_gap": GAP_LIMIT}) is None
    assert gap_advice({"train_recon": 0.2}) is None  # no clustering loss monitored
    assert "sense fit" in advice
    inside_fit = gap_advice(wide, pseudo_labelled=True)  # a fit's encoder has pseudo-labels
    assert "sense fit" not in inside_fit and "--augment shift" in inside_fit


def test_pseudo_labels_train_but_never_validate_or_test():
    ensemble = wave_ensemble(count=90)
    manual = ensemble.labels >= 0
    labels = np.where(manual, ensemble.labels, ensemble.metadata["truth"])
    confidence = np.where(manual, 1.0, np.linspace(0.2, 1.0, len(labels)))
    pseudo = Ensemble(
        fields=ensemble.fields,
        labels=labels,
        class_names=ensemble.class_names,
        metadata={
            "label_source": np.where(manual, "manual", "pseudo"),
            "confidence": confidence,
        },
    )
    parts = training_parts(pseudo, tiny(losses="recon,cluster", min_confidence=0.5))
    held_out = set(parts.split.validation) | set(parts.split.test)
    assert held_out <= set(np.flatnonzero(manual))
    assert not held_out & set(parts.train)
    used_pseudo = (~manual) & (parts.labels >= 0)
    assert used_pseudo.any()
    assert (confidence[used_pseudo] >= 0.5).all()
    assert not ((~manual) & (confidence < 0.5) & (parts.labels >= 0)).any()
    assert parts.counts["train_pseudo"] == int(used_pseudo.sum())


def test_gap_compares_hand_labeled_training_members_with_validation(tmp_path):
    """train_cluster is scored on the hand-labeled training members, not the pseudo-labelled."""
    from sklearn.metrics import silhouette_samples

    from sense_training.data import EnsembleDataset
    from sense_training.encoder import encode_dataset, monitor_pool

    ensemble = wave_ensemble(count=90)
    manual = ensemble.labels >= 0
    pseudo = Ensemble(
        fields=ensemble.fields,
        labels=np.where(manual, ensemble.labels, ensemble.metadata["truth"]),
        class_names=ensemble.class_names,
        metadata={"label_source": np.where(manual, "manual", "pseudo")},
    )
    config = tiny(losses="recon,cluster", select="last")
    result = train_encoder(pseudo, tmp_path / "b", config, export=False, **QUIET)
    parts = result.parts
    assert parts.counts["train_pseudo"] > 0
    assert result.metrics["monitor"] == {"members": len(parts.split.train), "labels": "hand"}
    hand = EnsembleDataset(pseudo, np.sort(parts.split.train), result.normalization)
    encoded = encode_dataset(result.model, hand, torch.device("cpu"))
    samples = silhouette_samples(encoded["code"].astype(np.float64), encoded["labels"])
    assert result.history.records[-1]["train_cluster"] == pytest.approx(1 - samples.mean(), 1e-6)
    # hand labels of one class only: every labelled training member is monitored
    one_class = parts.labels.copy()
    one_class[parts.split.train] = 0
    kind, pool = monitor_pool(parts, one_class[parts.train])
    assert kind == "all" and len(pool) == int(np.sum(one_class[parts.train] >= 0))


def test_flip_labels_flips_the_asked_fraction_to_other_classes():
    labels = np.repeat(np.arange(4), 50)
    eligible = np.ones(200, bool)
    flipped = flip_labels(labels, eligible, 0.3, 4, seed=1)
    changed = flipped != labels
    assert changed.sum() == 60
    assert (flipped >= 0).all() and (flipped < 4).all()
    np.testing.assert_array_equal(flip_labels(labels, eligible, 0.3, 4, seed=1), flipped)


def test_configuration_errors():
    with pytest.raises(SenseError, match="not understood"):
        EncoderConfig.from_dict({"losses": "recon,magic"})
    with pytest.raises(SenseError, match="architecture"):
        EncoderConfig.from_dict({"arch": "unet"})
    with pytest.raises(SenseError, match="select"):
        EncoderConfig.from_dict({"select": "median"})


def test_train_encoder_and_evaluate_commands(tmp_path):
    from helpers import run_sense

    data = tmp_path / "waves.npz"
    ensemble = wave_ensemble(count=90)
    write_plain_npz(data, ensemble)
    bundle = tmp_path / "bundle"
    run_sense(
        "train-encoder",
        "--data",
        str(data),
        "--bundle",
        str(bundle),
        "--arch",
        "ae",
        "--latent",
        "4",
        "--loss",
        "recon,contrastive",
        "--epochs",
        "1",
        "--batch-size",
        "24",
        "--contrastive",
        "supcon",
    )
    manifest = Bundle.load(bundle).manifest
    assert manifest["training"]["encoder"]["command"].startswith("sense train-encoder")
    assert manifest["training"]["encoder"]["config"]["loss"]["contrastive"] == "supcon"
    report = tmp_path / "report"
    run_sense(
        "evaluate",
        "--data",
        str(data),
        "--bundle",
        f"mine={bundle}",
        "--out",
        str(report),
        "--seeds",
        "0",
        "--baselines",
        "pca_raw",
        "--projection",
        "pca",
    )
    rows = json.loads((report / "evaluation.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["mine", "pca_raw"]
    failed = run_sense(
        "train-encoder",
        "--data",
        str(data),
        "--bundle",
        str(bundle),
        "--loss",
        "recon,magic",
        check=False,
    )
    assert failed.returncode == 2 and "not understood" in failed.stderr


def test_fit_runs_labeler_pseudo_labels_encoder_and_evaluation(tmp_path, monkeypatch):
    """The orchestration of `sense fit`; the labeler's training is replaced by a linear ONNX
    labeler (the real one is tested in test_labeler.py and takes minutes here)."""
    from helpers import make_linear_onnx

    from sense_core.cli import main
    from sense_training import labeler

    def fake_train_labeler(store, out, config, **_):
        onnx_file = tmp_path / "linear.onnx"
        make_linear_onnx(onnx_file, store.member_shape, len(store.class_names))
        stats = NormalizationStats.from_store(store)
        manifest = new_manifest(store.member_shape, stats, store.class_names)
        bundle = add_model(
            out, "labeler", onnx_file, manifest, input_name="fields", output_name="output", opset=17
        )
        return labeler.LabelerResult(bundle, {}, tmp_path, None, True)

    monkeypatch.setattr(labeler, "train_labeler", fake_train_labeler)
    ensemble = wave_ensemble(count=72, labeled=0.5)
    data = tmp_path / "waves.npz"
    write_plain_npz(data, ensemble)
    out = tmp_path / "bundle"
    code = main(
        [
            "fit",
            "--data",
            str(data),
            "--out",
            str(out),
            "--labeler-method",
            "cnn",
            "--epochs",
            "1",
            "--latent",
            "4",
            "--batch-size",
            "24",
            "--seeds",
            "0",
            "--projection",
            "pca",
            "--baselines",
            "none",
            "--min-confidence",
            "0",
            "--no-projector",  # tests/test_fit.py covers the projector stage
        ]
    )
    assert code == 0
    bundle = Bundle.load(out)
    assert set(bundle.models) == {"labeler", "encoder", "decoder"}
    members = bundle.manifest["training"]["encoder"]["metrics"]["members"]
    assert members["train_pseudo"] == int(np.sum(ensemble.labels < 0))
    assert (out / "evaluation" / "evaluation.md").exists()


def test_memory_bank_and_silhouette_target_train_resume_and_monitor_the_plain_loss(tmp_path):
    from sklearn.metrics import silhouette_samples

    from sense_training.data import EnsembleDataset
    from sense_training.encoder import encode_dataset

    ensemble = wave_ensemble(count=60)
    config = tiny(
        losses="recon,cluster", dropout=0.2, select="last", memory_size=16, silhouette_target=0.4
    )
    whole = train_encoder(ensemble, tmp_path / "a", config, export=False, **QUIET)
    first = train_encoder(ensemble, tmp_path / "b", config, export=False, stop_after=1, **QUIET)
    resumed = train_encoder(ensemble, tmp_path / "b", None, export=False, resume=True, **QUIET)
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6)
    assert first.metrics["epochs_run"] == 1
    # the monitored "cluster" stays 1 - mean silhouette; the trained hinge is reported beside it
    val = EnsembleDataset(ensemble, whole.parts.split.validation, whole.normalization)
    encoded = encode_dataset(whole.model, val, torch.device("cpu"))
    samples = silhouette_samples(encoded["code"].astype(np.float64), encoded["labels"])
    last = whole.history.records[-1]
    assert last["val_cluster"] == pytest.approx(1 - samples.mean(), abs=1e-6)
    assert last["val_cluster_objective"] == pytest.approx(
        np.maximum(0, 0.4 - samples).mean(), abs=1e-6
    )
    assert last["val_total"] == pytest.approx(last["val_recon"] + last["val_cluster_objective"])
    assert last["cluster_gap"] == pytest.approx(last["val_cluster"] - last["train_cluster"])


def test_remedy_options_reach_the_encoder_configuration():
    import argparse

    from sense_core.options import config_from_args
    from sense_training.cli import add_parser
    from sense_training.config import EncoderConfig as Config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        "train-encoder --data d.npz --bundle b --loss recon,cluster --trim-fraction 0.5 "
        "--silhouette-target 0.8 --memory-size 256 --trim-warmup-epochs 3".split()
    )
    config = config_from_args(Config(), args)
    assert config.trim_warmup_epochs == 3
    loss = config.loss
    assert (loss.trim_fraction, loss.silhouette_target, loss.memory_size) == (0.5, 0.8, 256)
    with pytest.raises(SenseError, match="trim_fraction"):
        EncoderConfig.from_dict({"losses": "recon,cluster", "trim_fraction": 1.0})


def test_trim_schedule_ramps_like_co_teaching_and_is_recorded(tmp_path):
    from sense_training.encoder import trim_schedule

    config = tiny(losses="recon,cluster", trim_fraction=0.5, trim_warmup_epochs=4)
    assert [trim_schedule(e, config) for e in range(6)] == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    assert trim_schedule(0, tiny(losses="recon,cluster", trim_fraction=0.3)) == 0.3
    with pytest.raises(SenseError, match="trim_warmup_epochs"):
        tiny(trim_warmup_epochs=-1)
    run = train_encoder(
        wave_ensemble(count=60),
        tmp_path / "run",
        tiny(losses="recon,cluster", trim_fraction=0.5, trim_warmup_epochs=2),
        export=False,
        **QUIET,
    )
    assert [r["trim_fraction"] for r in run.history.records] == [0.0, 0.25]
