"""The batch/MPI bugs of issue 17, each run as a user would meet it, and docs/paraview.md's
commands run exactly as written.

- ``mpirun -np 2 sense pvbatch --symmetric embed_ensemble.py ... --select "label == 3"`` hung;
  any failure on any rank now ends every rank with one line and exit status 1;
- ``--no-xvfb`` without a display aborted ParaView (SIGABRT); now one line says what to do;
- ``render_members.py`` with an unknown id exits 1 and writes no picture;
- the provenance names the ensemble's path (ParaView filter, ``sense demo``'s report);
- a failed reader stops a script with the reader's error, not with what the filters after it
  made of an empty input;
- the docs name no ``../shared`` folder (a clone has none).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO,
    SENSE,
    doc_blocks,
    make_ensemble,
    make_runtime_bundle,
    run_doc_blocks,
    run_paraview_script,
    run_process_tree,
)
from test_mpi import mpirun

from sense_core.io import write_ensemble
from sense_paraview import scripts_dir
from sense_paraview.launcher import display_problem

EMBED = str(scripts_dir() / "embed_ensemble.py")
RENDER = str(scripts_dir() / "render_members.py")
DOCS = REPO / "docs" / "paraview.md"


def no_display() -> dict[str, str]:
    """This environment without a display (as on a cluster node or in CI)."""
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def error_lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """10 members (ids run0..run9, classes 0-2) as .npz and as a member folder, a bundle."""
    folder = tmp_path_factory.mktemp("small")
    ensemble = make_ensemble(count=10)
    bundle = folder / "bundle"
    make_runtime_bundle(bundle)
    return {
        "npz": write_ensemble(ensemble, folder / "ens.npz"),
        "members": write_ensemble(ensemble, folder / "members"),
        "bundle": bundle,
    }


def run_mpi_embed(tmp_path: Path, ensemble: Path, bundle: Path, *options: str):
    """embed_ensemble.py on 2 MPI ranks (each on its private Xvfb); a hang fails the test."""
    out = tmp_path / "out"
    command = [*mpirun(2), SENSE, "pvbatch", "--symmetric", EMBED, str(ensemble), str(out)]
    command += ["--bundle", str(bundle), "--projection", "pca", *options]
    return run_process_tree(command, 240, cwd=REPO, env=no_display()), out


# ----------------------------------------------------------------------------- MPI: no hang
@pytest.mark.paraview
def test_mpi_selection_of_the_issue_completes(tmp_path, small):
    """The issue's command (a selection under MPI): it hung; it now writes every output once.
    About 20 s."""
    done, out = run_mpi_embed(tmp_path, small["npz"], small["bundle"], "--select", "label == 3")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "selected 0 member(s)" in done.stdout
    rows = (out / "embedding.csv").read_text().splitlines()
    assert len(rows) == 11 and rows[0].startswith("member_id,")  # rank 0's table, written once
    assert (out / "layout.png").stat().st_size > 1000


@pytest.mark.paraview
def test_mpi_a_failing_query_ends_every_rank_with_one_line(tmp_path, small):
    """The query runs on rank 0 (the only rank holding the map): its error ends both ranks.
    About 20 s."""
    done, out = run_mpi_embed(tmp_path, small["npz"], small["bundle"], "--select", "lable == 3")
    assert done.returncode != 0
    errors = error_lines(done.stderr, "embed_ensemble.py: error:")
    assert len(errors) == 1, done.stderr[-3000:]
    assert "--select: query 'lable == 3' failed: name 'lable' is not defined" in errors[0]
    assert "Loguru caught a signal" not in done.stderr  # every rank ended by itself
    assert not (out / "layout.png").exists()


@pytest.mark.paraview
def test_mpi_a_member_that_fails_on_one_rank_fails_every_rank(tmp_path, small):
    """A damaged member held by rank 1 only: the reader fails on every rank, the script ends
    on both with rank 1's error (one line), nothing is written. About 10 s."""
    members = tmp_path / "members"
    members.mkdir()
    for path in small["members"].iterdir():
        (members / path.name).write_bytes(path.read_bytes())
    (members / "run9.vti").write_text("garbage")  # rank 1 holds run5..run9
    done, out = run_mpi_embed(tmp_path, members, small["bundle"])
    assert done.returncode != 0
    errors = error_lines(done.stderr, "embed_ensemble.py: error:")
    assert len(errors) == 1, done.stderr[-3000:]
    assert "rank 1:" in errors[0] and "run9.vti" in errors[0] and "not valid XML" in errors[0]
    assert "Loguru caught a signal" not in done.stderr
    assert not (out / "embedding.csv").exists() and not (out / "layout.png").exists()


