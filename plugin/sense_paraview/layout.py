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
    paths: object = None  # the SENSE Paths under the points, when the members carry an order

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


# Where the map's points go in the scatter view (normalised x0, x1, y0, y1): the left part,
# above the axis labels; the legend stands in the free band on the right.
MAP_BOX = (0.15, 0.58, 0.13, 0.9)
LEGEND_POSITION = (0.7, 0.25)
# The member view's images leave the right edge to its colour bar.
MEMBERS_BOX = (0.02, 0.8, 0.04, 0.93)
MEMBERS_BAR_POSITION = (0.85, 0.15)
CLASS_LEGEND_TITLE = "class\nhand label: ringed\npredicted: faded\nby confidence"
UNRINGED_LEGEND_TITLE = "class\npredicted: faded\nby confidence"  # no rings (MPI pvbatch)
UNLABELED_COLOUR = [0.62, 0.62, 0.62]
PATHS_BAR_POSITION = (0.2, 0.02)  # the paths' colour bar: a horizontal one under the map
PATHS_BAR_LENGTH = 0.3
MAX_PATHS_SHOWN = 40  # more paths than this: only the selected members' (else a tangle)
HINT = "Select points in the map\nto see their members here"
# A per-member array with at most this many distinct values gets categorical colours.
MAX_CATEGORIES = 16


def _point_arrays(source) -> dict:
    """{name: (number of components, data type)} of ``source``'s point arrays."""
    info = source.GetDataInformation(0).GetPointDataInformation()
    arrays = {}
    for index in range(info.GetNumberOfArrays()):
        array = info.GetArrayInformation(index)
        arrays[array.GetName()] = (array.GetNumberOfComponents(), array.GetDataType())
    return arrays


def _marker_radius(embedding) -> float:
    """A point's radius in map units: about 1/100 of the map's larger side."""
    xmin, xmax, ymin, ymax = embedding.GetDataInformation(0).GetBounds()[:4]
    return max(xmax - xmin, ymax - ymin, 1e-6) / 100.0 if xmin <= xmax else 0.01


def categories_of(values) -> list | None:
    """The distinct values of a per-member column when it is categorical (strings, or integers
    with at most :data:`MAX_CATEGORIES` values, and fewer values than members), else None."""
    import numpy as np

    values = np.asarray(values)
    if values.ndim != 1 or len(values) == 0:
        return None
    if values.dtype.kind in "biuf":
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if finite.size == 0 or np.any(finite != np.round(finite)):
            return None
        values = finite.astype(np.int64)
    distinct = np.unique(values)
    if len(distinct) > MAX_CATEGORIES or len(distinct) >= max(len(values), 2):
        return None
    return [str(v) for v in distinct.tolist()]


def _categorical(colors, annotations: list[tuple[str, str]], grey: set[str] = frozenset()):
    """Make ``colors`` (a lookup table) categorical over (value, text) ``annotations``;
    values in ``grey`` get :data:`UNLABELED_COLOUR`."""
    colors.AutomaticRescaleRangeMode = "Never"  # the GUI would add annotations of its own
    colors.InterpretValuesAsCategories = 1
    colors.Annotations = [v for pair in annotations for v in pair]
    colors.ApplyPreset("Brewer Qualitative Set1", True)
    indexed = list(colors.IndexedColors)
    for index, (value, _) in enumerate(annotations):
        if value in grey and len(indexed) >= 3 * (index + 1):
            indexed[3 * index : 3 * index + 3] = UNLABELED_COLOUR
    colors.IndexedColors = indexed


def prepare_colourings(columns: dict) -> list[str]:
    """Give every categorical per-member column (strings, a few integer codes: metadata such
    as the source image or the chain) a categorical lookup table, so that choosing it in the
    GUI's *Coloring* combo box shows one colour per value with a legend; returns their names.
    ``label`` is set up by :func:`style_scatter`; ids, coordinates and latents are skipped."""
    from paraview.simple import GetColorTransferFunction

    prepared = []
    for name, values in columns.items():
        if name in ("member_id", "label", "x", "y", "latent"):
            continue
        categories = categories_of(values)
        if categories is not None:
            _categorical(GetColorTransferFunction(name), [(v, v) for v in categories])
            prepared.append(name)
    return prepared


