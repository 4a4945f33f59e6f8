"""Exceptions whose message is meant for the user (the CLI shows it without a traceback), and
the translation of termination signals into an exception so that interrupted work cleans up."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


class SenseError(Exception):
    """An error SENSE explains to the user: bad input, a missing file, an unusable device."""


class EnsembleError(SenseError, ValueError):
    """Ensemble data that cannot be used as given; the message names the file or member."""


class WriteError(SenseError, OSError):
    """An output could not be written (disk full, no permission...); the message names the
    output and says that its previous version, if any, is unchanged."""


def describe_exception(exc: BaseException, where: str = "") -> str:
    """One line for the user about ``exc``, never empty.

    A :class:`SenseError` already names its file and says what went wrong: its message is
    kept. Any other exception (a bug, or a library's error SENSE did not translate) is shown as
    ``<where>: <type>: <message>``; its message may be empty (``MemoryError()`` is), so the type
    name is always there, and an out-of-memory error says what to do."""
    message = " ".join(str(exc).split())
    if isinstance(exc, SenseError) and message:
        return message
    if isinstance(exc, MemoryError):
        detail = "out of memory" + (f" ({message})" if message else "")
        detail += "; use smaller batches, fewer or smaller members, or more memory"
    else:
        detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"{where}: {detail}" if where else detail


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM, SIGHUP).

    A ``KeyboardInterrupt``, so that it unwinds like Ctrl-C: ``finally`` blocks and atomic
    writers remove their temporary files, and code that reports interruptions sees it too.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _raise_interrupted(signum: int, frame: object) -> None:  # noqa: ARG001
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise :class:`Interrupted` instead of killing the
    process outright; the previous handlers come back afterwards. Outside the main thread
    (where Python cannot install handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class SignalGate:
    """Hold SIGTERM/SIGHUP back during a few steps that must not be split (renaming a set of
    finished outputs into place): after :meth:`close`, a signal that arrives is noted, and
    handled as it would have been (e.g. :class:`Interrupted`) when the ``with`` block ends.

    Python runs signal handlers in the main thread whichever thread the signal reached, so the
    gate swaps the Python-level handlers instead of masking (other threads, such as
    onnxruntime's, would still take the signal)."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self._saved: dict | None = None
        self._pending: list[int] = []

    def _note(self, signum: int, frame: object) -> None:  # noqa: ARG002
        self._pending.append(signum)

    def close(self) -> None:
        """From now until the end of the ``with`` block, the signals wait."""
        if self._saved is not None or threading.current_thread() is not threading.main_thread():
            return
        current = {signum: signal.getsignal(signum) for signum in self.signals}
        if any(handler is None for handler in current.values()):
            return  # a handler installed outside Python (e.g. by a host program): leave it be
        self._saved = current
        for signum in self.signals:
            signal.signal(signum, self._note)

    def __enter__(self) -> SignalGate:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        if self._pending:
            signum = self._pending[0]
            handler = saved[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)  # the default action, now that it is safe
