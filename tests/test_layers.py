"""The layers point down only: sense_core (runtime) <- sense_training, sense_paraview.

Read from every module's imports with ``ast`` (the top level and inside functions alike): the
core never imports training or ParaView code, training never imports ParaView code, and VTK
appears in the core only in the I/O adapter that reads .vti members."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

PACKAGES = {
    "sense_core": REPO / "sense_core",
    "sense_training": REPO / "training",
    "sense_paraview": REPO / "plugin" / "sense_paraview",
}
# The core's only VTK module: ParaView writes/reads members as .vti, and `sense convert` does too.
CORE_VTK_MODULES = {"sense_core/io/vti.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement in ``path`` (absolute imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _imports_of(package: str) -> dict[str, set[str]]:
    folder = PACKAGES[package]
    return {
        str(path.relative_to(REPO)): imported_modules(path) for path in sorted(folder.rglob("*.py"))
    }


def _importing(package: str, prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        path: sorted(m for m in modules if m.split(".")[0] in prefixes)
        for path, modules in _imports_of(package).items()
        if any(m.split(".")[0] in prefixes for m in modules)
    }


def test_the_core_imports_neither_training_nor_paraview_code():
    assert _importing("sense_core", ("sense_training", "sense_paraview", "paraview")) == {}


def test_training_never_imports_paraview_code():
    assert _importing("sense_training", ("sense_paraview", "paraview", "vtkmodules")) == {}


def test_the_core_uses_vtk_only_in_its_vti_adapter():
    assert set(_importing("sense_core", ("vtkmodules", "vtk"))) <= CORE_VTK_MODULES


def test_the_sense_command_names_no_package_above_the_core():
    """Subcommands come from the ``sense.commands`` entry points, not from module names."""
    text = (REPO / "sense_core" / "cli.py").read_text()
    assert "sense_training" not in text and "sense_paraview" not in text


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from sense_paraview.gui import x\n    import vtkmodules.a\n")
    assert imported_modules(module) == {"sense_paraview.gui", "vtkmodules.a"}