def _style_legend(colors, view, title: str, position=LEGEND_POSITION) -> object:
    from paraview.simple import GetScalarBar

    legend = GetScalarBar(colors, view)
    legend.Title, legend.ComponentTitle = title, ""
    legend.TitleFontSize, legend.LabelFontSize = 14, 12
    legend.HorizontalTitle = 1
    legend.TextPosition = "Ticks left/bottom, annotations right/top"  # names right of the bar
    legend.WindowLocation = "Any Location"
    legend.Position = list(position)
    legend.ScalarBarLength = 0.4
    return legend


def _class_colours(embedding, view, display, class_names, title=CLASS_LEGEND_TITLE) -> None:
    """Colour by ``label``: one colour per class, unlabeled members grey, and the legend
    saying how hand labels and predictions are drawn."""
    from paraview.simple import ColorBy, GetColorTransferFunction

    ColorBy(display, ("POINTS", "label"))
    colors = GetColorTransferFunction("label")
    annotations = [(str(i), name) for i, name in enumerate(class_names)]
    low = embedding.GetDataInformation(0).GetPointDataInformation().GetArrayInformation("label")
    if low is not None and low.GetComponentRange(0)[0] < 0:
        annotations.append(("-1", "unlabeled"))
    _categorical(colors, annotations, grey={"-1"})
    display.SetScalarBarVisibility(view, True)
    _style_legend(colors, view, title)


def _hand_label_rings(embedding, view, radius: float):
    """Hand-labeled members ringed in black: a Threshold on ``hand_labeled`` drawn as larger
    black discs behind the map's points (and not pickable, so selections see only the map)."""
    from paraview.simple import Show, Threshold

    rings = Threshold(
        registrationName="SENSE hand labels",
        Input=embedding,
        Scalars=["POINTS", "hand_labeled"],
        LowerThreshold=0.5,
        UpperThreshold=1.5,
    )
    display = Show(rings, view)
    display.SetRepresentationType("Point Gaussian")
    display.ShaderPreset = "Plain circle"
    display.GaussianRadius = 1.5 * radius
    display.ColorArrayName = ["POINTS", ""]
    display.AmbientColor = display.DiffuseColor = [0.0, 0.0, 0.0]
    display.Position = [0.0, 0.0, -10.0 * radius]  # behind the points in the 2D view
    display.Pickable = 0
    return rings


def style_scatter(embedding, view, class_names) -> object:
    """Points coloured by class with a legend, axes titled, 2D interaction. How sure each
    colour is shows in the points themselves: hand-labeled members are ringed in black,
    predicted ones are smaller and fainter the lower the labeler's confidence, unlabeled ones
    are small and grey."""
    from paraview.simple import Show

    from sense_paraview.vtk_views import mpi_communicator

    display = Show(embedding, view)
    radius = _marker_radius(embedding)
    display.SetRepresentationType("Point Gaussian")
    display.ShaderPreset = "Plain circle"
    display.GaussianRadius = radius
    arrays = _point_arrays(embedding)
    # (no rings on the ranks of a symmetric pvbatch: the Threshold behind them hangs them)
    rings = "hand_labeled" in arrays and mpi_communicator() is None
    display.ScaleByArray = 1
    certainty = "label_certainty" if "label_certainty" in arrays else ""
    display.SetScaleArray = ["POINTS", certainty or "confidence"]
    display.ScaleTransferFunction.Points = [0.0, 0.7, 0.5, 0.0, 1.0, 1.0, 0.5, 0.0]
    display.OpacityByArray = 1
    display.OpacityArray = ["POINTS", certainty or "confidence"]
    display.OpacityTransferFunction.Points = [0.0, 0.45, 0.5, 0.0, 1.0, 1.0, 0.5, 0.0]
    # Selected points are drawn larger than the points (else the highlight hides under them);
    # their labels (off: they pile up on a cluster) show member ids when turned on.
    display.SelectionPointSize = 11.0
    display.SelectionPointFieldDataArrayName = "member_id"
    title = CLASS_LEGEND_TITLE if rings else UNRINGED_LEGEND_TITLE
    _class_colours(embedding, view, display, class_names, title)
    if rings:
        _hand_label_rings(embedding, view, radius)
    view.InteractionMode = "2D"
    view.OrientationAxesVisibility = 0
    grid = view.AxesGrid
    grid.Visibility = 1
    grid.AxesToLabel = 3  # bottom and left only: the right side is the legend's
    grid.XTitle, grid.YTitle = "SENSE map x", "SENSE map y"
    grid.XTitleFontSize = grid.YTitleFontSize = 14
    grid.XLabelFontSize = grid.YLabelFontSize = 12
    return display


