"""Training configurations: nested, torch-free dataclasses that read the flat form of older
checkpoints, bundles and experiment files, refuse unknown keys and validate their values."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from sense_core.errors import SenseError
from sense_training.config import (
    EncoderConfig,
    LabelerConfig,
    LossConfig,
    ProjectorConfig,
    RunConfig,
)

# what EncoderConfig.to_dict() wrote before the configurations were nested (bundles, checkpoints)
FLAT_ENCODER = {
    "arch": "vae", "latent_dim": 8, "dropout": 0.3, "batch_norm": False, "base_channels": 16,
    "losses": ["recon", "cluster"], "beta": 2.0, "cluster_weight": 0.5, "contrastive_weight": 1.0,
    "contrastive": "supcon", "margin": 1.0, "temperature": 0.2, "soft_memberships": True,
    "confidence_weights": True, "silhouette_target": 0.8, "memory_size": 64,
    "trim_fraction": 0.3, "trim_warmup_epochs": 2, "min_confidence": 0.5, "label_noise": 0.1,
    "warmup_epochs": 3, "epochs": 12, "batch_size": 32, "learning_rate": 5e-4,
    "weight_decay": 1e-5, "ema_decay": 0.9, "patience": 4, "select": "last",
    "augment": "shift", "fractions": [0.6, 0.2, 0.2], "split_seed": 3, "seed": 7, "threads": 1,
    "device": "cpu", "eval_batch_size": 128, "monitor_members": 100,
}  # fmt: skip


def test_flat_and_nested_forms_round_trip():
    config = EncoderConfig.from_dict(FLAT_ENCODER)
    assert config.model.arch == "vae" and config.model.latent_dim == 8
    assert config.loss.terms == ("recon", "cluster") and config.loss.memory_size == 64
    assert config.run.epochs == 12 and config.run.learning_rate == 5e-4
    assert config.split.fractions == (0.6, 0.2, 0.2) and config.select == "last"
    nested = config.to_dict()
    assert nested["loss"]["terms"] == ["recon", "cluster"] and nested["run"]["seed"] == 7
    assert EncoderConfig.from_dict(nested) == config
    flat = config.flat()
    assert {k: flat[k if k != "losses" else "terms"] for k in FLAT_ENCODER} == {
        **FLAT_ENCODER,
        "fractions": [0.6, 0.2, 0.2],
    }
    labeler = LabelerConfig.from_dict(
        {"epochs": 2, "vector_pairs": [[0, 1]], "fractions": "0.5,0.25,0.25"}
    )
    assert labeler.run.epochs == 2 and labeler.vector_pairs == [[0, 1]]
    assert labeler.split.fractions == (0.5, 0.25, 0.25)
    assert LabelerConfig.from_dict(labeler.to_dict()) == labeler


def test_defaults_are_written_once_per_trainer():
    assert LabelerConfig().run == RunConfig(
        epochs=30, batch_size=32, learning_rate=2e-3, weight_decay=0.05, patience=6, threads=1,
        eval_batch_size=128,
    )  # fmt: skip
    encoder = EncoderConfig()
    assert (encoder.run.batch_size, encoder.run.threads, encoder.run.patience) == (64, 2, 0)
    assert encoder.run.min_delta == LabelerConfig().run.min_delta == 1e-4
    assert EncoderConfig.from_dict({}) == encoder


def test_updated_takes_flat_or_nested_values_and_keeps_the_rest():
    base = EncoderConfig.from_dict({"latent_dim": 4, "epochs": 3})
    changed = base.updated({"epochs": 5, "loss": {"terms": "recon,contrastive"}}, seed=2)
    assert (changed.run.epochs, changed.run.seed, changed.model.latent_dim) == (5, 2, 4)
    assert changed.loss.terms == ("recon", "contrastive")
    assert base.run.epochs == 3  # a copy


def test_unknown_keys_and_invalid_values_are_refused_by_name():
    with pytest.raises(SenseError, match="unknown EncoderConfig option.*latnet_dim"):
        EncoderConfig.from_dict({"latnet_dim": 3})
    with pytest.raises(SenseError, match="unknown LabelerConfig option.*losses"):
        LabelerConfig.from_dict({"losses": "recon"})
    with pytest.raises(SenseError, match="not understood"):
        EncoderConfig.from_dict({"losses": "recon,magic"})
    with pytest.raises(SenseError, match="fractions"):
        EncoderConfig.from_dict({"fractions": [0.5, 0.5]})
    with pytest.raises(SenseError, match="device"):
        LabelerConfig.from_dict({"device": "tpu"})
    with pytest.raises(SenseError, match="min_delta"):
        RunConfig(min_delta=-1)
    with pytest.raises(SenseError, match="trim_fraction"):
        LossConfig(trim_fraction=1.0)
    with pytest.raises(SenseError, match="hidden"):
        ProjectorConfig(hidden=(0,))


def test_every_field_carries_its_help_and_the_module_is_torch_free():
    for kind in (EncoderConfig, LabelerConfig, ProjectorConfig):
        for section in (kind, *kind.sections().values()):
            for item in dataclasses.fields(section):
                assert item.metadata.get("help"), f"{section.__name__}.{item.name}"
    flags = {f.name: f.metadata.get("flag") for f in dataclasses.fields(RunConfig)}
    assert flags["learning_rate"] == "--lr"
    code = "import sys, sense_training.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
