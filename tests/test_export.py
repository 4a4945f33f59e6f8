"""ONNX export: dynamic batch axis, checker, parity with torch, atomic writes, both exporters."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sense_training.export import ExportError, export_onnx  # noqa: E402

torch.set_num_threads(1)  # 2 threads collapse when the machine is shared


class SmallNet(torch.nn.Module):
    """Conv + batch norm + pooling + linear: the layer kinds SENSE's models use."""

    def __init__(self, channels: int = 2, outputs: int = 3) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.SiLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(8, outputs)

    def forward(self, x):
        return self.head(self.features(x))


def _trained_net() -> SmallNet:
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():  # non-trivial batch-norm statistics
        net.features[1].running_mean.uniform_(-1, 1)
        net.features[1].running_var.uniform_(0.5, 2)
    return net.train()  # export must switch to eval itself


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_matches_torch_with_dynamic_batch(tmp_path, exporter):
    net = _trained_net()
    real = np.random.default_rng(1).normal(2.0, 3.0, size=(5, 2, 16, 12)).astype(np.float32)
    report = export_onnx(
        net,
        torch.zeros(1, 2, 16, 12),
        tmp_path / "net.onnx",
        "fields",
        "logits",
        real_inputs=real,
        exporter=exporter,
    )
    assert net.training  # the caller's model is untouched
    assert report.exporter == exporter and report.opset == 18
    assert report.dynamic_batch and report.input_shape == [2, 16, 12]
    assert report.output_shape == [3]
    assert report.max_abs_diff_random <= 1e-4 and report.max_abs_diff_real <= 1e-4
    assert 0 < report.torch_float32_error_real < 1e-4  # well-conditioned: the plain bound holds
    assert report.real_inputs == 5 and "CPUExecutionProvider" in report.providers
    assert [p.name for p in tmp_path.iterdir()] == ["net.onnx"]  # one file, no temporaries

    model = onnx.load(str(tmp_path / "net.onnx"))
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "fields"
    assert session.get_outputs()[0].name == "logits"
    batch = np.random.default_rng(2).normal(size=(7, 2, 16, 12)).astype(np.float32)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(session.run(None, {"fields": batch})[0], expected, atol=1e-4)
    assert report.to_dict()["exporter"] == exporter


def test_export_refuses_a_mismatch_and_writes_nothing(tmp_path, monkeypatch):
    """A graph whose weights drifted by 1e-3 after export must fail the parity check."""
    import sense_training.export as export_module

    real_export = export_module._export_to

    def export_then_corrupt(*args):
        real_export(*args)
        path = args[2]
        model = onnx.load(str(path))
        for initializer in model.graph.initializer:
            values = onnx.numpy_helper.to_array(initializer)
            if values.dtype == np.float32 and values.size > 8:
                corrupted = onnx.numpy_helper.from_array(values + 1e-3, initializer.name)
                initializer.CopyFrom(corrupted)
        onnx.save(model, str(path))

    monkeypatch.setattr(export_module, "_export_to", export_then_corrupt)
    target = tmp_path / "net.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(SmallNet().eval(), torch.zeros(2, 2, 8, 8), target, "fields", "out")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["net.onnx"]


def test_export_refuses_models_with_several_outputs(tmp_path):
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x.mean(), x.std()

    with pytest.raises(ExportError, match="not one tensor"):
        export_onnx(Pair(), torch.zeros(2, 1, 4, 4), tmp_path / "pair.onnx")
    assert not (tmp_path / "pair.onnx").exists()