def colour_map_by(target, array: str, view=None) -> object:
    """Colour the map's points by the per-member point array ``array`` (``label``: the classes
    as after Apply; a metadata column, ``confidence``, ``unusualness``...): categorical colours
    and a legend of values for strings and a few integer codes, Viridis and a colour bar
    otherwise. ``target``: a :class:`LinkedLayout` or a SENSE Embedding proxy (then ``view``, or
    the active view). Returns the display; the ``Coloring`` combo box of the GUI does the same."""
    from paraview.simple import (
        ColorBy,
        GetActiveViewOrCreate,
        GetColorTransferFunction,
        GetDisplayProperties,
        GetScalarBar,
        HideScalarBarIfNotNeeded,
        Render,
    )

    from sense_core.errors import SenseError
    from sense_paraview.linking import embedding_columns

    embedding = getattr(target, "embedding", target)
    view = view or getattr(target, "scatter_view", None) or GetActiveViewOrCreate("RenderView")
    arrays = _point_arrays(embedding)
    if array not in arrays:
        raise SenseError(
            f"the map has no per-member array {array!r}; it has: {', '.join(sorted(arrays))}"
        )
    display = GetDisplayProperties(embedding, view)
    previous = display.LookupTable
    if array == "label":
        names = getattr(target, "class_names", None) or _class_names(embedding)
        legend = GetScalarBar(GetColorTransferFunction("label"), view)
        title = legend.Title if legend.Title.startswith("class\n") else CLASS_LEGEND_TITLE
        _class_colours(embedding, view, display, names, title)
    else:
        ColorBy(display, ("POINTS", array))
        colors = GetColorTransferFunction(array)
        categories = categories_of(embedding_columns(embedding).get(array, []))
        if categories is not None:
            _categorical(colors, [(v, v) for v in categories])
        else:
            colors.InterpretValuesAsCategories = 0
            colors.ApplyPreset("Viridis (matplotlib)", True)
            display.RescaleTransferFunctionToDataRange(False, True)
        display.SetScalarBarVisibility(view, True)
        _style_legend(colors, view, array)
    if previous is not None and previous != display.LookupTable:
        HideScalarBarIfNotNeeded(previous, view)  # one legend: the colours shown
    Render(view)
    return display


def frame_view(view, bounds, box) -> None:
    """Parallel 2D camera showing ``bounds`` (xmin, xmax, ymin, ymax) inside ``box`` (x0, x1,
    y0, y1: the normalised part of the view the data may occupy), centred there, for the
    view's current aspect ratio (a wider view keeps the data clear of the rest)."""
    xmin, xmax, ymin, ymax = bounds[:4]
    width, height = max(xmax - xmin, 1e-6), max(ymax - ymin, 1e-6)
    size = [int(v) for v in view.ViewSize]
    aspect = size[0] / size[1] if size[0] > 0 and size[1] > 0 else 1.0
    x0, x1, y0, y1 = box
    seen_height = max(height / (y1 - y0), width / ((x1 - x0) * aspect))
    seen_width = seen_height * aspect
    focus_x = (xmin + xmax) / 2 - ((x0 + x1) / 2 - 0.5) * seen_width
    focus_y = (ymin + ymax) / 2 - ((y0 + y1) / 2 - 0.5) * seen_height
    view.CameraParallelProjection = 1
    view.CameraFocalPoint = [focus_x, focus_y, 0.0]
    view.CameraPosition = [focus_x, focus_y, 10.0 * max(width, height) + 1.0]
    view.CameraViewUp = [0.0, 1.0, 0.0]
    view.CameraParallelScale = seen_height / 2


