"""The labeling loop's core: the label sidecar beside an ensemble (label, unlabel, undo, read
back by every reader), suggestions of what to label next, ``sense label`` / ``sense suggest``
and the pvpython wrappers (docs/labeling.md runs as written)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO,
    doc_blocks,
    make_ensemble,
    make_runtime_bundle,
    namespaces_work,
    run_doc_blocks,
)

from sense_core import label_store
from sense_core.cli import main
from sense_core.ensemble import UNLABELED
from sense_core.errors import SenseError
from sense_core.io import open_ensemble, write_ensemble
from sense_core.suggest import suggest_members

CLASSES = ("straight", "meander", "braided")


@pytest.fixture(params=["npz", "folder"])
def ens(request, tmp_path) -> Path:
    """A 24-member ensemble (ids run0..run23; run0, run4, ... unlabeled) as .npz or folder."""
    target = tmp_path / ("ens.npz" if request.param == "npz" else "ens")
    return write_ensemble(make_ensemble(24), target, member_format="npy")


def one_line(exc: pytest.ExceptionInfo, *fragments: str) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


def cli_fails(capsys, *args: str) -> str:
    """``sense ARGS`` in-process fails with exit status 2 and one ``sense: error:`` line."""
    assert main([str(a) for a in args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sense: error: "), lines
    return lines[0]


# --------------------------------------------------------------------------- the sidecar
def test_label_round_trip_with_provenance_time_and_step(ens):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    step = label_store.label(ens, ["run0", "run4", "run0"], "new, odd")  # repeats dropped
    label_store.label(ens, "run1", "braided", source="corrected")
    after = datetime.now(timezone.utc)
    assert step.step == 1 and step.members == ("run0", "run4")
    folder = ens.with_name(ens.name + ".sense")
    assert label_store.sidecar_folder(ens) == folder and (folder / "labels.csv").is_file()
    assert (folder / "labels.csv").read_text().splitlines()[0] == "member_id,class,source,time,step"

    records = label_store.read_labels(ens).records
    assert [(r.member_id, r.class_name, r.source, r.step) for r in records.values()] == [
        ("run0", "new, odd", "hand", 1),
        ("run4", "new, odd", "hand", 1),
        ("run1", "braided", "corrected", 2),
    ]
    for record in records.values():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record.time)
        stamp = datetime.strptime(record.time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert before <= stamp <= after

    store = open_ensemble(ens)
    assert store.class_names == (*CLASSES, "new, odd")  # new classes after the ensemble's
    index = {m: i for i, m in enumerate(store.member_ids)}
    assert store.labels[index["run0"]] == store.labels[index["run4"]] == 3
    assert store.labels[index["run1"]] == 2  # was meander (0), the sidecar wins
    own = open_ensemble(ens, sidecar=False)
    assert own.class_names == CLASSES and own.labels[index["run0"]] == UNLABELED
    assert store.label_origin["sidecar"]["labels"] == 3
    assert store.label_origin["ensemble"]["labels"] == 17  # 18 own, one replaced


def test_class_names_that_look_like_formulas_or_hold_quotes_round_trip(tmp_path):
    path = write_ensemble(make_ensemble(8), tmp_path / "e.npz")
    names = ["=cmd|' /C calc'!A0", 'say "hi", then', "-minus"]
    for member, name in zip(("run0", "run1", "run2"), names):
        label_store.label(path, [member], name)
    text = (tmp_path / "e.npz.sense" / "labels.csv").read_text()
    assert "'=cmd" in text and "'-minus" in text  # escaped for spreadsheets
    assert open_ensemble(path).class_names[-3:] == tuple(names)


def test_undo_takes_back_each_step_in_turn(ens):
    original = open_ensemble(ens)
    label_store.label(ens, ["run1", "run2"], "new")
    label_store.label(ens, ["run2"], "straight")
    label_store.unlabel(ens, ["run1", "run3"])
    states = []
    for _ in range(3):
        store = open_ensemble(ens)
        states.append((store.labels.tolist(), store.class_names))
        label_store.undo(ens)
    final = open_ensemble(ens)
    assert final.labels.tolist() == original.labels.tolist()
    assert final.class_names == original.class_names
    index = {m: i for i, m in enumerate(original.member_ids)}
    unlabeled, relabeled, first = states
    assert unlabeled[0][index["run1"]] == unlabeled[0][index["run3"]] == UNLABELED
    assert relabeled[0][index["run1"]] == 3 and relabeled[0][index["run2"]] == 0
    assert first[1] == (*CLASSES, "new")
    with pytest.raises(SenseError) as exc:
        label_store.undo(ens)
    one_line(exc, "no labeling step to undo")


def test_unlabel_removes_the_ensembles_own_label_and_a_sidecar_label(ens):
    index = {m: i for i, m in enumerate(open_ensemble(ens).member_ids)}
    assert open_ensemble(ens).labels[index["run1"]] != UNLABELED
    label_store.label(ens, ["run0"], "meander")
    label_store.unlabel(ens, ["run1", "run0"])
    records = label_store.read_labels(ens).records
    assert records["run1"].source == "unlabeled" and records["run1"].class_name == ""
    assert "run0" not in records  # it had only the sidecar's label: its row is gone
    store = open_ensemble(ens)
    assert store.labels[index["run1"]] == store.labels[index["run0"]] == UNLABELED
    with pytest.raises(SenseError) as exc:
        label_store.unlabel(ens, ["run0"])
    one_line(exc, "none of the 1 member(s) has a label")


def test_sense_info_says_where_the_labels_come_from(ens, capsys):
    label_store.label(ens, ["run0", "run4"], "meander")
    label_store.unlabel(ens, ["run1"])
    assert main(["info", str(ens)]) == 0
    text = capsys.readouterr().out
    own = "labels.csv" if ens.is_dir() else ens.name
    assert f"labels: 17 from {own}, 2 from the sidecar {ens}.sense/labels.csv (" in text
    assert "1 of the ensemble's removed" in text
    assert "labeled 19, unlabeled 5" in text
    assert main(["info", str(ens), "--no-sidecar"]) == 0
    assert "labeled 18, unlabeled 6" in capsys.readouterr().out
    assert main(["info", str(ens), "--json"]) == 0
    origin = json.loads(capsys.readouterr().out)["label_origin"]
    assert origin["sidecar"]["hand"] == 2 and origin["sidecar"]["unlabeled"] == 1


@pytest.mark.training
@pytest.mark.slow  # imports torch: about 3 s
def test_sense_fit_gets_the_sidecars_labels(ens, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    import sense_training.pipeline as pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "fit", lambda store, *a, **k: seen.setdefault("store", store))
    label_store.label(ens, ["run0"], "new")
    assert main(["fit", "--data", str(ens), "--out", str(tmp_path / "b")]) == 0
    store = seen["store"]
    assert store.class_names[-1] == "new"
    assert store.labels[list(store.member_ids).index("run0")] == 3


def test_an_ensemble_in_a_read_only_folder_gets_its_sidecar_under_the_labels_home(
    tmp_path, monkeypatch
):
    (tmp_path / "data").mkdir()
    path = write_ensemble(make_ensemble(8), tmp_path / "data" / "e.npz")
    home = tmp_path / "home"
    monkeypatch.setenv("SENSE_LABELS_HOME", str(home))
    real = label_store._writable
    monkeypatch.setattr(label_store, "_writable", lambda f: f != path.parent and real(f))
    step = label_store.label(path, ["run0"], "x")
    assert step.folder.parent == home and step.folder.name.startswith("e.npz-")
    assert not (tmp_path / "data" / "e.npz.sense").exists()
    assert open_ensemble(path).class_names[-1] == "x"
    monkeypatch.setattr(label_store, "_writable", real)  # writable again: the sidecar stays
    label_store.label(path, ["run1"], "x")
    assert len(label_store.read_labels(path).records) == 2
    assert not (tmp_path / "data" / "e.npz.sense").exists()


READ_ONLY_SCRIPT = """
import json, sys
from pathlib import Path
from sense_core import label_store
from sense_core.errors import SenseError
from sense_core.io import open_ensemble
path = Path(sys.argv[1])
step = label_store.label(path, ["run0"], "x")
result = {"folder": str(step.folder), "classes": list(open_ensemble(path).class_names)}
import os
os.environ["SENSE_LABELS_HOME"] = str(path.parent / "nowhere")
try:
    label_store.label(path.with_name("other.npz"), ["run0"], "x")
