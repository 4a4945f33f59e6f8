"""pvpython / pvbatch / GUI helpers for SENSE (imported as ``sense_paraview``).

Live linking of a scatter selection to the member view (:func:`link_selection`). ParaView's
``AddSelectionLink`` cannot map the rows of an embedding onto another dataset's members, so the
mapping goes through member ids. ``paraview`` is imported inside the functions, so the package
imports anywhere.
"""

from sense_paraview.linking import SelectionLink, link_selection, selected_member_ids

__all__ = ["SelectionLink", "link_selection", "scripts_dir", "selected_member_ids"]


def scripts_dir():
    """Folder of SENSE's example pvpython/pvbatch scripts."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "scripts"
