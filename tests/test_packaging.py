"""Every Python package in the source tree is listed in pyproject.toml, so that wheels and
fresh installs contain it (the list is explicit because training/ installs as sense_training)."""

from __future__ import annotations

import tomllib
from conftest import REPO


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for package, folder in config["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            name = ".".join([package, *relative.parts])
            assert name in listed, f"{init.parent} is not listed as {name!r} in pyproject.toml"
    for name in listed:
        top, *rest = name.split(".")
        folder = REPO / config["package-dir"][top]
        assert folder.joinpath(*rest).is_dir(), f"{name} is listed but has no folder"
