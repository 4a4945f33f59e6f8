"""Statistics of categorical fields (sense_core.categorical): code detection, probability and
entropy maps, ``sense stats`` and the member view's categorical blocks."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from helpers import REPO, SENSE, run_paraview_script, run_process_tree, run_sense

from sense_core.categorical import (
    MAX_CODES,
    categorical_codes,
    category_statistics,
    selection_categories,
)
from sense_core.ensemble import Ensemble
from sense_core.errors import SenseError
from sense_core.io import write_ensemble
from sense_core.io.vti import read_vti
from sense_paraview import plugin_file


def facies_ensemble(count: int = 8, channels: int = 1, codes=(0, 1, 2), seed: int = 0):
    """Members whose channel 0 holds facies ``codes``; any further channel is continuous."""
    rng = np.random.default_rng(seed)
    fields = rng.normal(size=(count, channels, 12, 10)).astype(np.float32)
    fields[:, 0] = rng.choice(np.asarray(codes), size=(count, 12, 10))
    return Ensemble(fields=fields, member_ids=[f"run{i}" for i in range(count)])


def test_codes_are_detected_only_for_a_few_integers():
    rng = np.random.default_rng(1)
    facies = rng.integers(0, 3, size=(5, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(categorical_codes(facies), [0, 1, 2])
    np.testing.assert_array_equal(categorical_codes(facies - 1), [-1, 0, 1])  # negative codes
    np.testing.assert_array_equal(categorical_codes(facies.astype(np.int32)), [0, 1, 2])
    assert categorical_codes(rng.normal(size=(5, 8, 8))) is None  # continuous
    assert categorical_codes(facies + 0.5) is None  # not integral
    many = np.arange(MAX_CODES + 1, dtype=np.float32)
    assert categorical_codes(many) is None  # too many codes: counts, rounded values
    assert categorical_codes(many[:MAX_CODES]) is not None
    assert categorical_codes(np.zeros((3, 4, 4))) is None  # one value: nothing to summarise
    with_nan = facies.copy()
    with_nan[0, 0, 0] = np.nan
    assert categorical_codes(with_nan) is None


def test_probabilities_sum_to_one_and_entropy_spans_zero_to_log2_k():
    fields = np.zeros((4, 1, 2, 3), dtype=np.float32)
    fields[:, 0, 0, 0] = 1  # all members agree: entropy 0
    fields[:, 0, 0, 1] = [0, 1, 2, 3]  # uniform over 4 codes: entropy 2 bits
    fields[:, 0, 0, 2] = [0, 0, 1, 1]  # two codes, half each: 1 bit
    stats = category_statistics(fields)
    np.testing.assert_array_equal(stats.codes, [0, 1, 2, 3])
    assert stats.probabilities.shape == (4, 2, 3) and stats.entropy.shape == (2, 3)
    np.testing.assert_allclose(stats.probabilities.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(stats.probabilities[:, 0, 0], [0, 1, 0, 0])
    np.testing.assert_allclose(stats.probabilities[:, 0, 1], [0.25] * 4)
    np.testing.assert_allclose(stats.entropy[0], [0.0, 2.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(stats.entropy[1], 0.0)  # every member holds 0 there
    assert stats.names() == [*(f"probability_{c}" for c in range(4)), "entropy"]
    with pytest.raises(SenseError, match="channel 0 is not categorical"):
        category_statistics(fields + 0.5)


def test_each_categorical_channel_is_found_and_continuous_ones_are_not():
    fields = facies_ensemble(channels=3).fields
    fields[:, 2] = (fields[:, 2] > 0).astype(np.float32)  # channel 2: binary codes
    found = selection_categories(fields)
    assert [s.channel for s in found] == [0, 2]
    assert found[1].names(3) == [
        "probability_0_channel2",
        "probability_1_channel2",
        "entropy_channel2",
    ]
    assert selection_categories(facies_ensemble(channels=2).fields[:, 1:]) == []


def test_member_view_blocks_of_a_categorical_selection_are_laid_out_under_mean_and_std():
    """In-process (VTK from ParaView): the extra blocks carry their named array and ``field``,
    sit in a row under mean/std without overlapping them, and have titles."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from sense_paraview.vtk_views import MEMBER_VIEW_BLOCKS, member_view_from_fields

    fields = facies_ensemble(count=5, codes=(0, 1)).fields
    blocks = member_view_from_fields(fields, [f"run{i}" for i in range(5)])
    names = [blocks.GetMetaData(i).Get(blocks.NAME()) for i in range(blocks.GetNumberOfBlocks())]
    assert names == [*MEMBER_VIEW_BLOCKS, "probability_0", "probability_1", "entropy"]
    stats = category_statistics(fields)
    std_bottom = blocks.GetBlock(names.index("std")).GetBounds()[2]
    for index, (name, expected) in enumerate(zip(stats.names(), stats.maps()), start=5):
        image = blocks.GetBlock(index)
        for array in (name, "field"):
            values = vtk_to_numpy(image.GetPointData().GetArray(array)).reshape(12, 10)[::-1]
            np.testing.assert_allclose(values, expected, atol=1e-6, err_msg=name)
        assert image.GetBounds()[3] < std_bottom  # below mean and std
    titles = blocks.GetBlock(names.index("titles")).GetCellData().GetAbstractArray("title")
    shown = {titles.GetValue(i) for i in range(titles.GetNumberOfValues())}
    assert {"probability_0", "probability_1", "entropy"} <= shown


