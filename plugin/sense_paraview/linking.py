"""Live linked selection: points selected in a scatter -> member ids -> the member view.

Mechanism (measured on ParaView 5.11, see DESIGN.md §4): an observer on the scatter source's
``SelectionChangedEvent`` reads the current selection (``GetSelectionInput``), extracts the
selected points with a private ``ExtractSelection`` (not registered, so it does not clutter the
pipeline browser), reads their ``member_id`` array and sets the member view's ``MemberIds``.
The event fires twice per change; repeats are skipped. Clearing the selection empties the view.
The link lives as long as the Python session that made it (it is not saved in state files).
"""

from __future__ import annotations

from collections.abc import Sequence


def _ids_from(data, id_array: str) -> list[str]:
    """Member ids of every point in ``data`` (a dataset or a composite of datasets)."""
    from vtkmodules.vtkCommonDataModel import vtkCompositeDataSet

    datasets = []
    if isinstance(data, vtkCompositeDataSet):
        iterator = data.NewIterator()
        iterator.InitTraversal()
        while not iterator.IsDoneWithTraversal():
            datasets.append(iterator.GetCurrentDataObject())
            iterator.GoToNextItem()
    elif data is not None:
        datasets.append(data)
    ids: list[str] = []
    for dataset in datasets:
        array = dataset.GetPointData().GetAbstractArray(id_array)
        if array is not None:
            ids.extend(str(array.GetValue(i)) for i in range(array.GetNumberOfValues()))
    return ids


def selected_member_ids(source, port: int = 0, id_array: str = "member_id", _extract=None):
    """Member ids of the points currently selected on ``source`` (empty when nothing is)."""
    from paraview import servermanager

    selection = source.SMProxy.GetSelectionInput(port)
    if selection is None:
        return []
    extract = _extract or servermanager.filters.ExtractSelection(
        Input=servermanager.OutputPort(source, port)
    )
    extract.Selection = servermanager._getPyProxy(selection)
    extract.UpdatePipeline()
    return _ids_from(servermanager.Fetch(extract), id_array)


def embedding_columns(embedding, port: int = 1) -> dict:
    """The embedding's table (output 1) as numpy columns, strings included."""
    import numpy as np
    from paraview import servermanager
    from vtkmodules.util.numpy_support import vtk_to_numpy

    table = servermanager.Fetch(embedding, idx=port)
    columns = {}
    for index in range(table.GetNumberOfColumns()):
        column = table.GetColumn(index)
        if column.IsNumeric():
            columns[column.GetName()] = vtk_to_numpy(column)
        else:
            values = [column.GetValue(i) for i in range(column.GetNumberOfValues())]
            columns[column.GetName()] = np.array(values, dtype=str)
    return columns


def member_ids_where(embedding, query: str) -> list[str]:
    """Ids of the members whose table row satisfies ``query``: a numpy expression over the
    columns (``label == 3``, ``(confidence < 0.6) & (label_source == 'predicted')``). It is
    evaluated with the columns and numpy (``np``) only, no builtins."""
    return member_ids_in(embedding_columns(embedding), query)


def member_ids_in(columns: dict, query: str) -> list[str]:
    """:func:`member_ids_where` over already fetched ``columns`` (under MPI only rank 0 holds
    them: it evaluates the query and shares the ids)."""
    import numpy as np

    try:
        mask = eval(query, {"__builtins__": {}, "np": np}, dict(columns))  # noqa: S307
    except Exception as exc:  # noqa: BLE001 - report any mistake in the query itself
        raise ValueError(f"query {query!r} failed: {exc} (columns: {sorted(columns)})") from exc
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), columns["member_id"].shape)
    return columns["member_id"][mask].tolist()


def point_indices(embedding, member_ids) -> list[int]:
    """Point indices of ``member_ids`` in the embedding (an error names unknown ids)."""
    position = {m: i for i, m in enumerate(embedding_columns(embedding)["member_id"].tolist())}
    unknown = [m for m in member_ids if m not in position]
    if unknown:
        raise ValueError(f"member id(s) not in the embedding: {unknown[:5]}")
    return [position[m] for m in member_ids]


