"""Train a new bundle in the background from pvpython, a macro or the GUI's Python shell.

:func:`train` starts ``sense train-version`` (a head on an existing bundle's latent space in
seconds, or a whole ``sense fit`` in minutes) as a child process in its own process group and
returns a :class:`TrainingJob` at once. The child writes the next bundle version beside the
ensemble (:mod:`sense_core.bundle_versions`) and its output to a temporary file, so nothing in
ParaView waits. :meth:`TrainingJob.poll` (called by a timer in the GUI, see :func:`watch`, or by
:meth:`TrainingJob.wait` in a script) turns its lines into progress, shows them in Output
Messages and, once the child has finished, swaps the new bundle into the SENSE Embedding (its
``Bundle`` property) and updates the map — on ParaView's own thread, as proxies require.
:meth:`TrainingJob.cancel` stops the child and everything it started; the version it was
writing is removed (an unfinished version is a hidden temporary folder, never listed).

``paraview`` is imported inside the functions, so the module imports anywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sense_core.bundle_versions import TRAINING_KINDS, BundleVersion, list_versions, read_version
from sense_core.errors import SenseError
from sense_paraview.failures import report_message

POLL_MS = 500
_STAGE = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)")
_EPOCH = re.compile(r"^\s*epoch (\d+)/(\d+)")
_DONE = re.compile(r"^version (\d+): (.+)$")


def _python() -> list[str]:
    """The interpreter that runs ``sense`` for the child: the SENSE environment's own (found
    from ``SENSE_SITE_PACKAGES`` under ParaView's launchers), else this Python when it is one."""
    for folder in os.environ.get("SENSE_SITE_PACKAGES", "").split(os.pathsep):
        if folder:
            candidate = Path(folder).parents[2] / "bin" / "python"
            if candidate.is_file():
                return [str(candidate)]
    if Path(sys.executable).name.startswith("python"):
        return [sys.executable]
    return ["python3"]


def sense_command(*args: str) -> list[str]:
    """The command line of ``sense ARGS`` in a child process."""
    return [*_python(), "-m", "sense_core.cli", *args]


