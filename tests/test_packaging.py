"""Every Python package in the source tree is listed in pyproject.toml, so that wheels and
fresh installs contain it (the list is explicit because training/ installs as sense_training),
and a wheel carries the shipped default bundles that a non-editable install finds."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import tomllib
from conftest import REPO


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

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    env = {k: v for k, v in os.environ.items() if k != "SENSE_MODELS_DIR"}
    env["PYTHONPATH"] = str(target)
    code = (
        "import sense_core.bundle as b; print(b.shipped_bundles_dir()); "
        f"print(b.Bundle.load(b.shipped_bundles_dir() / {shipped[0].parent.name!r}).folder)"
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