except SenseError as exc:
    result["error"] = str(exc)
print(json.dumps(result))
"""


@pytest.mark.skipif(not namespaces_work(), reason="needs user + mount namespaces (unshare -rm)")
def test_a_really_read_only_file_system(tmp_path):
    """On a read-only tmpfs (even root cannot write there) the labels go to SENSE_LABELS_HOME;
    with that not writable either, a one-line error."""
    (tmp_path / "ro").mkdir()
    write_ensemble(make_ensemble(8), tmp_path / "e.npz")
    write_ensemble(make_ensemble(8), tmp_path / "other.npz")
    (tmp_path / "script.py").write_text(READ_ONLY_SCRIPT)
    ro = tmp_path / "ro"
    shell = (
        f"mount -t tmpfs -o size=256k tmpfs {ro} && cp {tmp_path}/e.npz {tmp_path}/other.npz {ro}"
        f" && mount -o remount,ro {ro} && SENSE_LABELS_HOME={tmp_path}/home "
        f"{sys.executable} {tmp_path}/script.py {ro}/e.npz"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["folder"]).parent == tmp_path / "home"
    assert result["classes"][-1] == "x"
    assert "labels cannot be saved" in result["error"] and "SENSE_LABELS_HOME" in result["error"]
    assert "\n" not in result["error"]


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        (lambda p: label_store.label(p, [], "a"), ("nothing selected",)),
        (lambda p: label_store.label(p, ["run0"], "  "), ("class name is empty",)),
        (lambda p: label_store.label(p, ["run0"], "a\nb"), ("line break",)),
        (lambda p: label_store.label(p, ["run0"], "a\r"), ()),  # stripped: fine
        (lambda p: label_store.label(p, ["run0"], "x" * 201), ("at most 200",)),
        (lambda p: label_store.label(p, ["run0", "nope"], "a"), ("unknown member id", "'nope'")),
        (lambda p: label_store.label(p, ["../x"], "a"), ("member id '../x' is not valid",)),
        (lambda p: label_store.label(p, ["run0"], "a", source="guess"), ("source 'guess'",)),
        (lambda p: label_store.unlabel(p, []), ("nothing selected",)),
        (lambda p: label_store.undo(p), ("no labeling step to undo",)),
    ],
)
def test_bad_input_is_a_one_line_error_and_changes_nothing(tmp_path, call, fragments):
    path = write_ensemble(make_ensemble(8), tmp_path / "e.npz")
    if not fragments:
        call(path)
        assert label_store.read_labels(path).records["run0"].class_name == "a"
        return
    with pytest.raises(SenseError) as exc:
        call(path)
    one_line(exc, str(path), *fragments)
    assert not label_store.read_labels(path).exists


def test_commas_are_fine_in_class_names_from_the_command_line(tmp_path, capsys):
    path = write_ensemble(make_ensemble(8), tmp_path / "e.npz")
    assert main(["label", str(path), "--class", "wet, late", "--members", "run0,run4"]) == 0
    assert "step 1: labeled 2 members as 'wet, late'" in capsys.readouterr().out
    assert open_ensemble(path).class_names[-1] == "wet, late"
    line = cli_fails(capsys, "label", path, "--class", "", "--members", "run0")
    assert "the class name is empty" in line
    line = cli_fails(capsys, "label", path, "--class", "a", "--members", "")
    assert "nothing selected" in line
    assert "unknown member id" in cli_fails(capsys, "label", path, "--class", "a", "--members", "q")
    assert "one of --class" in cli_fails(capsys, "label", path, "--class", "a", "--undo")


def test_cli_from_csv_unlabel_undo_and_list(tmp_path, capsys):
    path = write_ensemble(make_ensemble(8), tmp_path / "e.npz")
    answers = tmp_path / "answers.csv"
    answers.write_text('member_id,class\nrun0,meander\nrun4,"new, one"\n')
    assert main(["label", str(path), "--from-csv", str(answers)]) == 0
    suggestions = tmp_path / "next.csv"
    suggestions.write_text("member_id,rank,reason\nrun1,0,x\nrun2,1,y\n")
    assert main(["label", str(path), "--class", "braided", "--from-csv", str(suggestions)]) == 0
    assert main(["label", str(path), "--unlabel", "--members", "run2"]) == 0
    capsys.readouterr()
    assert main(["label", str(path), "--list"]) == 0
    listed = capsys.readouterr().out
    assert "4 member(s): 3 hand, 0 corrected, 1 unlabeled" in listed
    assert "step 1" in listed and "step 3" in listed and "new, one" in listed
    store = open_ensemble(path)
    labels = dict(zip(store.member_ids, store.labels))
    assert [store.class_names[labels[m]] for m in ("run0", "run4", "run1")] == [
        "meander",
        "new, one",
        "braided",
    ]
    assert labels["run2"] == UNLABELED
    assert main(["label", str(path), "--undo"]) == 0
    assert "undid step 3" in capsys.readouterr().out
    assert open_ensemble(path).labels[2] == 2  # run2: braided again


def test_a_stale_row_is_a_clear_error_and_unlabel_removes_it(tmp_path, capsys):
    path = write_ensemble(make_ensemble(8), tmp_path / "e.npz")
    label_store.label(path, ["run7"], "x")
    write_ensemble(make_ensemble(6), path, overwrite=True)  # run6, run7 are gone
    line = cli_fails(capsys, "info", path)
    assert "e.npz.sense/labels.csv: member 'run7' is not in" in line and "--no-sidecar" in line
    label_store.unlabel(path, ["run7"])
    assert open_ensemble(path).class_names == CLASSES


def test_a_second_writer_is_refused_while_the_first_holds_the_sidecar(tmp_path):
    from sense_core.io.atomic import output_lock

    path = write_ensemble(make_ensemble(8), tmp_path / "e.npz")
    label_store.label(path, ["run0"], "x")
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with output_lock(label_store.sidecar_folder(path)):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(10)
    try:
        with pytest.raises(SenseError) as exc:
            label_store.label(path, ["run1"], "y")
        one_line(exc, "another SENSE process")
    finally:
        release.set()
        thread.join()
    assert list(label_store.read_labels(path).records) == ["run0"]


def test_a_crash_between_history_and_labels_loses_nothing(tmp_path, monkeypatch):
    from sense_core.io import atomic

    path = write_ensemble(make_ensemble(8), tmp_path / "e.npz")
    label_store.label(path, ["run0"], "x")
    real = atomic.atomic_write_text

    def crash(target, text):
        if Path(target).name == "labels.csv":
            raise KeyboardInterrupt
        return real(target, text)

    monkeypatch.setattr(atomic, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        label_store.label(path, ["run0", "run1"], "y")
    monkeypatch.setattr(atomic, "atomic_write_text", real)
    assert {m: r.class_name for m, r in label_store.read_labels(path).records.items()} == {
        "run0": "x"
    }
    label_store.undo(path)  # the interrupted step: restores what labels.csv holds
    assert label_store.read_labels(path).records["run0"].class_name == "x"
    label_store.undo(path)
    assert not label_store.read_labels(path).records


# --------------------------------------------------------------------------- suggestions
def blobs(sizes, labeled_blobs, seed=0, dim=4):
    """Well-separated Gaussian blobs (latents), a hand label in each blob of ``labeled_blobs``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 20
    blob = np.repeat(np.arange(len(sizes)), sizes)
    latents = centres[blob] + rng.normal(size=(len(blob), dim))
    labels = np.full(len(blob), UNLABELED)
    for b in labeled_blobs:
        labels[np.flatnonzero(blob == b)[:3]] = b
    return latents, labels, blob


