"""`sense demo` (what `make demo` runs) end to end on a small ensemble, ParaView included."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_sense
from PIL import Image

from sense_core.io import read_ensemble


def test_demo_writes_the_ensemble_a_summary_and_a_paraview_rendering(tmp_path):
    out = tmp_path / "demo"
    result = run_sense("demo", "--out", str(out), "--members", "60", "--size", "32")
    assert "open the members in ParaView" in result.stdout
    ensemble = read_ensemble(out / "channels.npz")
    assert len(ensemble) == 60 and ensemble.member_shape == (1, 32, 32)
    assert (out / "members" / "ensemble.vtm").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["members"] == 60
    assert summary["generated_by"]["generator"] == "channels"
    pixels = np.asarray(Image.open(out / "paraview_members.png").convert("L"), dtype=float)
    assert pixels.std() > 10  # members drawn, not a blank frame
    assert (out / "preview.png").stat().st_size > 1000
