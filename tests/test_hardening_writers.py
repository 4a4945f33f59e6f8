"""Issue 18, writers: CSV formula injection and Markdown tables (one escaping rule for every
writer, un-escaped by the readers), one writer per output (a lock, taken by every writer, that
makes a second writer stop at once), and outputs that would land in (or replace) an input."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import SENSE, make_ensemble, make_runtime_bundle
from hypothesis import given
from hypothesis import strategies as st

from sense_core.cli import main
from sense_core.embedding import (
    Embedding,
    report_markdown,
    write_columns_csv,
    write_csv,
    write_outputs,
)
from sense_core.ensemble import Ensemble
from sense_core.errors import SenseError
from sense_core.io import open_ensemble, write_ensemble
from sense_core.io.atomic import (
    atomic_directory,
    atomic_path,
    check_output_outside_inputs,
    lock_file,
    output_lock,
)
from sense_core.io.escape import FORMULA_STARTS, escape_cell, md_cell, md_code, unescape_cell

EVIL = (
    "=cmd|' /C calc'!A0",
    '+HYPERLINK("http://x","y")',
    "@SUM(1+1)",
    "-2+3",
    "\tTAB",
    "\rCR",
    "\uff1dfull-width",
    "'=already quoted",
    "a|b\nc",
)


def _formula_cells(path: Path) -> list[str]:
    """Cells of a CSV file that a spreadsheet would evaluate: they start with a formula
    character and are not plain numbers."""
    number = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
    with open(path, newline="", encoding="utf-8") as stream:
        cells = [cell for row in csv.reader(stream) for cell in row]
    return [c for c in cells if c[:1] in FORMULA_STARTS and not number.fullmatch(c)]


# --------------------------------------------------------------------------- the escaping rule
@pytest.mark.parametrize("value", EVIL[:-1])
def test_a_formula_cell_gets_an_apostrophe_and_comes_back(value):
    escaped = escape_cell(value)
    assert escaped.startswith("'") and escaped[1:] == value
    assert unescape_cell(escaped) == value


@pytest.mark.parametrize(
    ("value", "cell"),
    [(-1.5, "-1.5"), (-1, "-1"), (0, "0"), (2e-3, "0.002"), (np.float32(-0.25), "-0.25"),
     (np.int64(-7), "-7"), ("-1.5", "-1.5"), ("+2e-3", "+2e-3"), ("-.5", "-.5")],
)  # fmt: skip
def test_numbers_stay_numbers(value, cell):
    assert escape_cell(value) == cell


def test_texts_that_are_not_plain_numbers_are_escaped():
    for text in ("-1+1", "-inf", "+1 2", "-", "@", "-1e5x"):
        assert escape_cell(text) == "'" + text
    assert escape_cell(float("-inf")) == "'-inf"
    assert escape_cell("plain") == "plain" and escape_cell("'plain") == "'plain"
    assert escape_cell("") == "" and escape_cell(None) == ""


@given(st.text(max_size=12))
def test_any_text_round_trips(text):
    assert unescape_cell(escape_cell(text)) == text
    assert escape_cell(text)[:1] not in FORMULA_STARTS or re.fullmatch(r"[-+0-9.eE]+", text)


def test_markdown_cells_cannot_split_a_row():
    assert md_cell("a|b\nc") == "a\\|b c"
    assert md_cell("<script>[x](y)") == "\\<script\\>\\[x\\](y)"
    assert md_cell("straight_ew") == "straight_ew"  # readable where nothing needs escaping
    assert md_code("a|b`c") == "``a\\|b`c``"


# --------------------------------------------------------------------------- every CSV writer
# a lone CR inside a cell does not survive the folder reader's text mode (it reads "\n"),
# with or without escaping; the escaping of a leading CR is checked above
ROUND_TRIP = tuple(name for name in EVIL if "\r" not in name)


def _evil_ensemble() -> Ensemble:
    count = len(ROUND_TRIP)
    fields = np.random.default_rng(0).normal(size=(count, 1, 4, 4)).astype(np.float32)
    return Ensemble(
        fields,
        labels=np.arange(count),
        class_names=ROUND_TRIP,
        member_ids=tuple(f"m{i}" for i in range(count)),
        metadata={
            "=evilcol": np.array(ROUND_TRIP),
            "value": -np.arange(count, dtype=np.float64) - 0.5,
            "@count": -np.arange(count),
        },
    )


def test_convert_escapes_labels_and_metadata_and_reads_them_back(tmp_path, capsys):
    ensemble = _evil_ensemble()
    write_ensemble(ensemble, tmp_path / "evil.npz")
    assert main(["convert", str(tmp_path / "evil.npz"), str(tmp_path / "folder")]) == 0
    for name in ("labels.csv", "metadata.csv"):
        assert _formula_cells(tmp_path / "folder" / name) == [], name
    metadata = (tmp_path / "folder" / "metadata.csv").read_text(encoding="utf-8")
    assert sorted(metadata.splitlines()[0].split(",")) == [
        "'=evilcol",
        "'@count",
        "member_id",
        "value",
    ]
    assert "\nm1,\"'+HYPERLINK" in metadata and ",-1,-1.5\n" in metadata  # numbers stay numbers
    back = open_ensemble(tmp_path / "folder")
    assert back.class_names == ROUND_TRIP and back.member_ids == ensemble.member_ids
    np.testing.assert_array_equal(back.labels, ensemble.labels)
    assert list(back.metadata["=evilcol"]) == list(ROUND_TRIP)
    np.testing.assert_array_equal(back.metadata["value"], ensemble.metadata["value"])
    np.testing.assert_array_equal(back.metadata["@count"], ensemble.metadata["@count"])
    # and once more: a folder written from the folder reads back the same
    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "again"), "--member-format",
                 "npy"]) == 0  # fmt: skip
    assert open_ensemble(tmp_path / "again").class_names == ROUND_TRIP


def _embedding(class_names=EVIL) -> Embedding:
    count = len(class_names)
    rng = np.random.default_rng(1)
    return Embedding(
        member_ids=tuple(f"m{i}" for i in range(count)),
        latents=rng.normal(size=(count, 3)).astype(np.float32),
        xy=-np.abs(rng.normal(size=(count, 2))).astype(np.float32),  # negative numbers
        labels=np.arange(count),
        label_source=np.array(["manual"] * count),
        confidence=np.ones(count, dtype=np.float32),
        class_names=tuple(class_names),
        provenance={"metrics": {"silhouette_2d": -0.1}, "notes": ["class 'a|b' has one member"]},
    )


def test_embedding_csv_escapes_class_names_and_keeps_negative_numbers(tmp_path):
    path = write_csv(_embedding(), tmp_path / "embedding.csv")
    assert _formula_cells(path) == []
    rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    assert [unescape_cell(r["class_name"]) for r in rows] == list(EVIL)
    assert float(rows[0]["x"]) < 0 and not rows[0]["x"].startswith("'")


def test_paraview_table_csv_goes_through_the_same_writer(tmp_path):
    columns = {
        "x": np.array([-1.0, 2.0]),
        "member_id": np.array(["m0", "m1"]),
        "class_name": np.array(["=1+1", "ok"]),
        "latent": np.array([[-0.5, np.nan], [1.0, 2.0]], dtype=np.float32),
    }
    path = write_columns_csv(columns, tmp_path / "embedding.csv")
    assert _formula_cells(path) == []
    lines = path.read_text().splitlines()
    assert lines == ["member_id,x,class_name,latent_0,latent_1", "m0,-1,'=1+1,-0.5,", "m1,2,ok,1,2"]


def test_report_tables_keep_their_columns_with_a_pipe_or_newline_in_a_class_name():
    report = report_markdown(_embedding())
    lines = report.splitlines()
    start = lines.index("| class | hand-labeled | predicted |")
    table = lines[start : start + len(EVIL) + 3]
    assert len(table) == len(EVIL) + 3 and table[-1].startswith("| (unlabeled) |")
    for row in table:  # unescaped pipes delimit the cells: four on every row
        assert len(re.findall(r"(?<!\\)\|", row)) == 4, row
    assert "| a\\|b c | 1 | 0 |" in table
    assert "- class 'a\\|b' has one member" in lines


def test_evaluation_csv_and_markdown_escape_method_names():
    from sense_training.evaluation import COLUMNS, csv_table, markdown_table

    scores = {c: -0.25 for c in COLUMNS}
    rows = [
        SimpleNamespace(name=name, kind="sense", scores=scores, per_seed=[-0.25, 0.5])
        for name in ("=evil", "a|b")
    ]
    evaluation = SimpleNamespace(rows=rows)
    text = csv_table(evaluation)
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    assert "'=evil" in cells and "-0.250" in cells and "'-0.250 0.500" in cells
    table = markdown_table(evaluation).splitlines()
    assert all(len(re.findall(r"(?<!\\)\|", row)) == 8 for row in table)
    assert table[-1].startswith("| a\\|b |")


# --------------------------------------------------------------------------- one writer per output
def _hold_in_thread(path: Path):
    """Hold ``path``'s lock in another thread until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def hold():
        with atomic_directory(path) as tmp:
            (tmp / "first").write_text("first")
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(30)
    return thread, release