@pytest.mark.slow  # about 2 s (k-means)
def test_suggestions_cover_the_unlabeled_regions_better_than_random_picks():
    sizes = [400, 300, 200, 40, 30, 20, 15, 10, 250, 150]
    latents, labels, blob = blobs(sizes, labeled_blobs=[0, 1, 8])
    suggestion = suggest_members(latents, labels=labels, count=10, seed=0)
    unlabeled_blobs = {3, 4, 5, 6, 7, 2, 9}
    covered = {int(blob[i]) for i in suggestion.indices} & unlabeled_blobs
    assert covered == unlabeled_blobs
    first = {int(blob[i]) for i in suggestion.indices[: len(unlabeled_blobs)]}
    assert first == unlabeled_blobs  # regions without hand labels come first
    assert all(labels[i] == UNLABELED for i in suggestion.indices)
    assert len(set(suggestion.indices.tolist())) == 10
    candidates = np.flatnonzero(labels == UNLABELED)
    rng = np.random.default_rng(1)
    random_cover = [
        len({int(blob[i]) for i in rng.choice(candidates, 10, replace=False)} & unlabeled_blobs)
        for _ in range(200)
    ]
    assert np.mean(random_cover) < 4  # random misses the small ones (2.2 of 7 on average)
    again = suggest_members(latents, labels=labels, count=10, seed=0)
    assert again.indices.tolist() == suggestion.indices.tolist()  # deterministic


