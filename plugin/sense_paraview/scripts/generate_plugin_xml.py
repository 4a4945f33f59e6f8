"""Write the server-manager XML of sense_plugin.py (for the CMake-built plugin library).

    sense pvpython --no-xvfb plugin/sense_paraview/scripts/generate_plugin_xml.py OUT.xml

ParaView 5.11's ``paraview_add_plugin(PYTHON_MODULES ...)`` only embeds the module; the proxies
come from XML, which ParaView's own ``get_plugin_xmls`` derives from the decorators (as laid out
by ``sense_paraview.panel.layout``: labels, order, groups, documentation). The build also turns
that documentation into the library's help pages when Qt 5's help tools are there.
"""

import importlib
import os
import re
import sys

# sense_paraview/plugins/ holds sense_plugin.py; this script stays out of it (PV_PLUGIN_PATH
# loads every .py there as a plugin).
PLUGIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins")


def plugin_xml() -> str:
    """One ServerManagerConfiguration document with the proxies of every SENSE class."""
    from paraview.detail.pythonalgorithm import get_plugin_xmls

    sys.path.insert(0, PLUGIN_DIR)
    xmls = get_plugin_xmls(importlib.import_module("sense_plugin"))
    parts = [xmls] if isinstance(xmls, str) else list(xmls)
    outer = r"^\s*<ServerManagerConfiguration\s*>|</ServerManagerConfiguration>\s*$"
    inner = "\n".join(re.sub(outer, "", part) for part in parts)
    return f"<ServerManagerConfiguration>\n{inner}\n</ServerManagerConfiguration>\n"


def main(argv: list[str]) -> int:
    """Write the XML to ``argv[0]`` atomically."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    temporary = f"{argv[0]}.{os.getpid()}.part"
    with open(temporary, "w") as stream:
        stream.write(plugin_xml())
    os.replace(temporary, argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