def test_a_second_writer_stops_at_once_and_the_exists_check_is_under_the_lock(tmp_path):
    out = tmp_path / "out"
    thread, release = _hold_in_thread(out)
    try:
        started = time.perf_counter()
        with pytest.raises(SenseError, match="another SENSE process .*is writing"):
            with atomic_directory(out, overwrite=True):
                pass
        assert time.perf_counter() - started < 5  # no waiting
    except BaseException:
        release.set()
        raise
    release.set()
    thread.join()
    assert (out / "first").read_text() == "first"
    with pytest.raises(SenseError, match="already exists"):  # the second run now refuses
        with atomic_directory(out):
            pass
    assert not lock_file(out).exists()  # the lock file goes with its writer


def test_a_file_output_is_locked_too(tmp_path):
    path, entered, release = tmp_path / "e.npz", threading.Event(), threading.Event()

    def hold():
        with atomic_path(path, overwrite=False) as tmp:
            tmp.write_bytes(b"first")
            entered.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert entered.wait(30)
    try:
        with pytest.raises(SenseError, match="another SENSE process"):
            write_ensemble(make_ensemble(count=4), path)
    finally:
        release.set()
        thread.join()
    assert path.read_bytes() == b"first" and not lock_file(path).exists()


def test_nested_writers_of_one_output_in_one_thread_share_the_lock(tmp_path):
    with output_lock(tmp_path / "out"), output_lock(tmp_path / "out"):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "a").write_text("a")
    assert (tmp_path / "out" / "a").exists() and not lock_file(tmp_path / "out").exists()