def test_suggestions_pick_the_most_uncertain_member_of_each_labeled_region():
    latents, labels, blob = blobs([60, 60, 60], labeled_blobs=[0, 1, 2], seed=3)
    rng = np.random.default_rng(0)
    probabilities = np.full((len(blob), 3), 0.02)
    probabilities[np.arange(len(blob)), blob] = 0.96
    unsure = {}
    for b in range(3):
        pick = int(rng.choice(np.flatnonzero((blob == b) & (labels == UNLABELED))))
        probabilities[pick] = [0.4, 0.35, 0.25]
        unsure[b] = pick
    for method in ("margin", "entropy"):
        suggestion = suggest_members(latents, probabilities, labels, count=3, uncertainty=method)
        assert sorted(suggestion.indices.tolist()) == sorted(unsure.values()), method
        assert all("most uncertain" in reason for reason in suggestion.reasons)
        assert suggestion.scores.min() > 0.5 and suggestion.method == method


def test_suggestions_without_labels_are_typical_members_and_errors_are_one_line():
    latents, _, blob = blobs([50, 50, 50, 50], labeled_blobs=[], seed=2)
    suggestion = suggest_members(latents, count=4)
    assert {int(blob[i]) for i in suggestion.indices} == {0, 1, 2, 3}
    assert all("typical member" in reason for reason in suggestion.reasons)
    small = suggest_members(latents[:5], labels=np.array([0, 0, 1, -1, -1]), count=20)
    assert sorted(small.indices.tolist()) == [3, 4]  # no more than the unlabeled members
    for args, fragment in (
        ((latents, None, np.zeros(len(latents))), "every member has a hand label"),
        ((latents[:, :0][:0],), "latent vectors"),
        ((latents, np.ones((3, 2))), "probabilities have shape"),
    ):
        with pytest.raises(SenseError) as exc:
            suggest_members(*args)
        one_line(exc, fragment)
    with pytest.raises(SenseError) as exc:
        suggest_members(latents, count=0)
    one_line(exc, "at least 1")


