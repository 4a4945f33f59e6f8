"""The linked layout on Apply in ParaView's GUI, with no further clicks.

ParaView 5.11 gives Python plugins no "after Apply" hook, so SENSE watches the server manager
(measured in the GUI under Xvfb, see tests/test_gui.py):

1. The first SENSE Embedding algorithm made in the GUI (see :func:`in_gui`) installs one
   observer on the session proxy manager's ``RegisterEvent``; each registration looks for
   SENSE Embedding proxies not seen yet and observes their ``UpdateDataEvent``.
2. Apply updates the new filter's pipeline before showing it (``ShowInPreferredView``), which
   fires ``UpdateDataEvent``. On the first one with a non-empty map the watcher splits the view
   the user is in (a render view; else a new layout): the scatter coloured by class stays on the
   left, a SENSE Member View of the same ensemble goes on the right, and the live selection link
   joins them. The GUI then shows the map in that view and hides the ensemble as it always does.
3. A state file (.pvsm) saved from that layout holds the member view and the views but no link;
   when it is loaded, the watcher finds the member view on the embedding's ensemble and links it
   again, so the state opens live.

The embedding's ``LinkedLayout`` property (advanced) turns this off. Outside the GUI (pvpython,
pvbatch) nothing happens: scripts call :func:`sense_paraview.show_linked_layout` themselves.
"""

from __future__ import annotations

_WATCHER: _EmbeddingWatcher | None = None


def in_gui() -> bool:
    """Whether this Python runs inside ParaView's Qt application (``paraview``, not
    ``pvpython``/``pvbatch``). ParaView 5.11 does not set ``paraview.fromGUI``, so the process's
    executable decides where the system names it (``/proc/self/exe``)."""
    import os

    import paraview

    if getattr(paraview, "fromGUI", False):
        return True
    try:
        executable = os.path.basename(os.path.realpath("/proc/self/exe"))
    except OSError:
        return False
    return executable.lower().startswith("paraview")


def _report(message: str) -> None:
    from vtkmodules.vtkCommonCore import vtkOutputWindow

    vtkOutputWindow.GetInstance().DisplayErrorText(f"SENSE: {message}\n")


def _active_proxy_manager():
    from paraview.modules.vtkRemotingServerManager import vtkSMProxyManager

    manager = vtkSMProxyManager.GetProxyManager()
    return manager.GetActiveSessionProxyManager() if manager else None


class _EmbeddingWatcher:
    """Observes proxy registrations of one session and lays out each new SENSE Embedding."""

    def __init__(self, proxy_manager) -> None:
        self.proxy_manager = proxy_manager
        self.seen: set[int] = set()  # global ids of observed embeddings
        self.done: set[int] = set()  # embeddings laid out or linked already
        self.links: dict[int, object] = {}  # keep the selection links alive
        self.tag = proxy_manager.AddObserver("RegisterEvent", self._on_register)

    def _on_register(self, obj=None, event=None) -> None:
        from paraview.modules.vtkRemotingServerManager import vtkSMProxyIterator

        iterator = vtkSMProxyIterator()
        iterator.SetSessionProxyManager(self.proxy_manager)
        iterator.SetModeToOneGroup()
        iterator.Begin("sources")
        while not iterator.IsAtEnd():
            proxy = iterator.GetProxy()
            key = proxy.GetGlobalID()
            if proxy.GetXMLName() == "SENSEEmbedding" and key not in self.seen:
                self.seen.add(key)
                proxy.AddObserver("UpdateDataEvent", self._on_update)
            iterator.Next()

    def _on_update(self, proxy, event=None) -> None:
        key = proxy.GetGlobalID()
        if key in self.done:
            return
        if proxy.GetDataInformation(0).GetNumberOfPoints() == 0:
            return  # an error (already reported) or no members yet: try on the next Apply
        self.done.add(key)
        try:
            self.links[key] = _lay_out(proxy)
        except Exception as exc:  # noqa: BLE001 - an observer must never take the GUI down
            _report(f"could not open the linked layout: {exc}")