def test_embed_outputs_are_not_mixed_by_two_writers(tmp_path):
    out = tmp_path / "o"
    with output_lock(out):
        done = []
        worker = threading.Thread(
            target=lambda: done.append(_try(write_outputs, _embedding(), out, plot=False))
        )
        worker.start()
        worker.join()
    assert isinstance(done[0], SenseError) and "another SENSE process" in str(done[0])
    assert not out.exists()
    write_outputs(_embedding(), out, plot=False)
    assert sorted(p.name for p in out.iterdir()) == ["embedding.csv", "embedding.npz", "report.md"]


def _try(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except SenseError as exc:
        return exc


HOLDER = textwrap.dedent(
    """
    import sys, time
    from sense_core.io.atomic import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def _holder(path: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_another_process_holding_the_output_makes_convert_and_embed_refuse(tmp_path):
    write_ensemble(make_ensemble(count=6), tmp_path / "e.npz")
    make_runtime_bundle(tmp_path / "bundle")
    holder = _holder(tmp_path / "out")
    try:
        convert = subprocess.run(
            [SENSE, "convert", str(tmp_path / "e.npz"), str(tmp_path / "out")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        embed = subprocess.run(
            [SENSE, "embed", str(tmp_path / "e.npz"), str(tmp_path / "bundle"), "--out",
             str(tmp_path / "out"), "--overwrite", "--no-plot", "--projection", "pca"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.stdin.close()
        holder.wait(30)
    for run in (convert, embed):
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another SENSE process (pid {holder.pid})" in lines[0]
        assert lines[0].startswith(f"sense: error: {tmp_path / 'out'}: ")
    assert not (tmp_path / "out").exists()
    assert not lock_file(tmp_path / "out").exists()


def test_a_killed_writer_does_not_block_the_next_one(tmp_path):
    write_ensemble(make_ensemble(count=6), tmp_path / "e.npz")
    holder = _holder(tmp_path / "out")
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    assert lock_file(tmp_path / "out").exists()  # left behind, hidden
    assert main(["convert", str(tmp_path / "e.npz"), str(tmp_path / "out")]) == 0
    assert len(open_ensemble(tmp_path / "out")) == 6
    assert not lock_file(tmp_path / "out").exists()


def test_a_lock_file_left_in_a_member_folder_is_ignored(tmp_path):
    write_ensemble(make_ensemble(count=4), tmp_path / "f")
    (tmp_path / "f" / ".labels.csv.lock").write_text("123\n")  # a killed writer's
    (tmp_path / "f" / f".sense{'.lock'}").write_text("")
    assert len(open_ensemble(tmp_path / "f")) == 4


def test_two_converts_into_one_new_folder_one_wins_the_other_refuses(tmp_path):
    write_ensemble(make_ensemble(count=200, height=16, width=16), tmp_path / "e.npz")
    command = [SENSE, "convert", str(tmp_path / "e.npz"), str(tmp_path / "out")]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    results = [(run.wait(120), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert re.search(r"another SENSE process|already exists", loser) and "Traceback" not in loser
    assert len(open_ensemble(tmp_path / "out")) == 200
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- output into input
def test_check_output_outside_inputs(tmp_path):
    folder, bundle = tmp_path / "members", tmp_path / "bundle"
    folder.mkdir()
    bundle.mkdir()
    (tmp_path / "link").symlink_to(folder)
    refused = [
        ((folder, [folder]), {}, "is the input"),
        ((tmp_path / "link", [folder]), {}, "is the input"),
        ((folder / "sub", [folder]), {}, "is inside the input"),
        ((tmp_path / "link" / "sub", [folder]), {}, "is inside the input"),
        ((tmp_path, [folder]), {"replaces": True}, "contains the input"),
        ((bundle, []), {"bundles": [bundle]}, "is the bundle"),
        ((tmp_path, []), {"bundles": [bundle], "replaces": True}, "contains the bundle"),
        ((tmp_path, [folder]), {"writes": [folder]}, "writing members would replace"),
    ]
    for args, options, message in refused:
        with pytest.raises(SenseError, match=message):
            check_output_outside_inputs(*args, **options)
    check_output_outside_inputs(tmp_path / "out", [folder], bundles=[bundle], replaces=True)
    check_output_outside_inputs(bundle / "evaluation", [folder], bundles=[bundle])
    check_output_outside_inputs(tmp_path, [folder], writes=[tmp_path / "embedding.csv"])


def test_embed_into_the_member_folder_is_refused_and_the_folder_still_reads(tmp_path, capsys):
    write_ensemble(make_ensemble(count=6), tmp_path / "f")
    make_runtime_bundle(tmp_path / "bundle")
    before = sorted(os.listdir(tmp_path / "f"))
    for out in (tmp_path / "f", tmp_path / "f" / "embedding"):
        code = main(["embed", str(tmp_path / "f"), str(tmp_path / "bundle"), "--out", str(out),
                     "--no-plot", "--projection", "pca"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"sense: error: {out}: the output is" in err and "input" in err
    assert sorted(os.listdir(tmp_path / "f")) == before
    assert len(open_ensemble(tmp_path / "f")) == 6
    # the bundle's own folder is refused; a folder inside the bundle or holding the input is not
    code = main(["embed", str(tmp_path / "f"), str(tmp_path / "bundle"), "--out",
                 str(tmp_path / "bundle"), "--no-plot", "--projection", "pca"])  # fmt: skip
    assert code == 2 and "is the bundle" in capsys.readouterr().err
    code = main(["embed", str(tmp_path / "f"), str(tmp_path / "bundle"), "--out",
                 str(tmp_path / "bundle" / "o"), "--no-plot", "--projection", "pca"])  # fmt: skip
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["convert", "{f}", "{f}", "--overwrite"], "is the input"),
        (["convert", "{f}", "{f}/copy.npz"], "is inside the input"),
        (["convert", "{npz}", "{root}", "--overwrite"], "contains the input"),
        (["generate", "crops", "--images", "{png}", "--out", "{root}", "--overwrite"],
         "contains the input"),
        (["fit", "--data", "{f}", "--out", "{f}"], "is the input"),
        (["train-labeler", "--data", "{f}", "--out", "{f}/bundle"], "is inside the input"),
        (["train-encoder", "--data", "{f}", "--bundle", "{f}"], "is the input"),
        (["evaluate", "--data", "{npz}", "--bundle", "b={bundle}", "--out", "{bundle}"],
         "is the bundle"),
        (["pseudo-label", "--data", "{npz}", "--bundle", "{bundle}", "--out", "{root}",
          "--overwrite"], "contains the"),
    ],
)  # fmt: skip
def test_every_writing_command_refuses_an_output_in_its_input(tmp_path, capsys, command, message):
    root = tmp_path / "root"
    root.mkdir()
    names = {"f": root / "f", "npz": root / "e.npz", "png": root / "a.png", "root": root,
             "bundle": root / "bundle"}  # fmt: skip
    write_ensemble(make_ensemble(count=6), names["f"])
    write_ensemble(make_ensemble(count=6), names["npz"])
    names["bundle"].mkdir()
    names["png"].write_bytes(b"not read")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    code = main([part.format(**names) for part in command])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before


def test_generate_refuses_an_existing_output_with_one_line(tmp_path, capsys):
    (tmp_path / "out.npz").write_bytes(b"x")
    code = main(["generate", "drops", "--n", "4", "--size", "16", "--out",
                 str(tmp_path / "out.npz")])  # fmt: skip
    assert code == 2
    assert (
        capsys.readouterr().err
        == f"sense: error: {tmp_path / 'out.npz'}: exists (use --overwrite)\n"
    )
