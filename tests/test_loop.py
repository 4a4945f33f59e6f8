"""The one training loop (sense_training.loop): its resume rule, early-stopping rule and
checkpoint format, checked with a scripted trainer, and both real trainers plugged into it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sense_core.ensemble import Ensemble  # noqa: E402
from sense_core.errors import SenseError  # noqa: E402
from sense_training.common import load_checkpoint  # noqa: E402
from sense_training.config import (  # noqa: E402
    ConfigSection,
    RunConfig,
    SplitConfig,
    option,
    section,
)
from sense_training.loop import Trainer, TrainingRun, run_training  # noqa: E402


def _toy_run() -> RunConfig:
    return RunConfig(epochs=6, patience=2, threads=1, device="cpu")


@dataclass
class ToyConfig(ConfigSection):
    values: tuple[float, ...] = option((1.0, 0.99995, 0.5, 0.6, 0.7, 0.4), "selection values")
    run: RunConfig = section(_toy_run, "training run")
    split: SplitConfig = section(SplitConfig, "split")


class ToyTrainer(Trainer):
    """Selection values scripted by the configuration; the 'weights' record the epoch."""

    role = "toy"
    config_type = ToyConfig
    run_folder = "toy_run"

    def __init__(self) -> None:
        self.trained_epochs: list[int] = []

    def prepare(self, run: TrainingRun) -> dict:
        return {"members": len(run.store)}

    def build(self, run: TrainingRun) -> None:
        self.weight = torch.zeros(1)

    def train_one_epoch(self, run: TrainingRun, epoch: int) -> dict[str, float]:
        self.trained_epochs.append(epoch)
        self.weight += torch.rand(1)  # seeded by the loop from (seed, epoch)
        return {"train_loss": float(self.weight)}

    def validate(self, run: TrainingRun, epoch: int):
        value = run.config.values[epoch]
        return {"val_loss": value}, value

    def weights(self):
        return {"weight": self.weight.clone()}

    def state_dict(self):
        return {"weight": self.weight.clone()}

    def load_state_dict(self, state) -> None:
        self.weight = state["weight"].clone()

    def epoch_line(self, run, epoch, record, improved) -> str:
        return f"epoch {epoch + 1}{' *' if improved else ''}"

    def finish(self, run: TrainingRun):
        return None, {"completed": True, "epochs_run": len(run.history)}

    def result(self, run: TrainingRun, bundle, metrics):
        return run, metrics


STORE = Ensemble(np.zeros((4, 1, 2, 2), np.float32))


def toy(tmp_path, config=None, trainer=None, store=STORE, **options):
    lines: list[str] = []
    trainer = trainer or ToyTrainer()
    run, metrics = run_training(
        trainer, store, tmp_path, config, export=False, log=lines.append, **options
    )
    return run, metrics, lines, trainer


def test_early_stopping_uses_min_delta_and_patience_on_the_selection_value(tmp_path):
    run, metrics, lines, _ = toy(tmp_path)
    # 0.99995 is not better than 1.0 by more than min_delta (1e-4); 0.5 is; then 2 worse epochs
    assert [line.endswith("*") for line in lines[:5]] == [True, False, True, False, False]
    assert run.best_epoch == 2 and run.best_value == 0.5 and run.stopped_early
    assert metrics == {"completed": True, "epochs_run": 5}
    assert "early stop: no better validation value for 2 epochs" in lines
    assert float(run.best_weights["weight"]) == pytest.approx(run.history.series("train_loss")[2])
    state = load_checkpoint(tmp_path / "toy_run" / "checkpoint.pt")
    assert set(state) >= {"role", "config", "data", "epoch", "history", "best", "trainer"}
    assert state["config"] == ToyConfig().to_dict() and state["finished"]
    patient = ToyConfig().updated({"patience": 0, "min_delta": 0.0})
    run, metrics, lines, _ = toy(tmp_path / "b", patient)
    assert len(run.history) == 6 and not run.stopped_early and run.best_epoch == 5
    assert lines[1].endswith("*")  # without tolerance 0.99995 counts as better


def test_resume_rule(tmp_path):
    whole, _, _, _ = toy(tmp_path / "whole")
    # resume with no checkpoint: a new run, said in the log
    fresh, _, lines, _ = toy(tmp_path / "fresh", resume=True)
    assert lines[0].startswith("resume: no checkpoint") and len(fresh.history) == 5
    # stopped, then resumed: the uninterrupted run's history and weights
    partial, metrics, _, _ = toy(tmp_path / "b", stop_after=2)
    assert not partial.finished and metrics["completed"] is False and len(partial.history) == 2
    with pytest.raises(SenseError, match="resume it or pass overwrite"):
        toy(tmp_path / "b")
    with pytest.raises(SenseError, match="other members or labels"):
        toy(tmp_path / "b", store=Ensemble(np.zeros((5, 1, 2, 2), np.float32)), resume=True)
    with pytest.raises(SenseError, match=r"another configuration \(epochs 6 -> 9\)"):
        toy(tmp_path / "b", ToyConfig().updated(epochs=9), resume=True)
    resumed, _, lines, trainer = toy(tmp_path / "b", ToyConfig().updated(threads=2), resume=True)
    assert lines[0].startswith("resuming") and trainer.trained_epochs == [2, 3, 4]
    for name in ("train_loss", "val_loss"):
        assert resumed.history.series(name) == whole.history.series(name)
    assert torch.equal(resumed.best_weights["weight"], whole.best_weights["weight"])
    # a finished run is not trained again
    again, metrics, _, trainer = toy(tmp_path / "b", resume=True)
    assert trainer.trained_epochs == [] and metrics["epochs_run"] == 5
    # overwrite starts over
    over, _, _, trainer = toy(tmp_path / "b", overwrite=True)
    assert trainer.trained_epochs == [0, 1, 2, 3, 4]


def test_both_trainers_plug_into_the_one_loop(monkeypatch):
    from sense_training import encoder, labeler

    seen = []

    def fake_run_training(trainer, store, out, config, **options):
        seen.append((type(trainer), options["stop_after"], options["resume"]))
        return "result"

    monkeypatch.setattr(labeler, "run_training", fake_run_training)
    monkeypatch.setattr(encoder, "run_training", fake_run_training)
    assert labeler.train_labeler(STORE, "out", stop_after=1, progress=False) == "result"
    assert encoder.train_encoder(STORE, "out", resume=True) == "result"
    assert seen == [(labeler.LabelerTrainer, 1, False), (encoder.EncoderTrainer, None, True)]
    for kind in (labeler.LabelerTrainer, encoder.EncoderTrainer):
        assert issubclass(kind, Trainer)
        for hook in ("prepare", "build", "train_one_epoch", "validate", "finish", "result"):
            assert getattr(kind, hook) is not getattr(Trainer, hook), f"{kind.__name__}.{hook}"
