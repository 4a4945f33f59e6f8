"""What SENSE's pvbatch scripts share, in one process or on MPI ranks (``pvbatch --symmetric``,
where every rank runs the whole script).

Under MPI a rank that stops while the others go on into a collective step (a pipeline update,
``Fetch``, ``SaveData``, a screenshot) leaves them waiting forever. So every step that can fail
on one rank is agreed on first (:func:`sense_core.distributed.agree` / ``on_root``: the error is
raised on every rank), every rank then ends with exit status 1 and rank 0 prints the error, one
line; an unexpected exception ends every rank through ``MPI_Abort``. Never a hang.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from sense_core.errors import SenseError, describe_exception


def communicator():
    """mpi4py's world communicator when the script runs on several MPI ranks, else None."""
    from sense_paraview.vtk_views import mpi_communicator

    return mpi_communicator()


def require_display(what: str) -> None:
    """Raise :class:`SenseError` (one line: why and what to do) when ``what`` would render
    without a usable X display, where ParaView 5.11 (GLX only here) would abort the process."""
    from sense_paraview.launcher import display_problem

    problem = display_problem(os.environ)
    if problem:
        raise SenseError(
            f"{what} needs a display and {problem}: run the script with `sense pvbatch` without "
            "--no-xvfb (a private Xvfb, one per MPI rank), or set DISPLAY to a running X server"
        )


def _wait_for_every_rank(comm, seconds: float = 10.0) -> None:
    """A barrier that gives up after ``seconds`` (a rank that failed elsewhere never comes)."""
    request = comm.Ibarrier()
    deadline = time.monotonic() + seconds
    while not request.Test() and time.monotonic() < deadline:
        time.sleep(0.01)


def run_script(name: str, main: Callable[[Sequence[str]], None], argv: Sequence[str]) -> int:
    """Run a script's ``main(argv)``; its exit status. A SENSE error (agreed on by every rank):
    ``NAME: error: MESSAGE`` on rank 0, status 1 on every rank. Any other exception: its
    traceback and that line, status 1; under MPI the whole run is aborted (the other ranks may
    be waiting in a collective step)."""
    try:
        comm = communicator()
    except SenseError as exc:  # several ranks but no mpi4py: each says so
        print(f"{name}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    rank = comm.Get_rank() if comm is not None else 0
    try:
        main(argv)
        return 0
    except SenseError as exc:
        if rank == 0:
            print(f"{name}: error: {describe_exception(exc)}", file=sys.stderr, flush=True)
        if comm is not None:
            # mpirun stops the ranks still running once one exits with an error: let rank 0
            # print first, and be stopped quietly (ParaView's logger prints a stack trace for
            # a SIGTERM)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _wait_for_every_rank(comm)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug: say where, never leave ranks waiting
        traceback.print_exc()
        where = f"{name} (rank {rank})" if comm is not None else name
        print(f"{where}: error: {describe_exception(exc)}", file=sys.stderr, flush=True)
        if comm is not None:
            comm.Abort(1)
        return 1
