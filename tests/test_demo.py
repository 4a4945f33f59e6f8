"""`sense demo` (what `make demo` runs) end to end on a small ensemble, ParaView included."""

from __future__ import annotations

import json

import numpy as np
from helpers import run_sense
from PIL import Image

from sense_core.io import read_ensemble


def test_demo_writes_the_ensemble_a_summary_and_a_paraview_rendering(tmp_path):
    out = tmp_path / "demo"
    result = run_sense("demo", "--out", str(out), "--members", "60", "--size", "32", "--quick")
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


def test_demo_embeds_with_the_shipped_bundle_and_renders_the_linked_layout(tmp_path):
    out = tmp_path / "demo"
    result = run_sense("demo", "--out", str(out), "--members", "80", "--quick")
    assert "embedded on CPUExecutionProvider" in result.stdout
    rows = (out / "embedding" / "embedding.csv").read_text().splitlines()
    assert len(rows) == 81  # header + one row per member
    assert "silhouette" in (out / "embedding" / "report.md").read_text()
    pixels = np.asarray(Image.open(out / "paraview" / "layout.png").convert("L"), dtype=float)
    assert pixels[:, :800].std() > 5 and pixels[:, 800:].std() > 5


def test_demo_generates_with_chains_that_mix_unless_quick(tmp_path, monkeypatch):
    """The demo's ensemble comes from DEMO_CHANNELS (longer, better-tempered chains than the
    generator's defaults, R-hat measured in docs/generators.md); --quick uses the defaults.
    The generator is stubbed: this checks what the demo asks for, in a second."""
    import sense_core.generators as generators
    from sense_paraview import demo

    asked = []
    generate = generators.generate_with_info

    def recording(name, n, size, labeled_fraction, seed, **options):
        asked.append(options)
        return generate("channels", n, size, labeled_fraction, seed, burn_in=20, thin=2)

    monkeypatch.setattr(generators, "generate_with_info", recording)
    monkeypatch.setattr(demo, "_shipped_bundle", lambda *args: None)  # no embedding here
    demo.run_demo(tmp_path / "mixing", 20, 32, 0, paraview=False)
    demo.run_demo(tmp_path / "quick", 20, 32, 0, paraview=False, quick=True)
    assert asked == [demo.DEMO_CHANNELS, {}]
    assert demo.DEMO_CHANNELS["swap_scheme"] == "even_odd"
    assert demo.DEMO_CHANNELS["burn_in"] > 1000 and demo.DEMO_CHANNELS["tempering_levels"] > 6
    assert demo.DEMO_CHANNELS["jump_every"] > 0


def test_the_shipped_channels_bundle_is_fitted_on_the_demos_chains():
    """scripts/train_shipped_models.sh generates channels64's ensemble with the demo's MCMC
    settings (the bundle is measured on the demo's kind of chains): the shell script repeats
    DEMO_CHANNELS, so a change to one must reach the other."""
    from helpers import REPO

    from sense_paraview.demo import DEMO_CHANNELS

    script = (REPO / "scripts" / "train_shipped_models.sh").read_text()
    start = script.index("ship_channels() {")
    channels = script[start : script.index("}", start)]
    for name, value in DEMO_CHANNELS.items():
        text = value if isinstance(value, str) else f"{value:g}"
        assert f"--{name.replace('_', '-')} {text}" in channels, name