class SelectionLink:
    """Keeps ``member_view.MemberIds`` equal to the ids of the points selected on ``source``.

    ``hint``: a Text source shown in ``views`` while nothing is selected (what to do) or when
    the member view fails (the error; the member view's old members are hidden then)."""

    def __init__(
        self,
        source,
        member_view,
        views: Sequence = (),
        port: int = 0,
        id_array: str = "member_id",
        fit_views: bool = False,
        hint=None,
    ) -> None:
        from paraview import servermanager

        self.source, self.member_view, self.views = source, member_view, list(views)
        self.port, self.id_array, self.fit_views = port, id_array, fit_views
        self.hint = hint
        self.error = ""  # the member view's failure for the current selection, if any
        self.companions: list[SelectionLink] = []  # links that live and go with this one
        self._extract = servermanager.filters.ExtractSelection(
            Input=servermanager.OutputPort(source, port)
        )
        self._last: list[str] | None = None
        self._tag = source.SMProxy.AddObserver("SelectionChangedEvent", self._on_selection)
        if hint is not None and not list(member_view.MemberIds):
            self._show([])  # nothing selected yet: the hint, no colour bar

    def _on_selection(self, obj=None, event=None) -> None:
        try:
            ids = selected_member_ids(self.source, self.port, self.id_array, self._extract)
        except Exception as exc:  # noqa: BLE001 - an observer must never take the GUI down
            from vtkmodules.vtkCommonCore import vtkOutputWindow

            vtkOutputWindow.GetInstance().DisplayErrorText(f"SENSE: selection link: {exc}\n")
            return
        if ids == self._last:
            return
        self._last = ids
        self.member_view.MemberIds = ids
        self.show(ids, self._update() if ids else "")
        for view in self.views:
            # not simple.Render: on a session's first call it resets the camera just framed
            view.StillRender()

    def _update(self) -> str:
        """Update the member view; its error message ("" when it worked). The failure itself
        is already in Output Messages."""
        from sense_paraview.failures import FilterError, update_or_raise

        try:
            update_or_raise(self.member_view)
        except FilterError as exc:
            return str(exc)
        return ""

    def show(self, member_ids: Sequence[str], error: str = "") -> None:
        """Show ``member_ids`` in the views as a selection of them would (or the hint, or
        ``error`` in it), without updating the member view: for a script that sets and
        updates the member view itself (after :meth:`remove`)."""
        self._last, self.error = list(member_ids), error
        self._show(self._last)

    def _show(self, ids) -> None:
        """Members (framed), or the hint: what to do, or why the members are not shown."""
        from paraview.simple import GetDisplayProperties

        from sense_paraview.layout import HINT, frame_members

        showing = bool(ids) and not self.error
        for view in self.views:
            display = GetDisplayProperties(self.member_view, view)
            display.Visibility = int(showing)  # never the previous members after an error
            if display.LookupTable is not None:  # no colour bar beside an empty pane
                display.SetScalarBarVisibility(view, showing)
            if showing and self.fit_views:
                frame_members(self.member_view, view)
                display.RescaleTransferFunctionToDataRange(False, True)
            if self.hint is not None:
                hint_display = GetDisplayProperties(self.hint, view)
                hint_display.Visibility = int(not showing)
        if self.hint is not None:
            self.hint.Text = (
                f"Could not show the selected members:\n{self.error}" if self.error else HINT
            )

    @property
    def member_ids(self) -> list[str]:
        """The ids the member view shows now."""
        return list(self._last or [])

    def remove(self) -> None:
        """Stop following the selection (this link and its companions)."""
        self.source.SMProxy.RemoveObserver(self._tag)
        for companion in self.companions:
            companion.remove()


def link_selection(source, member_view, views: Sequence = (), **options) -> SelectionLink:
    """Link ``source``'s point selection to ``member_view`` (a SENSE Member View proxy) and
    re-render ``views`` on each change. Keep the returned object; ``.remove()`` unlinks."""
    return SelectionLink(source, member_view, views, **options)
