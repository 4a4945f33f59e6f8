"""SENSE's ParaView layer (imported as ``sense_paraview``): the algorithms behind the plugin
(:mod:`sense_paraview.algorithms`, VTK conversions in :mod:`sense_paraview.vtk_views`), the
plugin file itself (package data, :func:`plugin_file`), the ``sense paraview|pvpython|pvbatch|
pvserver`` launchers and ``sense demo``, and pvpython / pvbatch / GUI helpers: among them
:func:`label`, :func:`unlabel`, :func:`undo` and :func:`suggest` (:mod:`sense_paraview.labeling`),
:func:`train`, :func:`bundle_versions` and :func:`use_version`
(:mod:`sense_paraview.training_jobs`).

Decoding a point of the map: :func:`decode` (fields at map points), :func:`show_decoded` (a
SENSE Decode shown beside the members) and :func:`map_positions` (:mod:`sense_paraview.decoding`).

The linked layout (:func:`show_linked_layout`: scatter coloured by class beside the selected
members' fields) and the live link under it (:func:`link_selection`). ParaView's
``AddSelectionLink`` cannot map the rows of an embedding onto another dataset's members, so the
mapping goes through member ids. ``paraview`` is imported inside the functions, so the package
imports anywhere.
"""

from sense_paraview.decoding import decode, map_positions, show_decoded
from sense_paraview.failures import FilterError, update_or_raise
from sense_paraview.labeling import label, suggest, undo, unlabel
from sense_paraview.launcher import plugin_dir, plugin_file
from sense_paraview.layout import LinkedLayout, colour_map_by, show_linked_layout
from sense_paraview.linking import (
    SelectionLink,
    link_selection,
    member_ids_where,
    selected_member_ids,
)
from sense_paraview.training_jobs import TrainingJob, bundle_versions, train, use_version

__all__ = [
    "FilterError",
    "LinkedLayout",
    "SelectionLink",
    "TrainingJob",
    "bundle_versions",
    "decode",
    "colour_map_by",
    "label",
    "link_selection",
    "map_positions",
    "member_ids_where",
    "plugin_dir",
    "plugin_file",
    "scripts_dir",
    "selected_member_ids",
    "show_decoded",
    "show_linked_layout",
    "suggest",
    "train",
    "undo",
    "unlabel",
    "update_or_raise",
    "use_version",
]


def scripts_dir():
    """Folder of SENSE's example pvpython/pvbatch scripts."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "scripts"
