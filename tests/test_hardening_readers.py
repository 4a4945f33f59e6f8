"""Readers hardened against hostile or changing files (issue 18): no SIGBUS when a member is
truncated while it is read, no allocation driven by file contents before it is bounded (label
values, member counts, decompressed sizes), one member-id rule (``fullmatch``), one class-name
rule (unique, non-blank strings), odd label dtypes and negative dimensions refused with one line,
and errors without a message still say what failed and where."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, make_ensemble

import sense_core.io.members as members_module
from sense_core.cli import main
from sense_core.ensemble import (
    MAX_IMPLIED_CLASSES,
    Ensemble,
    check_class_names,
    check_member_id,
    validate_labels,
)
from sense_core.errors import EnsembleError, SenseError, describe_exception
from sense_core.io import open_ensemble, read_member_file, write_ensemble


def one_line_error(stderr: str, *fragments: str) -> str:
    """The CLI's user-error contract: one ``sense: error:`` line naming the problem."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sense: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def sense_fails(capsys, *args: str) -> str:
    """Run ``sense ARGS`` in-process; it must fail with one line and exit status 2."""
    assert main(list(args)) == 2
    return one_line_error(capsys.readouterr().err)


def npy_bytes(shape: tuple[int, ...], descr="<f4", body: bytes | None = None) -> bytes:
    """A ``.npy`` file whose header says ``shape``/``descr``, followed by ``body`` (default:
    zeros as many as the header says)."""
    stream = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(stream, header)
    if body is None:
        body = bytes(max(math.prod(shape), 0) * np.dtype(descr).itemsize)
    return stream.getvalue() + body


