"""Label, unlabel, undo and suggest from pvpython, pvbatch, a macro or the GUI's Python shell.

Thin wrappers over :mod:`sense_core.label_store` and :mod:`sense_core.suggest` that speak
ParaView: the ensemble may be given as its path or as a proxy (a SENSE Ensemble Reader, or any
filter below one, e.g. the SENSE Embedding); the members as ids or as the points selected on a
proxy (the map). After a change every SENSE reader of that ensemble re-reads it, so the
embeddings below update, their class legends get the new classes, and the views re-render.

A ParaView filter or macro calls these same functions: they take no GUI state but what they are
given (``paraview`` is imported inside, so the module imports anywhere).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sense_core.errors import SenseError

READER_NAME = "SENSEEnsembleReader"
EMBEDDING_NAME = "SENSEEmbedding"


def _xml_name(proxy) -> str:
    smproxy = getattr(proxy, "SMProxy", None)
    return smproxy.GetXMLName() if smproxy is not None else ""


def _upstream(proxy):
    """``proxy`` and the proxies above it (first input first), once each."""
    seen, stack = [], [proxy]
    while stack:
        current = stack.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        inputs = current.ListProperties() if hasattr(current, "ListProperties") else []
        if "Input" in inputs:
            value = current.Input
            stack.extend(value if isinstance(value, list | tuple) else [value])
    return seen


def ensemble_path(ensemble) -> str:
    """The ensemble's path: ``ensemble`` itself (a path), or the FileName of the SENSE reader
    at or above the proxy ``ensemble``."""
    if isinstance(ensemble, str | os.PathLike):
        return os.fspath(ensemble)
    for proxy in _upstream(ensemble):
        if _xml_name(proxy) == READER_NAME and proxy.FileName:
            return str(proxy.FileName)
    raise SenseError(
        f"{_xml_name(ensemble) or ensemble!r}: no SENSE Ensemble Reader above it; give the "
        "ensemble's path (labels are kept beside the ensemble file or folder)"
    )


def _members(member_ids, selection, ensemble) -> list[str]:
    """Ids given, else the points selected on ``selection`` (else on ``ensemble``, a proxy)."""
    if member_ids is not None:
        return [member_ids] if isinstance(member_ids, str) else [str(m) for m in member_ids]
    source = selection if selection is not None else ensemble
    if isinstance(source, str | os.PathLike) or source is None:
        return []
    from sense_paraview.linking import selected_member_ids

    return selected_member_ids(source)


def _same(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def refresh(ensemble) -> int:
    """Make every SENSE reader of ``ensemble`` read it again (its labels changed), update the
    embeddings below them, give their class legends the new class names, and re-render.
    Returns the number of readers refreshed (a reader on a server of a client-server session
    re-reads only when it runs again)."""
    import paraview.simple as simple

    path = ensemble_path(ensemble)
    readers = [
        proxy
        for proxy in simple.GetSources().values()
        if _xml_name(proxy) == READER_NAME and proxy.FileName and _same(str(proxy.FileName), path)
    ]
    for reader in readers:
        algorithm = reader.GetClientSideObject()
        if algorithm is not None:
            algorithm.Modified()
        reader.SMProxy.MarkModified(reader.SMProxy)
    embeddings = [
        proxy
        for proxy in simple.GetSources().values()
        if _xml_name(proxy) == EMBEDDING_NAME
        and any(any(r is u for r in readers) for u in _upstream(proxy))
    ]
    if embeddings:
        from sense_paraview.failures import update_or_raise

        for embedding in embeddings:
            update_or_raise(embedding)
        _annotate_classes(embeddings[-1])
    for view in simple.GetViews():
        simple.Render(view)
    return len(readers)


def _annotate_classes(embedding) -> None:
    """The categorical colours of "label" annotated with the embedding's class names (a class
    added by labeling gets its legend entry)."""
    import json

    import paraview.simple as simple
    from paraview import servermanager

    table = servermanager.Fetch(embedding, idx=1)
    array = table.GetFieldData().GetAbstractArray("class_names") if table else None
    if array is None:
        return
    names = json.loads(array.GetValue(0))
    colors = simple.GetColorTransferFunction("label")
    colors.Annotations = [v for i, name in enumerate(names) for v in (str(i), name)]


def label(
    ensemble,
    class_name: str,
    member_ids: Iterable[str] | str | None = None,
    *,
    selection=None,
    source: str = "hand",
    update: bool = True,
):
    """Label members as ``class_name`` (new or existing) in the ensemble's label sidecar (one
    undoable step; see docs/labeling.md). ``ensemble``: its path or a proxy below its SENSE
    reader. ``member_ids``: the members; else those selected on ``selection`` (e.g. the SENSE
    Embedding), else on ``ensemble`` when it is a proxy. ``source``: ``hand`` or
    ``corrected``. ``update``: refresh readers, maps and legends (:func:`refresh`). Returns the
    :class:`sense_core.label_store.LabelStep`; errors are one-line
    :class:`~sense_core.errors.SenseError` (nothing selected, empty class name, ...)."""
    from sense_core import label_store

    path = ensemble_path(ensemble)
    step = label_store.label(path, _members(member_ids, selection, ensemble), class_name, source)
    if update:
        refresh(path)
    return step


def unlabel(
    ensemble, member_ids: Iterable[str] | str | None = None, *, selection=None, update: bool = True
):
    """Remove the labels of members (given, or selected as in :func:`label`), as one step."""
    from sense_core import label_store

    path = ensemble_path(ensemble)
    step = label_store.unlabel(path, _members(member_ids, selection, ensemble))
    if update:
        refresh(path)
    return step


def undo(ensemble, *, update: bool = True):
    """Take back the ensemble's last labeling step."""
    from sense_core import label_store

    path = ensemble_path(ensemble)
    step = label_store.undo(path)
    if update:
        refresh(path)
    return step


