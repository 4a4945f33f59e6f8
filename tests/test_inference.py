"""ONNX inference runtime: normalisation, batching, streaming with bounded memory, labels,
threads, device/provider handling (incl. CUDA asked for but unusable), and torch parity."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from helpers import make_ensemble, make_runtime_bundle

from sense_core.bundle import Bundle, BundleError
from sense_core.errors import SenseError
from sense_core.inference import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    DeviceError,
    Encoder,
    Labeler,
    OnnxModel,
    Prediction,
    run_over_store,
    softmax,
)

SHAPE = (1, 12, 10)


@pytest.fixture(scope="module")
def bundle_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inference") / "bundle"
    weights = make_runtime_bundle(folder, SHAPE, latent_dim=6)
    return Bundle.load(folder), weights


def expected_linear(fields: np.ndarray, weights: np.ndarray) -> np.ndarray:
    normalized = (fields.astype(np.float64) - 0.5) / 2.0
    return normalized.reshape(len(fields), -1) @ weights


def test_encoder_normalises_and_matches_reference(bundle_setup):
    bundle, weights = bundle_setup
    encoder = Encoder(bundle, device="cpu", batch_size=5)
    fields = make_ensemble(count=13).fields
    latents = encoder.encode(fields)
    assert latents.shape == (13, 6) and latents.dtype == np.float32
    np.testing.assert_allclose(latents, expected_linear(fields, weights["encoder"]), atol=1e-4)
    assert encoder.provider == CPU_PROVIDER
    np.testing.assert_array_equal(encoder.encode(fields[3]), latents[3:4])


def test_results_do_not_depend_on_batch_size_or_source(bundle_setup, tmp_path):
    bundle, _ = bundle_setup
    ensemble = make_ensemble(count=23)
    reference = Encoder(bundle, device="cpu", batch_size=23).encode(ensemble.fields)
    for batch in (1, 4, 64):
        streamed = Encoder(bundle, device="cpu", batch_size=batch).encode_store(ensemble)
        np.testing.assert_allclose(streamed, reference, atol=1e-5)
    from sense_core.io import open_ensemble, write_ensemble

    folder = write_ensemble(ensemble, tmp_path / "members", member_format="npy")
    from_disk = Encoder(bundle, device="cpu", batch_size=7).encode_store(open_ensemble(folder))
    np.testing.assert_allclose(from_disk, reference, atol=1e-5)
    subset = Encoder(bundle, device="cpu").encode_store(ensemble, indices=[5, 2])
    np.testing.assert_allclose(subset, reference[[5, 2]], atol=1e-5)


def test_labeler_predictions_and_one_pass_over_the_store(bundle_setup):
    bundle, weights = bundle_setup
    ensemble = make_ensemble(count=17)
    encoder = Encoder(bundle, device="cpu", batch_size=4)
    labeler = Labeler(bundle, device="cpu", batch_size=4)
    run = run_over_store(ensemble, encoder, labeler)
    logits = expected_linear(ensemble.fields, weights["labeler"])
    probabilities = softmax(logits)
    assert run.members == 17 and run.latents.shape == (17, 6)
    np.testing.assert_array_equal(run.prediction.labels, probabilities.argmax(axis=1))
    np.testing.assert_allclose(run.prediction.confidence, probabilities.max(axis=1), atol=1e-4)
    np.testing.assert_allclose(run.prediction.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert set(run.seconds) >= {"read", "normalize", "encoder", "labeler", "total"}
    alone = labeler.predict_store(ensemble)
    np.testing.assert_array_equal(alone.labels, run.prediction.labels)


def test_softmax_is_stable_for_large_logits():
    prediction = Prediction.from_logits(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]))
    assert np.isfinite(prediction.probabilities).all()
    assert prediction.labels.tolist() == [0, 0]
    np.testing.assert_allclose(prediction.confidence, [1.0, 1 / 3], atol=1e-6)


def test_thread_count_is_applied(bundle_setup):
    bundle, _ = bundle_setup
    assert Encoder(bundle, device="cpu", threads=1).model.threads == 1
    with pytest.raises(SenseError, match="threads must be >= 1"):
        Encoder(bundle, device="cpu", threads=0)


def test_wrong_member_shape_is_refused_with_names(bundle_setup):
    bundle, _ = bundle_setup
    encoder = Encoder(bundle, device="cpu")
    with pytest.raises(BundleError, match=r"\(1, 8, 8\).*expects \(1, 12, 10\)"):
        encoder.encode_store(make_ensemble(count=4, height=8, width=8))
    with pytest.raises(SenseError, match="encoder.onnx, which expects"):
        encoder.encode(np.zeros((2, 1, 8, 8), np.float32))


def test_model_names_are_checked(bundle_setup):
    bundle, _ = bundle_setup
    path = bundle.model("encoder").path
    with pytest.raises(SenseError, match="no input 'pixels'"):
        OnnxModel(path, "pixels", "z", device="cpu")
    with pytest.raises(SenseError, match="no output 'latent'"):
        OnnxModel(path, "fields", "latent", device="cpu")
    with pytest.raises(SenseError, match="device must be one of"):
        OnnxModel(path, "fields", "z", device="gpu")


def test_corrupt_model_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(SenseError, match="broken.onnx: onnxruntime cannot load the model"):
        OnnxModel(bad, "fields", "z", device="cpu")


def test_auto_device_reports_the_provider_really_used(bundle_setup):
    import onnxruntime

    bundle, _ = bundle_setup
    model = Encoder(bundle, device="auto").model
    assert model.provider == model.providers[0]
    if CUDA_PROVIDER not in onnxruntime.get_available_providers():
        assert model.provider == CPU_PROVIDER
        assert "no CUDA provider" in model.device_note
    assert model.describe()["provider"] == model.provider


def test_cuda_requested_without_cuda_is_a_clear_error(bundle_setup):
    import onnxruntime

    if CUDA_PROVIDER in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider; see the GPU check in docs/runtime.md")
    bundle, _ = bundle_setup
    with pytest.raises(DeviceError, match="device 'cuda' requested.*no CUDA provider") as error:
        Encoder(bundle, device="cuda")
    assert "onnxruntime-gpu" in str(error.value)


def test_silent_cpu_fallback_is_detected(bundle_setup, monkeypatch):
    """onnxruntime-gpu lists the CUDA provider, then quietly runs on the CPU when its libraries
    are missing: simulate that listing and check that SENSE notices from the session itself."""
    import onnxruntime

    if CUDA_PROVIDER in onnxruntime.get_available_providers():
        pytest.skip("a real CUDA provider is installed")
    bundle, _ = bundle_setup
    listed = [CUDA_PROVIDER, CPU_PROVIDER]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: listed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's own "not in available providers"
        with pytest.raises(DeviceError, match="device 'cuda' requested.*CUDA provider library"):
            Encoder(bundle, device="cuda")
        model = Encoder(bundle, device="auto").model
    assert model.provider == CPU_PROVIDER
    assert model.device_note.startswith("CUDA not used:")


def test_streaming_memory_is_bounded_by_the_batch(tmp_path):
    """Encoding a folder of members holds one batch of fields, not the ensemble."""
    from sense_core.io import open_ensemble, write_ensemble

    shape = (1, 64, 64)
    make_runtime_bundle(tmp_path / "bundle", shape, latent_dim=4, labeler=False)
    bundle = Bundle.load(tmp_path / "bundle")
    count = 240
    rng = np.random.default_rng(0)
    from sense_core.ensemble import Ensemble

    ensemble = Ensemble(fields=rng.normal(size=(count, *shape)).astype(np.float32))
    folder = write_ensemble(ensemble, tmp_path / "members", member_format="npy")
    del ensemble
    store = open_ensemble(folder)
    encoder = Encoder(bundle, device="cpu", batch_size=8)
    encoder.encode_store(store, indices=[0, 1])  # warm up sessions and caches outside the trace
    total_bytes = count * int(np.prod(shape)) * 4  # 3.9 MB of fields
    tracemalloc.start()
    try:
        latents = encoder.encode_store(store)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert latents.shape == (count, 4)
    batch_bytes = 8 * int(np.prod(shape)) * 4
    assert peak < 6 * batch_bytes + 200_000, (peak, batch_bytes)
    assert peak < total_bytes / 4


def test_onnx_matches_torch_through_the_runtime(tmp_path):
    """A small conv encoder exported by the training package gives torch's latents (within
    1e-4) through Encoder: normalisation, batching and the session agree with torch eager."""
    torch = pytest.importorskip("torch")
    export = pytest.importorskip("sense_training.export")
    from sense_core.bundle import add_model, new_manifest
    from sense_core.ensemble import NormalizationStats

    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 5),
    ).eval()
    shape = (1, 16, 16)
    report = export.export_onnx(
        network, torch.zeros(2, *shape), tmp_path / "enc.onnx", "fields", "latent"
    )
    stats = NormalizationStats(mean=(0.3,), std=(1.7,), count=10)
    add_model(
        tmp_path / "bundle",
        "encoder",
        tmp_path / "enc.onnx",
        new_manifest(shape, stats, ["a", "b"]),
        input_name="fields",
        output_name="latent",
        opset=report.opset,
    )
    fields = np.random.default_rng(1).normal(size=(21, *shape)).astype(np.float32) * 3
    encoder = Encoder(Bundle.load(tmp_path / "bundle"), device="cpu", batch_size=8)
    got = encoder.encode(fields)
    with torch.no_grad():
        expected = network(torch.from_numpy((fields - 0.3) / 1.7)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
