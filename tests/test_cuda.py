"""`--device cuda` where a GPU really works (the converse of the tests that assert it fails
without one): these run on a machine set up with the README's GPU extras and skip elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_ensemble, make_runtime_bundle

from sense_core.bundle import Bundle
from sense_core.inference import CUDA_PROVIDER, Encoder


@pytest.mark.with_cuda("onnxruntime")
def test_encoder_runs_on_cuda_and_matches_the_cpu(tmp_path):
    make_runtime_bundle(tmp_path / "bundle")
    bundle = Bundle.load(tmp_path / "bundle")
    fields = make_ensemble().fields
    on_gpu = Encoder(bundle, device="cuda")
    assert on_gpu.provider == CUDA_PROVIDER
    expected = Encoder(bundle, device="cpu").encode(fields)
    np.testing.assert_allclose(on_gpu.encode(fields), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.with_cuda("torch")
def test_training_device_cuda_is_chosen_when_a_gpu_works():
    from sense_training.common import choose_device

    assert choose_device("cuda").type == "cuda"
    assert choose_device("auto").type == "cuda"
