"""The ``sense`` command: version, help of every subcommand, info, convert and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_sense

from sense_core.cli import build_parser, main
from sense_core.io import read_ensemble, write_ensemble
from sense_paraview.cli import LAUNCHER_HELP

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_version():
    from sense_core import __version__

    assert run_sense("--version").stdout.strip() == f"sense {__version__}"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: sense {command}" in text
    assert len(text) > 200  # explains itself, not just a usage line


def test_top_level_help_lists_the_subcommands():
    text = run_sense("--help").stdout
    for command in SUBCOMMANDS:
        assert command in text
    assert set(LAUNCHER_HELP) <= set(SUBCOMMANDS)


def test_info_describes_classes_split_and_statistics(tmp_path, ensemble):
    path = write_ensemble(ensemble, tmp_path / "ens.npz")
    summary = json.loads(run_sense("info", str(path), "--stats", "--json").stdout)
    assert summary["members"] == 24
    assert summary["member_shape"] == [1, 12, 10]
    assert summary["class_counts"] == {"straight": 6, "meander": 6, "braided": 6}
    assert summary["unlabeled"] == 6
    split = summary["split"]
    assert split["train"] + split["validation"] + split["test"] == 18
    assert len(summary["normalization"]["mean"]) == 1
    text = run_sense("info", str(path)).stdout
    assert "24 members, 1 channel(s) of 12x10" in text
    assert "class 'meander': 6 labeled" in text


def test_info_explains_why_a_single_class_cannot_be_split(tmp_path):
    from sense_core.ensemble import Ensemble

    single = Ensemble(np.zeros((4, 3, 3)), labels=[0, 0, -1, 0], class_names=["only"])
    path = write_ensemble(single, tmp_path / "one.npz")
    assert "split: not possible" in run_sense("info", str(path)).stdout


def test_convert_npz_to_folder_and_back(tmp_path, ensemble):
    source = write_ensemble(ensemble, tmp_path / "ens.npz")
    run_sense("convert", str(source), str(tmp_path / "members"))
    run_sense("convert", str(tmp_path / "members"), str(tmp_path / "again.npz"))
    again = read_ensemble(tmp_path / "again.npz")
    np.testing.assert_array_equal(again.fields, ensemble.fields)
    assert again.member_ids == ensemble.member_ids
    refused = run_sense("convert", str(source), str(tmp_path / "again.npz"), check=False)
    assert refused.returncode == 2
    assert "already exists" in refused.stderr


def test_errors_are_one_line_without_traceback(tmp_path):
    result = run_sense("info", str(tmp_path / "missing.npz"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"sense: error: {tmp_path / 'missing.npz'}: file not found"
    assert "Traceback" not in result.stderr


def test_info_describes_a_bundle(tmp_path):
    from helpers import make_runtime_bundle

    make_runtime_bundle(tmp_path / "bundle", projector=True)
    summary = json.loads(run_sense("info", str(tmp_path / "bundle"), "--json").stdout)
    assert set(summary["models"]) == {"encoder", "labeler", "projector"}
    text = run_sense("info", str(tmp_path / "bundle")).stdout
    assert "encoder" in text and "projector" in text
