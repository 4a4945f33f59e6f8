"""Smoke test of the ParaView GUI: `sense paraview` starts under Xvfb with SENSE's plugin
loaded from PV_PLUGIN_PATH, runs a script in the GUI's Python, and renders members."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from conftest import REPO, SENSE
from PIL import Image

from sense_core.io import write_ensemble

pytestmark = pytest.mark.paraview


def test_gui_starts_with_the_plugin_and_renders_the_member_view(tmp_path, ensemble):
    path = write_ensemble(ensemble, tmp_path / "ens.npz")
    shot, result = tmp_path / "gui_view.png", tmp_path / "gui_result.json"
    script = tmp_path / "gui_script.py"
    script.write_text(
        f"""
import json
from paraview import servermanager
from paraview.simple import *
prototypes = servermanager.ProxyManager()
reader = SENSEEnsembleReader(FileName={str(path)!r})
members = SENSEMemberView(Input=reader, MemberIds=["run1", "run2", "run5", "run6"])
view = GetActiveViewOrCreate("RenderView")
Show(members, view)
ResetCamera(view)
SaveScreenshot({str(shot)!r}, view, ImageResolution=[640, 400])
json.dump({{
    "reader": prototypes.GetPrototypeProxy("sources", "SENSEEnsembleReader") is not None,
    "member_view": prototypes.GetPrototypeProxy("filters", "SENSEMemberView") is not None,
}}, open({str(result)!r}, "w"))
"""
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    completed = subprocess.run(
        [SENSE, "paraview", f"--script={script}", "--exit"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(result.read_text()) == {"reader": True, "member_view": True}
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (400, 640) and pixels.std() > 5
