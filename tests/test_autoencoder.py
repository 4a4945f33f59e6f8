"""Convolutional AE / β-VAE: shapes, size adaptation, switches, determinism and ONNX parity."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from sense_core.errors import SenseError  # noqa: E402
from sense_training.models.autoencoder import (  # noqa: E402
    AutoencoderConfig,
    InputAdapter,
    LatentEncoder,
    build_autoencoder,
    working_geometry,
)

torch.set_num_threads(2)


@pytest.mark.parametrize("arch", ["ae", "vae"])
@pytest.mark.parametrize("shape", [(1, 32, 32), (2, 64, 64), (1, 16, 16), (1, 20, 12)])
def test_shapes_for_working_and_other_sizes(arch, shape):
    model = build_autoencoder(AutoencoderConfig(shape, arch=arch, latent_dim=6))
    x = torch.randn(3, *shape)
    out = model(x)
    assert out["reconstruction"].shape == x.shape
    assert out["code"].shape == (3, 6)
    assert ("logvar" in out) == (arch == "vae")


@pytest.mark.parametrize("arch", ["ae", "vae"])
def test_reconstruct_decodes_only_the_first_members(arch):
    """The instance term's second views are encoded, not decoded: the codes of the whole batch
    and the reconstructions of its first members are those of a full forward pass."""
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig((1, 32, 32), arch=arch, latent_dim=5)).eval()
    x = torch.randn(6, 1, 32, 32)
    full, part = model(x), model(x, reconstruct=2)
    assert part["reconstruction"].shape == (2, 1, 32, 32)
    assert torch.allclose(part["reconstruction"], full["reconstruction"][:2], atol=1e-6)
    assert torch.equal(part["code"], full["code"])


@pytest.mark.parametrize(
    ("hw", "size", "resized"),
    [
        ((32, 32), 32, None),
        ((16, 16), 32, None),
        ((64, 64), 64, None),
        ((65, 40), 128, None),
        ((256, 256), 256, None),
        ((512, 300), 256, (256, 150)),
    ],
)
def test_working_geometry(hw, size, resized):
    assert working_geometry(*hw) == (size, resized)


def test_padding_round_trip_is_exact_and_resampling_keeps_shape():
    x = torch.randn(2, 1, 20, 12)
    adapter = InputAdapter(20, 12)
    working = adapter.to_working(x)
    assert working.shape == (2, 1, 32, 32)
    assert torch.equal(adapter.from_working(working), x)
    assert float(working.abs().sum()) == pytest.approx(float(x.abs().sum()), rel=1e-6)
    big = InputAdapter(300, 280)
    assert big.to_working(torch.randn(1, 1, 300, 280)).shape == (1, 1, 256, 256)
    assert big.from_working(torch.randn(1, 1, 256, 256)).shape == (1, 1, 300, 280)


def test_vae_samples_in_training_and_returns_mu_in_evaluation():
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig((1, 32, 32), arch="vae", latent_dim=4))
    x = torch.randn(4, 1, 32, 32)
    model.train()
    out = model(x)
    assert not torch.allclose(out["z"], out["mu"])
    model.eval()
    out = model(x)
    assert torch.equal(out["z"], out["mu"])
    assert torch.equal(LatentEncoder(model)(x), out["mu"])


def test_dropout_and_batch_norm_switches():
    with_dropout = build_autoencoder(AutoencoderConfig((1, 32, 32), dropout=0.4))
    plain = build_autoencoder(AutoencoderConfig((1, 32, 32), batch_norm=False))
    kinds = {type(m).__name__ for m in with_dropout.modules()}
    assert {"Dropout", "BatchNorm2d"} <= kinds
    kinds = {type(m).__name__ for m in plain.modules()}
    assert "Dropout" not in kinds and "BatchNorm2d" not in kinds
    x = torch.randn(2, 1, 32, 32)
    with_dropout.eval()
    assert torch.equal(with_dropout(x)["code"], with_dropout(x)["code"])  # deterministic in eval


def test_config_round_trip_and_errors():
    config = AutoencoderConfig((1, 64, 64), arch="vae", latent_dim=256, dropout=0.3)
    assert AutoencoderConfig.from_dict(config.to_dict()) == config
    model = build_autoencoder(config.to_dict())
    assert model.latent_dim == 256 and model.input_dim == 4096
    with pytest.raises(SenseError, match="architecture"):
        AutoencoderConfig((1, 32, 32), arch="gan")
    with pytest.raises(SenseError, match="dropout"):
        AutoencoderConfig((1, 32, 32), dropout=1.0)
    with pytest.raises(SenseError, match="shape"):
        model(torch.randn(1, 1, 32, 32))


def test_one_training_step_reduces_reconstruction_error():
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig((1, 16, 16), latent_dim=8, base_channels=8))
    x = torch.randn(8, 1, 16, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    errors = []
    for _ in range(15):
        loss = torch.nn.functional.mse_loss(model(x)["reconstruction"], x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(float(loss.detach()))
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("arch", ["ae", "vae"])
def test_onnx_export_of_the_encoder_matches_torch(tmp_path, arch):
    pytest.importorskip("onnxruntime")
    from sense_training.export import export_onnx

    torch.manual_seed(1)
    model = build_autoencoder(AutoencoderConfig((1, 20, 12), arch=arch, latent_dim=5, dropout=0.3))
    model.train()
    model(torch.randn(8, 1, 20, 12))  # move batch-norm statistics away from the defaults
    model.eval()
    report = export_onnx(
        LatentEncoder(model),
        torch.randn(2, 1, 20, 12),
        tmp_path / "encoder.onnx",
        output_name="latent",
        real_inputs=torch.randn(5, 1, 20, 12),
    )
    assert report.output_shape == [5]
    assert report.max_abs_diff_random <= 1e-4 and report.max_abs_diff_real <= 1e-4
    assert report.dynamic_batch
