"""Bundle versions beside an ensemble and training them in the background (issue 16, item 3).

Versions: numbered, listed, atomic, read-only fallback. ``sense train-version``: a head on an
existing bundle's latents, one class refused with nothing written. Under pvpython: a head trained
in the background is swapped into the SENSE Embedding and the map's labels change; a cancelled
full fit leaves no version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import make_ensemble, make_runtime_bundle, run_paraview_script

from sense_core import bundle_versions as versions
from sense_core import label_store
from sense_core.bundle import Bundle
from sense_core.cli import main
from sense_core.ensemble import Ensemble
from sense_core.errors import SenseError
from sense_core.io import write_ensemble


@pytest.fixture
def ens(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    return write_ensemble(make_ensemble(24), tmp_path / "data" / "e.npz")


def separable(count: int = 36, seed: int = 0) -> tuple[Ensemble, np.ndarray]:
    """Three classes far apart (in the fields, and so in any linear encoder's latents); every
    second member hand-labeled. Returns the ensemble and every member's true class."""
    rng = np.random.default_rng(seed)
    truth = np.arange(count) % 3
    fields = rng.normal(size=(count, 1, 12, 10)).astype(np.float32)
    fields += 4.0 * truth[:, None, None, None]
    labels = np.where(np.arange(count) % 2 == 0, truth, -1)
    names = ("straight", "meander", "braided")
    ids = [f"run{i}" for i in range(count)]
    return Ensemble(fields=fields, labels=labels, class_names=names, member_ids=ids), truth


def _add(ensemble: Path, kind: str = "head", fail: bool = False) -> versions.BundleVersion:
    with versions.new_version(ensemble, kind, command=["test"]) as draft:
        with tempfile.TemporaryDirectory() as scratch:  # the helper writes beside the bundle
            make_runtime_bundle(Path(scratch) / "bundle")
            shutil.copytree(Path(scratch) / "bundle", draft.folder, dirs_exist_ok=True)
        draft.labels, draft.accuracy = 18, 0.5
        if fail:
            raise RuntimeError("training failed half-way")
    return versions.read_version(draft.path)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_versions_are_numbered_listed_and_written_whole(ens):
    assert versions.list_versions(ens) == [] and versions.latest_version(ens) is None
    first = _add(ens)
    assert first.path == ens.with_name("e.npz.sense") / "bundles" / "001"
    assert (first.number, first.kind, first.labels, first.accuracy) == (1, "head", 18, 0.5)
    Bundle.load(first.path)
    with pytest.raises(RuntimeError, match="half-way"):
        _add(ens, "full", fail=True)
    folder = first.path.parent
    assert [v.name for v in versions.list_versions(ens)] == ["001"]
    assert _leftovers(folder) == []  # the failed draft is gone, no lock left
    second = _add(ens, "label-free")
    assert [v.number for v in versions.list_versions(ens)] == [1, 2]
    assert versions.latest_version(ens).path == second.path
    assert versions.find_version(ens, "002").kind == "label-free"
    with pytest.raises(SenseError, match="no bundle version 7 .kept: 001, 002"):
        versions.find_version(ens, 7)
    assert "version 002: label-free, 18 hand labels, accuracy 0.500" in second.describe()
    (folder / "003").mkdir()  # not a version (no record): not listed, but its number is taken
    assert versions.next_number(ens) == 4 and len(versions.list_versions(ens)) == 2
    with pytest.raises(SenseError, match="unknown bundle version kind"):
        _add(ens, "other")


def test_a_draft_that_is_not_a_bundle_is_not_kept(ens):
    with pytest.raises(SenseError, match="not a SENSE bundle"):
        with versions.new_version(ens, "head"):
            pass
    assert versions.list_versions(ens) == []


def test_a_killed_training_leaves_a_hidden_folder_that_is_removed(ens):
    folder = versions.versions_folder(ens)
    folder.mkdir(parents=True)
    stale = folder / ".001.999999999.abc.part"  # a writer whose process is gone
    stale.mkdir()
    (stale / "encoder.onnx").write_bytes(b"half")
    assert versions.list_versions(ens) == []
    assert versions.remove_abandoned(ens) == [stale] and not stale.exists()


def test_a_read_only_ensemble_folder_keeps_versions_under_the_labels_home(
    ens, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("SENSE_LABELS_HOME", str(home))
    real = label_store._writable
    monkeypatch.setattr(label_store, "_writable", lambda f: f != ens.parent and real(f))
    version = _add(ens)
    assert version.path.parent.parent.parent == home
    assert not ens.with_name("e.npz.sense").exists()
    assert [v.path for v in versions.list_versions(ens)] == [version.path]
    monkeypatch.setattr(label_store, "_writable", lambda f: False)
    with pytest.raises(SenseError, match="cannot be kept.*SENSE_LABELS_HOME") as caught:
        versions.versions_folder(ens)
    assert "\n" not in str(caught.value)


@pytest.mark.training
@pytest.mark.slow  # about 4 s
def test_sense_train_version_puts_a_head_on_the_bundle(ens, tmp_path, capsys):
    make_runtime_bundle(tmp_path / "bundle", projector=True)
    label_store.label(ens, ["run0", "run4"], "new class")  # labeling added a class
    assert (
        main(["train-version", str(ens), "--kind", "head", "--bundle", str(tmp_path / "bundle")])
        == 0
    )
    out = capsys.readouterr().out
    assert "[1/3]" in out and "[3/3]" in out and out.strip().endswith("bundles/001")
    version = versions.latest_version(ens)
    assert version.kind == "head" and version.labels == 20  # 18 in the ensemble, 2 added
    assert version.classes[-1] == "new class" and 0.0 <= version.accuracy <= 1.0
    assert version.base == str((tmp_path / "bundle").resolve())
    bundle = Bundle.load(version.path)
    assert bundle.class_names == tuple(version.classes)
    labeler = bundle.model("labeler")
    assert labeler.input_name == "latent" and labeler.details["choice"]["chosen"]
    manifest = json.loads((version.path / "sense.json").read_text())
    assert manifest["training"]["labeler"]["base"] == version.base
    # the next head goes on the newest version by default
    assert main(["train-version", str(ens)]) == 0
    assert versions.latest_version(ens).base == str(version.path)


def test_one_class_of_hand_labels_is_a_clear_message_and_nothing_is_written(tmp_path, capsys):
    ensemble, _ = separable(12)
    labels = np.where(ensemble.labels >= 0, 0, -1)  # every hand label says "straight"
    one = Ensemble(ensemble.fields, labels, ensemble.class_names, ensemble.member_ids)
    path = write_ensemble(one, tmp_path / "one.npz")
    assert main(["train-version", str(path), "--kind", "full"]) == 2
    err = capsys.readouterr().err
    assert "every hand label is class 'straight'" in err and "at least two classes" in err
    assert len(err.strip().splitlines()) == 1
    import sense_paraview

    with pytest.raises(SenseError, match="at least two classes"):
        sense_paraview.train(str(path), "head")
    assert not path.with_name("one.npz.sense").exists()
    none = write_ensemble(Ensemble(ensemble.fields), tmp_path / "none.npz")
    with pytest.raises(SenseError, match="no hand labels: a head learns from them"):
        sense_paraview.train(str(none), "head")
    assert not none.with_name("none.npz.sense").exists()


PV_TRAIN = """
import os, time
from pathlib import Path
from paraview.simple import *
import sense_paraview
from sense_paraview.failures import update_or_raise
LoadPlugin(str(sense_paraview.plugin_file()), ns=globals())
reader = SENSEEnsembleReader(FileName={ens!r})
embedding = SENSEEmbedding(Input=reader, Bundle={bundle!r}, Projection="PCA", LinkedLayout=0)
update_or_raise(embedding)

def labels():
    table = servermanager.Fetch(embedding, idx=1)
    column = table.GetColumnByName("class_name")
    return [column.GetValue(i) for i in range(table.GetNumberOfRows())]

before = labels()
# no Bundle, no shipped bundle of this shape, no version yet: a clear error
plain = SENSEEmbedding(Input=reader, Projection="PCA", LinkedLayout=0)
try:
    update_or_raise(plain)
    no_bundle = None
except Exception as exc:
    no_bundle = str(exc)
job = sense_paraview.train(embedding, "head")
first = job.progress
version = job.wait(timeout=120)
RESULT = {{
    "before": before, "after": labels(), "bundle": embedding.Bundle, "version": str(version.path),
    "state": job.state, "progress": [first, job.progress], "listed": [str(v.path) for v in
    sense_paraview.bundle_versions(reader)], "lines": job.lines,
}}
# an Embedding without a Bundle now takes the newest version
plain.GetClientSideObject().Modified()
plain.SMProxy.MarkModified(plain.SMProxy)
update_or_raise(plain)
table = servermanager.Fetch(plain, idx=1)
provenance = json.loads(table.GetFieldData().GetAbstractArray("provenance").GetValue(0))
RESULT.update(no_bundle=no_bundle, default=provenance["bundle"]["path"])
# switching back: the Embedding's Bundle set to the older bundle
sense_paraview.use_version(embedding, {bundle!r})
RESULT["back"] = labels() == before
# a full fit, cancelled while it writes its version: nothing is kept
job = sense_paraview.train({ens!r}, "full", epochs=50)
folder = Path(version.path).parent
deadline = time.time() + 120
while time.time() < deadline and not any(p.name.startswith(".002.") for p in folder.iterdir()):
    job.poll()
    time.sleep(0.1)
RESULT["draft_seen"] = any(p.name.startswith(".002.") for p in folder.iterdir())
job.cancel()
RESULT["cancelled"] = job.state
RESULT["after_cancel"] = sorted(p.name for p in folder.iterdir())
RESULT["alive"] = job.process.poll() is None
"""


@pytest.mark.training
@pytest.mark.paraview
@pytest.mark.slow
def test_a_head_trained_in_the_background_is_swapped_into_the_map_and_cancel_keeps_nothing(
    tmp_path,
):
    (tmp_path / "data").mkdir()
    ensemble, truth = separable()
    ens = write_ensemble(ensemble, tmp_path / "data" / "e.npz")
    bundle = tmp_path / "bundle"
    make_runtime_bundle(bundle, projector=True)
    script = PV_TRAIN.format(ens=str(ens), bundle=str(bundle))
    result = run_paraview_script(script, tmp_path)["result"]
    assert result["state"] == "done" and result["progress"][1] == 1.0
    assert result["bundle"] == result["version"] and result["listed"] == [result["version"]]
    assert result["version"].endswith("e.npz.sense/bundles/001")
    # the random linear labeler of the test bundle vs a head trained on the hand labels
    names, unlabeled = list(ensemble.class_names), ensemble.labels < 0
    accuracy = [
        np.mean(np.array([names.index(c) for c in result[key]])[unlabeled] == truth[unlabeled])
        for key in ("before", "after")
    ]
    assert accuracy[1] > accuracy[0] and accuracy[1] >= 0.9
    assert result["back"] is True
    assert "no shipped bundle takes members of shape" in result["no_bundle"]
    assert "none was trained for this ensemble yet" in result["no_bundle"]
    assert "sense_paraview.train(embedding, 'full')" in result["no_bundle"]
    assert result["default"] == result["version"]
    assert any(line.startswith("[2/3]") for line in result["lines"])
    assert result["draft_seen"] and result["cancelled"] == "cancelled"
    assert result["after_cancel"] == ["001"] and result["alive"] is False
    assert os.listdir(ens.parent) == ["e.npz", "e.npz.sense"]


GUI_SCRIPT = """
import json
from paraview.simple import *
import sense_paraview
reader = SENSEEnsembleReader(FileName={ens!r})
embedding = SENSEEmbedding(Input=reader, Bundle={bundle!r}, Projection="PCA", LinkedLayout=0)
Show(embedding)
Render()
job = sense_paraview.train(embedding, "head")
watched = bool(sense_paraview.training_jobs._WATCHED)
report = {{"state_at_start": job.state, "watched_at_start": watched}}
interactor = GetActiveView().GetInteractor()

def check(obj, event):  # the test's own timer: report once the job's timer has finished it
    if job.done and "state" not in report:
        report.update(state=job.state, bundle=embedding.Bundle, lines=job.lines,
                      version=str(job.version.path) if job.version else None,
                      watched=bool(sense_paraview.training_jobs._WATCHED))
        with open({report_path!r}, "w") as f:
            json.dump(report, f)

sense_paraview._test_keep = (check, interactor.AddObserver("TimerEvent", check),
                             interactor.CreateRepeatingTimer(250))
"""


@pytest.mark.training
@pytest.mark.paraview
@pytest.mark.slow
def test_in_the_gui_a_timer_follows_the_job_and_swaps_the_bundle(tmp_path):
    """The real GUI (under Xvfb), as a person leaves it running: ``train`` called from the
    ``--script`` (the Python Shell), a timer of the view's interactor polls the job, shows
    progress and swaps the bundle; the GUI is not blocked. (No event player and no macro: a
    Python timer made by a macro, by a filter's execution or in another callback crashes
    ParaView 5.11 at its first call; see ``training_jobs.watch``.)"""
    import subprocess
    import time

    from helpers import REPO, SENSE, kill_process_tree

    (tmp_path / "data").mkdir()
    ensemble, _ = separable()
    ens = write_ensemble(ensemble, tmp_path / "data" / "e.npz")
    bundle, report = tmp_path / "bundle", tmp_path / "report.json"
    make_runtime_bundle(bundle, projector=True)
    script = tmp_path / "start.py"
    script.write_text(GUI_SCRIPT.format(ens=str(ens), bundle=str(bundle), report_path=str(report)))
    config = tmp_path / "config" / "ParaView"
    config.mkdir(parents=True)
    (config / "ParaView5.11.0.ini").write_text(
        "[General]\nGeneralSettings.ShowWelcomeDialog=false\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    log = (tmp_path / "gui.log").open("w")
    gui = subprocess.Popen(
        [SENSE, "paraview", f"--script={script}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not report.exists() and gui.poll() is None:
            time.sleep(0.5)
    finally:
        kill_process_tree(gui)
        log.close()
    output = (tmp_path / "gui.log").read_text()
    assert report.exists(), output[-4000:]
    result = json.loads(report.read_text())
    assert result["state_at_start"] == "running" and result["watched_at_start"] is True
    assert result["state"] == "done" and result["bundle"] == result["version"]
    assert result["watched"] is False  # the job's timer stopped with it
    assert "SENSE: training head started" in output and "SENSE: training done" in output
    assert "SIGSEGV" not in output


@pytest.mark.training
@pytest.mark.slow  # about 4 s
def test_a_label_free_bundle_labels_the_members_by_their_suggested_groups(tmp_path):
    """What ``train-version --kind full`` adds to a label-free fit (the fit itself is tested in
    test_fit.py): a labeler predicting the suggested groups, so that the first map shows them."""
    from sense_training.cli import _label_groups

    ensemble, truth = separable()
    make_runtime_bundle(tmp_path / "bundle", labeler=False)
    names = _label_groups(ensemble, tmp_path / "bundle", seed=0)
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.class_names == tuple(names) and names[0] == "group 1"
    labeler = bundle.model("labeler")
    assert labeler.input_name == "latent"
    assert labeler.details["choice"]["agreement_with_groups"] >= 0.95
    from sense_core.embedding import embed_ensemble
    from sense_core.projection import ProjectionOptions

    embedding = embed_ensemble(ensemble, bundle.folder, projection=ProjectionOptions(method="pca"))
    predicted = np.asarray(embedding.labels)[np.asarray(ensemble.labels) < 0]
    # three classes far apart: the groups are the classes, up to their names
    pairs = set(zip(predicted.tolist(), truth[np.asarray(ensemble.labels) < 0].tolist()))
    assert len(pairs) == 3


def test_the_first_apply_in_the_gui_starts_one_label_free_training(ens, monkeypatch):
    """No Bundle, no shipped bundle of the shape, no version: in the GUI the filter starts a
    label-free training once per ensemble (without a timer: one made during a filter's
    execution crashes ParaView 5.11), reports its progress at each execution, and uses the
    version once it is there."""
    import sense_paraview.gui
    from sense_core.bundle import BundleError
    from sense_paraview import training_jobs

    class Started:
        progress, state, polls = 0.25, "running", 0

        def poll(self):
            Started.polls += 1
            return self.state

    started = []
    monkeypatch.setattr(training_jobs, "_FIRST_USE", {})
    monkeypatch.setattr(training_jobs, "train", lambda *a, **o: started.append((a, o)) or Started())
    monkeypatch.setattr(sense_paraview.gui, "in_gui", lambda: False)
    with pytest.raises(BundleError, match="none was trained for this ensemble yet; train one"):
        training_jobs.bundle_for_filter((1, 12, 10), (), str(ens))
    assert started == []  # outside the GUI: only the message
    monkeypatch.setattr(sense_paraview.gui, "in_gui", lambda: True)
    for _ in range(2):  # the Field Symmetries chosen before the first Apply go with it
        with pytest.raises(BundleError, match=r"label-free bundle in the background \(25% done"):
            training_jobs.bundle_for_filter((1, 12, 10), (), str(ens), views="periodic")
    assert started == [((str(ens), "full"), {"views": "periodic", "follow": False})]
    assert Started.polls == 1
    version = _add(ens, "label-free")
    assert training_jobs.bundle_for_filter((1, 12, 10), (), str(ens)) == str(version.path)
    assert Started.polls == 2


@pytest.mark.training
@pytest.mark.slow  # a child process: about 3 s
def test_a_failed_job_reports_the_childs_error_and_keeps_nothing(ens, tmp_path):
    from sense_paraview import training_jobs

    job = training_jobs.train(str(ens), "head", bundle=str(tmp_path / "missing"))
    assert job.state == "running" and not job.done
    with pytest.raises(SenseError, match="training failed: .*missing: not a SENSE bundle"):
        job.wait(timeout=120)
    assert job.state == "failed" and "not a SENSE bundle" in job.error
    assert not job.error.startswith("sense:") and versions.list_versions(ens) == []
    job.cancel()  # nothing left to stop
    assert job.state == "failed"


def test_named_field_symmetries_reach_the_full_fit_as_its_views(ens, monkeypatch):
    """Train Full Fit with *Field Symmetries* chosen: ``train(views=...)`` gives the child
    ``--instance-views`` (so ``sense train-version`` fits with the ``ssl`` labeler); not
    named, none; a head refuses views. The panel's choices are presets of the ssl views."""
    from sense_paraview import actions, training_jobs
    from sense_paraview.algorithms import FIELD_VIEWS
    from sense_training.config import GENERIC_VIEWS, VIEW_PRESETS

    assert {value for value, _ in FIELD_VIEWS} == {""} | set(VIEW_PRESETS) - {GENERIC_VIEWS}
    commands = []

    class Job:
        def __init__(self, path, kind, command, embedding):
            commands.append(command)
            self.process = type("Process", (), {"pid": 1})()

    monkeypatch.setattr(training_jobs, "TrainingJob", Job)
    training_jobs.train(str(ens), "full", views="periodic", follow=False)
    training_jobs.train(str(ens), "full", follow=False)
    assert commands[0][-2:] == ["--instance-views", "periodic"]
    assert "--instance-views" not in commands[1]
    with pytest.raises(SenseError, match="views are for a full fit"):
        training_jobs.train(str(ens), "head", views="periodic", follow=False)

    class Property:  # a panel drop-down: chosen (unchecked) before Apply, or applied
        def __init__(self, applied, chosen=None):
            self.applied, self.chosen = applied, chosen

        def GetNumberOfUncheckedElements(self):
            return 0 if self.chosen is None else 1

        def GetUncheckedElement(self, _):
            return self.chosen

        def GetNumberOfElements(self):
            return 1

        def GetElement(self, _):
            return self.applied

    def panel(applied, chosen=None):
        proxy = type("SMProxy", (), {"GetProperty": lambda self, _: Property(applied, chosen)})
        return type("Embedding", (), {"SMProxy": proxy()})()

    periodic = [value for value, _ in FIELD_VIEWS].index("periodic")
    assert actions.field_views(panel(0)) is None
    assert actions.field_views(panel(0, periodic)) == "periodic"
    assert actions.field_views(panel(periodic)) == "periodic"
