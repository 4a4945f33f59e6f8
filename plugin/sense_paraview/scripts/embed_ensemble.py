"""Embed an ensemble in ParaView, headless, and save the map, a selection and a screenshot.

    sense pvbatch embed_ensemble.py ENSEMBLE OUT_DIR [--bundle DIR] [--projection PCA]
                                    [--select "label == 1" | --ids ID ID ...]
    mpirun -np K sense pvbatch --symmetric embed_ensemble.py ENSEMBLE OUT_DIR ...

ENSEMBLE: an .npz or member folder (read by the SENSE reader) or a .vtm / .pvd. Writes
OUT_DIR/embedding.csv (one row per member), OUT_DIR/selection.vtm (the selected members'
mosaic, mean and std), and OUT_DIR/layout.png (the linked layout: scatter | members). A failed
SENSE filter (bad input, unusable bundle), a query that fails, an unknown member id, no display
to render on, an OUT_DIR that is the ensemble, or one that another SENSE process is writing
ends the script with its message (one line) and exit status 1.

Under MPI (``pvbatch --symmetric``: every rank runs this script) the members are spread over
the ranks; rank 0 holds the map, so it writes embedding.csv, evaluates the query and shares the
selected ids; every step that can fail on one rank is agreed on first, so an error on any rank
ends every rank with it, never a hang (:mod:`sense_paraview.batch`).

embedding.csv is written by SENSE's own CSV writer (not ParaView's SaveData), so that a member id
or class name that a spreadsheet would run as a formula is escaped like in every SENSE CSV.
"""

import argparse
import contextlib
import sys
from functools import partial
from pathlib import Path

import numpy as np
import paraview.simple as simple
from paraview import servermanager
from paraview.simple import (
    GetColorTransferFunction,
    GetOpacityTransferFunction,
    LoadPlugin,
    OpenDataFile,
    Render,
    SaveData,
    SaveScreenshot,
    SelectIDs,
)

from sense_core.distributed import agree, on_root
from sense_core.embedding import write_columns_csv
from sense_core.errors import SenseError
from sense_core.io.atomic import check_output_outside_inputs, output_lock
from sense_paraview import plugin_file, show_linked_layout, update_or_raise
from sense_paraview.batch import communicator, require_display, run_script
from sense_paraview.layout import frame_members
from sense_paraview.linking import embedding_columns, member_ids_in

PROJECTIONS = {"auto": "Auto", "umap": "UMAP", "projector": "Parametric projector", "pca": "PCA"}


