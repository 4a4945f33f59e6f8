"""SENSE's start-up fixes for ParaView's embedded Python (pvpython, pvbatch, paraview).

The ``sense paraview|pvpython|pvbatch`` launchers put this folder first on ``PYTHONPATH``.

1. ParaView 5.11's ``paraview/detail/pythonalgorithm.py`` calls ``inspect.getargspec``, which
   Python 3.11 removed; without it no Python plugin loads. Restore it from ``getfullargspec``.
2. Add the SENSE virtual environment's site-packages (``SENSE_SITE_PACKAGES``) with
   ``site.addsitedir`` so its ``.pth`` files (the editable install) are processed, and place it
   before the system's dist-packages, as the environment's own interpreter orders them.
3. Run the ``sitecustomize`` this file shadows (Debian ships one), if any.
"""

import collections
import importlib.machinery
import importlib.util
import inspect
import os
import site
import sys

if not hasattr(inspect, "getargspec"):
    ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")

    def getargspec(func):
        spec = inspect.getfullargspec(func)
        return ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)

    inspect.getargspec = getargspec


def _add_environment(paths):
    before = list(sys.path)
    for path in paths:
        if path and os.path.isdir(path):
            site.addsitedir(path)
    added = [p for p in sys.path if p not in before]
    rest = [p for p in sys.path if p not in added]
    first_system = next(
        (i for i, p in enumerate(rest) if p.endswith(("dist-packages", "site-packages"))), len(rest)
    )
    sys.path[:] = rest[:first_system] + added + rest[first_system:]


_add_environment(os.environ.get("SENSE_SITE_PACKAGES", "").split(os.pathsep))


def _run_shadowed_sitecustomize():
    here = os.path.dirname(os.path.abspath(__file__))
    others = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_run_shadowed_sitecustomize()
