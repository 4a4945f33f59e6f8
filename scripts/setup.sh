#!/usr/bin/env bash
# Install everything SENSE needs, idempotently: Debian packages (ParaView 5.11, Xvfb), a virtual
# environment made from ParaView's Python with --system-site-packages, and the project (editable)
# with its extras. A second run only checks and returns in seconds.
#
# Environment knobs (all optional):
#   VENV=.venv                     where the environment lives
#   EXTRAS=cpu,train,dev           pip extras (use gpu instead of cpu for onnxruntime-gpu)
#   CONSTRAINTS=requirements/constraints.txt   pins (numpy<2, the torch/torchvision pair)
#   SENSE_SKIP_APT=1               never call apt-get (report what is missing instead)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-cpu,train,dev}
CONSTRAINTS=${CONSTRAINTS:-requirements/constraints.txt}
PARAVIEW_PYTHON=/usr/bin/python3
# paraview-dev: ParaView's CMake package (plugin library); its CMake config also needs the MPI
# and utf8cpp headers, which Debian 12's paraview-dev does not pull in. openmpi-bin: mpirun.
APT_PACKAGES=(paraview python3-paraview python3-venv python3-mpi4py xvfb xauth cmake
    openmpi-bin paraview-dev libopenmpi-dev libutfcpp-dev g++)

say() { printf '[setup] %s\n' "$*"; }

missing_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$pkg")
done
if ((${#missing_apt[@]})); then
    if [[ ${SENSE_SKIP_APT:-0} == 1 ]]; then
        say "missing Debian packages: ${missing_apt[*]} (SENSE_SKIP_APT=1, not installing)"; exit 1
    fi
    sudo=""
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || { say "need root or sudo to install: ${missing_apt[*]}"; exit 1; }
        sudo=sudo
    fi
    say "installing Debian packages: ${missing_apt[*]} (about 90 s, 1.5 GB)"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing_apt[@]}"
fi

if [[ ! -x $VENV/bin/python ]]; then
    say "creating $VENV from $PARAVIEW_PYTHON (--system-site-packages, so ParaView's modules are visible)"
    "$PARAVIEW_PYTHON" -m venv --system-site-packages "$VENV"
fi

# Reinstall only when what decides the environment changed.
stamp="$VENV/.sense-setup-stamp"
want=$(cat pyproject.toml "$CONSTRAINTS" "$0" | sha256sum | cut -c1-16)-$EXTRAS
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    say "environment $VENV is up to date"
    exit 0
fi

say "installing sense-ensembles[$EXTRAS] into $VENV (the first time takes minutes: torch is large)"
"$VENV/bin/python" -m pip install -q --upgrade "pip>=23.1" "setuptools>=68" wheel -c "$CONSTRAINTS"
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]"

# The PyPI `vtk` wheel segfaults pvpython next to ParaView's own vtkmodules (DESIGN.md §4).
if "$VENV/bin/python" -m pip show -q vtk >/dev/null 2>&1; then
    say "removing the PyPI vtk wheel a dependency pulled in (it breaks ParaView)"
    "$VENV/bin/python" -m pip uninstall -y -q vtk
fi

"$VENV/bin/python" - <<'PY'
import numpy
major = int(numpy.__version__.split(".")[0])
if major >= 2:
    raise SystemExit(f"[setup] numpy {numpy.__version__} in the environment; ParaView needs numpy<2")
import paraview.simple  # noqa: F401  ParaView's Python stack imports with this environment
import sense_core
import sense_training  # noqa: F401
print(f"[setup] ok: sense {sense_core.__version__}, numpy {numpy.__version__}")
PY
echo "$want" > "$stamp"