def main(argv) -> None:
    parser = argparse.ArgumentParser(prog="embed_ensemble.py", description=__doc__.split("\n")[0])
    parser.add_argument("ensemble")
    parser.add_argument("out_dir")
    parser.add_argument("--bundle", default="", help="bundle folder (default: the shipped one)")
    parser.add_argument("--projection", choices=sorted(PROJECTIONS), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--select", help="numpy query over the table, e.g. 'label == 1'")
    chosen.add_argument("--ids", nargs="+", help="member ids to select")
    args = parser.parse_args(argv)

    comm = communicator()
    if not hasattr(simple, "SENSEEmbedding"):  # not started through `sense pvbatch`
        LoadPlugin(str(plugin_file()))
    out = Path(args.out_dir)
    written = [out / name for name in ("embedding.csv", "selection.vtm", "layout.png")]
    agree(comm, lambda: require_display("writing layout.png"))
    with contextlib.ExitStack() as held:

        def prepare() -> None:
            check_output_outside_inputs(out, [args.ensemble], bundles=[args.bundle], writes=written)
            out.mkdir(parents=True, exist_ok=True)
            # another SENSE process writing OUT_DIR stops this one at once; rank 0 writes
            held.enter_context(output_lock(out))

        on_root(comm, prepare, share=False)
        embed(args, out, comm)


def open_ensemble(path: str):
    """A reader for ``path``: ParaView's for .vtm / .pvd, else the SENSE reader."""
    if not path.endswith((".vtm", ".pvd")):
        return simple.SENSEEnsembleReader(FileName=path)
    reader = OpenDataFile(path)
    if reader is None:
        raise SenseError(f"{path}: ParaView cannot open it (no such file, or not a .vtm/.pvd)")
    return reader


def chosen_members(columns: dict, args) -> list[tuple[int, str]]:
    """(point index, member id) of the members chosen by --select / --ids, in map order (the
    order a selection in the scatter gives). Runs where the map's columns are (rank 0)."""
    ids = [str(m) for m in columns.get("member_id", [])]
    if args.select:
        try:
            wanted = member_ids_in(columns, args.select)
        except ValueError as exc:
            raise SenseError(f"--select: {exc}") from exc
    elif args.ids:
        unknown = [m for m in args.ids if m not in set(ids)]
        if unknown:
            raise SenseError(f"--ids: member id(s) not in the ensemble: {', '.join(unknown)}")
        wanted = args.ids
    else:
        return []
    wanted = set(wanted)
    return [(index, m) for index, m in enumerate(ids) if m in wanted]


def field_range(data) -> tuple[float, float]:
    """The finite range of the "field" arrays in ``data`` (the member view's blocks)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    low, high = np.inf, -np.inf
    iterator = data.NewIterator()
    iterator.InitTraversal()
    while not iterator.IsDoneWithTraversal():
        array = iterator.GetCurrentDataObject().GetPointData().GetArray("field")
        values = vtk_to_numpy(array) if array is not None else np.empty(0)
        values = values[np.isfinite(values)]
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
        iterator.GoToNextItem()
    return (low, high) if low <= high else (0.0, 1.0)


def embed(args, out: Path, comm) -> None:
    """Embed, select and save into ``out`` (see the module doc)."""
    ensemble = agree(comm, lambda: open_ensemble(args.ensemble))
    embedding = simple.SENSEEmbedding(
        Input=ensemble,
        Bundle=args.bundle,
        Projection=PROJECTIONS[args.projection],
        Seed=args.seed,
        LinkedLayout=0,
    )
    agree(comm, lambda: update_or_raise(embedding))  # a failure on any rank fails every rank
    linked = show_linked_layout(ensemble, embedding=embedding)
    # The live link follows a user's selections; here the selection is set on every rank alike
    # (under MPI only rank 0 could read the selected ids back).
    linked.link.remove()
    columns = embedding_columns(linked.embedding)  # every rank asks; rank 0 gets the table
    on_root(comm, lambda: write_columns_csv(columns, out / "embedding.csv"), share=False)
    selected = on_root(comm, lambda: chosen_members(columns, args))
    if selected:
        indices, member_ids = zip(*selected)
        SelectIDs(IDs=[v for i in indices for v in (0, i)], FieldType="POINT", Source=embedding)
        linked.member_view.MemberIds = list(member_ids)
        agree(comm, lambda: update_or_raise(linked.member_view))
        linked.link.fit_views = False  # framed and coloured alike on every rank below
        linked.link.show(member_ids)  # the members, not the empty pane's hint
        SaveData(str(out / "selection.vtm"), proxy=linked.member_view)
        # the colour range from rank 0's data, set alike on every rank (a rescale to the data
        # range would change the colours on rank 0 only, and the ranks' renders would no
        # longer pair up)
        low, high = on_root(comm, partial(field_range, servermanager.Fetch(linked.member_view)))
        for function in (GetColorTransferFunction("field"), GetOpacityTransferFunction("field")):
            function.RescaleTransferFunction(low, high)
        frame_members(linked.member_view, linked.members_view)  # left of the colour bar
        Render(linked.members_view)
    linked.layout.SetSize(1600, 800)
    SaveScreenshot(str(out / "layout.png"), linked.layout, ImageResolution=[1600, 800])
    if comm is None or comm.Get_rank() == 0:
        print(f"embedded {len(linked.class_names)} classes; selected {len(selected)} member(s)")
        print(
            f"wrote {out / 'embedding.csv'}, {out / 'layout.png'}"
            + (f", {out / 'selection.vtm'}" if selected else "")
        )


if __name__ == "__main__":
    # exit only on failure: sys.exit(0) would skip pvbatch's own clean-up of the render windows
    # (an X error at exit, status 1)
    if status := run_script("embed_ensemble.py", main, sys.argv[1:]):
        sys.exit(status)
