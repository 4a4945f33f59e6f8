"""The labeling-loop benchmark's simulated user (benchmarks/bench_labeling_loop.py): rounds of
answers, the head retrained after each, and when the accuracy target counts as reached."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.training

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_labeling_loop as loop  # noqa: E402


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four well-separated Gaussian blobs in 8-D, one of them small (a rare class)."""
    rng = np.random.default_rng(seed)
    sizes = (150, 150, 150, 20)
    centres = rng.normal(0, 8, size=(4, 8))
    latents = np.concatenate([rng.normal(c, 1.0, size=(n, 8)) for c, n in zip(centres, sizes)])
    truth = np.repeat(np.arange(4), sizes)
    order = rng.permutation(len(truth))
    return latents[order].astype(np.float32), truth[order]


def test_loop_answers_rounds_and_learns_every_class():
    latents, truth = _blobs()
    curve = loop.run_loop(latents, truth, "suggested", seed=0, per_round=5, max_labels=30)
    assert [p["hand_labels"] for p in curve] == [5, 10, 15, 20, 25, 30]
    # the typical member of each region comes first: every class (the rare one too) is seen
    # within the first rounds, and the head is then right on the members not labeled
    assert curve[1]["classes_seen"] == 4
    assert curve[-1]["accuracy"] > 0.97


def test_random_picking_follows_the_seed():
    latents, truth = _blobs()
    first = loop.run_loop(latents, truth, "random", seed=3, per_round=10, max_labels=30)
    again = loop.run_loop(latents, truth, "random", seed=3, per_round=10, max_labels=30)
    other = loop.run_loop(latents, truth, "random", seed=4, per_round=10, max_labels=30)
    assert first == again
    assert [p["accuracy"] for p in first] != [p["accuracy"] for p in other]


def test_target_counts_only_when_it_holds_to_the_end():
    curve = [
        {"hand_labels": n, "accuracy": a}
        for n, a in ((10, 0.5), (20, 0.92), (30, 0.88), (40, 0.91), (50, 0.95))
    ]
    assert loop.labels_to_reach(curve, 0.90) == 40
    assert loop.labels_to_reach(curve, 0.96) is None
    table = loop.markdown_table(
        [
            {
                "ensemble": "e",
                "members": 9,
                "classes": 2,
                "curves": {s: [curve] for s in loop.STRATEGIES},
            }
        ],
        0.90,
    )
    assert "| e | 9 | 2 | suggested | 40 |" in table


def test_the_loop_keeps_the_answers_given_by_each_refit_point():
    latents, truth = _blobs()
    snapshots = dict.fromkeys((10, 20, 35))
    curve = loop.run_loop(
        latents, truth, "suggested", 0, per_round=5, max_labels=30, snapshots=snapshots
    )
    assert snapshots[35] is None  # never reached: no refit there
    for count in (10, 20):
        answered = snapshots[count] >= 0
        assert answered.sum() == count
        assert np.array_equal(snapshots[count][answered], truth[answered])  # the true answers
    assert (snapshots[10] >= 0).sum() < (snapshots[20] >= 0).sum()
    assert curve[-1]["hand_labels"] == 30