def frame_scatter(embedding, view) -> None:
    """Frame the map in the left part of the view (:data:`MAP_BOX`), with room for the axis
    titles and, on the right, the legend (ParaView's own reset centres the points: the legend
    would cover them)."""
    bounds = embedding.GetDataInformation(0).GetBounds()
    if bounds[0] > bounds[1]:
        return  # an empty map (an error was reported)
    frame_view(view, bounds, MAP_BOX)


def frame_members(member_view, view) -> None:
    """Frame the member view's images left of its colour bar (:data:`MEMBERS_BOX`)."""
    bounds = member_view.GetDataInformation(0).GetBounds()
    if bounds[0] <= bounds[1]:
        frame_view(view, bounds, MEMBERS_BOX)


def style_members(member_view, view) -> object:
    """The member view's field in Viridis with the gaps between tiles in the background
    colour and a colour bar. Colouring is set without ``ColorBy``, which warns while nothing
    is selected."""
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
    display.SetScalarBarVisibility(view, True)
    _style_legend(colors, view, "field", MEMBERS_BAR_POSITION)
    return display


def empty_pane_hint(view) -> object:
    """A text in the middle of the member view that says what to do (:data:`HINT`); the
    selection link hides it while members are shown and shows errors in it."""
    from paraview import servermanager
    from paraview.simple import Show

    hint = servermanager.sources.Text(Text=HINT)  # not registered: no pipeline entry
    display = Show(hint, view)
    display.WindowLocation = "Any Location"
    display.Position = [0.2, 0.45]
    display.FontSize = 18
    display.Justification = "Center"
    return hint


def _new_layout_name() -> str:
    """ "SENSE", or "SENSE 2", "SENSE 3"... when layouts of that name exist."""
    from paraview.simple import GetLayouts

    taken = {name for name, _ in GetLayouts()}
    return next(n for n in ["SENSE", *(f"SENSE {i}" for i in range(2, 1000))] if n not in taken)


def _place_views(scatter_view=None):
    """(layout, scatter view, members view) side by side. With ``scatter_view`` (a render view
    the user is in), its layout cell is split and the members view goes to its right; else a
    new layout "SENSE" (or "SENSE 2"...) gets two new render views."""
    from paraview.simple import AssignViewToLayout, CreateLayout, CreateView, GetLayout

    layout = GetLayout(scatter_view) if scatter_view is not None else None
    members_view = CreateView("RenderView")
    if layout is None:
        layout = CreateLayout(_new_layout_name())
        scatter_view = scatter_view or CreateView("RenderView")
        AssignViewToLayout(view=scatter_view, layout=layout, hint=0)
        layout.SplitHorizontal(0, 0.5)
        AssignViewToLayout(view=members_view, layout=layout, hint=2)
    else:
        first_child = layout.SplitViewHorizontal(scatter_view, 0.5)
        layout.AssignView(first_child + 1, members_view)
    return layout, scatter_view, members_view


def _shows_another_map(view, embedding) -> bool:
    """Whether ``view`` shows (visibly) a SENSE Embedding other than ``embedding``."""
    from paraview import servermanager

    for proxy in servermanager.ProxyManager().GetProxiesInGroup("sources").values():
        if proxy.SMProxy.GetXMLName() != "SENSEEmbedding" or proxy == embedding:
            continue
        if _visible_in(proxy, view):
            return True
    return False


def _visible_in(proxy, view) -> bool:
    representation = view.SMProxy.FindRepresentation(proxy.SMProxy, 0)
    return representation is not None and bool(
        representation.GetProperty("Visibility").GetElement(0)
    )


def _keep_out_of(embedding, view, renders: int = 3) -> None:
    """Hide ``embedding`` in ``view`` should it appear there within the view's next ``renders``
    renders: the GUI's Apply shows a new filter in the view that was active when Apply began,
    after the linked layout (built during Apply) gave it views of its own."""
    from paraview.simple import Hide

    tags, seen = [], [0]

    def hide(obj=None, event=None) -> None:
        seen[0] += 1
        shown = _visible_in(embedding, view)
        if shown or seen[0] >= renders:
            view.SMProxy.RemoveObserver(tags[0])
        if shown:
            Hide(embedding, view)
            view.StillRender()

    tags.append(view.SMProxy.AddObserver("EndEvent", hide))