class TrainingJob:
    """A ``sense train-version`` running in the background (see :func:`train`).

    ``state`` is ``running``, ``done``, ``failed`` or ``cancelled``; ``progress`` 0..1 and
    ``stage`` follow the child's output (``lines`` keeps all of it); ``version`` is the new
    :class:`~sense_core.bundle_versions.BundleVersion` once done, ``error`` the child's last
    message when it failed."""

    def __init__(self, ensemble: str, kind: str, command: list[str], embedding=None) -> None:
        self.ensemble, self.kind, self.command = ensemble, kind, command
        self.embedding = embedding
        self.state, self.progress, self.stage = "running", 0.0, "starting"
        self.lines: list[str] = []
        self.version: BundleVersion | None = None
        self.error: str | None = None
        self.started = time.perf_counter()
        self._step: tuple[int, int] | None = None
        # The child writes to a file that poll() reads on: no Python thread (one beside the
        # GUI's timer callbacks crashed ParaView 5.11), and the child never stalls on a pipe.
        self._log = tempfile.TemporaryFile(mode="w+b", prefix="sense-train-")
        self._read_at, self._partial = 0, b""
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: cancel() stops all of it
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def _new_lines(self, final: bool) -> list[str]:
        """Complete lines the child wrote since the last call (all of them when ``final``)."""
        self._log.seek(self._read_at)
        data = self._log.read()
        self._read_at += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        if final and self._partial:
            lines, self._partial = [*lines, self._partial], b""
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    @property
    def done(self) -> bool:
        """Whether the job has ended (done, failed or cancelled)."""
        return self.state != "running"

    def _take(self, line: str) -> None:
        self.lines.append(line)
        stage, epoch = _STAGE.match(line), _EPOCH.match(line)
        if stage:
            step, steps = int(stage.group(1)), int(stage.group(2))
            self._step, self.stage = (step, steps), stage.group(3) or line
            self.progress = max(self.progress, (step - 1) / steps)
        elif epoch and self._step is not None:
            (step, steps), (e, total) = self._step, (int(epoch.group(1)), int(epoch.group(2)))
            self.progress = max(self.progress, (step - 1 + e / max(total, 1)) / steps)
        else:
            return
        report_message(f"training {self.kind} {100 * self.progress:3.0f} %: {line.strip()}")

    def poll(self) -> str:
        """Take the child's new output (progress, Output Messages); when it has ended, finish
        the job (swap the new bundle into the embedding, or report the error). The state."""
        if self.done:
            return self.state
        ended = self.process.poll() is not None  # checked before reading: nothing is missed
        for line in self._new_lines(final=ended):
            self._take(line)
        if ended:
            self._log.close()
            self._finish()
        return self.state

    def _finish(self) -> None:
        found = [m for m in map(_DONE.match, self.lines) if m]
        if self.process.returncode == 0 and found:
            self.version = read_version(Path(found[-1].group(2)))
            self.state, self.progress = "done", 1.0
            report_message(f"training done: {self.version.describe()}")
            if self.embedding is not None:
                use_version(self.embedding, self.version)
            return
        self.state = "failed"
        errors = [line for line in self.lines if line.startswith("sense:")]
        last = errors[-1] if errors else (self.lines[-1] if self.lines else "no output")
        self.error = re.sub(r"^sense: (error: )?", "", last)
        from sense_paraview.failures import report_error

        report_error(f"training failed ({self.process.returncode}): {self.error}")

    def wait(self, timeout: float | None = None, interval: float = 0.2) -> BundleVersion:
        """Poll until the job ends (a pvpython/pvbatch script); the new version, or a
        :class:`SenseError` with the child's message (failed, cancelled or timed out)."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while self.poll() == "running":
            if deadline is not None and time.perf_counter() > deadline:
                self.cancel()
                raise SenseError(f"training ran longer than {timeout} s and was cancelled")
            time.sleep(interval)
        if self.state != "done" or self.version is None:
            raise SenseError(f"training {self.state}: {self.error or 'no version was written'}")
        return self.version

    def cancel(self, grace: float = 5.0) -> None:
        """Stop the child and its children: SIGTERM (the version being written is removed,
        as for any interrupted SENSE command), SIGKILL after ``grace`` seconds; then remove
        whatever a killed writer left. A job that has just ended is finished instead."""
        if self.poll() != "running":
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything it started that is left
        from sense_core.bundle_versions import remove_abandoned

        remove_abandoned(self.ensemble)
        self.lines += self._new_lines(final=True)
        self._log.close()
        self.state, self.error = "cancelled", "cancelled by the user"
        report_message(f"training {self.kind} cancelled; no version was written")

    def __repr__(self) -> str:
        return f"<TrainingJob {self.kind} {self.state} {100 * self.progress:.0f} % {self.stage!r}>"


def _resolve(value) -> str:
    return str(value.path) if isinstance(value, BundleVersion) else os.fspath(value)


def use_version(embedding, version) -> None:
    """Make the SENSE Embedding use ``version`` (a :class:`BundleVersion`, its folder, or any
    bundle folder): set its ``Bundle``, update the map and its class legend, re-render."""
    import paraview.simple as simple

    from sense_paraview.failures import update_or_raise
    from sense_paraview.labeling import _annotate_classes

    embedding.Bundle = _resolve(version)
    update_or_raise(embedding)
    _annotate_classes(embedding)
    for view in simple.GetViews():
        simple.Render(view)


def bundle_versions(ensemble) -> list[BundleVersion]:
    """The bundle versions kept for ``ensemble`` (its path, or a proxy below its SENSE reader),
    oldest first; ``use_version(embedding, versions[i])`` switches back to one."""
    from sense_paraview.labeling import ensemble_path

    return list_versions(ensemble_path(ensemble))


def train(
    ensemble,
    kind: str = "head",
    embedding=None,
    *,
    bundle: str | None = None,
    wait: bool = False,
    epochs: int | None = None,
    seed: int = 0,
    profile: str = "quick",
    views: str | None = None,
    follow: bool = True,
) -> TrainingJob:
    """Train the next bundle version of ``ensemble`` (its path, or a proxy below its SENSE
    reader) from its hand labels, in a background process. ``kind``: ``head`` (a classifier on
    the latent space of ``bundle``, else of the embedding's bundle, else of the newest version or
    the shipped bundle; seconds) or ``full`` (``sense fit``; minutes; label-free without hand
    labels). ``embedding`` (a SENSE Embedding; ``ensemble`` itself when it is one) gets the new
    bundle when the job is done. In the GUI, with ``follow``, a timer polls the job
    (:func:`watch`; call ``train`` from the Python Shell, a ``--script`` or a panel button
    (the SENSE Embedding's *Train Head*/*Train Full Fit* do): ParaView 5.11
    crashes when the timer was made by a macro or a filter, so there pass ``follow=False`` and
    call ``job.poll()``); a script calls ``job.wait()``, or passes ``wait=True``.
    ``views`` (``full`` only): what keeps a member's class in these fields, a preset of
    ``sense fit --instance-views`` (``periodic``, ``gravity``, ...): the fit then uses the
    ``ssl`` labeler, which learns from those transformations of every member (the ``latent``
    one without). One class of hand labels, or none for a head, is refused at once
    (nothing written)."""
    from sense_core.bundle_versions import check_training_labels
    from sense_core.io import open_ensemble
    from sense_paraview.labeling import EMBEDDING_NAME, _xml_name, ensemble_path

    if kind not in TRAINING_KINDS:
        raise SenseError(f"unknown training kind {kind!r}; choose from {', '.join(TRAINING_KINDS)}")
    if views and kind != "full":
        raise SenseError(f"views are for a full fit (kind='full'), not for a {kind}")
    path = ensemble_path(ensemble)
    if embedding is None and _xml_name(ensemble) == EMBEDDING_NAME:
        embedding = ensemble
    if bundle is None and embedding is not None and kind == "head" and embedding.Bundle:
        bundle = str(embedding.Bundle)
    check_training_labels(open_ensemble(path), kind, path)
    args = ["train-version", path, "--kind", kind, "--seed", str(seed), "--profile", profile]
    args += ["--bundle", bundle] if bundle else []
    args += ["--epochs", str(epochs)] if epochs else []
    args += ["--instance-views", views] if views else []
    job = TrainingJob(path, kind, sense_command(*args), embedding)
    report_message(f"training {kind} started for {path} (pid {job.process.pid})")
    if wait:
        job.wait()
    elif follow:
        watch(job)
    return job


_WATCHED: dict[int, tuple[object, int, TrainingJob]] = {}


def watch(job: TrainingJob, interval_ms: int = POLL_MS) -> bool:
    """Poll ``job`` from a repeating timer of the active render view's interactor (the GUI's
    event loop runs it: progress in Output Messages, the bundle swapped when done); the timer
    stops with the job. False where there is no event loop to run it (pvpython, pvbatch:
    call ``job.wait()`` or ``job.poll()``).

    Measured on ParaView 5.11 (tests/test_training_jobs.py, tests/test_gui_labeling.py): the
    timer's Python callback runs when ``watch`` is called from the Python Shell, a ``--script``
    or a button of a SENSE filter's panel (:mod:`sense_paraview.actions`); made from a macro,
    from a filter's execution or from another observer's callback, its first call crashes
    ParaView (SIGSEGV in ``vtkPythonCommand``). Call it only from those three."""
    from sense_paraview.gui import in_gui

    if not in_gui():
        return False
    import paraview.simple as simple

    view = simple.GetActiveView() or next(iter(simple.GetViews()), None)
    has_interactor = view is not None and hasattr(view, "GetInteractor")
    interactor = view.GetInteractor() if has_interactor else None
    if interactor is None:
        report_message("no render view to poll the training from: call job.poll() now and then")
        return False

    def tick(obj, event) -> None:
        try:
            state = job.poll()
        except Exception as exc:  # noqa: BLE001 - a timer callback must never raise
            from sense_paraview.failures import report_error

            report_error(f"training: {exc}")
            state = "failed"
        if state != "running":
            entry = _WATCHED.pop(id(job), None)
            if entry is not None:
                interactor.RemoveObserver(entry[1])
                interactor.DestroyTimer(entry[0])

    tag = interactor.AddObserver("TimerEvent", tick)
    timer = interactor.CreateRepeatingTimer(interval_ms)
    _WATCHED[id(job)] = (timer, tag, job)
    return True


_FIRST_USE: dict[str, TrainingJob] = {}


def first_use_job(ensemble: str) -> TrainingJob | None:
    """The label-free training a SENSE Embedding's first Apply started for ``ensemble``."""
    return _FIRST_USE.get(ensemble)