# ------------------------------------------------------------------ --no-xvfb, no display
def test_display_problem_says_what_is_missing(tmp_path):
    assert display_problem({}) == "DISPLAY is not set"
    assert display_problem({"DISPLAY": ":987"}) == "no X server runs on DISPLAY=:987"
    assert display_problem({"DISPLAY": "remote.example:0"}) == ""  # cannot tell: tried


def test_gui_with_no_xvfb_and_no_display_is_refused_in_one_line():
    done = run_process_tree([SENSE, "paraview", "--no-xvfb"], 120, cwd=REPO, env=no_display())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "sense: error: paraview needs a display to render and DISPLAY is not set (--no-xvfb): "
        "drop --no-xvfb (SENSE then starts a private Xvfb) or set DISPLAY to a running X server"
    ]


@pytest.mark.paraview
def test_scripts_that_render_with_no_xvfb_and_no_display_end_with_one_line(tmp_path, small):
    """SENSE's scripts check before rendering (no abort); any other script's abort is
    reported in one line by the launcher. About 10 s."""
    out = tmp_path / "out"
    done = run_process_tree(
        [SENSE, "pvbatch", "--no-xvfb", EMBED, str(small["npz"]), str(out)],
        120,
        cwd=REPO,
        env=no_display(),
    )
    assert done.returncode == 1
    assert "Loguru caught a signal" not in done.stderr  # no SIGABRT
    assert done.stderr.strip().splitlines() == [
        "embed_ensemble.py: error: writing layout.png needs a display and DISPLAY is not set: run "
        "the script with `sense pvbatch` without --no-xvfb (a private Xvfb, one per MPI rank), or "
        "set DISPLAY to a running X server"
    ]
    assert not out.exists()

    script = tmp_path / "render.py"
    script.write_text("from paraview.simple import *\nShow(Sphere())\nRender()\n")
    done = run_process_tree(
        [SENSE, "pvbatch", "--no-xvfb", str(script)], 120, cwd=REPO, env=no_display()
    )
    assert done.returncode == 134  # ParaView aborted (GLX only: no offscreen rendering)
    assert done.stderr.strip().splitlines()[-1] == (
        "sense: error: pvbatch needs a display to render and DISPLAY is not set (--no-xvfb): drop "
        "--no-xvfb (SENSE then starts a private Xvfb, one per MPI rank) or set DISPLAY to a "
        "running X server"
    )


# -------------------------------------------------------------- render_members: unknown ids
@pytest.mark.paraview
@pytest.mark.parametrize("ranks", [1, 2])
def test_render_members_with_an_unknown_id_fails_and_writes_nothing(tmp_path, small, ranks):
    """One process, and 2 MPI ranks (where rank 0 alone failed and mpirun killed the other
    one). About 4 s and 8 s."""
    picture = tmp_path / "members.png"
    command = [SENSE, "pvbatch", RENDER, str(small["npz"]), str(picture), "run1", "nope", "run2"]
    if ranks > 1:
        command = [*mpirun(ranks), *command[:2], "--symmetric", *command[2:]]
    done = run_process_tree(command, 120, cwd=REPO, env=no_display())
    assert done.returncode == 1
    assert error_lines(done.stderr, "render_members.py:") == [
        "render_members.py: error: member id(s) not in the ensemble: 'nope'"
    ]
    assert "Loguru caught a signal" not in done.stderr  # every rank ended by itself
    assert "wrote" not in done.stdout and not picture.exists()


