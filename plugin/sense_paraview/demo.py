"""``sense demo``: the main job on the built-in default ensemble, start to finish.

It generates the default ensemble (MCMC channel structures), writes it for ParaView, describes
it (classes, labels, split, normalisation), draws a gallery, embeds it with the shipped bundle
for its member shape (models/; no training on this path) into a CSV, npz, scatter PNG and
report, and renders the linked layout and a member mosaic through SENSE's ParaView plugin.

It lives in the ParaView package, not in ``sense_core``: it is the whole product's demo, and
it drives this package's pvbatch scripts, so its place is the layer that sees both the core
and the plugin (the core never imports ``sense_paraview``). Registered as ``sense demo`` by
``sense_paraview.cli`` through the ``sense.commands`` entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from sense_core.errors import SenseError
from sense_paraview import scripts_dir

# The demo's MCMC settings, not ``sense generate channels``' defaults: even-odd swaps on a hotter,
# denser tempering ladder, longer chains and differential-evolution jumps between the chains of
# a problem every 10 steps, so that the chains of each inverse problem mix (R-hat 1.02-1.08 per
# problem on the default demo ensemble instead of 1.90-4.09, for about 17x the MCMC work;
# docs/generators.md, Convergence). scripts/train_shipped_models.sh repeats them for channels64.
DEMO_CHANNELS = {
    "swap_scheme": "even_odd",
    "tempering_levels": 10,
    "hottest_temperature": 200.0,
    "burn_in": 6000,
    "thin": 200,
    "jump_every": 10,
}


def _step(message: str) -> float:
    print(f"[demo] {message}", flush=True)
    return time.perf_counter()


def _shipped_bundle(member_shape, class_names=None):
    from sense_core.bundle import BundleError, find_shipped_bundle

    try:
        return find_shipped_bundle(member_shape, class_names)
    except BundleError:
        return None


def _pvbatch(script: str, *args: str) -> None:
    """Run one of sense_paraview's scripts with ``sense pvbatch``; raise with its output."""
    sense = str(Path(sys.executable).with_name("sense"))
    command = [sense, "pvbatch", str(scripts_dir() / script), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SenseError(f"pvbatch {script} failed ({result.returncode}):\n{result.stderr[-2000:]}")


def run_demo(
    out: Path,
    members: int = 600,
    size: int = 64,
    seed: int = 0,
    paraview: bool = True,
    quick: bool = False,
) -> dict:
    """Run the demo into ``out``; return what was written (paths and a summary). ``quick``
    generates with the generator's default MCMC (seconds; the chains do not mix) instead of
    ``DEMO_CHANNELS`` (about a minute on two cores)."""
    from sense_core.ensemble import describe_ensemble
    from sense_core.generators import generate_with_info
    from sense_core.generators.preview import write_preview
    from sense_core.io import write_ensemble
    from sense_core.io.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    settings = {} if quick else DEMO_CHANNELS
    start = _step(
        f"generating the default ensemble: {members} MCMC channel members, {size}px"
        + (" (quick MCMC: chains do not mix)" if quick else "")
    )
    ensemble, info = generate_with_info("channels", members, size, 0.1, seed, **settings)
    outputs = {
        "ensemble": write_ensemble(ensemble, out / "channels.npz", overwrite=True),
        "members": write_ensemble(ensemble, out / "members", overwrite=True),
        "preview": write_preview(ensemble, out / "preview.png", title="channels (demo)"),
    }
    summary = describe_ensemble(ensemble, stats=True)
    summary["path"] = str(outputs["ensemble"])
    summary["generated_by"] = info.to_dict()
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    outputs["summary"] = out / "summary.json"
    print(f"[demo] {members} members in {time.perf_counter() - start:.1f} s")
    if "r_hat" in info.stats:
        r_hat = ", ".join(f"{value:.2f}" for value in info.stats["r_hat"])
        print(f"[demo] R-hat per problem {r_hat} (1.1 or less: the problem's chains mix)")
    print("[demo] labeled per class:")
    for name, count in summary["class_counts"].items():
        print(f"         {name:<16} {count}")
    split = summary["split"]
    print(
        f"[demo] split: train {split['train']}, validation {split['validation']}, "
        f"test {split['test']}"
    )

    bundle = _shipped_bundle(ensemble.member_shape, ensemble.class_names)
    if bundle is not None:
        from sense_core.embedding import embed_ensemble, write_outputs
        from sense_core.io import open_ensemble
        from sense_core.projection import ProjectionOptions

        start = _step(f"embedding with the shipped bundle {bundle} and projecting with UMAP")
        embedding = embed_ensemble(  # the written file: its path goes into the provenance
            open_ensemble(outputs["ensemble"]),
            bundle,
            projection=ProjectionOptions(method="umap", seed=seed),
        )
        written = write_outputs(embedding, out / "embedding", overwrite=True)
        outputs.update({f"embedding_{k}": path for k, path in written.items()})
        metrics = embedding.provenance.get("metrics", {})
        print(
            f"[demo] embedded on {embedding.provenance['inference']['provider']} in "
            f"{time.perf_counter() - start:.1f} s; metrics: {metrics}"
        )
    else:
        print(f"[demo] no shipped bundle for members {ensemble.member_shape}; skipping embedding")

    if paraview and bundle is not None:
        start = _step("rendering the linked layout (scatter | members) with ParaView (pvbatch)")
        layout_dir = out / "paraview"
        _pvbatch(
            "embed_ensemble.py",
            str(outputs["ensemble"]),
            str(layout_dir),
            "--bundle",
            str(bundle),
            "--projection",
            "umap",
            "--select",
            "label == 0",
        )
        outputs["paraview_layout"] = layout_dir / "layout.png"
        print(f"[demo] rendered in {time.perf_counter() - start:.1f} s")

    if paraview:
        start = _step("rendering two members per class with SENSE's ParaView plugin (pvbatch)")
        picks = []
        for label in range(len(ensemble.class_names)):
            picks += [ensemble.member_ids[i] for i in (ensemble.labels == label).nonzero()[0][:2]]
        shot = out / "paraview_members.png"
        _pvbatch("render_members.py", str(outputs["members"] / "ensemble.vtm"), str(shot), *picks)
        outputs["paraview_screenshot"] = shot
        print(f"[demo] rendered in {time.perf_counter() - start:.1f} s")

    print("[demo] wrote:")
    for name, path in outputs.items():
        print(f"         {name:<20} {path}")
    print(f"[demo] open the members in ParaView:  sense paraview {outputs['members']}/ensemble.vtm")
    return {name: str(path) for name, path in outputs.items()}
