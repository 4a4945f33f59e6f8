"""Start ParaView's programs (paraview, pvpython, pvbatch, pvserver) with SENSE ready to use.

The environment this builds carries the ``inspect.getargspec`` shim, the SENSE virtual
environment's packages and the plugin folder (package data of ``sense_paraview``, found through
the installed package, so a wheel install has it too) and the GUI start-up plugin's folder
(see :func:`gui_startup_dir`). Without a display the programs run on a private Xvfb
(started with ``-displayfd``, stopped with the program). With ``--no-xvfb`` and no usable
display (this ParaView renders through GLX only: ``--force-offscreen-rendering`` has no effect),
the GUI is refused at once with one line, and a pvbatch/pvpython/pvserver that renders anyway
(VTK aborts the process: "bad X server connection") ends with one line saying what to do.

``python -m sense_paraview.launcher [--no-xvfb] PROGRAM [ARGS...]`` does what ``sense PROGRAM``
does; handy under ``mpirun`` for ``pvserver``, e.g.
``mpirun -np 4 .venv/bin/python -m sense_paraview.launcher --no-xvfb pvserver``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path

from sense_core.errors import SenseError

PROGRAMS = ("paraview", "pvpython", "pvbatch", "pvserver")
PACKAGE_DIR = Path(__file__).resolve().parent
SHIM_DIR = PACKAGE_DIR / "shim"


def plugin_dir() -> Path:
    """The folder holding SENSE's ParaView plugin file(s) and nothing else, since
    ``PV_PLUGIN_PATH`` loads every ``.py`` in it (``SENSE_PLUGIN_DIR`` overrides)."""
    override = os.environ.get("SENSE_PLUGIN_DIR")
    folder = Path(override) if override else PACKAGE_DIR / "plugins"
    if not folder.is_dir():
        raise SenseError(
            f"SENSE's plugin folder {folder} does not exist; reinstall SENSE (make setup, or pip "
            "install the sense-ensembles wheel) or set SENSE_PLUGIN_DIR"
        )
    return folder


def plugin_file() -> Path:
    """The main SENSE plugin file, for ``LoadPlugin``."""
    return plugin_dir() / "sense_plugin.py"


def gui_startup_dir() -> Path:
    """The folder of the GUI start-up plugin, which the launchers add to ``PV_PLUGIN_PATH``.
    The plugin file itself has no import-time side effects; this one exists for its single
    side effect: ParaView loads it in the GUI process at start (also when the GUI connects to a
    pvserver, where the filters run remotely), and there it starts the watcher that opens the
    linked layout on a SENSE Embedding's first Apply (sense_paraview.gui); elsewhere it does
    nothing. Every program gets it, so that a GUI and its pvserver load the same plugins. A
    plugin loaded by hand (Tools > Manage Plugins) has no such watcher: run the
    ``linked_layout_macro.py`` macro, or start ParaView with ``sense paraview``."""
    return PACKAGE_DIR / "gui_startup"


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
    env["PV_PLUGIN_PATH"] = _prepend(
        [str(plugin_dir()), str(gui_startup_dir())], env.get("PV_PLUGIN_PATH")
    )
    # Python warnings pop up ParaView's Output Messages window; keep the GUI quiet.
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def needs_virtual_display(env: Mapping[str, str]) -> bool:
    """Whether no display is set. The GUI needs one, and pvpython/pvbatch scripts may render at
    any point, so every program gets a virtual one then."""
    return not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY")


def display_problem(env: Mapping[str, str]) -> str:
    """Why ParaView could not open an X window with ``env`` ("" when it can, as far as can be
    told without connecting): DISPLAY unset, or a local display (``:N``) whose X socket is
    missing. A remote display (``host:N``) is taken as usable."""
    display = env.get("DISPLAY", "")
    if not display:
        return "DISPLAY is not set"
    host, _, number = display.rpartition(":")
    number = number.split(".")[0]
    if host in ("", "unix") and number.isdigit():
        if not Path(f"/tmp/.X11-unix/X{number}").exists():
            return f"no X server runs on DISPLAY={display}"
    return ""


def paraview_command(program: str, args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The argv that starts ``program`` (found on the environment's PATH)."""
    if program not in PROGRAMS:
        raise SenseError(f"unknown ParaView program {program!r}; one of {PROGRAMS}")
    executable = shutil.which(program, path=env.get("PATH"))
    if executable is None:
        raise SenseError(
            f"{program} not found on PATH; install ParaView (Debian: apt-get install paraview "
            "python3-paraview), e.g. with `make setup`"
        )
    return [executable, *args]