# ----------------------------------------- provenance path; a failed reader's error, first
FIRST_ERROR_AND_PATH = """
import json
from paraview import servermanager
from paraview.simple import *
from sense_paraview import FilterError, show_linked_layout
try:
    show_linked_layout(SENSEEnsembleReader(FileName="no_such_members.npz"))
    first_error = ""
except FilterError as exc:
    first_error = str(exc)
embedding = SENSEEmbedding(Input=SENSEEnsembleReader(FileName={npz!r}), Bundle={bundle!r},
                           Projection="PCA", LinkedLayout=0)
table = servermanager.Fetch(embedding, idx=1)
provenance = json.loads(table.GetFieldData().GetAbstractArray("provenance").GetValue(0))
RESULT = {{"first_error": first_error, "ensemble": provenance["ensemble"]}}
"""


@pytest.mark.paraview
def test_a_failed_reader_stops_with_its_error_and_the_map_names_its_ensemble(tmp_path, small):
    """About 8 s."""
    script = FIRST_ERROR_AND_PATH.format(npz=str(small["npz"]), bundle=str(small["bundle"]))
    result = run_paraview_script(script, tmp_path, program="pvbatch")["result"]
    assert result["first_error"] == "no_such_members.npz: file not found"
    assert result["ensemble"]["path"] == str(small["npz"].resolve())
    assert result["ensemble"]["members"] == 10


@pytest.mark.slow
def test_sense_demo_report_names_the_ensemble_file(tmp_path, monkeypatch):
    """`sense demo` embedded its in-memory copy: report.md said ``ensemble | ``. About 4 s."""
    import sense_core.generators as generators
    import sense_core.projection as projection
    from sense_paraview.demo import run_demo

    generate = generators.generate_with_info

    def tiny(name, n, size, labeled_fraction, seed, **options):  # drops: ms, not MCMC
        return generate("drops", 40, 64, 0.2, seed)

    real = projection.ProjectionOptions
    monkeypatch.setattr(generators, "generate_with_info", tiny)
    monkeypatch.setattr(projection, "ProjectionOptions", lambda **o: real(**{**o, "method": "pca"}))
    run_demo(tmp_path / "demo", 40, 64, 0, paraview=False)
    npz = str((tmp_path / "demo" / "channels.npz").resolve())
    report = (tmp_path / "demo" / "embedding" / "report.md").read_text()
    assert f"| ensemble | `{npz}` |" in report
    saved = np.load(tmp_path / "demo" / "embedding" / "embedding.npz", allow_pickle=False)
    assert json.loads(str(saved["provenance"]))["ensemble"]["path"] == npz


# ------------------------------------------------------------------------------------ docs
def test_docs_name_no_folder_a_clone_lacks():
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        assert "../shared" not in path.read_text(encoding="utf-8"), path


def test_the_doc_blocks_are_all_seen():
    blocks = doc_blocks(DOCS.read_text())
    assert len(blocks) == DOCS.read_text().count("```") // 2
    for language, marker, _ in blocks:
        assert language in ("sh", "python"), language
        assert marker == "" or re.fullmatch(r"skip \(.+\)|file [\w.]+", marker), marker


@pytest.mark.paraview
def test_paraview_md_commands_run_as_written(tmp_path):
    """Every ```sh block of docs/paraview.md not marked ``doc-test: skip (why)`` runs, in order,
    with bash -e in a folder holding the clone's ``.venv`` and ``plugin`` (the docs' commands
    run from a clone's root), without a display; a ``doc-test: file NAME`` block is saved as
    NAME first. The MPI command runs on 2 ranks. About 60 s."""
    for name in (".venv", "plugin"):
        (tmp_path / name).symlink_to(REPO / name)
    env = no_display()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if os.geteuid() == 0:  # CI containers run as root; mpirun refuses that unless told
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"  # 2 ranks on a 1-core runner
    ran = [code for code, _ in run_doc_blocks(DOCS, tmp_path, env)]
    assert any("mpirun" in code for code in ran) and any("script.py" in code for code in ran)
    assert (tmp_path / "layout.png").stat().st_size > 1000  # script.py
    for name in ("embedded", "mpi"):
        out = tmp_path / "out" / name
        assert len((out / "embedding.csv").read_text().splitlines()) == 41, name
        assert (out / "selection.vtm").exists() and (out / "layout.png").exists(), name
    assert (tmp_path / "out" / "members.png").stat().st_size > 1000
