"""`cmake -S . -B build && cmake --build build && ctest --test-dir build`: ParaView's CMake
(`paraview_add_plugin`, Debian's paraview-dev) builds the plugin library, which then provides
SENSE's proxies in pvpython; ctest lists the ParaView tests (they run in pytest already)."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import REPO, SENSE, make_ensemble, make_runtime_bundle

from sense_core.io import write_ensemble
from sense_paraview import plugin_file

pytestmark = pytest.mark.paraview


def test_cmake_builds_installs_and_loads_the_plugin_library(tmp_path):
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    configured = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(build)], capture_output=True, text=True
    )
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert "building the plugin with ParaView 5.11" in configured.stdout, configured.stdout
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    subprocess.run(
        ["cmake", "--install", str(build), "--prefix", str(prefix)], check=True, capture_output=True
    )
    library = prefix / "lib" / "paraview-5.11" / "plugins" / "SENSE" / "SENSE.so"
    assert library.is_file()
    listed = subprocess.run(
        ["ctest", "--test-dir", str(build), "-N"], check=True, capture_output=True, text=True
    ).stdout
    assert "sense_paraview_plugin" in listed

    # The installed library (not the plugin file) provides a working reader + embedding.
    path = write_ensemble(make_ensemble(count=8), tmp_path / "ens.npz")
    make_runtime_bundle(tmp_path / "bundle")
    script = tmp_path / "use_library.py"
    script.write_text(
        "from paraview import servermanager\nfrom paraview.simple import *\n"
        f"reader = SENSEEnsembleReader(FileName={str(path)!r})\n"
        f"embedding = SENSEEmbedding(Input=reader, Bundle={str(tmp_path / 'bundle')!r}, "
        "Projection='PCA')\n"
        "print('POINTS', servermanager.Fetch(embedding).GetNumberOfPoints())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["SENSE_PLUGIN_DIR"] = str(library.parent)  # PV_PLUGIN_PATH: the library's folder only
    used = subprocess.run(
        [SENSE, "pvpython", "--no-xvfb", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert "POINTS 8" in used.stdout, used.stdout + used.stderr


def test_without_paraview_cmake_the_python_plugin_file_is_installed(tmp_path):
    """The fallback (no paraview-dev, or -DSENSE_USE_PARAVIEW_CMAKE=OFF): the plugin file
    (plugin/sense_paraview/plugins/sense_plugin.py) goes under ParaView's plugin folder, and
    ctest still lists the tests."""
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    configured = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(build), "-DSENSE_USE_PARAVIEW_CMAKE=OFF"],
        capture_output=True,
        text=True,
    )
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert "installing the Python plugin file" in configured.stdout
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    subprocess.run(
        ["cmake", "--install", str(build), "--prefix", str(prefix)], check=True, capture_output=True
    )
    installed = list(prefix.rglob("sense_plugin.py"))
    assert len(installed) == 1 and "paraview-5.11/plugins/SENSE" in str(installed[0])
    assert installed[0].read_text() == plugin_file().read_text()
    listed = subprocess.run(
        ["ctest", "--test-dir", str(build), "-N"], check=True, capture_output=True, text=True
    ).stdout
    assert "sense_paraview_plugin" in listed
