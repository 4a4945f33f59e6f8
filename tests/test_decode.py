"""Decoding a point of the map (issue 19, item 5): interpolated latents, decoded fields, and
the fidelity measure."""

from __future__ import annotations

import numpy as np
import pytest

from sense_core.decode import decode_points, decoding_fidelity, latents_at
from sense_core.errors import SenseError


def test_latents_at_members_midpoints_and_leaving_one_out():
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    latents = np.eye(4, dtype=np.float32)
    np.testing.assert_allclose(latents_at(xy, latents, xy[1:2], neighbours=3), latents[1:2])
    middle = latents_at(xy, latents, [[5.0, 0.0]], neighbours=2)
    np.testing.assert_allclose(middle, [[0.5, 0.5, 0.0, 0.0]], atol=1e-6)
    without = latents_at(xy, latents, xy[:1], neighbours=2, exclude=np.array([0]))
    assert without[0, 0] == 0 and np.isclose(without[0, 1:].sum(), 1.0)  # member 0 left out
    with pytest.raises(SenseError, match="finite"):
        latents_at(xy, latents, [[np.nan, 0.0]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny encoder + decoder on 120 two-class members, and its embedding (PCA map)."""
    torch = pytest.importorskip("torch")
    from sense_core.embedding import embed_ensemble
    from sense_core.ensemble import Ensemble
    from sense_core.projection import ProjectionOptions
    from sense_training.config import EncoderConfig
    from sense_training.encoder import train_encoder

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    truth = np.arange(120) % 2
    yy = np.linspace(-1, 1, 16)[:, None] * np.ones(16)
    fields = np.stack([(2 * k - 1) * (1 + yy) for k in truth])[:, None]
    fields = (fields + 0.2 * rng.normal(size=fields.shape)).astype(np.float32)
    ensemble = Ensemble(fields=fields, labels=truth, class_names=("a", "b"))
    folder = tmp_path_factory.mktemp("decode") / "bundle"
    config = EncoderConfig().updated(
        epochs=4, latent_dim=4, base_channels=8, batch_size=24, threads=1, losses="recon"
    )
    train_encoder(ensemble, folder, config, log=lambda *a: None)
    embedding = embed_ensemble(ensemble, folder, projection=ProjectionOptions("pca"))
    return ensemble, folder, embedding


def test_decoding_at_a_member_gives_its_reconstruction_and_near_it_something_like_it(trained):
    from sense_core.bundle import Bundle
    from sense_core.inference import Decoder

    ensemble, folder, embedding = trained
    decoded = decode_points(embedding, folder, embedding.xy[:3])
    assert decoded.shape == (3, 1, 16, 16) and np.isfinite(decoded).all()
    reconstructed = Decoder(Bundle.load(folder)).decode_raw(embedding.latents[:3])
    np.testing.assert_allclose(decoded, reconstructed, rtol=1e-5, atol=1e-5)

    fidelity = decoding_fidelity(embedding, ensemble, folder, sample=60)
    assert fidelity["members"] == 60
    # a member's neighbours on the map decode to a field much closer to it than a member of the
    # other class is (the classes are mirror images: about 2 standard deviations apart)
    other = ensemble.fields[1::2][:30] - ensemble.fields[0::2][:30]
    apart = float(np.sqrt(np.mean(other**2)) / ensemble.fields.std())
    assert fidelity["decoded_vs_member"] < apart / 2
    assert fidelity["reconstruction_vs_member"] <= fidelity["decoded_vs_member"] + 0.05
