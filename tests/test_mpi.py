"""SENSE Embedding under ParaView's MPI: ``mpirun -np 2 pvbatch --symmetric``. Each rank holds
half of the members (the SENSE reader's pieces, or ParaView's .vtm reader), embeds them, and
rank 0 projects all of them: the result equals the single-process one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO,
    SENSE,
    kill_process_tree,
    make_ensemble,
    make_runtime_bundle,
    run_process_tree,
)

from sense_core.distributed import global_class_names, member_share
from sense_core.io import write_ensemble

pytestmark = pytest.mark.paraview

SCRIPT = """
import json, sys
from paraview import servermanager
from paraview.simple import *
from vtkmodules.vtkParallelCore import vtkMultiProcessController
from vtkmodules.util.numpy_support import vtk_to_numpy

path, bundle, projection, out = sys.argv[1:5]
controller = vtkMultiProcessController.GetGlobalController()
rank, ranks = controller.GetLocalProcessId(), controller.GetNumberOfProcesses()
reader = OpenDataFile(path) if path.endswith(".vtm") else SENSEEnsembleReader(FileName=path)
embedding = SENSEEmbedding(Input=reader, Bundle=bundle, Projection=projection)
embedding.UpdatePipeline()
local = reader.GetClientSideObject().GetOutputDataObject(0)
held = sum(1 for i in range(local.GetNumberOfBlocks()) if local.GetBlock(i) is not None)
points = embedding.GetClientSideObject().GetOutputDataObject(0)
report = {"ranks": ranks, "held": held, "local_points": points.GetNumberOfPoints()}
table = servermanager.Fetch(embedding, idx=1)  # collective
members = SENSEMemberView(Input=reader, MemberIds=["run3", "run9", "run1"])
shown = servermanager.Fetch(members)  # collective: the members come from both ranks
if rank == 0:
    if shown.GetBlock(0).IsA("vtkMultiBlockDataSet"):  # under MPI: one group per rank
        shown = shown.GetBlock(0)  # rank 0's, which holds the view
    for index, name in ((0, "mosaic"), (2, "mean"), (3, "std")):
        block = shown.GetBlock(index)
        report[name] = vtk_to_numpy(block.GetPointData().GetArray("field")).tolist()
    columns = {}
    for name in ("member_id", "class_name", "label_source"):
        array = table.GetColumnByName(name)
        columns[name] = [array.GetValue(i) for i in range(array.GetNumberOfValues())]
    for name in ("x", "y", "label", "confidence", "latent"):
        columns[name] = vtk_to_numpy(table.GetColumnByName(name)).tolist()
    provenance = table.GetFieldData().GetAbstractArray("provenance").GetValue(0)
    report.update(columns=columns, provenance=json.loads(provenance))
with open(f"{out}.{rank}.json", "w") as f:
    json.dump(report, f)
"""


def mpirun(ranks: int) -> list[str]:
    """``mpirun`` for ``ranks`` processes on this machine (oversubscribed: CI has 2 cores)."""
    assert shutil.which("mpirun"), "mpirun (openmpi-bin) is needed: make setup installs it"
    launcher = ["mpirun", "--oversubscribe", "-np", str(ranks)]
    return [*launcher, "--allow-run-as-root"] if os.geteuid() == 0 else launcher


def run_pvbatch(tmp_path, ranks: int, *args: str) -> list[dict]:
    """Run SCRIPT with pvbatch on ``ranks`` MPI processes (1: plain pvbatch); one report per
    rank."""
    script, out = tmp_path / "embed_mpi.py", tmp_path / f"report{ranks}"
    script.write_text(SCRIPT)
    command = [SENSE, "pvbatch", "--no-xvfb"]
    if ranks > 1:
        command = [*mpirun(ranks), *command, "--symmetric"]
    completed = run_process_tree([*command, str(script), *args, str(out)], 600, cwd=REPO)
    output = f"{completed.stdout}\n{completed.stderr}"
    assert completed.returncode == 0, output[-4000:]
    assert "SENSE:" not in output, output[-4000:]  # no error reported by the filters
    return [json.loads((tmp_path / f"report{ranks}.{r}.json").read_text()) for r in range(ranks)]


def assert_same_embedding(parallel: dict, serial: dict) -> None:
    """Rank 0's map and member view equal the single-process ones."""
    for name in ("mosaic", "mean", "std"):
        np.testing.assert_allclose(parallel[name], serial[name], rtol=1e-6, err_msg=name)
    a, b = parallel["columns"], serial["columns"]
    for name in ("member_id", "class_name", "label_source", "label"):
        assert a[name] == b[name], name
    for name in ("x", "y", "confidence", "latent"):
        np.testing.assert_allclose(
            np.asarray(a[name], dtype=float),
            np.asarray(b[name], dtype=float),
            rtol=1e-5,
            atol=1e-5,
            err_msg=name,
        )


