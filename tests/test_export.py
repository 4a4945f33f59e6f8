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
