"""Start ParaView's programs (paraview, pvpython, pvbatch) with SENSE ready to use.

The environment this builds carries the ``inspect.getargspec`` shim, the SENSE virtual
environment's packages and the plugin folder; rendering programs run under ``xvfb-run`` when
no display is set.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

from sense_core.errors import SenseError

PROGRAMS = ("paraview", "pvpython", "pvbatch")
SHIM_DIR = Path(__file__).resolve().parent / "shim"


def plugin_dir() -> Path:
    """The folder holding SENSE's ParaView plugin files (``SENSE_PLUGIN_DIR`` overrides)."""
    override = os.environ.get("SENSE_PLUGIN_DIR")
    folder = Path(override) if override else Path(__file__).resolve().parents[2] / "plugin"
    if not folder.is_dir():
        raise SenseError(
            f"SENSE's plugin folder {folder} does not exist; install SENSE from its source tree "
            "(make setup) or set SENSE_PLUGIN_DIR"
        )
    return folder


def plugin_file() -> Path:
    """The main SENSE plugin file, for ``LoadPlugin``."""
    return plugin_dir() / "sense_plugin.py"


def _prepend(paths: Sequence[str], existing: str | None) -> str:
    return os.pathsep.join([*paths, *([existing] if existing else [])])


def paraview_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables for a ParaView program that should see SENSE."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = _prepend([str(SHIM_DIR)], env.get("PYTHONPATH"))
    env["SENSE_SITE_PACKAGES"] = _prepend(
        [sysconfig.get_path("purelib"), sysconfig.get_path("platlib")],
        env.get("SENSE_SITE_PACKAGES"),
    )
    env["PV_PLUGIN_PATH"] = _prepend([str(plugin_dir())], env.get("PV_PLUGIN_PATH"))
    # Python warnings pop up ParaView's Output Messages window; keep the GUI quiet.
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def needs_virtual_display(env: Mapping[str, str]) -> bool:
    """Whether no display is set. The GUI needs one, and pvpython/pvbatch scripts may render at
    any point, so every program gets a virtual one then."""
    return not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY")


def paraview_command(
    program: str, args: Sequence[str], env: Mapping[str, str], use_xvfb: bool = True
) -> list[str]:
    """The argv that starts ``program`` (under ``xvfb-run -a`` when a display is needed)."""
    if program not in PROGRAMS:
        raise SenseError(f"unknown ParaView program {program!r}; one of {PROGRAMS}")
    executable = shutil.which(program, path=env.get("PATH"))
    if executable is None:
        raise SenseError(
            f"{program} not found on PATH; install ParaView (Debian: apt-get install paraview "
            "python3-paraview), e.g. with `make setup`"
        )
    command = [executable, *args]
    if use_xvfb and needs_virtual_display(env):
        xvfb = shutil.which("xvfb-run", path=env.get("PATH"))
        if xvfb is None:
            raise SenseError(
                f"{program} needs a display and none is set (DISPLAY); install xvfb "
                "(apt-get install xvfb xauth) or pass --no-xvfb for pipelines that never render"
            )
        command = [xvfb, "-a", "-s", "-screen 0 1600x1000x24", *command]
    return command


def launch(program: str, args: Sequence[str], use_xvfb: bool = True) -> int:
    """Replace this process with ``program`` started in the SENSE environment."""
    env = paraview_environment()
    command = paraview_command(program, args, env, use_xvfb)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
    return 1  # not reached