def _member_views_of(ensemble_smproxy) -> list:
    """SENSE Member View proxies registered on the given ensemble proxy."""
    from paraview import servermanager

    found = []
    for proxy in servermanager.ProxyManager().GetProxiesInGroup("sources").values():
        if proxy.SMProxy.GetXMLName() != "SENSEMemberView":
            continue
        source = proxy.Input
        source = getattr(source, "SMProxy", None) if source is not None else None
        if source is not None and source.GetGlobalID() == ensemble_smproxy.GetGlobalID():
            found.append(proxy)
    return found


def _views_showing(proxy) -> list:
    from paraview import servermanager

    views = []
    for view in servermanager.ProxyManager().GetProxiesInGroup("views").values():
        representation = view.SMProxy.FindRepresentation(proxy.SMProxy, 0)
        if representation is not None:
            views.append(view)
    return views


def _links() -> list:
    """The selection links the GUI's watcher keeps (one per laid-out embedding)."""
    return list(_WATCHER.links.values()) if _WATCHER is not None else []


def _lay_out(smproxy):
    """Link an existing member view of the embedding's ensemble (a loaded state), else build
    the linked layout in the active render view; return the selection link."""
    from paraview import servermanager
    from paraview.simple import GetActiveView

    from sense_paraview.layout import show_linked_layout
    from sense_paraview.linking import link_selection

    embedding = servermanager._getPyProxy(smproxy)
    if "LinkedLayout" in embedding.ListProperties() and not embedding.LinkedLayout:
        return None
    ensemble = embedding.Input
    ensemble_proxy = getattr(ensemble, "SMProxy", None)
    existing = _member_views_of(ensemble_proxy) if ensemble_proxy is not None else []
    # a member view that another embedding's link drives belongs to that map's layout
    driven = {link.member_view.SMProxy.GetGlobalID() for link in _links() if link is not None}
    existing = [view for view in existing if view.SMProxy.GetGlobalID() not in driven]
    if existing:
        member_view = existing[0]
        return link_selection(embedding, member_view, views=_views_showing(member_view))
    view = GetActiveView()
    scatter_view = view if view is not None and view.GetXMLName() == "RenderView" else None
    linked = show_linked_layout(ensemble, embedding=embedding, scatter_view=scatter_view)
    _frame_after_apply(embedding, linked.scatter_view)
    return linked.link


def _frame_after_apply(embedding, view) -> None:
    """Frame the map again once the GUI has finished its Apply (it resets the camera of the
    view it showed the filter in after this watcher ran): on the view's next completed render,
    once."""
    from sense_paraview.layout import frame_scatter

    tags = []

    def reframe(obj=None, event=None) -> None:
        view.SMProxy.RemoveObserver(tags[0])
        frame_scatter(embedding, view)
        view.StillRender()

    tags.append(view.SMProxy.AddObserver("EndEvent", reframe))


_ACTIVE_SESSION_CHANGED = 9753  # vtkSMProxyManager::ActiveSessionChanged
_FOLLOWING_SESSIONS = False


def _follow_sessions() -> None:
    """Watch each session the GUI makes active (a pvserver connection, a reset session): in
    client/server mode the filter's algorithm lives on the server, so the client's watcher must
    come from the plugin's import and from here."""
    global _FOLLOWING_SESSIONS
    from paraview.modules.vtkRemotingServerManager import vtkSMProxyManager

    if not _FOLLOWING_SESSIONS and vtkSMProxyManager.GetProxyManager() is not None:
        vtkSMProxyManager.GetProxyManager().AddObserver(
            _ACTIVE_SESSION_CHANGED, lambda obj, event: enable_auto_layout()
        )
        _FOLLOWING_SESSIONS = True


def enable_auto_layout() -> bool:
    """In the GUI, watch the current session so that each SENSE Embedding opens the linked
    layout on its first Apply; returns whether a watcher is active. Idempotent."""
    global _WATCHER
    if not in_gui():
        return False
    _follow_sessions()
    proxy_manager = _active_proxy_manager()
    if proxy_manager is None:
        return False
    if _WATCHER is None or _WATCHER.proxy_manager is not proxy_manager:
        _WATCHER = _EmbeddingWatcher(proxy_manager)
    return True