def write_npz_entries(path: Path, entries: dict[str, bytes | np.ndarray]) -> Path:
    """An ``.npz`` with raw ``.npy`` entries (bytes as given, arrays as np.save writes them)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in entries.items():
            if isinstance(value, np.ndarray):
                stream = io.BytesIO()
                np.save(stream, value, allow_pickle=False)
                value = stream.getvalue()
            archive.writestr(f"{key}.npy", value)
    return path


def refusal(action) -> tuple[EnsembleError, int]:
    """The EnsembleError that ``action()`` raises, and the bytes allocated at the peak until
    then (numpy's buffers included): a refusal decided before allocating allocates little."""
    tracemalloc.start()
    try:
        with pytest.raises(EnsembleError) as info:
            action()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return info.value, peak


# --------------------------------------------------------------------------- 1: no SIGBUS
def _truncate_after_header(monkeypatch, size: int = 0) -> None:
    """Truncate the member file right after its header was checked, before its values are read
    (check_member_memory runs between the two, in the old memory-mapped reader too)."""
    check = members_module.check_member_memory

    def check_then_truncate(path, shape):
        check(path, shape)
        os.truncate(path, size)

    monkeypatch.setattr(members_module, "check_member_memory", check_then_truncate)


def test_npy_truncated_while_it_is_read_gives_a_clean_error(tmp_path, monkeypatch):
    """In-process, with a file within one page (a memory-mapped read would not fault here, it
    would return zeros; the subprocess test below truncates a larger file)."""
    path = tmp_path / "run0.npy"
    np.save(path, np.ones((16, 16), np.float32))
    _truncate_after_header(monkeypatch, size=200)
    with pytest.raises(EnsembleError, match=r"run0\.npy: the file changed or was truncated"):
        read_member_file(path)


def test_npy_truncated_while_it_is_read_does_not_kill_the_process(tmp_path):
    """Memory-mapped members died with SIGBUS when the file was truncated under the mapping."""
    path = tmp_path / "run0.npy"
    np.save(path, np.ones((1024, 1024), np.float32))
    script = textwrap.dedent(
        f"""
        import os
        import sense_core.io.members as members
        from sense_core.errors import EnsembleError

        check = members.check_member_memory

        def check_then_truncate(path, shape):
            check(path, shape)
            os.truncate(path, 0)

        members.check_member_memory = check_then_truncate
        try:
            members.read_member_file({str(path)!r})
        except EnsembleError as exc:
            print("refused:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert "refused:" in done.stdout and "truncated" in done.stdout


def test_npy_header_claiming_more_values_than_the_file_holds_is_refused_before_allocating(
    tmp_path,
):
    path = tmp_path / "run0.npy"
    path.write_bytes(npy_bytes((20000, 20000), body=b"\0" * 64))  # claims 1.5 GiB
    error, peak = refusal(lambda: read_member_file(path))
    assert "run0.npy: the header says float32 values of shape (20000, 20000)" in str(error)
    assert "the file is truncated or its header is wrong" in str(error)
    assert peak < 2**20


def test_npy_members_are_read_as_numpy_would_in_any_order_and_byte_order(tmp_path):
    values = np.arange(2 * 6 * 5, dtype=">f8").reshape(2, 6, 5)
    for name, array in {
        "c.npy": values,
        "fortran.npy": np.asfortranarray(values),
        "int.npy": values.astype("<i2")[0],
        "bool.npy": values[0] > 20,
    }.items():
        np.save(tmp_path / name, array)
        member = read_member_file(tmp_path / name)
        expected = array if array.ndim == 3 else array[None]
        np.testing.assert_array_equal(member, expected.astype(np.float32))
        assert member.dtype == np.float32 and member.flags.c_contiguous


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (npy_bytes((-4, 8)), "negative dimension"),
        (npy_bytes((0, 8)), "the member is empty"),
        (npy_bytes((2, 2, 2, 2)), "expected a 2D field or (C, H, W)"),
        (npy_bytes((4, 8), descr="<c8"), "complex values are not supported"),
        (npy_bytes((4, 8), descr=[("a", "<f4")]), "structured array"),
        (npy_bytes((4, 8), descr="|O"), "objects"),
    ],
    ids=["negative", "empty", "4D", "complex", "structured", "object"],
)
def test_npy_headers_are_checked_before_any_value_is_read(tmp_path, capsys, content, message):
    folder = tmp_path / "members"
    write_ensemble(make_ensemble(count=3), folder, member_format="npy")
    (folder / "run9.npy").write_bytes(content + b"\0" * 256)
    line = sense_fails(capsys, "convert", str(folder), str(tmp_path / "out.npz"))
    assert "run9.npy" in line and message in line, line
    assert not (tmp_path / "out.npz").exists()


# --------------------------------------------------------------------------- 2: bounded
def test_a_label_implying_a_billion_classes_is_refused_before_building_names(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("SENSE_MEMORY_LIMIT", "200M")
    labels = np.array([0, 1, 10**9, -1, 0, 1])
    path = write_npz_entries(
        tmp_path / "big.npz", {"fields": np.zeros((6, 4, 4)), "labels": labels}
    )
    line = sense_fails(capsys, "info", str(path))
    assert "big.npz" in line and "label 1000000000 implies 1000000001 classes" in line

    folder = tmp_path / "members"
    write_ensemble(make_ensemble(count=3), folder, member_format="npy")
    (folder / "ensemble.json").unlink()  # no class names: integer labels name the classes
    (folder / "labels.csv").write_text("member_id,label\nrun0,0\nrun1,1000000000\n")
    line = sense_fails(capsys, "info", str(folder))
    assert "labels.csv, line 3: label 1000000000 implies" in line, line


def test_labels_up_to_the_class_limit_still_name_their_classes(tmp_path):
    labels = np.array([0, MAX_IMPLIED_CLASSES - 1])
    path = write_npz_entries(tmp_path / "e.npz", {"fields": np.zeros((2, 4, 4)), "labels": labels})
    source = open_ensemble(path)
    assert len(source.class_names) == MAX_IMPLIED_CLASSES
    assert source.class_names[-1] == f"class_{MAX_IMPLIED_CLASSES - 1}"


def test_fields_header_claiming_a_billion_members_is_refused(tmp_path, capsys):
    body = np.zeros(64, np.float32).tobytes()
    path = write_npz_entries(tmp_path / "huge.npz", {"fields": npy_bytes((10**9, 4, 4), body=body)})
    _, peak = refusal(lambda: open_ensemble(path))
    assert peak < 2**20
    line = sense_fails(capsys, "info", str(path))
    assert "huge.npz" in line and "'fields' claims" in line and "the archive is damaged" in line


def test_many_members_are_refused_when_their_ids_would_not_fit(tmp_path, capsys, monkeypatch):
    """A consistent header with a huge member count (a small file: zeros compress well) is
    refused by the memory guard before the default member ids are built."""
    path = tmp_path / "many.npz"
    np.savez_compressed(path, fields=np.zeros((200_000, 1, 1, 1), np.float32))
    monkeypatch.setenv("SENSE_MEMORY_LIMIT", "4M")
    line = sense_fails(capsys, "info", str(path))
    assert "many.npz: the ids and labels of 200000 members needs" in line, line
    assert "SENSE_MEMORY_LIMIT=4M" in line


def test_an_entry_that_inflates_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    """labels.npy of 64 MiB in a ~64 KiB archive: refused from its header (shape), and a
    metadata entry of one consistent shape from the memory guard, neither read."""
    fields = np.zeros((6, 4, 4), np.float32)
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, fields=fields, labels=np.zeros(2**23, np.int64))
    assert bomb.stat().st_size < 2**20
    _, peak = refusal(lambda: open_ensemble(bomb))
    assert peak < 4 * 2**20
    line = sense_fails(capsys, "info", str(bomb))
    assert "bomb.npz: 'labels' has shape (8388608,), expected (6,)" in line, line

    wide = tmp_path / "wide.npz"
    np.savez_compressed(wide, fields=fields, meta_x=np.zeros((6, 2**21)))
    monkeypatch.setenv("SENSE_MEMORY_LIMIT", "20M")
    _, peak = refusal(lambda: open_ensemble(wide))
    assert peak < 4 * 2**20
    line = sense_fails(capsys, "info", str(wide))
    assert "wide.npz: reading 'meta_x'" in line and "more than the limit" in line, line


def test_embedding_npz_entries_are_bounded_before_np_load(tmp_path, monkeypatch):
    from sense_core.embedding import read_embedding

    path = tmp_path / "embedding.npz"
    np.savez_compressed(path, member_ids=np.array(["a"]), latent=np.zeros((1, 2**22)))
    monkeypatch.setenv("SENSE_MEMORY_LIMIT", "8M")
    with pytest.raises(SenseError, match="embedding.npz: reading 'latent'"):
        read_embedding(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("member_id,label\n" + "run0,a\n" * 5, "more rows than the 3 members"),
        ("member_id,label\nrun0," + "x" * 200_000 + "\n", "not valid CSV"),
    ],
    ids=["rows", "field"],
)
def test_labels_csv_is_bounded_by_the_members(tmp_path, capsys, content, message):
    folder = tmp_path / "members"
    write_ensemble(make_ensemble(count=3), folder, member_format="npy")
    (folder / "labels.csv").write_text(content)
    line = sense_fails(capsys, "info", str(folder))
    assert "labels.csv, line" in line and message in line, line


def test_side_files_are_refused_before_reading_when_too_big(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "members"
    write_ensemble(make_ensemble(count=3), folder, member_format="npy")
    with open(folder / "metadata.csv", "a") as stream:
        stream.write("#" * 2**20 + "\n")
    monkeypatch.setenv("SENSE_MEMORY_LIMIT", "4M")
    line = sense_fails(capsys, "info", str(folder))
    assert "metadata.csv: reading metadata.csv (1.0 MiB) needs" in line, line


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: {**d, "class_names": ["a", "a", "b"]}, "class names are not unique: 'a'"),
        (lambda d: {**d, "class_names": ["a", " ", "b"]}, "class name #1 is empty"),
        (lambda d: {**d, "metadata_dtypes": ["float64"]}, "'metadata_dtypes' must map"),
        (lambda d: {**d, "metadata_dtypes": {"chain": "object"}}, "'metadata_dtypes' must map"),
        (lambda d: "[" * 100_000 + "]" * 100_000, "not valid JSON"),
        (lambda d: '{"format": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
    ids=["duplicate", "blank", "dtypes-list", "dtypes-object", "deep", "huge-int"],
)
def test_bad_ensemble_json_gives_one_line(tmp_path, capsys, edit, message):
    folder = tmp_path / "members"
    write_ensemble(make_ensemble(count=3), folder, member_format="npy")
    description = json.loads((folder / "ensemble.json").read_text())
    edited = edit(description)
    (folder / "ensemble.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    line = sense_fails(capsys, "info", str(folder))
    assert "ensemble.json" in line and message in line, line


def test_metadata_csv_columns_must_be_unique(tmp_path, capsys):
    folder = tmp_path / "members"
    write_ensemble(make_ensemble(count=3), folder, member_format="npy")
    (folder / "metadata.csv").write_text("member_id,x,x\nrun0,1,2\n")
    line = sense_fails(capsys, "info", str(folder))
    assert "metadata.csv: column names must be unique and not empty: ['x']" in line, line


# --------------------------------------------------------------------------- 2: messages
def test_errors_without_a_message_still_say_what_and_where():
    assert describe_exception(MemoryError(), "x.npz").startswith("x.npz: out of memory")
    assert describe_exception(KeyError(), "reading x") == "reading x: KeyError"
    assert describe_exception(ValueError("bad\nvalue")) == "ValueError: bad value"
    assert describe_exception(EnsembleError("x.npz: broken")) == "x.npz: broken"
    assert describe_exception(SenseError()) == "SenseError"


def test_cli_never_prints_an_empty_error(capsys, monkeypatch):
    import sense_core.cli as cli

    def fail(args):
        raise EnsembleError()

    monkeypatch.setattr(cli, "_run_info", fail)
    line = sense_fails(capsys, "info", "somewhere")
    assert line == "sense: error: EnsembleError"


def test_a_reader_error_is_named_in_the_member_message(tmp_path, monkeypatch):
    path = tmp_path / "run0.npy"
    np.save(path, np.ones((4, 4)))

    def oom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(members_module, "read_npy_values", oom)
    with pytest.raises(EnsembleError, match=r"run0\.npy: cannot read member \(out of memory"):
        read_member_file(path)


def test_a_filter_reports_an_exception_without_message_with_its_type_and_file(tmp_path):
    pytest.importorskip("vtkmodules.vtkCommonCore")
    from sense_paraview import algorithms
    from sense_paraview.failures import describe_failure

    reader = algorithms.EnsembleReader()
    reader.SetFileName(str(tmp_path / "ens.npz"))
    line = describe_failure(MemoryError(), reader)
    assert line.startswith(f"EnsembleReader reading {tmp_path / 'ens.npz'}: out of memory")
    assert describe_failure(KeyError(), reader).endswith("ens.npz: KeyError")
    assert describe_failure(EnsembleError("x.npz: broken"), reader) == "x.npz: broken"


def test_the_reader_algorithm_reports_a_memory_error_with_the_file(tmp_path, monkeypatch):
    vtk_common = pytest.importorskip("vtkmodules.vtkCommonCore")
    from sense_paraview import algorithms

    def oom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("sense_core.io.open_ensemble", oom)
    window = vtk_common.vtkOutputWindow.GetInstance()
    messages: list[str] = []

    def catch(obj, event, text=None):
        messages.append(str(text))

    catch.CallDataType = "string0"
    tag = window.AddObserver(vtk_common.vtkCommand.ErrorEvent, catch)
    previous = window.GetGlobalWarningDisplay()
    window.SetGlobalWarningDisplay(0)
    try:
        reader = algorithms.EnsembleReader()
        reader.SetFileName(str(tmp_path / "ens.npz"))
        assert reader.GetExecutive().Update() == 0
    finally:
        window.SetGlobalWarningDisplay(previous)
        window.RemoveObserver(tag)
    ours = [m for m in messages if "SENSE: " in m]
    assert ours and "ens.npz: out of memory" in ours[0], messages


# --------------------------------------------------------------------------- 4: member ids
@pytest.mark.parametrize("member_id", ["run1\n", "run1\r", "a b", ".hidden", "-x", "a/b", ""])
def test_member_ids_must_match_whole(member_id):
    with pytest.raises(EnsembleError, match="is not valid"):
        check_member_id(member_id)


def test_an_id_ending_in_a_newline_is_refused_by_every_reader_and_writer(tmp_path, capsys):
    path = tmp_path / "ids.npz"
    np.savez(path, fields=np.zeros((2, 4, 4)), member_ids=np.array(["run0", "run1\n"]))
    line = sense_fails(
        capsys, "convert", str(path), str(tmp_path / "out"), "--member-format", "npy"
    )
    assert "ids.npz: member id 'run1\\n' is not valid" in line, line
    assert not (tmp_path / "out").exists()

    folder = tmp_path / "members"
    write_ensemble(make_ensemble(count=3), folder, member_format="npy")
    np.save(folder / "run9\n.npy", np.zeros((12, 10)))
    line = sense_fails(capsys, "info", str(folder))
    assert "member id 'run9\\n' is not valid" in line, line

    from sense_core.io.folder import write_member_folder

    store = make_ensemble(count=2)
    object.__setattr__(store, "member_ids", ("run0", "run1\n"))  # past Ensemble's own check
    with pytest.raises(EnsembleError, match="member id 'run1\\\\n' is not valid"):
        write_member_folder(store, tmp_path / "written", member_format="npy")
    assert not (tmp_path / "written").exists()


# --------------------------------------------------------------------------- 5: class names
def test_duplicate_class_names_are_refused_by_every_reader(tmp_path, capsys):
    path = tmp_path / "dup.npz"
    np.savez(
        path,
        fields=np.zeros((6, 4, 4)),
        labels=np.array([0, 1, 0, 1, 0, 1]),
        class_names=np.array(["a", "a"]),
    )
    line = sense_fails(capsys, "info", str(path))
    assert "dup.npz: class_names: class names are not unique: 'a'" in line, line
    with pytest.raises(EnsembleError, match="class names are not unique: 'a'"):
        Ensemble(fields=np.zeros((2, 4, 4)), labels=[0, 1], class_names=["a", "a"])


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a", ""], "class name #1 is empty"),
        (["a", "\t"], "class name #1 is empty"),
        (["a", 1], "class name #1 is 1 (int), not a string"),
        ([b"a"], "not a string"),
    ],
    ids=["empty", "blank", "int", "bytes"],
)
def test_class_names_are_non_blank_strings(names, message):
    with pytest.raises(EnsembleError, match=re.escape(message)):
        check_class_names(names, "here")
    with pytest.raises(EnsembleError, match=re.escape(message)):
        Ensemble(fields=np.zeros((1, 4, 4)), class_names=names)


def test_npz_class_names_must_be_strings(tmp_path, capsys):
    path = tmp_path / "numbers.npz"
    np.savez(path, fields=np.zeros((2, 4, 4)), labels=np.array([0, 1]), class_names=np.arange(2))
    line = sense_fails(capsys, "info", str(path))
    assert "numbers.npz: 'class_names' must be strings, got int64 values" in line, line


# --------------------------------------------------------------------------- 9: one line
@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array(["a", "b", "a"]), "'labels' must be integers (-1 = unlabeled), got <U1"),
        (np.array([0, 1j, 0]), "got complex128"),
        (np.array([True, False, True]), "got bool"),
        (np.array([0.0, 0.5, 1.0]), "label 0.5 of member #1 is not an integer"),
        (np.array([0.0, np.nan, 1.0]), "label nan of member #1 is not an integer"),
        (np.array([0, 2**63 + 5, 1], np.uint64), "label 9223372036854775813 of member #1 is out"),
        (np.array([0, 1e300, 1]), "of member #1 is out of range"),
    ],
    ids=["strings", "complex", "bool", "fraction", "nan", "uint64", "huge-float"],
)
def test_odd_label_dtypes_give_one_line(tmp_path, capsys, labels, message):
    path = tmp_path / "labels.npz"
    np.savez(path, fields=np.zeros((3, 4, 4)), labels=labels, class_names=np.array(["a", "b"]))
    line = sense_fails(capsys, "info", str(path))
    assert "labels.npz: " in line and message in line, line
    with pytest.raises(EnsembleError, match="labels|label"):
        validate_labels(labels, ["a", "b"], 3, "x")


def test_integral_float_labels_still_work(tmp_path):
    path = tmp_path / "float.npz"
    np.savez(path, fields=np.zeros((3, 4, 4)), labels=np.array([0.0, -1.0, 1.0]))
    assert open_ensemble(path).labels.tolist() == [0, -1, 1]


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((2, -4, 8), "negative dimension"),
        ((-2, 4, 8), "negative dimension"),
        ((2, 1, 0, 8), "members have an empty shape"),
        ((2, 1, 2, 2, 2), "fields must be (N, C, H, W) or (N, H, W)"),
    ],
    ids=["negative-size", "negative-count", "zero-size", "5D"],
)
def test_bad_fields_headers_give_one_line(tmp_path, capsys, shape, message):
    path = write_npz_entries(tmp_path / "dims.npz", {"fields": npy_bytes(shape)})
    line = sense_fails(capsys, "info", str(path))
    assert "dims.npz" in line and message in line, line
    assert "channel(s)" not in capsys.readouterr().out


def test_fields_entries_are_read_as_written_in_any_order(tmp_path):
    fields = np.arange(4 * 2 * 3 * 5, dtype=">f8").reshape(4, 2, 3, 5)
    path = tmp_path / "fortran.npz"
    np.savez(path, fields=np.asfortranarray(fields))
    np.testing.assert_array_equal(open_ensemble(path).read_members([3, 0]), fields[[3, 0]])
