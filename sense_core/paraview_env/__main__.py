"""``python -m sense_core.paraview_env [--no-xvfb] PROGRAM [ARGS...]``: start a ParaView program
(paraview, pvpython, pvbatch, pvserver) in the SENSE environment, as ``sense PROGRAM`` does;
handy under ``mpirun`` for ``pvserver``, e.g.
``mpirun -np 4 .venv/bin/python -m sense_core.paraview_env --no-xvfb pvserver``."""

import sys

from sense_core.errors import SenseError
from sense_core.paraview_env import PROGRAMS, launch


def main(argv: list[str]) -> int:
    """Parse ``[--no-xvfb] PROGRAM ARGS`` and replace this process with the program."""
    use_xvfb = True
    if argv[:1] == ["--no-xvfb"]:
        use_xvfb, argv = False, argv[1:]
    if not argv or argv[0] not in PROGRAMS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return launch(argv[0], argv[1:], use_xvfb=use_xvfb)
    except SenseError as exc:
        print(f"sense: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