def test_sense_stats_writes_readable_images(tmp_path):
    ensemble = facies_ensemble(channels=2)
    path = write_ensemble(ensemble, tmp_path / "facies.npz")
    out = tmp_path / "stats"
    chosen = ["run2", "run5", "run0", "run7"]
    result = run_sense("stats", str(path), "--members", ",".join(chosen), "--out", str(out))
    assert "channel 0: categorical, codes 0, 1, 2" in result.stdout
    selected = ensemble.fields[[2, 5, 0, 7]].astype(np.float64)
    stats = category_statistics(selected)
    expected = {"mean": selected.mean(axis=0), "std": selected.std(axis=0)}
    expected.update(zip(stats.names(2), [m[None] for m in stats.maps()]))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}{ext}" for name in expected for ext in (".vti", ".npy")
    )
    for name, values in expected.items():
        array = name if name not in ("mean", "std") else "field"
        np.testing.assert_allclose(read_vti(out / f"{name}.vti", array), values, atol=1e-5)
        np.testing.assert_allclose(np.load(out / f"{name}.npy").reshape(values.shape), values, 1e-5)
    unknown = ("--members", "run1,nobody", "--out", str(out))
    again = run_sense("stats", str(path), *unknown, check=False)
    assert again.returncode != 0 and "'nobody'" in again.stderr


@pytest.mark.paraview
def test_member_view_filter_outputs_probability_and_entropy_arrays(tmp_path):
    """pvpython: SENSE Member View on a facies ensemble gives the categorical blocks."""
    folder = write_ensemble(facies_ensemble(codes=(1, 4)), tmp_path / "members")
    run = run_paraview_script(
        f"""
        from paraview.simple import *
        from vtkmodules.util.numpy_support import vtk_to_numpy
        LoadPlugin({str(plugin_file())!r}, ns=globals())
        ensemble = OpenDataFile({str(folder / "ensemble.vtm")!r})
        view = SENSEMemberView(Input=ensemble, MemberIds=["run1", "run3", "run6"])
        data = servermanager.Fetch(view)
        RESULT = {{}}
        for i in range(data.GetNumberOfBlocks()):
            name = data.GetMetaData(i).Get(data.NAME())
            array = data.GetBlock(i).GetPointData().GetArray(name) if i >= 5 else None
            RESULT[name] = None if array is None else vtk_to_numpy(array).tolist()
        """,
        tmp_path,
    )
    result = run["result"]
    assert list(result)[5:] == ["probability_1", "probability_4", "entropy"]
    stats = category_statistics(facies_ensemble(codes=(1, 4)).fields[[1, 3, 6]])
    for name, expected in zip(stats.names(), stats.maps()):
        actual = np.array(result[name]).reshape(12, 10)[::-1]
        np.testing.assert_allclose(actual, expected, atol=1e-6, err_msg=name)


MPI_SCRIPT = """
import json, sys
from paraview.simple import *
from vtkmodules.vtkParallelCore import vtkMultiProcessController

path, out = sys.argv[1:3]
rank = vtkMultiProcessController.GetGlobalController().GetLocalProcessId()
reader = SENSEEnsembleReader(FileName=path)
view = SENSEMemberView(Input=reader, MemberIds=["run1", "run6"])
view.UpdatePipeline()
local = view.GetClientSideObject().GetOutputDataObject(0)
names = [local.GetMetaData(i).Get(local.NAME()) for i in range(local.GetNumberOfBlocks())]
with open(f"{out}.{rank}.json", "w") as f:
    json.dump(names, f)
"""


@pytest.mark.paraview
def test_member_view_keeps_one_block_structure_on_every_mpi_rank(tmp_path):
    """pvbatch on 2 MPI ranks (~10 s): the rank without the view has rank 0's block names,
    the categorical blocks included (ParaView combines the ranks' outputs block by block)."""
    assert shutil.which("mpirun"), "mpirun (openmpi-bin) is needed: make setup installs it"
    path = write_ensemble(facies_ensemble(), tmp_path / "facies.npz")
    script, out = tmp_path / "view_mpi.py", tmp_path / "names"
    script.write_text(MPI_SCRIPT)
    launcher = ["mpirun", "--oversubscribe", "-np", "2"]
    launcher += ["--allow-run-as-root"] if os.geteuid() == 0 else []
    command = [*launcher, SENSE, "pvbatch", "--no-xvfb", "--symmetric", str(script)]
    completed = run_process_tree([*command, str(path), str(out)], 600, cwd=REPO)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    rank0, rank1 = (json.loads((tmp_path / f"names.{r}.json").read_text()) for r in (0, 1))
    assert rank0[5:] == ["probability_0", "probability_1", "probability_2", "entropy"]
    assert rank1 == rank0
