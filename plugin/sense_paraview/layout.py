"""The linked layout: the embedding's scatter on the left, the selected members on the right.

``show_linked_layout(ensemble)`` builds what a user wants after Apply: a render-view scatter
coloured by class (categorical colours, legend, labelled axes), a member view beside it, and a
live link so that selecting points (rubber band, lasso, Ctrl-add) shows those members' fields
with their mean and standard deviation. Works in the GUI (macro or ``--script``), pvpython and
pvbatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class LinkedLayout:
    """The proxies of a linked layout, for scripts that go on from there."""

    ensemble: object
    embedding: object
    member_view: object
    layout: object
    scatter_view: object
    members_view: object
    link: object
    class_names: list = field(default_factory=list)

    def select(self, member_ids) -> None:
        """Select these members in the scatter (as a user's rubber band would)."""
        from paraview.simple import SelectIDs

        from sense_paraview.linking import point_indices

        ids = point_indices(self.embedding, member_ids)
        SelectIDs(IDs=[v for i in ids for v in (0, i)], FieldType="POINT", Source=self.embedding)

    def select_where(self, query: str) -> list[str]:
        """Select the members whose row satisfies ``query``, a numpy expression over the
        columns of the embedding table (e.g. ``"label == 3"``, ``"confidence < 0.6"``);
        returns their ids."""
        from sense_paraview.linking import member_ids_where

        chosen = member_ids_where(self.embedding, query)
        self.select(chosen)
        return chosen


def _class_names(embedding) -> list[str]:
    from paraview import servermanager

    data = servermanager.Fetch(embedding, idx=1)
    array = data.GetFieldData().GetAbstractArray("class_names") if data else None
    return json.loads(array.GetValue(0)) if array is not None else []


def style_scatter(embedding, view, class_names) -> object:
    """Points coloured by class with a legend, axes titled, 2D interaction."""
    from paraview.simple import ColorBy, GetColorTransferFunction, Show

    display = Show(embedding, view)
    display.Representation = "Points"
    display.PointSize = 6.0
    display.RenderPointsAsSpheres = 1
    ColorBy(display, ("POINTS", "label"))
    colors = GetColorTransferFunction("label")
    colors.InterpretValuesAsCategories = 1
    colors.Annotations = [v for i, name in enumerate(class_names) for v in (str(i), name)]
    colors.ApplyPreset("Brewer Qualitative Set1", True)
    display.SetScalarBarVisibility(view, True)
    view.InteractionMode = "2D"
    view.OrientationAxesVisibility = 0
    grid = view.AxesGrid
    grid.Visibility = 1
    grid.XTitle, grid.YTitle = "SENSE map x", "SENSE map y"
    return display


def show_linked_layout(ensemble, embedding=None, bundle: str = "", **embedding_properties):
    """Build the linked layout for ``ensemble`` (a SENSE reader, a .vtm/.pvd reader, ...).

    ``embedding``: an existing SENSE Embedding on it (else one is made with ``bundle`` and
    ``embedding_properties``, e.g. ``Projection="PCA"``).
    """
    import paraview.simple as simple
    from paraview.simple import (
        AssignViewToLayout,
        ColorBy,
        CreateLayout,
        CreateView,
        GetColorTransferFunction,
        ResetCamera,
        Show,
    )

    from sense_paraview.linking import link_selection

    if embedding is None:
        embedding = simple.SENSEEmbedding(Input=ensemble, Bundle=bundle, **embedding_properties)
    embedding.UpdatePipeline()
    class_names = _class_names(embedding)
    member_view = simple.SENSEMemberView(Input=ensemble)
    layout = CreateLayout("SENSE")
    scatter_view = CreateView("RenderView")
    AssignViewToLayout(view=scatter_view, layout=layout, hint=0)
    style_scatter(embedding, scatter_view, class_names)
    members_view = CreateView("RenderView")
    layout.SplitHorizontal(0, 0.5)
    AssignViewToLayout(view=members_view, layout=layout, hint=2)
    members_view.InteractionMode = "2D"
    members_view.OrientationAxesVisibility = 0
    member_display = Show(member_view, members_view)
    member_display.Representation = "Surface"
    ColorBy(member_display, ("POINTS", "field"))
    field_colors = GetColorTransferFunction("field")
    field_colors.ApplyPreset("Viridis (matplotlib)", True)
    field_colors.NanColor = list(members_view.Background)  # gaps between tiles
    ResetCamera(scatter_view)
    scatter_view.CameraParallelScale *= 1.3  # room for the legend
    simple.SetActiveView(scatter_view)
    simple.SetActiveSource(embedding)
    link = link_selection(embedding, member_view, views=[members_view], fit_views=True)
    return LinkedLayout(
        ensemble, embedding, member_view, layout, scatter_view, members_view, link, class_names
    )