def test_member_share_splits_contiguously_and_completely():
    shares = [member_share(10, r, 3) for r in range(3)]
    assert [list(s) for s in shares] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert list(member_share(1, 1, 2)) == [0] and list(member_share(1, 0, 2)) == []
    assert global_class_names([{0: "a"}, {2: "c"}]) == ["a", "class_1", "c"]


@pytest.mark.parametrize("projection", ["Parametric projector", "PCA"])
def test_two_ranks_embed_their_members_and_match_one_process(tmp_path, projection):
    ensemble = make_ensemble(count=25)
    path = write_ensemble(ensemble, tmp_path / "ens.npz")
    bundle = tmp_path / "bundle"
    make_runtime_bundle(bundle, projector=True)
    (serial,) = run_pvbatch(tmp_path, 1, str(path), str(bundle), projection)
    rank0, rank1 = run_pvbatch(tmp_path, 2, str(path), str(bundle), projection)
    assert serial["held"] == 25 and (rank0["held"], rank1["held"]) == (12, 13)
    assert rank0["ranks"] == 2 and rank0["local_points"] == 25 and rank1["local_points"] == 0
    assert rank0["provenance"]["distributed"]["members_per_rank"] == [12, 13]
    assert serial["columns"]["member_id"] == list(ensemble.member_ids)
    assert_same_embedding(rank0, serial)


def test_two_ranks_with_paraview_vtm_reader(tmp_path):
    """ParaView's own .vtm reader spreads the member files over the ranks."""
    ensemble = make_ensemble(count=10)
    folder = write_ensemble(ensemble, tmp_path / "members")
    bundle = tmp_path / "bundle"
    make_runtime_bundle(bundle)
    vtm = str(folder / "ensemble.vtm")
    (serial,) = run_pvbatch(tmp_path, 1, vtm, str(bundle), "PCA")
    rank0, rank1 = run_pvbatch(tmp_path, 2, vtm, str(bundle), "PCA")
    assert rank0["held"] + rank1["held"] == 10 and min(rank0["held"], rank1["held"]) > 0
    assert_same_embedding(rank0, serial)


CLIENT = """
import json, sys
from paraview import servermanager
from paraview.simple import *
path, bundle, port, out = sys.argv[1:5]
Connect("localhost", int(port))
import paraview.simple as simple
reader = simple.SENSEEnsembleReader(FileName=path)
embedding = simple.SENSEEmbedding(Input=reader, Bundle=bundle, Projection="PCA")
table = servermanager.Fetch(embedding, idx=1)
provenance = json.loads(table.GetFieldData().GetAbstractArray("provenance").GetValue(0))
ids = table.GetColumnByName("member_id")
x = table.GetColumnByName("x")
json.dump({
    "member_id": [ids.GetValue(i) for i in range(ids.GetNumberOfValues())],
    "x": [x.GetValue(i) for i in range(x.GetNumberOfValues())],
    "distributed": provenance.get("distributed"),
}, open(out, "w"))
"""


