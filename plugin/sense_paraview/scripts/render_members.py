"""Render selected members of an ensemble to a PNG with SENSE's member view (pvbatch script).

    sense pvbatch render_members.py ENSEMBLE OUT.png MEMBER_ID [MEMBER_ID ...]

ENSEMBLE is an .npz, a member folder, or a .vtm. The picture shows the members tiled, with the
mean and standard deviation of the selection to the right, coloured with one shared range.
A failed SENSE filter, or an OUT.png that is or is inside the ensemble (a .png in a member folder
would become a member), ends the script with its message and exit status 1.
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

from sense_core.errors import SenseError
from sense_core.io.atomic import check_output_outside_inputs
from sense_paraview import FilterError, plugin_file, update_or_raise


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    path, out, member_ids = argv[0], argv[1], argv[2:]
    check_output_outside_inputs(out, [path])
    if not hasattr(simple, "SENSEMemberView"):  # not started through `sense pvbatch`
        LoadPlugin(str(plugin_file()))
    if path.endswith(".vtm"):
        ensemble = OpenDataFile(path)
    else:
        ensemble = simple.SENSEEnsembleReader(FileName=path)
    members = simple.SENSEMemberView(Input=ensemble, MemberIds=member_ids)
    update_or_raise(members)
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
    print(f"wrote {out} ({len(member_ids)} members)")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (FilterError, SenseError) as exc:
        print(f"render_members.py: error: {exc}", file=sys.stderr)
        sys.exit(1)
