"""Foreign data (issue 17): members on another scale than the bundle's training data give a
warning saying what differs and what to do, in the CLI and in ParaView's Output Messages;
members like the training data give none."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_ensemble, make_runtime_bundle, run_paraview_script, run_sense

from sense_core.ensemble import Ensemble, NormalizationStats
from sense_core.foreign import compare_with_training, foreign_data_warning
from sense_core.io import write_ensemble
from sense_paraview import plugin_file

TRAINED = NormalizationStats(mean=(0.5,), std=(0.3,), count=100)


def unit_fields(count: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, 1, 12, 10)).astype(np.float32)


def test_fields_like_the_training_data_are_not_foreign():
    assert compare_with_training(TRAINED, unit_fields()) == []


@pytest.mark.parametrize(
    ("scale", "offset", "what"),
    [(255.0, 0.0, "8-bit values"), (1.0, 5.0, "shifted"), (0.01, 0.5, "flat")],
)
def test_other_scales_are_foreign_and_the_message_says_how(scale, offset, what):
    problems = compare_with_training(TRAINED, unit_fields() * scale + offset)
    assert len(problems) == 1, what
    assert problems[0].startswith("channel 0: values ")
    assert "trained on mean 0.5, std 0.3" in problems[0]


def test_the_warning_names_the_remedy_and_reads_a_sample_only():
    class Counting(Ensemble):
        read = 0

        def read_members(self, indices):
            type(self).read += len(indices)
            return super().read_members(indices)

    store = Counting(fields=np.repeat(unit_fields() * 255, 20, axis=0))  # 800 members
    warning = foreign_data_warning(store, TRAINED, sample=64)
    assert "divide 8-bit images by 255" in warning and "sense fit" in warning
    assert Counting.read == 64


def test_sense_embed_warns_on_foreign_members_and_not_on_others(tmp_path):
    make_runtime_bundle(tmp_path / "bundle", mean=0.5, std=0.3)
    good = Ensemble(fields=unit_fields(), labels=np.arange(40) % 3, class_names=("a", "b", "c"))
    write_ensemble(good, tmp_path / "good.npz")
    foreign = Ensemble(fields=unit_fields() * 255, labels=good.labels, class_names=("a", "b", "c"))
    write_ensemble(foreign, tmp_path / "foreign.npz")
    ok = run_sense("embed", str(tmp_path / "good.npz"), str(tmp_path / "bundle"),
                   "--out", str(tmp_path / "out_good"), "--projection", "pca")  # fmt: skip
    assert "warning" not in ok.stderr
    warned = run_sense("embed", str(tmp_path / "foreign.npz"), str(tmp_path / "bundle"),
                       "--out", str(tmp_path / "out_foreign"), "--projection", "pca")  # fmt: skip
    assert warned.returncode == 0  # a warning, not an error: the map is still drawn
    assert "sense: warning: these members do not look like the bundle's training data" in (
        warned.stderr
    )
    assert "## Warnings" in (tmp_path / "out_foreign" / "report.md").read_text()
    assert "## Warnings" not in (tmp_path / "out_good" / "report.md").read_text()


@pytest.mark.paraview
def test_paraview_shows_the_warning_in_output_messages(tmp_path):
    make_runtime_bundle(tmp_path / "bundle", mean=0.5, std=1.5)
    npz = write_ensemble(make_ensemble(count=30), tmp_path / "ens.npz")  # mean ~0.5, std ~1.5
    scaled = make_ensemble(count=30)
    scaled = Ensemble(fields=scaled.fields * 255, labels=scaled.labels,
                      class_names=scaled.class_names)  # fmt: skip
    foreign = write_ensemble(scaled, tmp_path / "foreign.npz")
    run = run_paraview_script(
        f"""
        from paraview.simple import *
        LoadPlugin({str(plugin_file())!r}, ns=globals())
        for path in ({str(npz)!r}, {str(foreign)!r}):
            reader = SENSEEnsembleReader(FileName=path)
            embedding = SENSEEmbedding(Input=reader, Bundle={str(tmp_path / "bundle")!r},
                                       Projection="PCA")
            embedding.UpdatePipeline()
            print("EMBEDDED", path, flush=True)
        RESULT = True
        """,
        tmp_path,
    )
    output = run["output"]
    assert output.count("SENSE: warning: these members do not look like") == 1, output[-3000:]