@pytest.mark.slow  # about 2 s
def test_sense_suggest_writes_csv_and_mosaic_and_feeds_sense_label_and_embed(tmp_path, capsys):
    from sense_core.embedding import embed_ensemble
    from sense_core.projection import ProjectionOptions

    path = write_ensemble(make_ensemble(24), tmp_path / "e.npz")
    make_runtime_bundle(tmp_path / "bundle")
    out = tmp_path / "next.csv"
    args = ["suggest", str(path), "--bundle", str(tmp_path / "bundle"), "--count", "4"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 member(s) to label next (margin uncertainty; latents: the bundle" in printed
    rows = out.read_text().splitlines()
    assert rows[0] == "member_id,rank,reason,score,region" and len(rows) == 5
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "already exists" in cli_fails(capsys, *args, "--out", out)
    assert main(["label", str(path), "--class", "look", "--from-csv", str(out)]) == 0
    suggested = [row.split(",")[0] for row in rows[1:]]
    store = open_ensemble(path)
    assert all(
        store.class_names[store.labels[store.member_ids.index(m)]] == "look" for m in suggested
    )
    embedding = embed_ensemble(
        open_ensemble(path), tmp_path / "bundle", projection=ProjectionOptions("pca"), metrics=False
    )
    chosen = [embedding.member_ids.index(m) for m in suggested]
    assert set(embedding.label_source[chosen]) == {"manual"}
    assert {embedding.class_names[i] for i in embedding.labels[chosen]} == {"look"}
    assert main(["suggest", str(path), "--count", "3"]) == 0  # no bundle: PCA of the fields
    printed = capsys.readouterr().out
    assert "distance uncertainty; latents: PCA of the raw fields" in printed
    assert not set(re.findall(r"(run\d+):", printed)) & set(suggested)  # labeled now


# --------------------------------------------------------------------------- docs and ParaView
@pytest.mark.paraview
def test_labeling_md_runs_as_written(tmp_path):
    """Every block of docs/labeling.md runs in order (``doc-test: file NAME`` blocks saved
    first), from a folder that looks like a clone's root: the CLI walkthrough and the pvbatch
    script that labels the suggested points of a map and undoes it. About 30 s."""
    for name in (".venv", "plugin", "models"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    docs = REPO / "docs" / "labeling.md"
    assert len(doc_blocks(docs.read_text())) == docs.read_text().count("```") // 2
    started = time.perf_counter()
    outputs = [stdout for _, stdout in run_doc_blocks(docs, tmp_path, env)]
    text = "\n".join(outputs)
    assert "labels: 2 from members.npz, 4 from the sidecar" in text, text
    assert "label these next: ['m0" in text and "labeled 6 members as 'splash'" in text, text
    assert "map classes after labeling" in text and "'splash'" in text
    assert (tmp_path / "labeled.png").stat().st_size > 1000
    assert (tmp_path / "next.png").stat().st_size > 1000
    assert time.perf_counter() - started < 240
