"""The CMake project configures, installs the plugin file, and lists the ParaView tests."""

from __future__ import annotations

import subprocess

from conftest import REPO


def test_cmake_installs_the_plugin_and_registers_ctest(tmp_path):
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    subprocess.run(["cmake", "-S", str(REPO), "-B", str(build)], check=True, capture_output=True)
    subprocess.run(
        ["cmake", "--install", str(build), "--prefix", str(prefix)], check=True, capture_output=True
    )
    installed = list(prefix.rglob("sense_plugin.py"))
    assert len(installed) == 1 and "paraview-5.11/plugins/SENSE" in str(installed[0])
    listed = subprocess.run(
        ["ctest", "-N"], cwd=build, check=True, capture_output=True, text=True
    ).stdout
    assert "sense_paraview_plugin" in listed
