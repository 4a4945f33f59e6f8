"""Render selected members of an ensemble to a PNG with SENSE's member view (pvbatch script).

    sense pvbatch render_members.py ENSEMBLE OUT.png MEMBER_ID [MEMBER_ID ...]

ENSEMBLE is an .npz, a member folder, or a .vtm. The picture shows the members tiled, with the
mean and standard deviation of the selection to the right, coloured with one shared range.
A failed SENSE filter (an unknown member id among them: nothing is written), no display to
render on, or an OUT.png that is or is inside the ensemble (a .png in a member folder would
become a member) ends the script with its message (one line) and exit status 1. Under MPI
(``mpirun ... pvbatch --symmetric``) every rank agrees on each step first, so an error on any
rank ends every rank with it (:mod:`sense_paraview.batch`).
"""

import sys

import paraview.simple as simple
from paraview.simple import (
    ColorBy,
    CreateRenderView,
    GetColorTransferFunction,
    LoadPlugin,
    OpenDataFile,
    ResetCamera,
    SaveScreenshot,
    Show,
)

from sense_core.distributed import agree
from sense_core.io.atomic import check_output_outside_inputs
from sense_paraview import plugin_file, update_or_raise
from sense_paraview.batch import communicator, require_display, run_script


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    path, out, member_ids = argv[0], argv[1], argv[2:]
    comm = communicator()
    agree(comm, lambda: check_output_outside_inputs(out, [path]))
    agree(comm, lambda: require_display(f"writing {out}"))
    if not hasattr(simple, "SENSEMemberView"):  # not started through `sense pvbatch`
        LoadPlugin(str(plugin_file()))
    if path.endswith(".vtm"):
        ensemble = OpenDataFile(path)
    else:
        ensemble = simple.SENSEEnsembleReader(FileName=path)
    members = simple.SENSEMemberView(Input=ensemble, MemberIds=member_ids)
    agree(comm, lambda: update_or_raise(members))  # an unknown id fails every rank: no PNG
    view = CreateRenderView()
    view.ViewSize = [1200, 700]
    view.OrientationAxesVisibility = 0
    view.UseColorPaletteForBackground = 0
    view.Background = [1.0, 1.0, 1.0]
    view.InteractionMode = "2D"
    display = Show(members, view)
    display.Representation = "Surface"
    ColorBy(display, ("POINTS", "field"))
    colors = GetColorTransferFunction("field")
    colors.ApplyPreset("Viridis (matplotlib)", True)
    colors.NanColor = [1.0, 1.0, 1.0]
    display.RescaleTransferFunctionToDataRange(True, False)
    ResetCamera(view)
    SaveScreenshot(out, view, ImageResolution=[1200, 700])
    if comm is None or comm.Get_rank() == 0:
        print(f"wrote {out} ({len(member_ids)} members)")


if __name__ == "__main__":
    # exit only on failure: sys.exit(0) would skip pvbatch's own clean-up of the render windows
    # (an X error at exit, status 1)
    if status := run_script("render_members.py", main, sys.argv[1:]):
        sys.exit(status)