def bundle_for_filter(
    member_shape, class_names, ensemble: str | None, views: str | None = None
) -> str:
    """The bundle of a SENSE Embedding whose Bundle is empty
    (:func:`sense_core.bundle_versions.default_bundle`: shipped for the shape, else the
    ensemble's newest version). Where there is none, in the GUI, the first Apply starts
    training a label-free bundle in the background (once per ensemble; with ``views``, the
    *Field Symmetries* chosen before that Apply, its encoder learns from them); each later
    execution of the filter reports its progress, and the first one after it is done uses it.
    The filter fails meanwhile, saying so. (No timer follows this job: one made during a filter's
    execution crashes ParaView 5.11, see :func:`watch`.)"""
    from sense_core.bundle import BundleError
    from sense_core.bundle_versions import default_bundle

    job = _FIRST_USE.get(ensemble) if ensemble else None
    if job is not None:
        job.poll()  # progress to Output Messages; a finished job has written its version
    try:
        return str(default_bundle(member_shape, class_names, ensemble))
    except BundleError as exc:
        from sense_paraview.gui import in_gui

        if not ensemble or not in_gui():
            raise
        if job is None or job.state in ("failed", "cancelled"):
            job = _FIRST_USE[ensemble] = train(ensemble, "full", views=views, follow=False)
        raise BundleError(
            f"{exc.args[0].split('; train one')[0]}: training a label-free bundle in the "
            f"background ({job.progress:.0%} done, a few minutes); press Training Status (the "
            "filter's Training group) to see how far it is, and once it is done to show the "
            "map and its suggested groups"
        ) from None