def start_virtual_display(env: Mapping[str, str]) -> tuple[subprocess.Popen, str]:
    """Start a private Xvfb; return (server, DISPLAY). The server picks a free display number
    itself and reports it when it accepts connections (``-displayfd``), so parallel starts
    never share or race for a number (``xvfb-run -a`` does: a program could end up on another
    run's display and lose it when that run ends). ``-noreset``: by default Xvfb resets when
    its last client disconnects, and a client that connects during the reset has its
    ``XOpenDisplay`` fail — VTK then aborts with "bad X server connection", which pvbatch
    did now and then here (the cause as isolated in pyvista/pyvista#9188)."""
    xvfb = shutil.which("Xvfb", path=env.get("PATH"))
    if xvfb is None:
        raise SenseError(
            "ParaView needs a display and none is set (DISPLAY); install xvfb "
            "(apt-get install xvfb) or pass --no-xvfb for pipelines that never render"
        )
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        [
            xvfb,
            "-displayfd",
            str(write_end),
            "-screen",
            "0",
            "1600x1000x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ],
        pass_fds=(write_end,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        number = stream.readline().strip()
    if not number.isdigit():
        server.kill()
        server.wait()
        raise SenseError(f"Xvfb ({xvfb}) did not start (exit status {server.returncode})")
    return server, f":{number}"


def no_display_message(program: str, problem: str) -> str:
    """The one line for ``program`` run with --no-xvfb where ``problem`` (no usable display)."""
    xvfb = "a private Xvfb" if program == "paraview" else "a private Xvfb, one per MPI rank"
    return (
        f"{program} needs a display to render and {problem} (--no-xvfb): drop --no-xvfb (SENSE "
        f"then starts {xvfb}) or set DISPLAY to a running X server"
    )


def launch(program: str, args: Sequence[str], use_xvfb: bool = True) -> int:
    """Run ``program`` in the SENSE environment and return its exit status. Without a display
    (and ``use_xvfb``) it runs on a private Xvfb that stops with it. With ``use_xvfb`` off and
    no usable display the GUI is refused (:class:`SenseError`), and another program runs as a
    child so that an abort for want of a display ends with one line saying so. Otherwise this
    process is replaced by the program."""
    env = paraview_environment()
    command = paraview_command(program, args, env)
    sys.stdout.flush()
    sys.stderr.flush()
    if use_xvfb and needs_virtual_display(env):
        server, env["DISPLAY"] = start_virtual_display(env)
        try:
            return _run_child(command, env)
        finally:
            server.terminate()
            server.wait()
    problem = "" if use_xvfb else display_problem(env)
    if not problem:
        os.execve(command[0], command, env)
    if program == "paraview":
        raise SenseError(no_display_message(program, problem))
    status = _run_child(command, env)
    if status == 128 + signal.SIGABRT:
        print(f"sense: error: {no_display_message(program, problem)}", file=sys.stderr)
    return status


def _run_child(command: Sequence[str], env: Mapping[str, str]) -> int:
    """Run ``command`` as a child, passing on SIGTERM/SIGINT/SIGHUP (mpirun, Ctrl-C); its exit
    status, 128 + N for a child killed by signal N (as a shell reports it)."""
    child = None

    def forward(signum, frame):
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {
        s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        child = subprocess.Popen(command, env=env)
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - status if status < 0 else status


def run_launcher(program: str, argv: Sequence[str]) -> int:
    """``[--no-xvfb] [--] ARGS``: :func:`launch` ``program`` with ARGS, untouched."""
    args = list(argv)
    use_xvfb = True
    if args[:1] == ["--no-xvfb"]:
        use_xvfb, args = False, args[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    return launch(program, args, use_xvfb=use_xvfb)


def main(argv: Sequence[str]) -> int:
    """``[--no-xvfb] PROGRAM ARGS``: run the program (see the module's docstring)."""
    args = list(argv)
    no_xvfb = args[:1] == ["--no-xvfb"]
    rest = args[1:] if no_xvfb else args
    if not rest or rest[0] not in PROGRAMS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return run_launcher(rest[0], (["--no-xvfb"] if no_xvfb else []) + rest[1:])
    except SenseError as exc:
        print(f"sense: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
