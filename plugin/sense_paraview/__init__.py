"""pvpython / pvbatch / GUI helpers for SENSE (imported as ``sense_paraview``).

The linked layout (:func:`show_linked_layout`: scatter coloured by class beside the selected
members' fields) and the live link under it (:func:`link_selection`). ParaView's
``AddSelectionLink`` cannot map the rows of an embedding onto another dataset's members, so the
mapping goes through member ids. ``paraview`` is imported inside the functions, so the package
imports anywhere.
"""

from sense_paraview.layout import LinkedLayout, show_linked_layout
from sense_paraview.linking import (
    SelectionLink,
    link_selection,
    member_ids_where,
    selected_member_ids,
)

__all__ = [
    "LinkedLayout",
    "SelectionLink",
    "link_selection",
    "member_ids_where",
    "scripts_dir",
    "selected_member_ids",
    "show_linked_layout",
]


def scripts_dir():
    """Folder of SENSE's example pvpython/pvbatch scripts."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "scripts"