@contextlib.contextmanager
def pvserver(tmp_path: Path, ranks: int, xvfb: bool) -> Iterator[tuple[int, Path]]:
    """``mpirun -np RANKS pvserver`` in SENSE's environment on a free port; yields (port, log)
    once it accepts a connection, and checks that it exits cleanly after its client left."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / "pvserver.log"
    launcher = [sys.executable, "-m", "sense_paraview.launcher", *([] if xvfb else ["--no-xvfb"])]
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [*mpirun(ranks), *launcher, "pvserver", f"--server-port={port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Accepting connection" not in log_path.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield port, log_path
        assert server.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if server.poll() is None:
            kill_process_tree(server)


def test_pvserver_on_two_ranks_embeds_for_a_client(tmp_path):
    """`mpirun -np 2 pvserver` (through SENSE's environment), a pvpython client connects: the
    server ranks share the members, and the client gets the single-process map."""
    ensemble = make_ensemble(count=25)
    path = write_ensemble(ensemble, tmp_path / "ens.npz")
    bundle = tmp_path / "bundle"
    make_runtime_bundle(bundle)
    with pvserver(tmp_path, ranks=2, xvfb=False) as (port, server_log):
        script, out = tmp_path / "client.py", tmp_path / "client.json"
        script.write_text(CLIENT)
        client = run_process_tree(
            [SENSE, "pvpython", "--no-xvfb", str(script), str(path), str(bundle), str(port),
             str(out)],
            300,
            cwd=REPO,
        )  # fmt: skip
        assert client.returncode == 0 and out.exists(), client.stdout + client.stderr
    report = json.loads(out.read_text())
    assert report["member_id"] == list(ensemble.member_ids)
    assert report["distributed"]["members_per_rank"] == [12, 13]
    (serial,) = run_pvbatch(tmp_path, 1, str(path), str(bundle), "PCA")
    np.testing.assert_allclose(report["x"], serial["columns"]["x"], rtol=1e-5, atol=1e-5)


RANKS_SCRIPT = """
import json, sys
import numpy as np
from mpi4py import MPI
sys.path.insert(0, {tests!r})
from helpers import make_ensemble
from sense_core.distributed import embed_distributed, member_share
from sense_core.errors import SenseError
from sense_core.projection import ProjectionOptions

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
ensemble = make_ensemble(count=9)
share = list(member_share(len(ensemble), rank, comm.Get_size()))
names = {{int(l): ensemble.class_names[l] for l in ensemble.labels[share] if l >= 0}}
bundle = {bundle!r} if rank == 0 else {bad!r}  # rank 1 is given a broken bundle
try:
    embed_distributed(
        comm, share, [ensemble.member_ids[i] for i in share], ensemble.labels[share].tolist(),
        names, ensemble.fields[share], bundle, projection=ProjectionOptions(method="pca"),
    )
    outcome = "returned"
except SenseError as exc:
    outcome = str(exc)
with open({out!r} + "." + str(rank), "w") as f:
    f.write(outcome)
"""


def test_an_error_on_one_rank_is_raised_on_every_rank_without_a_hang(tmp_path):
    bundle, bad = tmp_path / "bundle", tmp_path / "no_bundle_here"
    make_runtime_bundle(bundle)
    out = tmp_path / "outcome"
    script = tmp_path / "ranks.py"
    script.write_text(
        RANKS_SCRIPT.format(
            tests=str(REPO / "tests"), bundle=str(bundle), bad=str(bad), out=str(out)
        )
    )
    completed = run_process_tree([*mpirun(2), sys.executable, str(script)], 300, cwd=REPO)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    root, other = (out.with_name(f"outcome.{r}").read_text() for r in (0, 1))
    assert root.startswith("distributed embedding failed on rank 1:") and str(bad) in root
    assert other == root  # every rank's filter fails: no script goes on alone into a collective


AGREE_SCRIPT = """
import sys
from mpi4py import MPI
from sense_core.distributed import agree, on_root
from sense_core.errors import SenseError

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
outcomes = []

def fail_on(failing, message):
    def step():
        if rank in failing:
            raise ValueError(message)
        return rank
    return step

for run in (
    lambda: agree(comm, fail_on({1}, "rank 1 only")),
    lambda: agree(comm, fail_on({0, 1}, "everywhere")),
    lambda: agree(comm, fail_on(set(), "")),
    lambda: on_root(comm, fail_on({0}, "root")),
    lambda: on_root(comm, fail_on(set(), "")),
    lambda: on_root(comm, fail_on(set(), ""), share=False),
):
    try:
        outcomes.append(repr(run()))
    except SenseError as exc:
        outcomes.append("error: " + str(exc))
with open(sys.argv[1] + "." + str(rank), "w") as f:
    f.write("\\n".join(outcomes))
"""


def test_agree_and_on_root_raise_the_same_error_on_every_rank(tmp_path):
    """The agreement steps of sense_core.distributed on 2 mpi4py ranks (no ParaView)."""
    script, out = tmp_path / "agree.py", tmp_path / "outcome"
    script.write_text(AGREE_SCRIPT)
    completed = run_process_tree([*mpirun(2), sys.executable, str(script), str(out)], 120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    ranks = [out.with_name(f"outcome.{r}").read_text().split("\n") for r in (0, 1)]
    for rank, outcomes in enumerate(ranks):
        assert outcomes == [
            "error: rank 1: ValueError: rank 1 only",
            "error: ValueError: everywhere",  # alike on every rank: no rank named
            repr(rank),
            "error: ValueError: root",
            "0",  # rank 0's result, shared
            "0" if rank == 0 else "None",
        ], rank
