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
    from paraview.simple import ColorBy, GetColorTransferFunction, GetScalarBar, Show

    display = Show(embedding, view)
    display.Representation = "Points"
    display.PointSize = 6.0
    display.RenderPointsAsSpheres = 1
    # Selected points are drawn larger than the points (else the highlight hides under them);
    # their labels (off: they pile up on a cluster) show member ids when turned on.
    display.SelectionPointSize = 11.0
    display.SelectionPointFieldDataArrayName = "member_id"
    ColorBy(display, ("POINTS", "label"))
    colors = GetColorTransferFunction("label")
    colors.AutomaticRescaleRangeMode = "Never"  # the GUI would add annotations of its own
    colors.InterpretValuesAsCategories = 1
    colors.Annotations = [v for i, name in enumerate(class_names) for v in (str(i), name)]
    colors.ApplyPreset("Brewer Qualitative Set1", True)
    display.SetScalarBarVisibility(view, True)
    legend = GetScalarBar(colors, view)
    legend.Title, legend.ComponentTitle = "class", ""
    legend.TitleFontSize, legend.LabelFontSize = 14, 12
    legend.WindowLocation = "Upper Right Corner"
    view.InteractionMode = "2D"
    view.OrientationAxesVisibility = 0
    grid = view.AxesGrid
    grid.Visibility = 1
    grid.XTitle, grid.YTitle = "SENSE map x", "SENSE map y"
    grid.XTitleFontSize = grid.YTitleFontSize = 14
    grid.XLabelFontSize = grid.YLabelFontSize = 12
    return display


def frame_scatter(embedding, view) -> None:
    """Fit the camera to the map with room for the axis titles and, on the right, the legend
    (ParaView's own reset frames the points alone: titles and legend get clipped)."""
    xmin, xmax, ymin, ymax = embedding.GetDataInformation(0).GetBounds()[:4]
    if xmin > xmax:
        return  # an empty map (an error was reported)
    width, height = max(xmax - xmin, 1e-6), max(ymax - ymin, 1e-6)
    padded = [xmin - 0.3 * width, xmax + 0.3 * width, ymin - 0.2 * height, ymax + 0.2 * height]
    view.SMProxy.ResetCamera([*padded, -1.0, 1.0])


def style_members(member_view, view) -> object:
    """The member view's field in Viridis with the gaps between tiles in the background
    colour. Colouring is set without ``ColorBy``, which warns while nothing is selected."""
    from paraview.simple import GetColorTransferFunction, Show

    view.InteractionMode = "2D"
    view.OrientationAxesVisibility = 0
    display = Show(member_view, view)
    display.Representation = "Surface"
    colors = GetColorTransferFunction("field")
    colors.ApplyPreset("Viridis (matplotlib)", True)
    colors.NanColor = list(view.Background)
    display.ColorArrayName = ["POINTS", "field"]
    display.LookupTable = colors
    return display


def _place_views(scatter_view=None):
    """(layout, scatter view, members view) side by side. With ``scatter_view`` (a render view
    the user is in), its layout cell is split and the members view goes to its right; else a
    new layout "SENSE" gets two new render views."""
    from paraview.simple import AssignViewToLayout, CreateLayout, CreateView, GetLayout

    layout = GetLayout(scatter_view) if scatter_view is not None else None
    members_view = CreateView("RenderView")
    if layout is None:
        layout = CreateLayout("SENSE")
        scatter_view = scatter_view or CreateView("RenderView")
        AssignViewToLayout(view=scatter_view, layout=layout, hint=0)
        layout.SplitHorizontal(0, 0.5)
        AssignViewToLayout(view=members_view, layout=layout, hint=2)
    else:
        first_child = layout.SplitViewHorizontal(scatter_view, 0.5)
        layout.AssignView(first_child + 1, members_view)
    return layout, scatter_view, members_view


def show_linked_layout(
    ensemble, embedding=None, bundle: str = "", scatter_view=None, **embedding_properties
):
    """Build the linked layout for ``ensemble`` (a SENSE reader, a .vtm/.pvd reader, ...).

    ``embedding``: an existing SENSE Embedding on it (else one is made with ``bundle`` and
    ``embedding_properties``, e.g. ``Projection="PCA"``). ``scatter_view``: a render view to
    show the scatter in (its layout cell is split for the members); else a new layout.
    """
    import paraview.simple as simple

    from sense_paraview.failures import update_or_raise
    from sense_paraview.linking import link_selection

    if embedding is None:
        embedding_properties.setdefault("LinkedLayout", 0)  # this function lays it out
        embedding = simple.SENSEEmbedding(Input=ensemble, Bundle=bundle, **embedding_properties)
    update_or_raise(embedding)  # a failed embedding raises FilterError with its message
    class_names = _class_names(embedding)
    member_view = simple.SENSEMemberView(Input=ensemble)
    layout, scatter_view, members_view = _place_views(scatter_view)
    style_scatter(embedding, scatter_view, class_names)
    style_members(member_view, members_view)
    frame_scatter(embedding, scatter_view)
    simple.SetActiveView(scatter_view)
    simple.SetActiveSource(embedding)
    link = link_selection(embedding, member_view, views=[members_view], fit_views=True)
    return LinkedLayout(
        ensemble, embedding, member_view, layout, scatter_view, members_view, link, class_names
    )
