"""Failed SENSE filters, as scripts see them.

A SENSE algorithm that fails reports one line ``SENSE: <what went wrong>`` through VTK's output
window (ParaView's Output Messages) and returns failure from ``RequestData``; ParaView keeps
running and the output stays empty. ``paraview.simple.UpdatePipeline`` does not raise on a
failed filter, so pvpython/pvbatch scripts call :func:`update_or_raise` instead, which raises
:class:`FilterError` with those messages (and a script that does not catch it exits non-zero).
"""

from __future__ import annotations

from sense_core.errors import SenseError, describe_exception

PREFIX = "SENSE: "
# Attributes of SENSE algorithms that name what they read, for errors that name nothing.
_INPUT_ATTRIBUTES = ("_file_name", "_bundle")


class FilterError(SenseError):
    """A filter of the pipeline failed; the message is what it reported."""


def report_message(message: str) -> None:
    """Show ``message`` as a SENSE line in ParaView's Output Messages (on the terminal in
    pvpython/pvbatch): what a SENSE action did, or how far it is."""
    from vtkmodules.vtkCommonCore import vtkOutputWindow

    vtkOutputWindow.GetInstance().DisplayText(f"{PREFIX}{message}\n")


def report_warning(message: str) -> None:
    """Show ``message`` as a SENSE warning in ParaView's Output Messages (and on stderr in
    pvbatch/pvpython); the filter goes on."""
    from vtkmodules.vtkCommonCore import vtkOutputWindow

    vtkOutputWindow.GetInstance().DisplayWarningText(f"{PREFIX}warning: {message}\n")


def report_error(message: str) -> None:
    """Show ``message`` in ParaView's Output Messages (VTK's output window) as a SENSE error."""
    from vtkmodules.vtkCommonCore import vtkOutputWindow

    vtkOutputWindow.GetInstance().DisplayErrorText(f"{PREFIX}{message}\n")


def describe_failure(exc: BaseException, algorithm: object = None) -> str:
    """The one line a failed ``algorithm`` reports for ``exc``: a SENSE error's message (it
    names the file), else the exception's type and message after the algorithm and the files it
    was reading, so that an exception without a message (``MemoryError()``) never shows as an
    empty ``SENSE: ``."""
    if algorithm is None:
        return describe_exception(exc)
    inputs = [str(v) for v in (getattr(algorithm, a, None) for a in _INPUT_ATTRIBUTES) if v]
    where = type(algorithm).__name__ + (f" reading {', '.join(inputs)}" if inputs else "")
    return describe_exception(exc, where)


def update_or_raise(proxy, time: float | None = None) -> None:
    """``proxy.UpdatePipeline(time)``; raise :class:`FilterError` when a SENSE filter (or any VTK
    algorithm) on the way reported a failure while it ran. The message is the first failure's
    (the upstream one: a reader's "file not found", not what the filters after it made of an
    empty input)."""
    from vtkmodules.vtkCommonCore import vtkCommand, vtkOutputWindow

    messages: list[str] = []

    def catch(obj, event, text=None) -> None:
        messages.append(str(text))

    catch.CallDataType = "string0"
    window = vtkOutputWindow.GetInstance()
    tag = window.AddObserver(vtkCommand.ErrorEvent, catch)
    try:
        proxy.UpdatePipeline(time)
    finally:
        window.RemoveObserver(tag)
    ours = [m.strip().removeprefix(PREFIX) for m in messages if PREFIX in m]
    if ours:
        raise FilterError(ours[0])
    if any("returned failure" in m for m in messages):
        raise FilterError(messages[0].strip().splitlines()[0])
