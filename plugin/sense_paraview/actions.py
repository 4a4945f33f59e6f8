"""The buttons of the SENSE Embedding's property panel: label, suggest and train from the GUI.

A ParaView user who has the map in front of them finds these first: the *Labeling* and
*Training* groups of the filter they just applied. Each button (a ``command_button`` property,
see ``plugins/sense_plugin.py``) calls :func:`run` with the embedding's algorithm; ``run`` finds
the embedding's proxy, does what :mod:`sense_paraview.labeling` and
:mod:`sense_paraview.training_jobs` do for pvpython, and writes one line to Output Messages:
what was done, or what went wrong (nothing selected, an empty class name, one class to train
on, ...). A button never raises into ParaView.

The class name and the number of suggestions are read as typed in the panel, before Apply
(ParaView keeps a typed value as the property's *unchecked* value until Apply): typing a class
and pressing *Label Selected Points* is enough. Neither property changes the map, so Apply
after typing re-runs nothing.

Training runs in a background process; the GUI stays usable. Its progress goes to Output
Messages while a render view's timer follows it (:func:`sense_paraview.training_jobs.watch`),
and when it is done the new bundle becomes the embedding's *Bundle* and the map updates.
*Training Status* reports (and finishes) the job by hand, *Cancel Training* stops it.

The buttons need the filter's algorithm in the GUI's own process (the built-in session, what
``paraview`` and ``sense paraview`` start); with a remote pvserver they report that the Python
Shell's ``sense_paraview.label``/``train`` are the way. ``paraview`` is imported inside.
"""

from __future__ import annotations

from collections.abc import Callable

from sense_core.errors import SenseError, describe_exception

# The panel's buttons: the property (and the algorithm's method) -> (button text, action).
BUTTONS = {
    "LabelSelectedPoints": ("Label Selected Points", "label"),
    "UnlabelSelectedPoints": ("Unlabel Selected Points", "unlabel"),
    "UndoLabeling": ("Undo Labeling", "undo"),
    "SuggestMembers": ("Suggest Members", "suggest"),
    "TrainHead": ("Train Head", "train_head"),
    "TrainFullFit": ("Train Full Fit", "train_full"),
    "TrainingStatus": ("Training Status", "status"),
    "CancelTraining": ("Cancel Training", "cancel"),
}
# Training jobs started from the buttons, by the embedding proxy's global id.
_JOBS: dict[int, object] = {}
DEFAULT_SUGGESTIONS = 10


def proxy_of(algorithm):
    """The ``paraview.simple`` proxy whose algorithm (client-side object) is ``algorithm``;
    a :class:`SenseError` where there is none (a remote server holds the algorithm)."""
    import paraview.simple as simple

    try:
        sources = list(simple.GetSources().values())
    except Exception:  # noqa: BLE001 - a server process has no session of proxies to search
        sources = []
    for proxy in sources:
        if proxy.GetClientSideObject() is algorithm:
            return proxy
    raise SenseError(
        "this button works in the built-in session only; with a remote server use the Python "
        "Shell: sense_paraview.label(...), suggest(...), train(...) (docs/labeling.md)"
    )


def typed_value(proxy, name: str) -> str:
    """The value of ``proxy``'s property ``name`` as the panel shows it: typed but not applied
    yet (its unchecked value), else the applied one."""
    prop = proxy.SMProxy.GetProperty(name)
    if prop.GetNumberOfUncheckedElements() > 0:
        return str(prop.GetUncheckedElement(0))
    return str(prop.GetElement(0)) if prop.GetNumberOfElements() > 0 else ""


def _label(embedding) -> str:
    from sense_paraview.labeling import label

    class_name = typed_value(embedding, "ClassName")
    return label(embedding, class_name, selection=embedding).message


def _unlabel(embedding) -> str:
    from sense_paraview.labeling import unlabel

    return unlabel(embedding, selection=embedding).message


def _undo(embedding) -> str:
    from sense_paraview.labeling import undo

    return undo(embedding).message


def _suggest(embedding) -> str:
    from sense_paraview.labeling import suggest

    typed = typed_value(embedding, "SuggestionCount")
    count = int(typed) if typed.strip().isdigit() and int(typed) > 0 else DEFAULT_SUGGESTIONS
    ids = suggest(embedding, count, embedding=embedding)
    return f"suggested {len(ids)} members to label next (selected in the map): {', '.join(ids)}"


def _job(embedding):
    """The training started from this embedding's panel, else the label-free one its first
    Apply started (:func:`sense_paraview.training_jobs.bundle_for_filter`)."""
    from sense_paraview.labeling import ensemble_path
    from sense_paraview.training_jobs import first_use_job

    job = _JOBS.get(embedding.SMProxy.GetGlobalID())
    return job if job is not None else first_use_job(ensemble_path(embedding))


def field_views(embedding) -> str | None:
    """The *Field Symmetries* chosen in the panel (applied or not): a view preset for Train
    Full Fit, None when not named."""
    from sense_paraview.algorithms import FIELD_VIEWS, choice

    typed = typed_value(embedding, "FieldSymmetries")
    return choice(FIELD_VIEWS, int(typed) if typed.strip().isdigit() else 0) or None


def _train(kind: str) -> Callable:
    def start(embedding) -> str:
        from sense_paraview.training_jobs import train

        running = _job(embedding)
        if running is not None and running.poll() == "running":
            raise SenseError(
                f"a {running.kind} training is running for this map ({running.progress:.0%}); "
                "wait for it or press Cancel Training"
            )
        views = field_views(embedding) if kind == "full" else None
        job = train(embedding, kind, views=views)
        _JOBS[embedding.SMProxy.GetGlobalID()] = job
        return (
            f"training {kind} in the background: progress here; the map switches to the new "
            "bundle when it is done (Training Status reports it, Cancel Training stops it)"
        )

    return start


def _status(embedding) -> str:
    job = _job(embedding)
    if job is None:
        return "no training started from this map's panel"
    state = job.poll()
    if state == "running":
        return f"training {job.kind} {100 * job.progress:.0f} %: {job.stage}"
    if state == "done" and job.embedding is None:  # the first Apply's label-free training
        from sense_paraview.training_jobs import use_version

        use_version(embedding, job.version)
        return f"the label-free bundle is ready ({job.version.describe()}): the map uses it"
    if state == "done":
        return f"training {job.kind} done: the map uses {embedding.Bundle}"
    return f"training {job.kind} {state}: {job.error}"


def _cancel(embedding) -> str:
    job = _job(embedding)
    if job is None or job.poll() != "running":
        return "no training is running for this map"
    job.cancel()
    return f"training {job.kind} cancelled; the map keeps {embedding.Bundle or 'its bundle'}"


ACTIONS: dict[str, Callable] = {
    "label": _label,
    "unlabel": _unlabel,
    "undo": _undo,
    "suggest": _suggest,
    "train_head": _train("head"),
    "train_full": _train("full"),
    "status": _status,
    "cancel": _cancel,
}


def run(algorithm, action: str) -> bool:
    """Do ``action`` (a key of :data:`ACTIONS`) for the SENSE Embedding whose algorithm is
    ``algorithm``; its one-line outcome goes to Output Messages. False when it failed."""
    from sense_paraview.failures import report_error, report_message

    try:
        report_message(ACTIONS[action](proxy_of(algorithm)))
    except Exception as exc:  # noqa: BLE001 - a button reports its failure, never raises
        report_error(describe_exception(exc))
        return False
    return True