def show_linked_layout(
    ensemble, embedding=None, bundle: str = "", scatter_view=None, **embedding_properties
):
    """Build the linked layout for ``ensemble`` (a SENSE reader, a .vtm/.pvd reader, ...).

    ``embedding``: an existing SENSE Embedding on it (else one is made with ``bundle`` and
    ``embedding_properties``, e.g. ``Projection="PCA"``). ``scatter_view``: a render view to
    show the scatter in (its layout cell is split for the members); else, or when that view
    already shows another SENSE map, a new layout with views of its own.
    """
    import paraview.simple as simple

    from sense_paraview.failures import update_or_raise
    from sense_paraview.linking import embedding_columns, link_selection
    from sense_paraview.vtk_views import mpi_communicator

    if embedding is None:
        embedding_properties.setdefault("LinkedLayout", 0)  # this function lays it out
        embedding = simple.SENSEEmbedding(Input=ensemble, Bundle=bundle, **embedding_properties)
    update_or_raise(embedding)  # a failed embedding raises FilterError with its message
    if scatter_view is not None and _shows_another_map(scatter_view, embedding):
        simple.Hide(embedding, scatter_view)  # never drawn over another map
        _keep_out_of(embedding, scatter_view)
        scatter_view = None
    class_names = _class_names(embedding)
    member_view = simple.SENSEMemberView(Input=ensemble)
    layout, scatter_view, members_view = _place_views(scatter_view)
    style_scatter(embedding, scatter_view, class_names)
    columns = embedding_columns(embedding) if mpi_communicator() is None else {}
    if mpi_communicator() is None:  # the ranks of a symmetric pvbatch must make the same proxies
        prepare_colourings(columns)
    style_members(member_view, members_view)
    hint = empty_pane_hint(members_view)
    # a session's first Render would reset the cameras framed here (ParaView's own state
    # scripts turn that off the same way)
    simple._DisableFirstRenderCameraReset()
    frame_scatter(embedding, scatter_view)
    simple.SetActiveView(scatter_view)
    simple.SetActiveSource(embedding)
    link = link_selection(embedding, member_view, views=[members_view], fit_views=True, hint=hint)
    paths = None
    if mpi_communicator() is None:
        paths = _show_paths(embedding, scatter_view, columns, link)
    return LinkedLayout(
        ensemble,
        embedding,
        member_view,
        layout,
        scatter_view,
        members_view,
        link,
        class_names,
        paths,
    )


def _show_paths(embedding, view, columns: dict, link):
    """Draw the paths of ordered members (chain + step, simulation + time, a time series)
    under the points: all of them when there are few, else those of the selected members
    (hundreds of paths at once hide the map); none when the members carry no order. The paths'
    selection link becomes a companion of the map's ``link``."""
    import numpy as np
    from paraview.simple import GetColorTransferFunction, GetScalarBar

    from sense_core.errors import SenseError
    from sense_core.paths import find_paths
    from sense_paraview.paths import show_paths

    try:
        found = find_paths(list(columns.get("member_id", ())), columns)
    except SenseError:
        return None
    if not len(found):
        return None
    show = "all" if len(found) <= MAX_PATHS_SHOWN else "selected"
    paths, display, paths_link = show_paths(embedding, view, show)
    colours = GetColorTransferFunction("step")
    # the map's own "step" column may have made this table categorical (a few steps): the
    # paths' order is continuous, with its own range
    colours.InterpretValuesAsCategories = 0
    order = found.order[np.isfinite(found.order)]
    colours.RescaleTransferFunction(float(order.min()), float(max(order.max(), order.min() + 1)))
    bar = GetScalarBar(colours, view)
    bar.WindowLocation, bar.Position = "Any Location", list(PATHS_BAR_POSITION)
    bar.Orientation, bar.ScalarBarLength = "Horizontal", PATHS_BAR_LENGTH
    bar.TitleFontSize, bar.LabelFontSize = 12, 10
    bar.Title = f"{found.order_column} (paths)"
    link.companions.append(paths_link)
    return paths