def _bundle_of(embedding, store) -> str | None:
    """The bundle a SENSE Embedding uses (its Bundle, else the shipped one for the shape)."""
    if embedding is None or _xml_name(embedding) != EMBEDDING_NAME:
        return None
    if embedding.Bundle:
        return str(embedding.Bundle)
    from sense_core.bundle import find_shipped_bundle

    return str(find_shipped_bundle(store.member_shape, store.class_names))


def suggest(
    ensemble,
    count: int = 20,
    *,
    bundle: str | None = None,
    embedding=None,
    member_view=None,
    seed: int = 0,
    uncertainty: str = "margin",
) -> list[str]:
    """The ids of the ``count`` members to label next (:mod:`sense_core.suggest`), most useful
    first. Latents and probabilities come from ``bundle``, else from the bundle of
    ``embedding`` (a SENSE Embedding; ``ensemble`` itself when it is one), else from PCA of the
    raw fields. The suggested members are selected on ``embedding`` and shown in
    ``member_view`` (a SENSE Member View) when given."""
    from sense_core.io import open_ensemble
    from sense_core.suggest import suggest_for_ensemble

    path = ensemble_path(ensemble)
    if embedding is None and _xml_name(ensemble) == EMBEDDING_NAME:
        embedding = ensemble
    store = open_ensemble(path)
    bundle = bundle or _bundle_of(embedding, store)
    suggestion = suggest_for_ensemble(store, bundle, count, seed, uncertainty)
    ids = suggestion.member_ids(store.member_ids)
    if embedding is not None:
        from paraview.simple import SelectIDs

        from sense_paraview.linking import point_indices

        points = point_indices(embedding, ids)
        SelectIDs(IDs=[v for i in points for v in (0, i)], FieldType="POINT", Source=embedding)
    if member_view is not None:
        member_view.MemberIds = ids
    return ids