def test_export_of_efficientnet_v2_is_within_tolerance(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnetv2_b0", pretrained=False, in_chans=1, num_classes=4)
    report = export_onnx(model, torch.zeros(1, 1, 32, 32), tmp_path / "e.onnx", "fields", "logits")
    assert report.max_abs_diff_random <= 1e-4 and report.dynamic_batch


class WideNet(torch.nn.Module):
    """Convolutions and a linear head with weights large enough to be compressed."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),  # 144 weights: left as float
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),  # 4608 weights
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(128, 10)  # 1280 weights

    def forward(self, x):
        return self.head(self.features(x))


def _wide_onnx(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "wide.onnx"
    export_onnx(WideNet(), torch.zeros(2, 1, 12, 12), path, "fields", "logits")
    return path


def _run(path, inputs):
    options = ort.SessionOptions()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"fields": inputs})[0]


def test_int8_weight_compression_is_small_and_close(tmp_path):
    from onnx import numpy_helper

    from sense_core.errors import SenseError
    from sense_training.export import compress_weights_int8

    source = _wide_onnx(tmp_path)
    target = tmp_path / "wide_int8.onnx"
    record = compress_weights_int8(source, target)
    assert record["tensors"] == 2 and record["bytes_after"] < 0.6 * record["bytes_before"]
    model = onnx.load(str(target))
    assert sum(n.op_type == "Cast" for n in model.graph.node) == 2
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(source)).graph.initializer}
    for name in [n[: -len("__int8")] for n in inits if n.endswith("__int8")]:
        q, scale = inits[f"{name}__int8"], inits[f"{name}__scale"]
        assert q.dtype == np.int8 and np.abs(q).max() == 127
        weights = original[name]
        assert scale.shape == (len(weights),) + (1,) * (weights.ndim - 1)  # per output channel
        assert np.all(np.abs(q * scale - weights) <= scale / 2 + 1e-7)  # round to nearest
    # onnxruntime folds the Cast + Mul back into float weights when it opens the model
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert not {"Cast", "Mul"} & {n.op_type for n in optimized.graph.node}
    inputs = np.random.default_rng(0).normal(size=(64, 1, 12, 12)).astype(np.float32)
    before, after = _run(source, inputs), _run(target, inputs)
    assert np.abs(before - after).max() < 0.02 * np.abs(before).max()
    assert np.mean(before.argmax(1) == after.argmax(1)) >= 0.9
    with pytest.raises(SenseError, match="no weight tensor"):
        compress_weights_int8(source, tmp_path / "none.onnx", min_elements=10**6)
    assert not (tmp_path / "none.onnx").exists()


def test_compress_bundle_model_records_the_change(tmp_path):
    from sense_core.bundle import Bundle, add_model, new_manifest
    from sense_core.ensemble import NormalizationStats
    from sense_core.errors import SenseError
    from sense_core.inference import Labeler
    from sense_training.export import compress_bundle_model

    source = _wide_onnx(tmp_path)
    stats = NormalizationStats(mean=(0.0,), std=(1.0,), count=10)
    manifest = new_manifest((1, 12, 12), stats, tuple(f"c{i}" for i in range(10)))
    folder = tmp_path / "bundle"
    add_model(
        folder, "labeler", source, manifest, input_name="fields", output_name="logits",
        opset=18, details={"architecture": "wide"},
    )  # fmt: skip
    inputs = np.random.default_rng(1).normal(size=(40, 1, 12, 12)).astype(np.float32)
    float_logits = _run(folder / "labeler.onnx", inputs)
    labels = float_logits.argmax(1)
    record = compress_bundle_model(folder, "labeler", inputs, labels)
    assert record["members"] == 40 and record["accuracy_float"] == 1.0
    assert record["accuracy_compressed"] == record["argmax_agreement"] >= 0.9
    bundle = Bundle.load(folder)  # checksum of the new file
    entry = bundle.model("labeler")
    assert entry.details["compression"] == record and entry.details["architecture"] == "wide"
    assert (folder / "labeler.onnx").stat().st_size == record["bytes_after"]
    runtime = Labeler(bundle, device="cpu").logits(inputs)  # the runtime reads it as is
    np.testing.assert_allclose(runtime, _run(folder / "labeler.onnx", inputs), atol=1e-4)
    with pytest.raises(SenseError, match="compressed already"):
        compress_bundle_model(folder, "labeler", inputs)
    with pytest.raises(SenseError, match="no encoder"):
        compress_bundle_model(folder, "encoder", inputs)
