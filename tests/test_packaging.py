"""Every Python package in the source tree is listed in pyproject.toml, so that wheels and
fresh installs contain it (the list is explicit because training/ installs as sense_training),
and a wheel carries the shipped default bundles, the ParaView plugin, its scripts and the
`sense` subcommand entry points, which a non-editable install finds."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib
from helpers import REPO


def _setuptools_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder_of(package: str, package_dir: dict[str, str]):
    """The source folder of a dotted package name under setuptools' package-dir mapping."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:cut]))
        if mapped is not None:
            return REPO / mapped / os.path.join(*parts[cut:]) if parts[cut:] else REPO / mapped
    raise AssertionError(f"{package} has no package-dir entry")


def test_every_package_folder_is_listed_in_pyproject():
    config = _setuptools_config()
    listed = set(config["packages"])
    for package, folder in config["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            name = ".".join([package, *relative.parts])
            assert name in listed, f"{init.parent} is not listed as {name!r} in pyproject.toml"
    for name in listed:
        folder = _folder_of(name, config["package-dir"])
        assert folder.is_dir(), f"{name} is listed but has no folder {folder}"


def test_wheel_ships_the_default_bundles_and_a_plain_install_finds_them(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(REPO.glob("models/*/sense.json"))
    assert shipped, "the source tree has no shipped bundle"
    for manifest in shipped:
        name = manifest.parent.name
        assert f"sense_core/shipped_models/{name}/sense.json" in names
        for onnx in manifest.parent.glob("*.onnx"):
            assert f"sense_core/shipped_models/{name}/{onnx.name}" in names
    assert not [n for n in names if n.endswith(".pt")], "training checkpoints must stay out"
    package = REPO / "plugin" / "sense_paraview"
    for folder in ("plugins", "gui_startup", "shim", "scripts"):
        for source in (package / folder).glob("*.py"):
            assert f"sense_paraview/{folder}/{source.name}" in names, source
    assert "sense_paraview/plugins/sense_plugin.py" in names
    # the plugin folder holds plugin files only: PV_PLUGIN_PATH loads every .py in it
    assert [n for n in names if n.startswith("sense_paraview/plugins/")] == [
        "sense_paraview/plugins/sense_plugin.py"
    ]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    registered = zipfile.ZipFile(wheel).read(entry_points).decode()
    for target_function in (
        "sense_core.runtime_cli:add_parser",
        "sense_training.cli:add_parser",
        "sense_paraview.cli:add_parser",
    ):
        assert target_function in registered, registered

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    env = {k: v for k, v in os.environ.items() if k != "SENSE_MODELS_DIR"}
    env["PYTHONPATH"] = str(target)
    code = (
        "import sense_core.bundle as b; print(b.shipped_bundles_dir()); "
        f"print(b.Bundle.load(b.shipped_bundles_dir() / {shipped[0].parent.name!r}).folder); "
        "import sense_paraview as p, sense_paraview.launcher as l; print(p.plugin_file()); "
        "print(l.SHIM_DIR / 'sitecustomize.py'); print(l.gui_startup_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out[0] == str(target / "sense_core" / "shipped_models")
    assert out[1].startswith(str(target))
    plugin, shim, startup = (Path(path) for path in out[2:5])
    assert plugin == target / "sense_paraview" / "plugins" / "sense_plugin.py"
    assert plugin.is_file() and shim.is_file() and (startup / "sense_gui_startup.py").is_file()
