"""SENSE's GUI start-up plugin: the ``sense`` launchers put this folder on PV_PLUGIN_PATH.

Its one purpose is a side effect (sense_paraview.launcher.gui_startup_dir says why it is a
separate file): in the GUI, start the watcher that opens the linked layout on each SENSE
Embedding's first Apply; in pvpython, pvbatch and pvserver it does nothing. It declares no
proxies.
"""

from sense_paraview.gui import enable_auto_layout

enable_auto_layout()
