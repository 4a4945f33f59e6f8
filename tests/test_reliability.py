"""The reliability table (docs/reliability.md): faults and interruptions end cleanly, nothing
half-written is left, every bad input or model is refused with one clear line, and no user file
is ever unpickled.

Subprocess tests drive the real ``sense`` command and real signals; the disk-full and read-only
cases mount a tiny tmpfs inside a user + mount namespace (``unshare -rm``) and are skipped where
the kernel does not allow that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, SENSE, make_ensemble, make_runtime_bundle, namespaces_work, run_sense

from sense_core.cli import main
from sense_core.embedding import read_embedding
from sense_core.ensemble import Ensemble
from sense_core.io import write_ensemble


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def temporaries(folder: Path) -> list[str]:
    """Names of the atomic writers' temporaries (``.<name>.<pid>.<random>.part``/``.old``)."""
    return sorted(p.name for p in Path(folder).rglob(".*") if p.name.endswith((".part", ".old")))


def wait_until(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``condition`` until it holds; fail if ``process`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process ended first ({process.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def one_line_error(stderr: str, *fragments: str) -> None:
    """The CLI's user-error contract: one ``sense: error:`` line naming the problem."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sense: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --------------------------------------------------------------------------- training faults
TRAIN_OPTIONS = (
    "--epochs", "5", "--batch-size", "16", "--latent", "4", "--seed", "1", "--threads", "1",
    "--device", "cpu", "--select", "last",
)  # fmt: skip


RUN_SPECIFIC = ("seconds", "device", "path")  # timings, and the export's temporary folder


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in RUN_SPECIFIC}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def test_training_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGTERM during epoch 2, then SIGKILL during a later epoch of the resumed run, then a
    second resume: same weights, history and metrics as one uninterrupted run (same seed)."""
    torch = pytest.importorskip("torch")
    from sense_training.common import load_checkpoint

    rng = np.random.default_rng(0)
    data = write_ensemble(
        Ensemble(
            rng.normal(size=(192, 1, 32, 32)).astype(np.float32),
            labels=np.arange(192) % 3,
            class_names=("a", "b", "c"),
        ),
        tmp_path / "train.npz",
    )

    def command(bundle: str, *extra: str) -> list[str]:
        return [SENSE, "train-encoder", "--data", str(data), "--bundle", str(tmp_path / bundle),
                *TRAIN_OPTIONS, *extra]  # fmt: skip

    whole = subprocess.Popen(command("whole"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "cut" / "encoder_run" / "checkpoint.pt"

    # 1. SIGTERM during epoch 2 (the first checkpoint has just been written)
    run = subprocess.Popen(
        command("cut"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_until(checkpoint.exists, run)
    time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM, err
    assert "sense: interrupted by SIGTERM" in err and "--resume" in err
    assert "Traceback" not in err
    stopped = int(load_checkpoint(checkpoint)["epoch"])
    assert stopped < 4, "the run finished before the signal"
    assert temporaries(tmp_path / "cut") == []
    assert not (tmp_path / "cut" / "encoder.onnx").exists()

    # 2. resume, SIGKILL during the epoch after the next checkpoint
    run = subprocess.Popen(
        command("cut", "--resume"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first = _inode(checkpoint)
    wait_until(lambda: _inode(checkpoint) not in (first, None), run)
    time.sleep(0.05)
    run.kill()
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL
    killed = int(load_checkpoint(checkpoint)["epoch"])
    assert stopped < killed < 4, "the resumed run finished before the signal"

    # 3. resume to the end
    result = run_sense(*command("cut", "--resume")[1:])
    assert f"after epoch {killed + 1}" in result.stdout + result.stderr
    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err

    runs = {name: tmp_path / name / "encoder_run" for name in ("whole", "cut")}
    states = {name: load_checkpoint(run / "checkpoint.pt") for name, run in runs.items()}
    assert states["cut"]["epoch"] == states["whole"]["epoch"] == 4
    for key, value in states["whole"]["trainer"]["model"].items():
        assert torch.equal(states["cut"]["trainer"]["model"][key], value), key
    for name in ("history.json", "metrics.json"):
        texts = [json.loads((run / name).read_text()) for run in runs.values()]
        assert _without_timings(texts[0]) == _without_timings(texts[1]), name
    assert sha256(tmp_path / "whole" / "encoder.onnx") == sha256(tmp_path / "cut" / "encoder.onnx")
    assert temporaries(tmp_path / "cut") == []


# --------------------------------------------------------------------------- embed faults
@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """30,000 unlabeled 8x8 members and a bundle with a projector: the run takes about a
    second, most of it writing the outputs (the window the signals aim at)."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(30_000, 1, 8, 8)).astype(np.float32)
    write_ensemble(Ensemble(fields), root / "big.npz")
    make_runtime_bundle(root / "bundle", shape=(1, 8, 8), latent_dim=8, projector=True)
    return root


OUTPUTS = ("embedding.npz", "embedding.csv", "report.md")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_embed_leaves_the_previous_outputs_and_no_partial_file(big_input, signum):
    out = big_input / f"out_{signum}"
    out.mkdir()
    for name in OUTPUTS:
        (out / name).write_text(f"previous {name}")
    args = [SENSE, "embed", str(big_input / "big.npz"), str(big_input / "bundle")]
    args += ["--out", str(out), "--overwrite", "--no-plot"]
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: bool(temporaries(out)), run)  # writing has begun
    run.send_signal(signum)
    _, err = run.communicate(timeout=60)
    previous = [(out / name).read_bytes() == f"previous {name}".encode() for name in OUTPUTS]
    if signum == signal.SIGTERM:
        assert run.returncode == 143 and "sense: interrupted by SIGTERM" in err
        assert "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
        # all previous, or (a signal during the final renames waits for them) all new
        assert all(previous) or (not any(previous) and read_embedding(out / "embedding.npz"))
        return
    assert all(previous)
    assert run.returncode == -signal.SIGKILL
    left = temporaries(out)  # nothing can clean up after SIGKILL: only hidden temporaries
    assert left and all(re.match(r"^\.(embedding\.(npz|csv)|report\.md)\.\d+\.", n) for n in left)
    run_sense(*args[1:])  # the next run replaces the outputs and removes the leftovers
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert (out / "embedding.csv").read_text().startswith("member_id,")


UNSHARE_SCRIPT = textwrap.dedent(
    """
    import contextlib, hashlib, io, json, sys
    from pathlib import Path
    from sense_core.cli import main

    full, readonly, small, big, bundle = map(Path, sys.argv[1:6])

    def sense(*args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([str(a) for a in args])
        return {"code": code, "stderr": err.getvalue()}

    def digests(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    embed = ("--no-plot", "--projection", "pca")
    result = {"first": [sense("convert", small, full / "ens.npz"),
                        sense("embed", small, bundle, "--out", full / "emb", *embed)]}
    with open(full / "filler", "wb") as stream:  # fill the file system
        with contextlib.suppress(OSError):
            while True:
                stream.write(bytes(1 << 16))
                stream.flush()
    before = digests(full)
    result["convert"] = sense("convert", big, full / "ens.npz", "--overwrite")
    result["embed"] = sense("embed", small, bundle, "--out", full / "emb", "--overwrite", *embed)
    result["unchanged"] = digests(full) == before
    result["names"] = sorted(str(p.relative_to(full)) for p in full.rglob("*"))
    result["readonly_convert"] = sense("convert", small, readonly / "x.npz")
    result["readonly_embed"] = sense("embed", small, bundle, "--out", readonly / "emb", *embed)
    print(json.dumps(result))
    """
)


@pytest.mark.skipif(not namespaces_work(), reason="needs user + mount namespaces (unshare -rm)")
def test_disk_full_and_read_only_output_folders(tmp_path):
    """A 256 KiB tmpfs filled to the last byte, and a read-only one: clear one-line errors,
    the previous outputs byte for byte as they were, no temporary left behind."""
    rng = np.random.default_rng(0)
    write_ensemble(make_ensemble(count=24), tmp_path / "small.npz")
    big = Ensemble(rng.normal(size=(400, 1, 12, 10)).astype(np.float32))  # ~190 KB, random
    write_ensemble(big, tmp_path / "big.npz")
    make_runtime_bundle(tmp_path / "bundle")
    (tmp_path / "full").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "script.py").write_text(UNSHARE_SCRIPT)
    shell = (
        f"mount -t tmpfs -o size=256k tmpfs {tmp_path}/full && "
        f"mount -t tmpfs -o ro,size=64k tmpfs {tmp_path}/ro && "
        f"{sys.executable} {tmp_path}/script.py {tmp_path}/full {tmp_path}/ro "
        f"{tmp_path}/small.npz {tmp_path}/big.npz {tmp_path}/bundle"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [step["code"] for step in result["first"]] == [0, 0], result["first"]
    for step, target in (("convert", "full/ens.npz:"), ("embed", "full/emb:")):
        assert result[step]["code"] == 2
        one_line_error(result[step]["stderr"], target, "No space left on device", "unchanged")
    assert result["unchanged"]
    assert not any(Path(name).name.startswith(".") for name in result["names"]), result["names"]
    one_line_error(result["readonly_convert"]["stderr"], "x.npz", "is not writable")
    one_line_error(result["readonly_embed"]["stderr"], "emb", "is not writable")


# --------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def model_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_ensemble(make_ensemble(count=12), root / "ens.npz")
    write_ensemble(make_ensemble(count=12, height=8, width=8), root / "square.npz")
    write_ensemble(make_ensemble(count=12, channels=2), root / "two_channels.npz")
    make_runtime_bundle(root / "good")
    return root


def _broken_bundle(root: Path, name: str, change) -> Path:
    import shutil

    folder = root / name
    if not folder.exists():
        shutil.copytree(root / "good", folder)
        change(folder)
    return folder


def _edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / "sense.json").read_text())
    edit(manifest)
    (folder / "sense.json").write_text(json.dumps(manifest))


def _not_onnx(folder: Path) -> None:
    (folder / "encoder.onnx").write_bytes(b"this is not an ONNX model")
    digest = sha256(folder / "encoder.onnx")
    _edit_manifest(folder, lambda m: m["models"]["encoder"].update(sha256=digest))


MODEL_ROWS = {
    "missing file": (lambda f: (f / "labeler.onnx").unlink(), "ens", (), "labeler.onnx is missing"),
    "checksum mismatch": (
        lambda f: (f / "encoder.onnx").open("ab").write(b"\0"),
        "ens",
        (),
        "does not match its checksum",
    ),
    "not ONNX": (_not_onnx, "ens", (), "onnxruntime cannot load the model"),
    "shape mismatch": (None, "square", (), "expects (1, 12, 10)"),
    "channel mismatch": (None, "two_channels", (), "expects (1, 12, 10) (1 channel(s)"),
    "newer format": (
        lambda f: _edit_manifest(f, lambda m: m.update(format_version=99)),
        "ens",
        (),
        "newer than this SENSE",
    ),
    "CUDA unusable": (None, "ens", ("--device", "cuda"), "device 'cuda' requested"),
}


@pytest.mark.parametrize("row", list(MODEL_ROWS))
@pytest.mark.without_cuda("onnxruntime", cases=["CUDA unusable"])
def test_unusable_models_give_one_clear_line(model_workspace, row, tmp_path, capsys):
    change, ensemble, options, message = MODEL_ROWS[row]
    bundle = model_workspace / "good"
    if change is not None:
        bundle = _broken_bundle(model_workspace, row.replace(" ", "_"), change)
    args = ["embed", str(model_workspace / f"{ensemble}.npz"), str(bundle)]
    code = main([*args, "--out", str(tmp_path / "out"), "--projection", "pca", *options])
    assert code == 2
    one_line_error(capsys.readouterr().err, message)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- inputs
def _folder(tmp_path: Path, count: int = 3) -> Path:
    folder = tmp_path / "members"
    write_ensemble(make_ensemble(count=count), folder, member_format="npy")
    return folder


def _npz_bytes(tmp_path: Path, cut: bool) -> Path:
    data = write_ensemble(make_ensemble(count=6), tmp_path / "x.npz").read_bytes()
    path = tmp_path / "bad.npz"
    path.write_bytes(data[: len(data) // 2] if cut else data[:40] + b"\xff" * 64 + data[104:])
    return path


def _member(tmp_path: Path, name: str, content: bytes) -> Path:
    folder = _folder(tmp_path)
    (folder / name).write_bytes(content)
    return folder


def _labels(tmp_path: Path, text: str) -> Path:
    folder = _folder(tmp_path)
    (folder / "labels.csv").write_text(text)
    return folder


def _npy(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    folder = _folder(tmp_path)
    np.save(folder / name, array)
    return folder


def _npz(tmp_path: Path, **arrays) -> Path:
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _newer(tmp_path: Path) -> Path:
    folder = _folder(tmp_path)
    text = (folder / "ensemble.json").read_text().replace('"version": 1', '"version": 7')
    (folder / "ensemble.json").write_text(text)
    return folder


nan_field = np.ones((12, 10))
nan_field[3, 4] = np.nan

INPUT_ROWS = {
    "empty folder": (_empty, "ensemble is empty"),
    "empty npz": (lambda t: _npz(t, fields=np.zeros((0, 4, 4))), "ensemble is empty"),
    "mixed shapes": (lambda t: _npy(t, "run9.npy", np.zeros((8, 8))), "run9.npy: member 'run9'"),
    "mixed channels": (lambda t: _npy(t, "run9.npy", np.zeros((2, 12, 10))), "(2, 12, 10)"),
    "NaN": (lambda t: _npy(t, "run9.npy", nan_field), "run9.npy: member 'run9' has 1 non-finite"),
    "float64 overflow": (
        lambda t: _npy(t, "run9.npy", np.full((12, 10), 1e300)),
        "exceed the float32 range",
    ),
    "huge member": (
        lambda t: _npy(t, "run0.npy", np.zeros((1, 512, 512), np.float32)),
        "run0.npy: a member of shape (1, 512, 512) needs 2.0 MiB of memory",
    ),
    "corrupt npz": (lambda t: _npz_bytes(t, cut=False), "bad.npz"),
    "truncated npz": (lambda t: _npz_bytes(t, cut=True), "bad.npz"),
    "object arrays npz": (
        lambda t: _npz(t, fields=np.zeros((2, 4, 4)), member_ids=np.array([{}, "b"], object)),
        "bad.npz",
    ),
    "corrupt png": (lambda t: _member(t, "run9.png", b"\x89PNG\r\n\x1a\nbroken"), "run9.png"),
    "truncated vti": (
        lambda t: _member(t, "run9.vti", b"<VTKFile type='ImageData'><Image"),
        "run9.vti",
    ),
    "corrupt npy": (lambda t: _member(t, "run9.npy", b"\x93NUMPY garbage"), "run9.npy"),
    "labels: unknown id": (
        lambda t: _labels(t, "member_id,label\nrun0,straight\nghost,meander\n"),
        "labels.csv, line 3: unknown member 'ghost'",
    ),
    "labels: duplicate id": (
        lambda t: _labels(t, "member_id,label\nrun1,straight\nrun1,meander\n"),
        "labels.csv, line 3: member 'run1' is already listed on line 2",
    ),
    "labels: unknown class": (
        lambda t: _labels(t, "member_id,label\nrun1,volcano\n"),
        "labels.csv, line 2: unknown class 'volcano'",
    ),
    "newer ensemble.json": (_newer, "newer than this SENSE"),
}


@pytest.mark.parametrize("row", list(INPUT_ROWS))
def test_bad_inputs_give_one_clear_line(row, tmp_path, capsys, monkeypatch):
    build, message = INPUT_ROWS[row]
    if row == "huge member":
        monkeypatch.setenv("SENSE_MEMORY_LIMIT", "1M")
    source = build(tmp_path)
    code = main(["convert", str(source), str(tmp_path / "out.npz")])
    assert code == 2
    one_line_error(capsys.readouterr().err, message)
    assert not (tmp_path / "out.npz").exists()


def test_memory_guard_refuses_loads_and_batches_before_allocating(tmp_path, monkeypatch):
    from sense_core.errors import EnsembleError
    from sense_core.io import open_ensemble

    path = write_ensemble(make_ensemble(count=64), tmp_path / "ens.npz")  # 64 x 480 B
    monkeypatch.setenv("SENSE_MEMORY_LIMIT", "20K")
    source = open_ensemble(path)
    with pytest.raises(EnsembleError, match=r"loading all 64 members .* more than the limit"):
        source.load()
    with pytest.raises(EnsembleError, match="--batch-size"):
        source.read_members(range(32))
    assert source.read_members(range(8)).shape == (8, 1, 12, 10)  # small batches still work
    assert sum(len(i) for i, _ in source.iter_batches(8)) == 64
    monkeypatch.setenv("SENSE_MEMORY_LIMIT", "lots")
    with pytest.raises(EnsembleError, match="is not a size"):
        source.read_members([0])


def test_float64_and_integer_fields_are_kept_as_float32(tmp_path):
    from sense_core.io import read_ensemble

    fields = np.random.default_rng(0).normal(size=(3, 5, 7)) * 1e30  # float64, non-square
    np.savez(tmp_path / "f64.npz", fields=fields, labels=[0, 1, -1])
    ensemble = read_ensemble(tmp_path / "f64.npz")
    np.testing.assert_allclose(ensemble.fields[:, 0], fields.astype(np.float32), rtol=1e-7)
    np.savez(tmp_path / "u16.npz", fields=np.array([[[0, 65535]]], np.uint16))
    assert read_ensemble(tmp_path / "u16.npz").fields.ravel().tolist() == [0.0, 65535.0]


@pytest.fixture(scope="module")
def embed_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    make_runtime_bundle(root / "bundle", projector=True)
    return root / "bundle"


def _embed(ensemble: Ensemble, bundle: Path, tmp_path: Path, capsys, *options: str) -> dict:
    tmp_path.mkdir(exist_ok=True)
    write_ensemble(ensemble, tmp_path / "ens.npz")
    code = main(["embed", str(tmp_path / "ens.npz"), str(bundle), "--out", str(tmp_path / "o"),
                 "--no-plot", *options])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return {"embedding": read_embedding(tmp_path / "o" / "embedding.npz"), "out": captured.out}


def test_single_class_is_embedded_and_the_missing_silhouette_explained(
    embed_bundle, tmp_path, capsys
):
    fields = np.random.default_rng(0).normal(size=(20, 1, 12, 10)).astype(np.float32)
    ensemble = Ensemble(fields, labels=[0] * 10 + [-1] * 10, class_names=("straight",))
    run = _embed(ensemble, embed_bundle, tmp_path, capsys)
    note = run["embedding"].provenance["metrics"]["note"]
    assert "one class ('straight')" in note and "undefined" in note
    assert "note: the hand labels cover one class" in run["out"]
    assert "undefined" in (tmp_path / "o" / "report.md").read_text()


def test_classes_the_bundle_does_not_know_are_kept_and_reported(embed_bundle, tmp_path, capsys):
    fields = np.random.default_rng(0).normal(size=(20, 1, 12, 10)).astype(np.float32)
    names = ("straight", "volcano", "lake", "meander", "delta")
    ensemble = Ensemble(fields, labels=np.arange(20) % 5, class_names=names)
    run = _embed(ensemble, embed_bundle, tmp_path, capsys)
    embedding = run["embedding"]
    assert embedding.class_names == ("straight", "meander", "braided", "volcano", "lake", "delta")
    kept = [embedding.class_names[label] for label in embedding.labels]
    assert kept == [names[i % 5] for i in range(20)]
    assert "classes the bundle does not know: ['volcano', 'lake', 'delta']" in run["out"]
    assert "volcano" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.parametrize("projection", ["pca", "projector"])
def test_constant_members_and_a_single_member_give_a_finite_map(
    embed_bundle, tmp_path, capsys, projection
):
    constant = Ensemble(np.full((6, 1, 12, 10), 3.0, np.float32))
    run = _embed(constant, embed_bundle, tmp_path, capsys, "--projection", projection)
    assert np.isfinite(run["embedding"].xy).all()
    single = Ensemble(np.ones((1, 1, 12, 10), np.float32))
    run = _embed(single, embed_bundle, tmp_path / "one", capsys, "--projection", projection)
    assert run["embedding"].xy.shape == (1, 2) and np.isfinite(run["embedding"].xy).all()


def test_umap_on_too_few_members_is_explained(embed_bundle, tmp_path, capsys):
    write_ensemble(make_ensemble(count=3), tmp_path / "ens.npz")
    code = main(["embed", str(tmp_path / "ens.npz"), str(embed_bundle), "--out",
                 str(tmp_path / "o"), "--projection", "umap"])  # fmt: skip
    assert code == 2
    one_line_error(capsys.readouterr().err, "UMAP needs at least 5 members", "PCA")


# --------------------------------------------------------------------------- atomic writers
def test_stale_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    from sense_core.io.atomic import atomic_write_text, remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".out.txt.{dead_pid}.abc123.part"
    live = tmp_path / f".out.txt.{os.getpid()}.def456.part"
    other = tmp_path / f".out.txt.more.{dead_pid}.x.part"  # another file's temporary
    for path in (stale, live, other):
        path.write_text("partial")
    # a folder moved aside by a writer killed between its two renames comes back
    aside = tmp_path / f".members.{dead_pid}.zzz.old"
    (aside / "members").mkdir(parents=True)
    (aside / "members" / "a.npy").write_text("old member")
    assert remove_stale_temporaries(tmp_path / "members") == [aside]
    assert (tmp_path / "members" / "a.npy").read_text() == "old member"
    atomic_write_text(tmp_path / "out.txt", "complete")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "out.txt").read_text() == "complete"


def test_cli_turns_system_errors_into_one_line(tmp_path, capsys, monkeypatch):
    import sense_core.cli as cli

    def fail(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "secret.npz"))

    monkeypatch.setattr(cli, "_run_info", fail)
    assert main(["info", str(tmp_path)]) == 2
    one_line_error(capsys.readouterr().err, "secret.npz: Permission denied")

    def oom(args):
        raise MemoryError

    monkeypatch.setattr(cli, "_run_info", oom)
    assert main(["info", str(tmp_path)]) == 2
    one_line_error(capsys.readouterr().err, "out of memory", "--batch-size")


# --------------------------------------------------------------------------- safety
LOADERS = {"load", "loads", "read_pickle", "Unpickler"}


def test_no_user_file_is_ever_unpickled():
    """No pickle / dill / joblib / cloudpickle import anywhere, every numpy load passes
    ``allow_pickle=False`` and every ``torch.load`` ``weights_only=True``."""
    import ast

    problems = []
    files = [p for d in ("sense_core", "training", "plugin") for p in (REPO / d).rglob("*.py")]
    assert len(files) > 30
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle", "shelve")
                       for n in names):  # fmt: skip
                    problems.append(f"{where}: imports {names}")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = ast.unparse(node.func.value)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if node.func.attr == "load" and owner in ("np", "numpy"):
                if keywords.get("allow_pickle") != "False":
                    problems.append(f"{where}: np.load without allow_pickle=False")
            if node.func.attr == "load" and owner == "torch":
                if keywords.get("weights_only") != "True":
                    problems.append(f"{where}: torch.load without weights_only=True")
            if node.func.attr in LOADERS and owner in ("pd", "pandas", "pickle"):
                problems.append(f"{where}: {owner}.{node.func.attr}")
    assert problems == []


def test_signal_gate_holds_sigterm_until_the_block_ends():
    from sense_core.errors import Interrupted, SignalGate, stop_on_signals

    steps = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, stop_on_signals():
        with SignalGate() as gate:
            gate.close()
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("renamed after the signal")
        steps.append("not reached")
    assert steps == ["renamed after the signal"]
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_sigterm_right_after_the_temporary_is_created_leaves_nothing(tmp_path, monkeypatch, kind):
    """The narrowest window: SIGTERM the instant mkstemp/mkdtemp has made the temporary. It
    is handled once the writer knows the temporary's name, which is then removed (a CI run
    once left a .part file behind when the signal fell into that window)."""
    import tempfile

    from sense_core.errors import Interrupted, stop_on_signals
    from sense_core.io import atomic

    maker = "mkstemp" if kind == "file" else "mkdtemp"
    real = getattr(tempfile, maker)

    def make_then_signal(*args, **kwargs):
        made = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return made

    monkeypatch.setattr(atomic.tempfile, maker, make_then_signal)
    target = tmp_path / ("out.txt" if kind == "file" else "out")
    writer = atomic.atomic_path(target) if kind == "file" else atomic.atomic_directory(target)
    with pytest.raises(Interrupted), stop_on_signals():
        with writer:
            pass
    assert list(tmp_path.iterdir()) == []


def test_every_test_named_in_the_reliability_table_exists():
    """docs/reliability.md points each row at its tests: they must exist (renames break it)."""
    table = (REPO / "docs" / "reliability.md").read_text()
    named = 0
    for row in (line for line in table.splitlines() if line.startswith("| ")):
        module = None
        for token in re.findall(r"`(test_\w+\.py)?::(\w+)", row):
            module = token[0] or module
            assert module is not None, row
            source = (REPO / "tests" / module).read_text()
            assert f"def {token[1]}(" in source, f"{module}::{token[1]} is not a test"
            named += 1
    assert named > 40
